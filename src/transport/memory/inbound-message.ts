import { assert } from '../../util/assert.js';
import type { InboundMessage, StreamWriter } from '../transport.js';
import type { MemoryStream } from './memory-stream.js';

/** How a delivered message can be answered: by one reply, by a stream, or not at all. */
export type ReplyPath =
  | { kind: 'none' }
  | { kind: 'request'; respond: (data: Uint8Array) => void }
  | { kind: 'stream'; stream: MemoryStream };

/** The message one subscriber sees; `data` must already be that subscriber's own copy. */
export function inboundMessage(
  subject: string,
  data: Uint8Array,
  path: ReplyPath,
  headers: Readonly<Record<string, string>> = {},
): InboundMessage {
  let writer: StreamWriter | undefined;
  return {
    subject,
    data,
    // Each subscriber gets its own frozen copy, as with `data`, so no two actors share an object.
    headers: Object.freeze({ ...headers }),
    expectsReply: path.kind !== 'none',
    isStream: path.kind === 'stream',
    respond: (reply) => {
      if (path.kind === 'request') path.respond(reply);
    },
    openStream: () => {
      assert(path.kind === 'stream', `openStream() on a message to ${subject} that is not a stream request`);
      writer ??= path.stream.claim();
      return writer;
    },
  };
}

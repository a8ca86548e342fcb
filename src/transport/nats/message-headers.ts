import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { assert } from '../../util/assert.js';
import type { MessageHeaders } from '../transport.js';

/** The prefix of the headers the stream protocol owns (see nats-stream.ts); callers may not set them. */
const reservedPrefix = 'tandem-stream';

/** True for a header name the transport's own protocol uses. */
export function isReservedHeader(name: string): boolean {
  return name.toLowerCase().startsWith(reservedPrefix);
}

/** A caller setting a protocol header would turn a plain request into a broken stream request, so that is a bug. */
export function assertCallerHeaders(headers: MessageHeaders | undefined): void {
  for (const name of Object.keys(headers ?? {})) {
    assert(!isReservedHeader(name), `header ${JSON.stringify(name)} is reserved for the transport's stream protocol`);
  }
}

/**
 * Copies a caller's headers into NATS headers, onto `into` when given; asserts none is reserved.
 */
export function toNatsHeaders(headers: MessageHeaders | undefined, into?: MsgHdrs): MsgHdrs | undefined {
  assertCallerHeaders(headers);
  const entries = Object.entries(headers ?? {});
  if (entries.length === 0) return into;
  const result = into ?? natsHeaders();
  for (const [name, value] of entries) {
    result.set(name, value);
  }
  return result;
}

/** The caller-visible headers of a delivered message: the protocol's own are left out. */
export function fromNatsHeaders(headers: MsgHdrs | undefined): MessageHeaders {
  const result: Record<string, string> = {};
  if (headers === undefined) return Object.freeze(result);
  for (const name of headers.keys()) {
    if (!isReservedHeader(name)) result[name] = headers.get(name);
  }
  return Object.freeze(result);
}

/** Bytes the headers take on the wire, roughly (`name: value\r\n` each), for payload checks. */
export function headerBytes(headers: MessageHeaders | undefined): number {
  let bytes = 0;
  for (const [name, value] of Object.entries(headers ?? {})) bytes += name.length + value.length + 4;
  return bytes;
}

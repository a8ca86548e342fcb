import { ErrorCode, TandemError } from '../errors.js';
import { assert } from '../util/assert.js';

/** The normalised failures every transport reports, whatever library sits underneath. */
export type TransportErrorKind = 'no_responders' | 'timeout' | 'closed';

/** A transport failure; its `code` is the matching ErrorCode so callers switch on one field. */
export class TransportError extends TandemError {
  readonly kind: TransportErrorKind;

  constructor(kind: TransportErrorKind, message: string, options?: { cause?: unknown }) {
    const code = kind === 'no_responders' ? ErrorCode.NoResponders : kind === 'timeout' ? ErrorCode.Timeout : ErrorCode.Closed;
    super(code, message, options);
    this.kind = kind;
  }
}

/** The writing end of a streamed reply, held by the responder. */
export interface StreamWriter {
  /** Sends one chunk. Throws TransportError('closed') once the stream ended or was cancelled. */
  write(data: Uint8Array): void;
  /** Ends the stream normally; the consumer's iteration finishes. */
  end(): void;
  /** True once the consumer cancelled or the stream ended. */
  readonly closed: boolean;
  /** Called once when the consumer cancels (or goes away) before `end()`. */
  onCancel(fn: () => void): void;
}

/** A message delivered to a subscription. */
export interface InboundMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  /** True when the sender awaits a reply (a request or a stream). */
  readonly expectsReply: boolean;
  /** Answers a request with one reply. Ignored for published messages. */
  respond(data: Uint8Array): void;
  /** Turns a stream request into a writer; only valid when the sender opened a stream. */
  openStream(): StreamWriter;
  /** True when the sender opened a stream rather than a single request. */
  readonly isStream: boolean;
  /** Headers the sender attached (e.g. `traceparent`); an empty object when none. */
  readonly headers: Readonly<Record<string, string>>;
}

/** Headers a sender attaches to a message; names are case-sensitive and values single strings. */
export type MessageHeaders = Readonly<Record<string, string>>;

export type MessageHandler = (message: InboundMessage) => void;

/** A live subscription; `unsubscribe` is idempotent. */
export interface Subscription {
  readonly subject: string;
  unsubscribe(): void;
}

/** The consuming end of a streamed reply. */
export interface ReplyStream extends AsyncIterable<Uint8Array> {
  /** Stops the stream; the responder's `onCancel` runs. Idempotent. */
  cancel(): void;
}

/** Options of a request. */
export interface RequestOptions {
  /** How long to wait for the reply. */
  timeoutMs: number;
  /** Aborts the wait (the reply, if it comes, is dropped). */
  signal?: AbortSignal;
  /** Headers delivered with the request (e.g. `traceparent`). */
  headers?: MessageHeaders;
}

/** Options of a streamed request. */
export interface StreamOptions {
  /** How long the stream may go without a chunk before it fails with `timeout`. */
  idleTimeoutMs: number;
  /** Cancels the stream when aborted. */
  signal?: AbortSignal;
  /** Headers delivered with the stream request (e.g. `traceparent`). */
  headers?: MessageHeaders;
}

/** Options of a published message. */
export interface PublishOptions {
  /** Headers delivered with the message (e.g. `traceparent`). */
  headers?: MessageHeaders;
}

/** Options of a subscription. */
export interface SubscribeOptions {
  /** Queue group: each message goes to exactly one member of the group. */
  queue?: string;
}

/**
 * How actors talk. Subjects are dot-separated tokens; payloads are encoded protocol messages.
 * Memory and NATS implementations pass one conformance suite (test/transport-conformance.ts).
 */
export interface Transport {
  /** Sends a request and resolves with the first reply. */
  request(subject: string, data: Uint8Array, options: RequestOptions): Promise<Uint8Array>;
  /** Fire-and-forget delivery to every subscriber (one per queue group). */
  publish(subject: string, data: Uint8Array, options?: PublishOptions): void;
  /** Subscribes a handler to an exact subject. */
  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): Subscription;
  /** Opens a streamed reply: the responder calls `openStream()` and writes chunks. */
  stream(subject: string, data: Uint8Array, options: StreamOptions): ReplyStream;
  /** Closes every subscription and stream; later calls fail with `closed`. */
  close(): Promise<void>;
}

/** The error every operation of a closed transport fails with. */
export function closedError(): TransportError {
  return new TransportError('closed', 'transport is closed');
}

/** Subjects are dot-separated, non-empty tokens, and transports subscribe to exact ones (no wildcards). */
export function assertExactSubject(subject: string): void {
  assert(subject.length > 0 && !/\s/.test(subject), `subject ${JSON.stringify(subject)} is empty or has whitespace`);
  for (const token of subject.split('.')) {
    assert(token.length > 0, `subject ${JSON.stringify(subject)} has an empty token`);
    assert(token !== '*' && token !== '>', `subject ${JSON.stringify(subject)} has a wildcard; subscribe to exact subjects`);
  }
}

import { connect, createInbox, type Msg, type MsgHdrs, type NatsConnection, type Subscription as NatsSubscription } from '@nats-io/transport-node';
import type { Clock, TimerId } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import {
  assertExactSubject,
  closedError,
  TransportError,
  type InboundMessage,
  type MessageHandler,
  type PublishOptions,
  type ReplyStream,
  type RequestOptions,
  type StreamOptions,
  type StreamWriter,
  type SubscribeOptions,
  type Subscription,
  type Transport,
} from '../transport.js';
import { resolveNatsTransportOptions, toNodeConnectionOptions, type NatsTransportOptions, type ResolvedNatsTransportOptions } from './connect-options.js';
import { assertCallerHeaders, fromNatsHeaders, headerBytes, toNatsHeaders } from './message-headers.js';
import { connectError, toTransportError } from './nats-errors.js';
import { NatsStream, parseStreamRequest, streamHeader, type InboxSubscription, type StreamLink } from './nats-stream.js';
import { NatsStreamWriter } from './nats-stream-writer.js';

/** What a NatsTransport holds right now; all zero once everything it started has finished. */
export interface NatsTransportStats {
  subscriptionCount: number;
  pendingRequestCount: number;
  /** Streams this transport consumes. */
  openStreamCount: number;
  /** Streams this transport's responders write. */
  openWriterCount: number;
}

interface PendingRequest {
  fail(error: unknown): void;
}

/** The server's default max_payload, used until the server has said otherwise. */
const maxPayloadBytesDefault = 1024 * 1024;

/**
 * The Transport over NATS core (`@nats-io/transport-node`), for clusters that span processes and
 * hosts. Requests, publishes and queue groups map onto NATS directly; streams run the credit and
 * heartbeat protocol described in nats-stream.ts on top of plain subjects.
 *
 * Semantics other code relies on, the same as the memory transport's: an aborted request rejects
 * with the signal's `reason`, and an aborted stream's iteration throws it (`cancel()` ends it
 * quietly). After `close()` (or after the connection closed for good, e.g. reconnect attempts
 * ran out), `publish` and `subscribe` throw, `request` rejects and a new stream's iteration
 * throws, all with TransportError('closed'). While the connection is reconnecting, calls are
 * buffered by the client and run into their own deadlines. Payloads are copied on the way in
 * and out. A message, reply or stream chunk larger than the server's max_payload (1 MiB by
 * default; for a chunk, 6 bytes less) is refused with TransportError('closed') naming the limit.
 *
 * Streams differ from the memory transport's in two ways a producer can see: a write that finds
 * the consumer too far behind fails the stream (onCancel runs on the next turn) instead of being
 * refused later on arrival; and when two plain subscribers open the same stream, the second
 * writer is cancelled once the consumer hears from it rather than being closed from the start.
 * Subscriptions become visible to other connections only once the server has processed them:
 * `await flush()` after subscribing when another connection must see them at once.
 */
export class NatsTransport implements Transport {
  private readonly connection: NatsConnection;
  private readonly options: ResolvedNatsTransportOptions;
  private readonly clock: Clock;
  private readonly subscriptions = new Set<NatsSubscription>();
  private readonly pending = new Set<PendingRequest>();
  private readonly streams = new Set<NatsStream>();
  private readonly writers = new Set<NatsStreamWriter>();
  private readonly link: StreamLink;
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(connection: NatsConnection, options: ResolvedNatsTransportOptions) {
    this.connection = connection;
    this.options = options;
    this.clock = options.clock;
    this.link = {
      clock: options.clock,
      publish: (subject, data, publishOptions) => connection.publish(subject, data, publishOptions),
      subscribeInbox: (subject, onMessage) => this.subscribeInbox(subject, onMessage),
      createInbox: () => createInbox(options.inboxPrefix),
      maxPayloadBytes: () => this.maxPayloadBytes,
      reportProtocolError: (error, subject) => report(options.onProtocolError, error, subject),
    };
    // The connection can also close on its own (reconnect attempts ran out, auth revoked).
    void connection.closed().then(() => this.shutDown('the NATS connection closed', { failPending: true }));
  }

  /** Connects to NATS; rejects with TransportError('closed') saying why when the server cannot be reached or refuses the credentials. */
  static async connect(options: NatsTransportOptions): Promise<NatsTransport> {
    const resolved = resolveNatsTransportOptions(options);
    let connection: NatsConnection;
    try {
      connection = await connect(toNodeConnectionOptions(resolved));
    } catch (error) {
      throw connectError(error, resolved.servers);
    }
    return new NatsTransport(connection, resolved);
  }

  /** The largest message the connected server accepts (its max_payload). */
  get maxPayloadBytes(): number {
    return this.connection.info?.max_payload ?? maxPayloadBytesDefault;
  }

  /** Counts for leak checks. */
  stats(): NatsTransportStats {
    return {
      subscriptionCount: this.subscriptions.size,
      pendingRequestCount: this.pending.size,
      openStreamCount: this.streams.size,
      openWriterCount: this.writers.size,
    };
  }

  /** Resolves once the server has processed everything sent so far, subscriptions included. */
  async flush(): Promise<void> {
    if (this.closed) throw closedError();
    try {
      await this.connection.flush();
    } catch (error) {
      throw toTransportError(error, 'flush');
    }
  }

  request(subject: string, data: Uint8Array, options: RequestOptions): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(closedError());
    assertExactSubject(subject);
    const { signal, timeoutMs } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const tooLarge = this.checkPayload(data, `request on ${subject}`, headerBytes(options.headers));
    if (tooLarge) return Promise.reject(tooLarge);
    const headers = toNatsHeaders(options.headers);
    return new Promise<Uint8Array>((resolve, reject) => {
      const settle = (finish: () => void): void => {
        if (!this.pending.delete(entry)) return;
        signal?.removeEventListener('abort', onAbort);
        finish();
      };
      const entry: PendingRequest = { fail: (error) => settle(() => reject(error)) };
      const onAbort = (): void => entry.fail(signal?.reason);
      this.pending.add(entry);
      signal?.addEventListener('abort', onAbort, { once: true });
      // The library's own timer enforces the timeout; an abort or close only stops us waiting for it.
      // Once close() has begun, the request fails with closed when close() is done, whatever the library says meanwhile.
      this.connection.request(subject, new Uint8Array(data), { timeout: Math.max(1, Math.ceil(timeoutMs)), noMux: false, headers }).then(
        (reply) => {
          if (!this.closed) settle(() => resolve(reply.data.slice()));
        },
        (error: unknown) => {
          if (!this.closed) settle(() => reject(toTransportError(error, `request on ${subject}`)));
        },
      );
    });
  }

  publish(subject: string, data: Uint8Array, options?: PublishOptions): void {
    if (this.closed) throw closedError();
    assertExactSubject(subject);
    const tooLarge = this.checkPayload(data, `publish on ${subject}`, headerBytes(options?.headers));
    if (tooLarge) throw tooLarge;
    const headers = toNatsHeaders(options?.headers);
    try {
      this.connection.publish(subject, new Uint8Array(data), { headers });
    } catch (error) {
      throw toTransportError(error, `publish on ${subject}`);
    }
  }

  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): Subscription {
    if (this.closed) throw closedError();
    assertExactSubject(subject);
    let subscription: NatsSubscription;
    try {
      subscription = this.connection.subscribe(subject, {
        queue: options?.queue,
        callback: (error, msg) => {
          if (error) report(this.options.onHandlerError, error, subject);
          else this.dispatch(subject, handler, msg);
        },
      });
    } catch (error) {
      throw toTransportError(error, `subscribe on ${subject}`);
    }
    this.subscriptions.add(subscription);
    return {
      subject,
      unsubscribe: () => {
        if (!this.subscriptions.delete(subscription)) return;
        if (!subscription.isClosed()) subscription.unsubscribe();
      },
    };
  }

  stream(subject: string, data: Uint8Array, options: StreamOptions): ReplyStream {
    assertCallerHeaders(options.headers);
    const stream = new NatsStream({
      subject,
      link: this.link,
      windowMax: this.options.streamWindowMax,
      heartbeatMs: this.options.streamHeartbeatMs,
      heartbeatsMissedMax: this.options.streamHeartbeatsMissedMax,
      idleTimeoutMs: options.idleTimeoutMs,
      signal: options.signal,
      headers: options.headers,
      onSettled: () => this.streams.delete(stream),
    });
    // Failures are reported through the iteration, where a stream's consumer already handles them.
    if (this.closed) {
      stream.fail(closedError());
      return stream.consumer;
    }
    assertExactSubject(subject);
    const tooLarge = this.checkPayload(data, `stream on ${subject}`, streamRequestHeaderBytesMax + headerBytes(options.headers));
    if (tooLarge) {
      stream.fail(tooLarge);
      return stream.consumer;
    }
    this.streams.add(stream);
    stream.start(new Uint8Array(data));
    return stream.consumer;
  }

  /** Fails pending requests and open streams with closed, tells the other ends, then drains the connection. */
  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private async closeOnce(): Promise<void> {
    // Pending requests fail when close() resolves, not before: a caller that awaits close() and
    // then its request would otherwise hold a rejected promise without a handler meanwhile.
    this.shutDown('transport is closed', { failPending: false });
    // Draining flushes the cancel and error frames just queued before the connection goes.
    let timer: TimerId | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = this.clock.setTimeout(() => resolve('late'), this.options.drainTimeoutMs);
    });
    const drained = this.connection.drain().then(
      () => 'drained' as const,
      () => 'failed' as const,
    );
    const outcome = await Promise.race([drained, late]);
    this.clock.clearTimeout(timer);
    if (outcome !== 'drained' && !this.connection.isClosed()) await this.connection.close().catch(() => undefined);
    this.failPending(closedError());
  }

  /** Stops everything this transport runs; idempotent. */
  private shutDown(why: string, options: { failPending: boolean }): void {
    if (this.closed) return;
    this.closed = true;
    const error = new TransportError('closed', why);
    if (options.failPending) this.failPending(error);
    for (const stream of [...this.streams]) stream.fail(error);
    for (const writer of [...this.writers]) writer.fail(`the producer's transport closed: ${why}`);
    this.subscriptions.clear();
  }

  private failPending(error: TransportError): void {
    for (const entry of [...this.pending]) entry.fail(error);
  }

  /** Runs a handler on one delivered message; nothing it throws reaches the NATS client. */
  private dispatch(subject: string, handler: MessageHandler, msg: Msg): void {
    if (this.closed) return;
    let message: InboundMessage | undefined;
    try {
      message = this.inboundMessage(subject, msg);
    } catch (error) {
      report(this.options.onProtocolError, error instanceof Error ? error : new Error(String(error)), subject);
    }
    if (!message) return;
    try {
      const result: unknown = handler(message);
      // An async handler's rejection is as much a handler bug as a throw; keep it off the process.
      if (result instanceof Promise) result.catch((error: unknown) => report(this.options.onHandlerError, error, subject));
    } catch (error) {
      report(this.options.onHandlerError, error, subject);
    }
  }

  /** The message a handler sees; undefined (after a report) for a stream request it cannot serve. */
  private inboundMessage(subject: string, msg: Msg): InboundMessage | undefined {
    const reply = msg.reply ?? '';
    const headers: MsgHdrs | undefined = msg.headers;
    const isStream = reply !== '' && headers !== undefined && headers.has(streamHeader);
    const params = isStream ? parseStreamRequest(headers) : undefined;
    if (params && 'malformed' in params) {
      report(this.options.onProtocolError, new Error(`dropped a stream request on ${subject}: ${params.malformed}`), subject);
      return undefined;
    }
    let answered = false;
    let writer: StreamWriter | undefined;
    return {
      subject,
      data: msg.data.slice(),
      expectsReply: reply !== '',
      isStream,
      headers: fromNatsHeaders(headers),
      respond: (data) => {
        if (isStream || reply === '' || answered || this.closed) return;
        const tooLarge = this.checkPayload(data, `reply on ${subject}`);
        if (tooLarge) throw tooLarge;
        answered = true;
        try {
          this.connection.publish(reply, new Uint8Array(data));
        } catch {
          // The connection is gone; the requester runs into its own timeout or close.
        }
      },
      openStream: () => {
        assert(params !== undefined, `openStream() on a message to ${subject} that is not a stream request`);
        writer ??= this.openWriter(subject, reply, params.windowMax, params.heartbeatMs);
        return writer;
      },
    };
  }

  private openWriter(subject: string, inbox: string, windowMax: number, consumerHeartbeatMs: number): StreamWriter {
    const writer = new NatsStreamWriter({
      subject,
      inbox,
      link: this.link,
      windowMax,
      consumerHeartbeatMs,
      heartbeatMs: this.options.streamHeartbeatMs,
      heartbeatsMissedMax: this.options.streamHeartbeatsMissedMax,
      bufferMax: this.options.streamBufferMax,
      bufferBytesMax: this.options.streamBufferBytesMax,
      onSettled: () => this.writers.delete(writer),
    });
    this.writers.add(writer);
    if (this.closed) writer.fail('the producer\'s transport is closed');
    else writer.open();
    return writer.writer;
  }

  /** Subscribes a stream end's inbox; a bug in its handling is reported, never thrown into the client. */
  private subscribeInbox(subject: string, onMessage: (msg: Msg) => void): InboxSubscription {
    const subscription = this.connection.subscribe(subject, {
      callback: (error, msg) => {
        if (error) return;
        try {
          onMessage(msg);
        } catch (bug) {
          report(this.options.onHandlerError, bug, subject);
        }
      },
    });
    return {
      unsubscribe: () => {
        if (!subscription.isClosed()) subscription.unsubscribe();
      },
    };
  }

  private checkPayload(data: Uint8Array, what: string, overheadBytes = 0): TransportError | undefined {
    const limit = this.maxPayloadBytes - overheadBytes;
    if (data.length <= limit) return undefined;
    return new TransportError('closed', `${what} refused: ${data.length} bytes is over the ${limit}-byte limit (the NATS server's max_payload)`);
  }
}

/** Room left for the headers of a stream request when checking its payload. */
const streamRequestHeaderBytesMax = 256;

/** Hands an error to an optional sink; a sink that throws is ignored so delivery goes on. */
function report<E>(sink: ((error: E, subject: string) => void) | undefined, error: E, subject: string): void {
  try {
    sink?.(error, subject);
  } catch {
    // The error sink itself failed; delivery still goes on.
  }
}

// The consuming end of a streamed reply over NATS, and the protocol both ends speak.
//
// Protocol (version 1; frames in stream-frame.ts, producer in nats-stream-writer.ts):
//
// 1. The consumer subscribes a fresh inbox I and publishes the request to the subject with
//    reply I and headers `Tandem-Stream: 1`, `Tandem-Stream-Window: W` (chunks the producer may
//    send beyond what the consumer has read) and `Tandem-Stream-Heartbeat-Ms: Hc`. With nobody
//    subscribed, the server answers I with a 503 status: the stream fails with no_responders.
// 2. The responder's `openStream()` subscribes its own control inbox C and sends `open(Hp)` to I.
//    Every producer frame is published with reply C, and every consumer frame to C with reply I,
//    so when either inbox has lost its subscriber (the other end closed, crashed or cancelled)
//    the server answers the sender with a 503 status at once: each end learns the other is gone
//    on its next frame, within one heartbeat interval. The first `open` wins; a later one (two
//    plain subscribers on the subject) is answered with `cancel`, so its writer stops.
// 3. The producer sends `data(seq, chunk)` with seq counting from 1, never more than W beyond
//    the last credit. Beyond that `write()` queues locally, up to streamBufferMax chunks and
//    streamBufferBytesMax bytes; one more fails the stream as a slow consumer (`error` frame to
//    the consumer, onCancel for the writer). Memory stays bounded on both ends: the consumer
//    buffers at most W chunks and fails a producer that overruns the window.
// 4. The consumer sends `credit(read)` once it has read W/2 chunks past its last credit, and at
//    least every Hc ms as its heartbeat. The producer sends `heartbeat(lastSeq)` whenever it has
//    sent nothing for Hp ms. Each end presumes the other dead after heartbeatsMissedMax
//    intervals without a frame: the consumer fails with timeout, the producer cancels its writer.
// 5. `end(lastSeq)` finishes the stream; `error(lastSeq, message)` fails it with closed;
//    `cancel` (consumer → producer) runs the writer's onCancel. Heartbeat, end and error carry the
//    last data seq, so a lost chunk (a reconnect drops messages) is detected as a gap and fails
//    the stream with closed rather than silently skipping a token.
// 6. `idleTimeoutMs` limits the gap between data chunks, as in every Transport: a producer that
//    is alive but silent still times out. While the consumer holds back credit (it is not
//    reading) the producer cannot send, so that time does not count against the producer.
//
// A data frame is the chunk plus a 6-byte header in one NATS message, so a chunk may be at most
// the server's max_payload (1 MiB by default) less 6 bytes; a larger write throws
// TransportError('closed') and fails the stream.
import { headers as natsHeaders, type Msg, type MsgHdrs } from '@nats-io/transport-node';
import type { Clock } from '../../time/clock.js';
import { TransportError, type MessageHeaders, type ReplyStream } from '../transport.js';
import { Deadline } from './deadline.js';
import { toNatsHeaders } from './message-headers.js';
import { toTransportError } from './nats-errors.js';
import { FrameKind, decodeFrame, encodeFrame, type Frame } from './stream-frame.js';

/** Header marking a request as a stream request; its value is the protocol version. */
export const streamHeader = 'Tandem-Stream';
const windowHeader = 'Tandem-Stream-Window';
const heartbeatHeader = 'Tandem-Stream-Heartbeat-Ms';
/** Largest window a consumer may ask for; bounds what one consumer can make a producer send unread. */
const windowMaxAccepted = 65_536;
/** Largest heartbeat interval accepted from the other end: an hour. */
const heartbeatMsMaxAccepted = 3_600_000;

/** A subscription to an inbox, as the stream ends hold it. */
export interface InboxSubscription {
  unsubscribe(): void;
}

/** What a stream end needs from the transport that made it. */
export interface StreamLink {
  readonly clock: Clock;
  /** Publishes one message; throws (a NATS or TransportError) when the connection cannot take it. */
  publish(subject: string, data: Uint8Array, options?: { reply?: string; headers?: MsgHdrs }): void;
  /** Subscribes to an inbox; exceptions thrown by `onMessage` are the stream's own bugs and are reported. */
  subscribeInbox(subject: string, onMessage: (msg: Msg) => void): InboxSubscription;
  /** A fresh, unguessable inbox subject. */
  createInbox(): string;
  /** Largest NATS message the server accepts right now. */
  maxPayloadBytes(): number;
  /** Reports a frame that was dropped as malformed or foreign. */
  reportProtocolError(error: Error, subject: string): void;
}

/** The parameters a consumer sends with its stream request. */
export interface StreamRequestParams {
  windowMax: number;
  heartbeatMs: number;
}

/** The headers of a stream request: the caller's, then the protocol's own, which callers cannot override. */
export function streamRequestHeaders(params: StreamRequestParams, callerHeaders?: MessageHeaders): MsgHdrs {
  const result = natsHeaders();
  toNatsHeaders(callerHeaders, result);
  result.set(streamHeader, '1');
  result.set(windowHeader, String(params.windowMax));
  result.set(heartbeatHeader, String(params.heartbeatMs));
  return result;
}

/** Reads a stream request's parameters, or says what is wrong with them. */
export function parseStreamRequest(headers: MsgHdrs): StreamRequestParams | { malformed: string } {
  if (headers.get(streamHeader) !== '1') return { malformed: `unsupported ${streamHeader} version ${JSON.stringify(headers.get(streamHeader))}` };
  const windowMax = positiveInteger(headers.get(windowHeader), windowMaxAccepted);
  const heartbeatMs = positiveInteger(headers.get(heartbeatHeader), heartbeatMsMaxAccepted);
  if (windowMax === undefined) return { malformed: `${windowHeader} must be an integer from 1 to ${windowMaxAccepted}` };
  if (heartbeatMs === undefined) return { malformed: `${heartbeatHeader} must be an integer from 1 to ${heartbeatMsMaxAccepted}` };
  return { windowMax, heartbeatMs };
}

/** True for the server's "no responders" status message. */
export function isNoRespondersStatus(msg: Msg): boolean {
  try {
    return msg.data.length === 0 && msg.headers?.code === 503;
  } catch {
    return false;
  }
}

/** Options of the consuming end. */
export interface NatsStreamOptions {
  /** Subject of the stream request. */
  subject: string;
  link: StreamLink;
  /** Chunks the producer may send beyond what this end has read. */
  windowMax: number;
  /** Interval of this end's credit heartbeats. */
  heartbeatMs: number;
  /** Producer heartbeat intervals without a frame before the producer counts as dead. */
  heartbeatsMissedMax: number;
  /** Longest gap between chunks before the stream fails with timeout. */
  idleTimeoutMs: number;
  /** Cancels the stream when aborted; the iteration then throws the signal's reason. */
  signal: AbortSignal | undefined;
  /** The caller's headers, sent with the stream request next to the protocol's. */
  headers: MessageHeaders | undefined;
  /** Runs once when the stream settles, so the transport stops tracking it. */
  onSettled: () => void;
}

type StreamOutcome = { kind: 'ended' } | { kind: 'cancelled' } | { kind: 'failed'; error: unknown };

interface Waiter {
  resolve(result: IteratorResult<Uint8Array>): void;
  reject(error: unknown): void;
}

/**
 * The consuming end of one streamed reply: `consumer` is the ReplyStream handed to the caller.
 * Every way the stream can stop (end, cancel, abort, idle or heartbeat timeout, producer error,
 * gap, close) settles it exactly once and tells the producer when it did not end by itself.
 */
export class NatsStream {
  /** The consuming end, handed to whoever called `Transport.stream`. */
  readonly consumer: ReplyStream;
  private readonly options: NatsStreamOptions;
  private readonly inbox: string;
  private subscription: InboxSubscription | undefined;
  /** The bound producer's control subject; undefined until its `open` arrives. */
  private control: string | undefined;
  private producerHeartbeatMs = 0;
  private receivedSeq = 0;
  private consumedSeq = 0;
  private creditedSeq = 0;
  private readonly buffer: Uint8Array[] = [];
  private readonly waiters: Waiter[] = [];
  private outcome: StreamOutcome | undefined;
  private readonly idle: Deadline;
  private readonly liveness: Deadline;
  private readonly creditDue: Deadline;
  private readonly onAbort = (): void => this.fail(this.options.signal?.reason);

  constructor(options: NatsStreamOptions) {
    this.options = options;
    this.inbox = options.link.createInbox();
    const { clock } = options.link;
    this.idle = new Deadline(clock, () => this.onIdle());
    this.liveness = new Deadline(clock, () => {
      const { subject, heartbeatMs, heartbeatsMissedMax } = this.options;
      if (this.control === undefined) {
        this.fail(new TransportError('timeout', `no responder opened the stream on ${subject} within ${heartbeatMs * heartbeatsMissedMax} ms`));
        return;
      }
      const silentMs = this.producerHeartbeatMs * heartbeatsMissedMax;
      this.fail(new TransportError('timeout', `the producer of the stream on ${subject} sent nothing for ${silentMs} ms`));
    });
    this.creditDue = new Deadline(clock, () => this.sendCredit());
    this.consumer = {
      cancel: () => this.stop({ kind: 'cancelled' }),
      [Symbol.asyncIterator]: () => ({
        next: () => this.next(),
        // A for-await that breaks or throws lands here: the producer must hear about it.
        return: () => {
          this.stop({ kind: 'cancelled' });
          return Promise.resolve({ value: undefined, done: true });
        },
      }),
    };
  }

  /** Subscribes the inbox and sends the request; failures go to the iteration. */
  start(data: Uint8Array): void {
    if (this.outcome) return;
    const { signal, link, subject, windowMax, heartbeatMs, idleTimeoutMs, headers } = this.options;
    if (signal?.aborted) {
      this.fail(signal.reason);
      return;
    }
    signal?.addEventListener('abort', this.onAbort, { once: true });
    try {
      this.subscription = link.subscribeInbox(this.inbox, (msg) => this.onMessage(msg));
      link.publish(subject, data, { reply: this.inbox, headers: streamRequestHeaders({ windowMax, heartbeatMs }, headers) });
    } catch (error) {
      this.fail(toTransportError(error, `stream on ${subject}`));
      return;
    }
    this.idle.extend(idleTimeoutMs);
    // A responder opens its stream as soon as the request reaches it. No `open` within the
    // liveness window means the request was lost (a server restart) or its responder died on
    // receipt: fail now rather than after the much longer idle timeout.
    this.liveness.extend(heartbeatMs * this.options.heartbeatsMissedMax);
  }

  /** Fails the stream; the iteration throws `error` and the producer is told to stop. */
  fail(error: unknown): void {
    this.stop({ kind: 'failed', error });
  }

  private onMessage(msg: Msg): void {
    if (this.outcome) return;
    const { subject, link } = this.options;
    if (isNoRespondersStatus(msg)) {
      // Before `open` only the request itself could bounce; after it, only a credit to a control inbox that is gone.
      if (this.control === undefined) this.fail(new TransportError('no_responders', `no responders on ${subject}`));
      else this.fail(new TransportError('closed', `the producer of the stream on ${subject} went away`));
      return;
    }
    const frame = decodeFrame(msg.data);
    const from = msg.reply ?? '';
    if ('malformed' in frame) {
      link.reportProtocolError(new Error(`dropped a malformed frame on the stream inbox for ${subject}: ${frame.malformed}`), this.inbox);
      return;
    }
    if (from === '') {
      link.reportProtocolError(new Error(`dropped a frame without a control subject on the stream inbox for ${subject}`), this.inbox);
      return;
    }
    if (frame.kind === FrameKind.Open) {
      this.onOpen(frame.heartbeatMs, from);
      return;
    }
    if (from !== this.control) {
      // Frames from a responder that lost the race to open are expected; anything else is noise.
      if (this.control === undefined) link.reportProtocolError(new Error(`dropped a frame before the stream on ${subject} was opened`), this.inbox);
      return;
    }
    this.liveness.extend(this.producerHeartbeatMs * this.options.heartbeatsMissedMax);
    this.onFrame(frame);
  }

  private onOpen(heartbeatMs: number, from: string): void {
    if (this.control === undefined) {
      this.control = from;
      this.producerHeartbeatMs = heartbeatMs;
      this.liveness.extend(heartbeatMs * this.options.heartbeatsMissedMax);
      this.creditDue.extend(this.options.heartbeatMs);
    } else if (from !== this.control) {
      // A second responder opened the same stream: only the first one's chunks are read.
      this.publishQuietly(from, encodeFrame({ kind: FrameKind.Cancel, seq: 0 }));
    }
  }

  private onFrame(frame: Frame): void {
    const { subject, windowMax } = this.options;
    switch (frame.kind) {
      case FrameKind.Data: {
        if (frame.seq !== this.receivedSeq + 1) {
          this.fail(this.lostChunks(frame.seq - 1));
          return;
        }
        if (frame.seq - this.creditedSeq > windowMax) {
          this.fail(new TransportError('closed', `the producer of the stream on ${subject} overran its window of ${windowMax} chunks`));
          return;
        }
        this.receivedSeq = frame.seq;
        this.idle.extend(this.options.idleTimeoutMs);
        const waiter = this.waiters.shift();
        if (waiter) {
          this.consumedSeq++;
          waiter.resolve({ value: frame.chunk, done: false });
          this.creditIfDue();
        } else {
          this.buffer.push(frame.chunk);
        }
        return;
      }
      case FrameKind.Heartbeat:
        if (frame.seq !== this.receivedSeq) this.fail(this.lostChunks(frame.seq));
        return;
      case FrameKind.End:
        if (frame.seq !== this.receivedSeq) this.fail(this.lostChunks(frame.seq));
        else this.stop({ kind: 'ended' });
        return;
      case FrameKind.Error:
        this.fail(new TransportError('closed', frame.message));
        return;
      default:
        this.options.link.reportProtocolError(new Error(`dropped a consumer-side frame (kind ${frame.kind}) on the stream inbox for ${subject}`), this.inbox);
    }
  }

  private lostChunks(producerSeq: number): TransportError {
    return new TransportError(
      'closed',
      `the stream on ${this.options.subject} lost chunks: received up to ${this.receivedSeq}, the producer sent up to ${producerSeq}`,
    );
  }

  private next(): Promise<IteratorResult<Uint8Array>> {
    const chunk = this.buffer.shift();
    if (chunk) {
      this.consumedSeq++;
      this.creditIfDue();
      return Promise.resolve({ value: chunk, done: false });
    }
    if (this.outcome?.kind === 'failed') return Promise.reject(this.outcome.error);
    if (this.outcome) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Credits the producer once half the window has been read since the last credit. */
  private creditIfDue(): void {
    if (this.outcome || this.control === undefined) return;
    if (this.consumedSeq - this.creditedSeq >= Math.ceil(this.options.windowMax / 2)) this.sendCredit();
  }

  /** Sends a credit, which is also this end's heartbeat. */
  private sendCredit(): void {
    if (this.outcome || this.control === undefined) return;
    const { link, subject, heartbeatMs } = this.options;
    this.creditedSeq = this.consumedSeq;
    this.creditDue.extend(heartbeatMs);
    try {
      link.publish(this.control, encodeFrame({ kind: FrameKind.Credit, seq: this.consumedSeq }), { reply: this.inbox });
    } catch (error) {
      this.fail(toTransportError(error, `stream on ${subject}`));
    }
  }

  private onIdle(): void {
    const { idleTimeoutMs, windowMax, subject } = this.options;
    if (this.control !== undefined && this.receivedSeq - this.creditedSeq >= windowMax) {
      // The producer is waiting for credit this end has not given: its silence is not its fault.
      this.idle.extend(idleTimeoutMs);
      return;
    }
    this.fail(new TransportError('timeout', `stream on ${subject} sent nothing for ${idleTimeoutMs} ms`));
  }

  private stop(outcome: StreamOutcome): void {
    if (this.outcome) {
      // A consumer that stops reading an ended stream still frees what it left buffered.
      if (outcome.kind === 'cancelled') this.buffer.length = 0;
      return;
    }
    this.outcome = outcome;
    this.idle.cancel();
    this.liveness.cancel();
    this.creditDue.cancel();
    this.options.signal?.removeEventListener('abort', this.onAbort);
    if (outcome.kind !== 'ended' && this.control !== undefined) {
      this.publishQuietly(this.control, encodeFrame({ kind: FrameKind.Cancel, seq: this.consumedSeq }));
    }
    this.subscription?.unsubscribe();
    this.subscription = undefined;
    if (outcome.kind !== 'ended') this.buffer.length = 0;
    for (const waiter of this.waiters.splice(0)) {
      if (outcome.kind === 'failed') waiter.reject(outcome.error);
      else waiter.resolve({ value: undefined, done: true });
    }
    this.options.onSettled();
  }

  /** Best effort: a cancel that cannot be sent leaves the producer to notice through its own deadlines. */
  private publishQuietly(subject: string, frame: Uint8Array): void {
    try {
      this.options.link.publish(subject, frame);
    } catch {
      // The connection is gone; the producer sees a 503 or misses our heartbeats instead.
    }
  }
}

function positiveInteger(text: string, max: number): number | undefined {
  if (!/^[1-9][0-9]{0,9}$/.test(text)) return undefined;
  const value = Number(text);
  return value <= max ? value : undefined;
}

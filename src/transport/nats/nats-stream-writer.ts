import type { Msg } from '@nats-io/transport-node';
import { TransportError, type StreamWriter } from '../transport.js';
import { Deadline } from './deadline.js';
import { isNoRespondersStatus, type InboxSubscription, type StreamLink } from './nats-stream.js';
import { FrameKind, decodeFrame, encodeFrame, frameHeaderBytes, seqHasRoom } from './stream-frame.js';

/** Options of the producing end; the protocol is described in nats-stream.ts. */
export interface NatsStreamWriterOptions {
  /** Subject of the stream request, for messages. */
  subject: string;
  /** The consumer's inbox, where every frame goes. */
  inbox: string;
  link: StreamLink;
  /** Chunks this end may send beyond the consumer's last credit, as the consumer asked. */
  windowMax: number;
  /** The consumer's heartbeat interval, as it announced it. */
  consumerHeartbeatMs: number;
  /** This end's heartbeat interval. */
  heartbeatMs: number;
  /** Consumer heartbeat intervals without a frame before the consumer counts as gone. */
  heartbeatsMissedMax: number;
  /** Chunks queued locally beyond the window before the stream fails as a slow consumer. */
  bufferMax: number;
  /** Bytes queued locally beyond the window before the stream fails as a slow consumer. */
  bufferBytesMax: number;
  /** Runs once when the stream settles, so the transport stops tracking it. */
  onSettled: () => void;
}

/** How the producing end stops: quietly (the consumer knows) or with an error frame for the consumer. */
interface StopReason {
  /** The message of the error frame to send the consumer; none when it cancelled or is unreachable. */
  errorFrame?: string;
}

/**
 * The producing end of one streamed reply; `writer` is what `openStream()` hands the responder.
 * Writes go out at once while the consumer's credit lasts and queue (bounded) after that. A write
 * beyond the bound fails the stream as a slow consumer without throwing, and the writer's
 * onCancel runs on the next turn, so a producer never re-enters its own code from inside
 * `write()`; a chunk over the size limit throws as well, since its caller has a bug to see.
 */
export class NatsStreamWriter {
  /** The writing end, handed to the responder. */
  readonly writer: StreamWriter;
  private readonly options: NatsStreamWriterOptions;
  private readonly control: string;
  private subscription: InboxSubscription | undefined;
  private state: 'open' | 'ending' | 'done' = 'open';
  /** True once the writer ended or the stream stopped; writes then throw. */
  private writerClosed = false;
  /** True when the stream stopped before the writer ended, so onCancel callbacks are owed. */
  private cancelledBeforeEnd = false;
  private cancelFns: (() => void)[] = [];
  /** Last seq handed out to a write, sent or queued. */
  private assignedSeq = 0;
  private sentSeq = 0;
  private creditSeq = 0;
  private readonly queue: Uint8Array[] = [];
  private queuedBytes = 0;
  /** Set while `write()` runs, so a failure it causes calls onCancel on the next turn, not inside the caller's write. */
  private inWrite = false;
  private readonly heartbeatDue: Deadline;
  private readonly consumerLiveness: Deadline;

  constructor(options: NatsStreamWriterOptions) {
    this.options = options;
    this.control = options.link.createInbox();
    const { clock } = options.link;
    this.heartbeatDue = new Deadline(clock, () => this.send(encodeFrame({ kind: FrameKind.Heartbeat, seq: this.sentSeq })));
    this.consumerLiveness = new Deadline(clock, () => {
      const silentMs = this.consumerSilenceMaxMs();
      this.stop({ errorFrame: `the consumer of the stream on ${this.options.subject} sent nothing for ${silentMs} ms` });
    });
    const isClosed = (): boolean => this.writerClosed;
    this.writer = {
      write: (data) => this.write(data),
      end: () => this.end(),
      onCancel: (fn) => this.onCancel(fn),
      get closed() {
        return isClosed();
      },
    };
  }

  /** Subscribes the control inbox and tells the consumer this end is its producer. */
  open(): void {
    const { link, heartbeatMs } = this.options;
    try {
      this.subscription = link.subscribeInbox(this.control, (msg) => this.onControl(msg));
    } catch {
      this.stop({});
      return;
    }
    this.consumerLiveness.extend(this.consumerSilenceMaxMs());
    this.send(encodeFrame({ kind: FrameKind.Open, seq: 0, heartbeatMs }));
  }

  /** Fails the stream from outside (the transport closes): the consumer gets `message`, the writer onCancel. */
  fail(message: string): void {
    this.stop({ errorFrame: message });
  }

  private write(data: Uint8Array): void {
    const { subject, link, windowMax, bufferMax, bufferBytesMax } = this.options;
    if (this.writerClosed) throw new TransportError('closed', `stream on ${subject} is closed`);
    this.inWrite = true;
    try {
      const chunkBytesMax = link.maxPayloadBytes() - frameHeaderBytes;
      if (data.length > chunkBytesMax) {
        const message = `a stream chunk of ${data.length} bytes is over the ${chunkBytesMax}-byte limit (the NATS server's max_payload less the frame header); the stream on ${subject} is closed`;
        this.stop({ errorFrame: message });
        throw new TransportError('closed', message);
      }
      if (!seqHasRoom(this.assignedSeq)) {
        const message = `the stream on ${subject} ran out of sequence numbers; it is closed`;
        this.stop({ errorFrame: message });
        throw new TransportError('closed', message);
      }
      const frame = encodeFrame({ kind: FrameKind.Data, seq: ++this.assignedSeq, chunk: data });
      if (this.queue.length === 0 && this.sentSeq - this.creditSeq < windowMax) {
        this.sendData(frame);
        return;
      }
      if (this.queue.length >= bufferMax || this.queuedBytes + frame.length > bufferBytesMax) {
        // Failing the stream, not dropping the chunk, keeps memory bounded and the token order intact.
        this.stop({
          errorFrame: `slow consumer: stream on ${subject} fell more than ${windowMax} chunks behind and ${this.queue.length} chunks (${this.queuedBytes} bytes) are queued`,
        });
        return;
      }
      this.queue.push(frame);
      this.queuedBytes += frame.length;
    } finally {
      this.inWrite = false;
    }
  }

  private end(): void {
    if (this.writerClosed) return;
    this.writerClosed = true;
    this.state = 'ending';
    this.endIfDrained();
  }

  private onCancel(fn: () => void): void {
    if (this.cancelledBeforeEnd) runSafely(fn);
    else if (!this.writerClosed) this.cancelFns.push(fn);
  }

  private onControl(msg: Msg): void {
    if (this.state === 'done') return;
    const { subject, link } = this.options;
    if (isNoRespondersStatus(msg)) {
      // Our last frame found no subscriber on the consumer's inbox: it cancelled, closed or crashed.
      this.stop({});
      return;
    }
    const frame = decodeFrame(msg.data);
    if ('malformed' in frame) {
      link.reportProtocolError(new Error(`dropped a malformed frame on the control inbox of the stream on ${subject}: ${frame.malformed}`), this.control);
      return;
    }
    switch (frame.kind) {
      case FrameKind.Credit:
        if (frame.seq > this.sentSeq) {
          link.reportProtocolError(new Error(`dropped a credit for ${frame.seq} chunks on the stream on ${subject}, which sent ${this.sentSeq}`), this.control);
          return;
        }
        this.consumerLiveness.extend(this.consumerSilenceMaxMs());
        this.creditSeq = Math.max(this.creditSeq, frame.seq);
        this.flushQueue();
        return;
      case FrameKind.Cancel:
        this.stop({});
        return;
      default:
        link.reportProtocolError(new Error(`dropped a producer-side frame (kind ${frame.kind}) on the control inbox of the stream on ${subject}`), this.control);
    }
  }

  /** Sends queued chunks while the credit lasts; ends the stream once an ending writer has drained. */
  private flushQueue(): void {
    while (this.state !== 'done' && this.queue.length > 0 && this.sentSeq - this.creditSeq < this.options.windowMax) {
      const frame = this.queue.shift()!;
      this.queuedBytes -= frame.length;
      this.sendData(frame);
    }
    this.endIfDrained();
  }

  private endIfDrained(): void {
    if (this.state !== 'ending' || this.queue.length > 0) return;
    this.send(encodeFrame({ kind: FrameKind.End, seq: this.sentSeq }));
    this.settle();
  }

  private sendData(frame: Uint8Array): void {
    this.sentSeq++;
    this.send(frame);
  }

  /** Publishes one frame with the control inbox as reply, so a vanished consumer bounces back as a 503. */
  private send(frame: Uint8Array): void {
    if (this.state === 'done') return;
    try {
      this.options.link.publish(this.options.inbox, frame, { reply: this.control });
    } catch {
      // The connection cannot carry the stream any more; the consumer will time out or see a gap.
      this.stop({});
      return;
    }
    this.heartbeatDue.extend(this.options.heartbeatMs);
  }

  private consumerSilenceMaxMs(): number {
    return this.options.consumerHeartbeatMs * this.options.heartbeatsMissedMax;
  }

  private stop(reason: StopReason): void {
    if (this.state === 'done') return;
    if (reason.errorFrame !== undefined) {
      try {
        // The reply names this producer, as on every frame; nobody listens there any more, so nothing bounces.
        const frame = encodeFrame({ kind: FrameKind.Error, seq: this.sentSeq, message: reason.errorFrame });
        this.options.link.publish(this.options.inbox, frame, { reply: this.control });
      } catch {
        // Nobody can be told; the consumer's own deadlines will fail its side.
      }
    }
    this.settle();
    if (this.writerClosed) return;
    this.writerClosed = true;
    this.cancelledBeforeEnd = true;
    const fns = this.cancelFns;
    this.cancelFns = [];
    if (this.inWrite) this.options.link.clock.setTimeout(() => fns.forEach(runSafely), 0);
    else fns.forEach(runSafely);
  }

  /** Releases the control inbox, the deadlines and the queue; the stream is done either way. */
  private settle(): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.heartbeatDue.cancel();
    this.consumerLiveness.cancel();
    this.subscription?.unsubscribe();
    this.subscription = undefined;
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.options.onSettled();
  }
}

/** Runs a producer's callback; its bug must not stop the stream from settling. */
function runSafely(fn: () => void): void {
  try {
    fn();
  } catch {
    // Dropped on purpose: the stream is already settled and nobody is left to tell.
  }
}

import type { TimerId } from '../../time/clock.js';
import { TransportError, type ReplyStream, type StreamWriter } from '../transport.js';
import type { TimerSet } from './timer-set.js';

/** How a stream left the open state, as its consumer sees it. */
type StreamOutcome = { kind: 'ended' } | { kind: 'cancelled' } | { kind: 'failed'; error: unknown };

interface Waiter {
  resolve(result: IteratorResult<Uint8Array>): void;
  reject(error: unknown): void;
}

/** What a stream needs from the transport that opened it. */
export interface MemoryStreamOptions {
  /** Subject of the stream request, for error messages. */
  subject: string;
  /** The transport's timers, so close() disarms a stream's idle deadline and in-flight chunks. */
  timers: TimerSet;
  /** Latency of each chunk, as for every other hop. */
  deliveryDelayMs: number;
  /** Chunks arrived but unread before the stream fails as a slow consumer; counted on arrival so a burst written in one turn is not mistaken for one. */
  streamBufferMax: number;
  /** Longest gap between chunks before the producer is presumed dead. */
  idleTimeoutMs: number;
  /** Cancels the stream when aborted; the iteration then throws the signal's reason. */
  signal: AbortSignal | undefined;
  /** Runs once when the stream settles, so the transport stops tracking it. */
  onSettled: () => void;
}

/**
 * Both ends of one streamed reply. The consumer sees `consumer` (a ReplyStream); the responder
 * gets a StreamWriter from `claim()`. Chunks travel through the clock in order, and every way a
 * stream can stop (end, cancel, abort, idle timeout, slow consumer, close) settles it exactly once.
 */
export class MemoryStream {
  /** The consuming end, handed to whoever called `Transport.stream`. */
  readonly consumer: ReplyStream;
  private readonly options: MemoryStreamOptions;
  /** Chunks written and scheduled, not yet arrived; `null` marks the end. */
  private readonly inFlight: (Uint8Array | null)[] = [];
  private readonly arrivalTimers = new Set<TimerId>();
  private readonly buffer: Uint8Array[] = [];
  private readonly waiters: Waiter[] = [];
  private cancelFns: (() => void)[] = [];
  private outcome: StreamOutcome | undefined;
  /** True once the writer ended or the stream stopped; writes then throw. */
  private writerClosed = false;
  /** True when the stream stopped before the writer ended, so onCancel callbacks are owed. */
  private cancelledBeforeEnd = false;
  private claimed = false;
  private idleTimer: TimerId | undefined;
  private readonly onAbort = (): void => this.fail(this.options.signal?.reason);

  constructor(options: MemoryStreamOptions) {
    this.options = options;
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

  /** Arms the idle deadline and the abort signal; separate from construction so a stream failed at birth arms nothing. */
  start(): void {
    if (this.outcome) return;
    const { signal } = this.options;
    if (signal?.aborted) {
      this.fail(signal.reason);
      return;
    }
    signal?.addEventListener('abort', this.onAbort, { once: true });
    this.armIdleTimer();
  }

  /** Fails the stream; the consumer's iteration throws `error` and the writer's onCancel runs. */
  fail(error: unknown): void {
    this.stop({ kind: 'failed', error });
  }

  /** The writer for the first responder to open the stream; later responders get a closed one. */
  claim(): StreamWriter {
    if (this.claimed) return closedWriter(this.options.subject);
    this.claimed = true;
    const isClosed = (): boolean => this.writerClosed;
    return {
      write: (data) => this.write(data),
      end: () => this.end(),
      onCancel: (fn) => this.onCancel(fn),
      get closed() {
        return isClosed();
      },
    };
  }

  private write(data: Uint8Array): void {
    if (this.writerClosed) throw new TransportError('closed', `stream on ${this.options.subject} is closed`);
    this.send(new Uint8Array(data));
  }

  private end(): void {
    if (this.writerClosed) return;
    this.writerClosed = true;
    this.send(null);
  }

  private onCancel(fn: () => void): void {
    if (this.cancelledBeforeEnd) runSafely(fn);
    else if (!this.writerClosed) this.cancelFns.push(fn);
  }

  private send(item: Uint8Array | null): void {
    this.inFlight.push(item);
    const id = this.options.timers.schedule(() => {
      this.arrivalTimers.delete(id);
      this.arrive();
    }, this.options.deliveryDelayMs);
    this.arrivalTimers.add(id);
  }

  /** Takes the oldest in-flight item, whichever timer fired, so order never depends on the clock. */
  private arrive(): void {
    if (this.outcome || this.inFlight.length === 0) return;
    const item = this.inFlight.shift();
    if (item === null || item === undefined) {
      this.stop({ kind: 'ended' });
      return;
    }
    this.armIdleTimer();
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter.resolve({ value: item, done: false });
    } else if (this.buffer.length >= this.options.streamBufferMax) {
      // Failing the stream, not dropping the chunk, keeps memory bounded and the token order intact.
      const { subject, streamBufferMax } = this.options;
      this.fail(new TransportError('closed', `slow consumer: stream on ${subject} fell more than ${streamBufferMax} chunks behind`));
    } else {
      this.buffer.push(item);
    }
  }

  private next(): Promise<IteratorResult<Uint8Array>> {
    const chunk = this.buffer.shift();
    if (chunk) return Promise.resolve({ value: chunk, done: false });
    if (this.outcome?.kind === 'failed') return Promise.reject(this.outcome.error);
    if (this.outcome) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private armIdleTimer(): void {
    const { timers, idleTimeoutMs, subject } = this.options;
    timers.cancel(this.idleTimer);
    this.idleTimer = timers.schedule(() => {
      this.idleTimer = undefined;
      this.fail(new TransportError('timeout', `stream on ${subject} sent nothing for ${idleTimeoutMs} ms`));
    }, idleTimeoutMs);
  }

  private stop(outcome: StreamOutcome): void {
    if (this.outcome) {
      // A consumer that stops reading an ended stream still frees what it left buffered.
      if (outcome.kind === 'cancelled') this.buffer.length = 0;
      return;
    }
    this.outcome = outcome;
    const { timers, signal } = this.options;
    timers.cancel(this.idleTimer);
    this.idleTimer = undefined;
    signal?.removeEventListener('abort', this.onAbort);
    for (const id of this.arrivalTimers) timers.cancel(id);
    this.arrivalTimers.clear();
    this.inFlight.length = 0;
    if (outcome.kind !== 'ended') this.buffer.length = 0;
    for (const waiter of this.waiters.splice(0)) {
      if (outcome.kind === 'failed') waiter.reject(outcome.error);
      else waiter.resolve({ value: undefined, done: true });
    }
    if (!this.writerClosed) {
      this.writerClosed = true;
      this.cancelledBeforeEnd = true;
      for (const fn of this.cancelFns) runSafely(fn);
    }
    this.cancelFns = [];
    this.options.onSettled();
  }
}

/** A writer for a responder that lost the race to open a stream: it can only be told to stop. */
function closedWriter(subject: string): StreamWriter {
  return {
    write: () => {
      throw new TransportError('closed', `stream on ${subject} was opened by another responder`);
    },
    end: () => undefined,
    onCancel: (fn) => runSafely(fn),
    closed: true,
  };
}

/** Runs a producer's callback; its bug must not stop the stream from settling. */
function runSafely(fn: () => void): void {
  try {
    fn();
  } catch {
    // Dropped on purpose: the stream is already settled and nobody is left to tell.
  }
}

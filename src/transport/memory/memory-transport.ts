import { defaultLimits } from '../../limits.js';
import type { Clock } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import {
  assertExactSubject,
  closedError,
  TransportError,
  type InboundMessage,
  type MessageHandler,
  type MessageHeaders,
  type PublishOptions,
  type ReplyStream,
  type RequestOptions,
  type StreamOptions,
  type SubscribeOptions,
  type Subscription,
  type Transport,
} from '../transport.js';
import { inboundMessage, type ReplyPath } from './inbound-message.js';
import { MemoryStream } from './memory-stream.js';
import { SubjectTable, type Route } from './subject-table.js';
import { TimerSet } from './timer-set.js';

/** Options of a MemoryTransport. */
export interface MemoryTransportOptions {
  /** Schedules every delivery and deadline, so tests and the simulator decide when things happen. */
  clock: Clock;
  /** Chunks a stream may hold for a slow consumer before it fails; bounds memory per stream. */
  streamBufferMax?: number;
  /** Latency of every hop (message, reply, chunk), to give simulated runs a network. */
  deliveryDelayMs?: number;
  /** Sees handler exceptions, which are otherwise dropped so one bad handler cannot stop delivery to others. */
  onHandlerError?: (error: unknown, subject: string) => void;
}

/** What a MemoryTransport holds right now; all zero once everything it started has finished. */
export interface MemoryTransportStats {
  subscriptionCount: number;
  pendingRequestCount: number;
  openStreamCount: number;
  /** Deliveries and deadlines armed on the clock. */
  timerCount: number;
}

interface PendingRequest {
  reply(data: Uint8Array): void;
  fail(error: unknown): void;
}

/**
 * The in-process transport for single-process clusters, tests and the simulator. Every hop goes
 * through the injected clock, so a VirtualClock replays a run exactly; payloads are copied on
 * each hop so no two actors ever share a buffer.
 *
 * Semantics other code relies on: an aborted request rejects with the signal's `reason`, and an
 * aborted stream's iteration throws it (`cancel()` instead ends the iteration quietly). After
 * `close()`, `publish` and `subscribe` throw, `request` rejects and a new stream's iteration
 * throws, all with TransportError('closed').
 */
export class MemoryTransport implements Transport {
  private readonly timers: TimerSet;
  private readonly streamBufferMax: number;
  private readonly deliveryDelayMs: number;
  private readonly onHandlerError: ((error: unknown, subject: string) => void) | undefined;
  private readonly routes = new SubjectTable();
  private readonly pending = new Set<PendingRequest>();
  private readonly streams = new Set<MemoryStream>();
  private closed = false;

  constructor(options: MemoryTransportOptions) {
    this.timers = new TimerSet(options.clock);
    this.streamBufferMax = options.streamBufferMax ?? defaultLimits.streamBufferMax;
    this.deliveryDelayMs = options.deliveryDelayMs ?? 0;
    this.onHandlerError = options.onHandlerError;
    assert(this.streamBufferMax >= 1, 'streamBufferMax is at least 1');
    assert(this.deliveryDelayMs >= 0, 'deliveryDelayMs is not negative');
  }

  /** Counts for leak checks. */
  stats(): MemoryTransportStats {
    return {
      subscriptionCount: this.routes.size,
      pendingRequestCount: this.pending.size,
      openStreamCount: this.streams.size,
      timerCount: this.timers.size,
    };
  }

  request(subject: string, data: Uint8Array, options: RequestOptions): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(closedError());
    assertExactSubject(subject);
    const { signal, timeoutMs } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const targets = this.routes.pick(subject);
    if (targets.length === 0) return Promise.reject(noResponders(subject));
    return new Promise<Uint8Array>((resolve, reject) => {
      const settle = (finish: () => void): void => {
        if (!this.pending.delete(entry)) return;
        this.timers.cancel(timer);
        signal?.removeEventListener('abort', onAbort);
        finish();
      };
      const entry: PendingRequest = {
        reply: (reply) => settle(() => resolve(reply)),
        fail: (error) => settle(() => reject(error)),
      };
      const onAbort = (): void => entry.fail(signal?.reason);
      const timer = this.timers.schedule(() => {
        entry.fail(new TransportError('timeout', `request on ${subject} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.add(entry);
      signal?.addEventListener('abort', onAbort, { once: true });
      let answered = false;
      const respond = (reply: Uint8Array): void => {
        // A reply after the request settled (timeout, abort, close) has nobody to go to.
        if (answered || !this.pending.has(entry)) return;
        answered = true;
        const copy = new Uint8Array(reply);
        this.timers.schedule(() => entry.reply(copy), this.deliveryDelayMs);
      };
      this.deliver(subject, targets, data, { kind: 'request', respond }, options.headers);
    });
  }

  publish(subject: string, data: Uint8Array, options?: PublishOptions): void {
    if (this.closed) throw closedError();
    assertExactSubject(subject);
    this.deliver(subject, this.routes.pick(subject), data, { kind: 'none' }, options?.headers);
  }

  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): Subscription {
    if (this.closed) throw closedError();
    assertExactSubject(subject);
    const route: Route = { subject, queue: options?.queue, handler, active: true };
    this.routes.add(route);
    return {
      subject,
      unsubscribe: () => {
        if (!route.active) return;
        route.active = false;
        this.routes.remove(route);
      },
    };
  }

  stream(subject: string, data: Uint8Array, options: StreamOptions): ReplyStream {
    const stream = new MemoryStream({
      subject,
      timers: this.timers,
      deliveryDelayMs: this.deliveryDelayMs,
      streamBufferMax: this.streamBufferMax,
      idleTimeoutMs: options.idleTimeoutMs,
      signal: options.signal,
      onSettled: () => this.streams.delete(stream),
    });
    // Failures are reported through the iteration, where a stream's consumer already handles them.
    if (this.closed) {
      stream.fail(closedError());
      return stream.consumer;
    }
    assertExactSubject(subject);
    const targets = this.routes.pick(subject);
    if (targets.length === 0) {
      stream.fail(noResponders(subject));
      return stream.consumer;
    }
    this.streams.add(stream);
    stream.start();
    this.deliver(subject, targets, data, { kind: 'stream', stream }, options.headers);
    return stream.consumer;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.routes.clear();
    const error = closedError();
    for (const entry of [...this.pending]) entry.fail(error);
    for (const stream of [...this.streams]) stream.fail(error);
    this.timers.cancelAll();
  }

  /** Hands each target its own copy after one hop; a throwing handler never stops the others. */
  private deliver(
    subject: string,
    targets: readonly Route[],
    data: Uint8Array,
    path: ReplyPath,
    headers: MessageHeaders | undefined,
  ): void {
    if (targets.length === 0) return;
    const messages = targets.map((route) => ({
      route,
      message: inboundMessage(subject, new Uint8Array(data), path, headers),
    }));
    this.timers.schedule(() => {
      for (const { route, message } of messages) {
        if (route.active) this.runHandler(route, message);
      }
    }, this.deliveryDelayMs);
  }

  private runHandler(route: Route, message: InboundMessage): void {
    try {
      const result: unknown = route.handler(message);
      // An async handler's rejection is as much a handler bug as a throw; keep it off the process.
      if (result instanceof Promise) result.catch((error: unknown) => this.reportHandlerError(error, route.subject));
    } catch (error) {
      this.reportHandlerError(error, route.subject);
    }
  }

  private reportHandlerError(error: unknown, subject: string): void {
    try {
      this.onHandlerError?.(error, subject);
    } catch {
      // The error sink itself failed; delivery still goes on.
    }
  }
}

function noResponders(subject: string): TransportError {
  return new TransportError('no_responders', `no responders on ${subject}`);
}

import type { Clock, ReplyStream, Transport } from '../src/index.js';
import { TransportError, type MemoryTransport } from '../src/internal.js';
import type { MessageHandler, RequestOptions, StreamOptions, SubscribeOptions, Subscription } from '../src/transport/transport.js';
import type { FaultyNetwork, MessageFate, TrafficKind } from './faulty-network.js';

/** What the simulator learns about every message an actor sends or receives. */
export type TrafficObserver = (traffic: {
  from: string;
  to: string | undefined;
  subject: string;
  kind: TrafficKind;
  data: Uint8Array;
  fate: MessageFate;
}) => void;

/** Resolves after `ms` on `clock`; rejects with the first aborted signal's reason. */
export function wait(clock: Clock, ms: number, ...signals: Array<AbortSignal | undefined>): Promise<void> {
  const live = signals.filter((s): s is AbortSignal => s !== undefined);
  const aborted = live.find((s) => s.aborted);
  if (aborted) return Promise.reject(aborted.reason);
  return new Promise((resolve, reject) => {
    const onAbort = (event: Event): void => {
      clock.clearTimeout(timer);
      for (const signal of live) signal.removeEventListener('abort', onAbort);
      reject((event.target as AbortSignal).reason);
    };
    const timer = clock.setTimeout(() => {
      for (const signal of live) signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    for (const signal of live) signal.addEventListener('abort', onAbort, { once: true });
  });
}

function timeoutError(subject: string, what: string): TransportError {
  return new TransportError('timeout', `${what} on ${subject}: no answer before the deadline (lost in the simulated network)`);
}

/** Marks the wait of a stream its own consumer cancelled, which ends quietly. */
const cancelledByConsumer = Symbol('cancelled by consumer');

/**
 * One actor's view of the shared memory transport, with the simulated network in between.
 * Every actor incarnation gets its own, so the network knows who sends each message and can cut
 * one link (partition) or lose everything of a crashed actor. Faults of requests and their
 * replies are both applied on the requesting side, which knows both ends: a lost request or a
 * lost reply turns into the timeout the requester would see over NATS; a request to an actor
 * nobody listens for any more gets the memory transport's own 'no_responders'.
 */
export class FaultyTransport implements Transport {
  private dead = false;
  private readonly subscriptions = new Set<Subscription>();

  constructor(
    private readonly inner: MemoryTransport,
    /** The actor this view belongs to: 'client', 'prefill-0', 'decode-1'... */
    readonly actor: string,
    private readonly network: FaultyNetwork,
    private readonly clock: Clock,
    private readonly observe: TrafficObserver,
  ) {}

  /** Subscriptions this actor holds now. */
  get subscriptionCount(): number {
    return this.subscriptions.size;
  }

  /** The actor crashed: its subscriptions vanish and nothing it sends from now on leaves it. */
  kill(): void {
    this.dead = true;
    for (const subscription of [...this.subscriptions]) subscription.unsubscribe();
  }

  request(subject: string, data: Uint8Array, options: RequestOptions): Promise<Uint8Array> {
    if (this.dead) return Promise.reject(new TransportError('closed', `${this.actor} has crashed`));
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const to = this.network.ownerOf(subject);
    const fate = this.network.decide(this.actor, to, 'message');
    this.observe({ from: this.actor, to, subject, kind: 'message', data, fate });
    const deadlineAtMs = this.clock.now() + options.timeoutMs;
    if (fate.drop) return this.lost(subject, deadlineAtMs, signal);
    return this.deliverRequest(subject, data, to, fate, deadlineAtMs, signal);
  }

  private async deliverRequest(
    subject: string,
    data: Uint8Array,
    to: string | undefined,
    fate: MessageFate,
    deadlineAtMs: number,
    signal: AbortSignal | undefined,
  ): Promise<Uint8Array> {
    if (fate.delayMs > 0) await this.hold(subject, fate.delayMs, deadlineAtMs, signal);
    const replied = this.inner.request(subject, data, { timeoutMs: deadlineAtMs - this.clock.now(), signal });
    if (fate.duplicate) {
      // The copy arrives right behind the original; its reply has nobody waiting for it.
      void this.inner.request(subject, data, { timeoutMs: deadlineAtMs - this.clock.now() }).catch(() => {});
    }
    const reply = await replied;
    const back = this.network.decide(to ?? subject, this.actor, 'reply');
    this.observe({ from: to ?? subject, to: this.actor, subject, kind: 'reply', data: reply, fate: back });
    if (back.drop) return this.lost(subject, deadlineAtMs, signal);
    if (back.delayMs > 0) await this.hold(subject, back.delayMs, deadlineAtMs, signal);
    return reply;
  }

  /** Waits `ms` in transit; a message still in transit at its deadline times out. */
  private async hold(subject: string, ms: number, deadlineAtMs: number, signal: AbortSignal | undefined): Promise<void> {
    const nowMs = this.clock.now();
    if (nowMs + ms < deadlineAtMs) return wait(this.clock, ms, signal);
    await wait(this.clock, Math.max(0, deadlineAtMs - nowMs), signal);
    throw timeoutError(subject, 'request');
  }

  private async lost(subject: string, deadlineAtMs: number, signal: AbortSignal | undefined): Promise<never> {
    await wait(this.clock, Math.max(0, deadlineAtMs - this.clock.now()), signal);
    throw timeoutError(subject, 'request');
  }

  publish(subject: string, data: Uint8Array): void {
    if (this.dead) return;
    const to = this.network.ownerOf(subject);
    const fate = this.network.decide(this.actor, to, 'message');
    this.observe({ from: this.actor, to, subject, kind: 'message', data, fate });
    if (fate.drop) return;
    const copy = new Uint8Array(data);
    const send = (): void => {
      try {
        this.inner.publish(subject, copy);
      } catch {
        // The transport closed while the message was in transit.
      }
    };
    if (fate.delayMs > 0) this.clock.setTimeout(send, fate.delayMs);
    else this.inner.publish(subject, copy);
    if (fate.duplicate) this.clock.setTimeout(send, fate.delayMs);
  }

  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): Subscription {
    if (this.dead) throw new TransportError('closed', `${this.actor} has crashed`);
    this.network.claim(subject, this.actor);
    const inner = this.inner.subscribe(subject, handler, options);
    const subscription: Subscription = {
      subject,
      unsubscribe: () => {
        this.subscriptions.delete(subscription);
        inner.unsubscribe();
      },
    };
    this.subscriptions.add(subscription);
    return subscription;
  }

  stream(subject: string, data: Uint8Array, options: StreamOptions): ReplyStream {
    const to = this.network.ownerOf(subject);
    const fate = this.dead ? undefined : this.network.decide(this.actor, to, 'open');
    if (fate) this.observe({ from: this.actor, to, subject, kind: 'open', data, fate });
    const stop = new AbortController();
    let inner: ReplyStream | undefined;
    const chunks = this.chunks(subject, data, options, to, fate, stop.signal, (opened) => (inner = opened));
    return {
      [Symbol.asyncIterator]: () => chunks,
      cancel: () => {
        stop.abort(cancelledByConsumer);
        inner?.cancel();
      },
    };
  }

  /** The consuming end of a stream, with the network between it and the producer. */
  private async *chunks(
    subject: string,
    data: Uint8Array,
    options: StreamOptions,
    to: string | undefined,
    fate: MessageFate | undefined,
    stop: AbortSignal,
    opened: (inner: ReplyStream) => void,
  ): AsyncGenerator<Uint8Array, void, undefined> {
    const { signal, idleTimeoutMs } = options;
    const producer = to ?? subject;
    try {
      if (!fate) throw new TransportError('closed', `${this.actor} has crashed`);
      if (fate.drop) {
        await wait(this.clock, idleTimeoutMs, signal, stop);
        throw new TransportError('timeout', `stream on ${subject} sent nothing for ${idleTimeoutMs} ms (lost in the simulated network)`);
      }
      if (fate.delayMs > 0) await wait(this.clock, fate.delayMs, signal, stop);
      const inner = this.inner.stream(subject, data, options);
      opened(inner);
      if (fate.duplicate) this.drainCopy(subject, data, idleTimeoutMs);
      let held: Uint8Array | undefined;
      try {
        for await (const chunk of inner) {
          const chunkFate = this.network.decide(producer, this.actor, 'chunk');
          this.observe({ from: producer, to: this.actor, subject, kind: 'chunk', data: chunk, fate: chunkFate });
          if (chunkFate.drop) continue;
          if (chunkFate.reorder && held === undefined) {
            held = chunk;
            continue;
          }
          if (chunkFate.delayMs > 0) await wait(this.clock, chunkFate.delayMs, signal, stop);
          yield chunk;
          if (held !== undefined) {
            const late = held;
            held = undefined;
            yield late;
          }
          if (chunkFate.duplicate) yield chunk;
        }
      } finally {
        inner.cancel();
      }
      if (held !== undefined) yield held;
      // The producer ended the stream; if it is down or cut off now, that end never reaches the
      // consumer, who waits out its idle timeout as it would over NATS.
      if (!stop.aborted && (this.network.isDown(producer) || this.network.isCut(producer, this.actor))) {
        await wait(this.clock, idleTimeoutMs, signal, stop);
        throw new TransportError('timeout', `stream on ${subject} sent nothing for ${idleTimeoutMs} ms`);
      }
    } catch (error) {
      if (error === cancelledByConsumer) return;
      throw error;
    }
  }

  /** A duplicated stream request: the producer serves it too; nobody reads what it sends. */
  private drainCopy(subject: string, data: Uint8Array, idleTimeoutMs: number): void {
    const copy = this.inner.stream(subject, data, { idleTimeoutMs });
    void (async () => {
      try {
        for await (const _ of copy) {
          // discarded
        }
      } catch {
        // The copy's failure concerns nobody.
      }
    })();
  }

  async close(): Promise<void> {
    this.kill();
  }
}

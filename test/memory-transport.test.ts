import { describe, expect, it } from 'vitest';
import { realClock } from '../src/time/real-clock.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { MemoryTransport } from '../src/transport/memory/memory-transport.js';
import { TransportError, type ReplyStream, type StreamWriter } from '../src/transport/transport.js';
import { AssertionError } from '../src/util/assert.js';
import { transportConformance } from './transport-conformance.js';

transportConformance('MemoryTransport', async () => {
  // A small buffer keeps the slow-consumer test quick; the default is limits.streamBufferMax.
  const transport = new MemoryTransport({ clock: realClock, streamBufferMax: 64 });
  return { transport, peer: transport, cleanup: () => transport.close() };
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (value: string): Uint8Array => encoder.encode(value);
const text = (value: Uint8Array): string => decoder.decode(value);
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Moves a virtual clock forward, letting promise callbacks run between timers as they would in real time. */
async function advance(clock: VirtualClock, ms: number): Promise<void> {
  const targetMs = clock.now() + ms;
  for (;;) {
    await nextTurn();
    const nextAtMs = clock.nextAtMs();
    if (nextAtMs === undefined || nextAtMs > targetMs) break;
    clock.step();
  }
  clock.advance(targetMs - clock.now());
  await nextTurn();
}

async function collect(stream: ReplyStream): Promise<string[]> {
  const chunks: string[] = [];
  for await (const chunk of stream) chunks.push(text(chunk));
  return chunks;
}

async function firstThenBreak(stream: ReplyStream): Promise<string> {
  for await (const chunk of stream) return text(chunk);
  throw new Error('stream ended before its first chunk');
}

describe('MemoryTransport', () => {
  it('holds no subscription, request, stream or timer once a mix of operations has finished', async () => {
    const clock = new VirtualClock();
    const transport = new MemoryTransport({ clock, streamBufferMax: 8, deliveryDelayMs: 1 });
    const subscriptions = [
      transport.subscribe('leak.echo', (message) => message.respond(message.data)),
      transport.subscribe('leak.silent', () => undefined),
      transport.subscribe('leak.work', () => undefined, { queue: 'workers' }),
      transport.subscribe('leak.finite', (message) => {
        const writer = message.openStream();
        for (let index = 0; index < 3; index++) writer.write(bytes(String(index)));
        writer.end();
      }),
      transport.subscribe('leak.endless', (message) => {
        const writer = message.openStream();
        if (!writer.closed) writer.write(bytes('x'));
      }),
      transport.subscribe('leak.flood', (message) => {
        const writer = message.openStream();
        for (let index = 0; index < 20 && !writer.closed; index++) writer.write(bytes('f'));
      }),
    ];
    const controller = new AbortController();
    const cancelled = transport.stream('leak.endless', bytes('go'), { idleTimeoutMs: 100 });
    const unread = transport.stream('leak.flood', bytes('go'), { idleTimeoutMs: 100 });
    const outcomes = Promise.allSettled([
      transport.request('leak.echo', bytes('a'), { timeoutMs: 100 }),
      transport.request('leak.silent', bytes('b'), { timeoutMs: 100 }),
      transport.request('leak.silent', bytes('c'), { timeoutMs: 100, signal: controller.signal }),
      transport.request('leak.nobody', bytes('d'), { timeoutMs: 100 }),
      collect(transport.stream('leak.finite', bytes('go'), { idleTimeoutMs: 100 })),
      firstThenBreak(transport.stream('leak.endless', bytes('go'), { idleTimeoutMs: 100 })),
      collect(transport.stream('leak.endless', bytes('go'), { idleTimeoutMs: 50 })),
      collect(cancelled),
    ]);
    cancelled.cancel();
    transport.publish('leak.work', bytes('p'));
    controller.abort(new Error('gave up'));
    await advance(clock, 1000);
    const results = await outcomes;
    expect(results.map((result) => result.status)).toEqual([
      'fulfilled',
      'rejected',
      'rejected',
      'rejected',
      'fulfilled',
      'fulfilled',
      'rejected',
      'fulfilled',
    ]);
    await expect(collect(unread)).rejects.toThrow(/slow consumer/);
    expect(transport.stats()).toEqual({ subscriptionCount: 6, pendingRequestCount: 0, openStreamCount: 0, timerCount: 0 });
    for (const subscription of subscriptions) subscription.unsubscribe();
    expect(transport.stats()).toEqual({ subscriptionCount: 0, pendingRequestCount: 0, openStreamCount: 0, timerCount: 0 });
    await transport.close();
  });

  it('holds nothing after close() even with requests, streams and deliveries in flight', async () => {
    const clock = new VirtualClock();
    const transport = new MemoryTransport({ clock, deliveryDelayMs: 5 });
    transport.subscribe('inflight.silent', () => undefined);
    transport.subscribe('inflight.stream', (message) => message.openStream().write(bytes('x')));
    const request = transport.request('inflight.silent', bytes('x'), { timeoutMs: 100 });
    const stream = collect(transport.stream('inflight.stream', bytes('x'), { idleTimeoutMs: 100 }));
    transport.publish('inflight.silent', bytes('x'));
    expect(transport.stats()).toEqual({ subscriptionCount: 2, pendingRequestCount: 1, openStreamCount: 1, timerCount: 5 });
    await transport.close();
    expect(transport.stats()).toEqual({ subscriptionCount: 0, pendingRequestCount: 0, openStreamCount: 0, timerCount: 0 });
    expect(clock.pendingCount).toBe(0);
    await expect(request).rejects.toBeInstanceOf(TransportError);
    await expect(stream).rejects.toBeInstanceOf(TransportError);
  });

  it('delivers in subscription order, round-robins queue groups, and replays the same order', () => {
    const runOnce = (): string[] => {
      const clock = new VirtualClock();
      const transport = new MemoryTransport({ clock, deliveryDelayMs: 2 });
      const log: string[] = [];
      const record = (who: string) => (message: { data: Uint8Array }) => log.push(`${who}:${text(message.data)}`);
      transport.subscribe('order.a', record('plain1'));
      transport.subscribe('order.a', record('q1'), { queue: 'group' });
      transport.subscribe('order.a', record('q2'), { queue: 'group' });
      transport.subscribe('order.a', record('plain2'));
      transport.subscribe('order.b', record('b'));
      transport.publish('order.a', bytes('1'));
      transport.publish('order.b', bytes('2'));
      transport.publish('order.a', bytes('3'));
      transport.publish('order.a', bytes('4'));
      clock.advance(1);
      expect(log).toEqual([]);
      clock.advance(1);
      return log;
    };
    const first = runOnce();
    expect(first).toEqual(['plain1:1', 'plain2:1', 'q1:1', 'b:2', 'plain1:3', 'plain2:3', 'q2:3', 'plain1:4', 'plain2:4', 'q1:4']);
    expect(runOnce()).toEqual(first);
  });

  it('spends deliveryDelayMs of clock time on every hop', async () => {
    const clock = new VirtualClock();
    const transport = new MemoryTransport({ clock, deliveryDelayMs: 5 });
    transport.subscribe('delay.echo', (message) => message.respond(message.data));
    let repliedAtMs: number | undefined;
    const reply = transport.request('delay.echo', bytes('x'), { timeoutMs: 100 }).then(() => {
      repliedAtMs = clock.now();
    });
    await advance(clock, 9);
    expect(repliedAtMs).toBeUndefined();
    await advance(clock, 1);
    await reply;
    expect(repliedAtMs).toBe(10);
    await transport.close();
  });

  it('copies payloads so senders, receivers and responders never share bytes', async () => {
    const transport = new MemoryTransport({ clock: realClock });
    const seen: string[] = [];
    transport.subscribe('copy.pub', (message) => {
      seen.push(text(message.data));
      message.data.fill(0x21);
    });
    transport.subscribe('copy.pub', (message) => seen.push(text(message.data)));
    const published = bytes('abc');
    transport.publish('copy.pub', published);
    published.fill(0x7a);
    await nextTurn();
    expect(seen).toEqual(['abc', 'abc']);

    transport.subscribe('copy.req', (message) => {
      const reply = bytes(`re:${text(message.data)}`);
      message.respond(reply);
      reply.fill(0x7a);
    });
    expect(text(await transport.request('copy.req', bytes('q'), { timeoutMs: 1000 }))).toBe('re:q');

    transport.subscribe('copy.stream', (message) => {
      const writer = message.openStream();
      const chunk = bytes('chunk');
      writer.write(chunk);
      chunk.fill(0x7a);
      writer.end();
    });
    expect(await collect(transport.stream('copy.stream', bytes('go'), { idleTimeoutMs: 1000 }))).toEqual(['chunk']);
    await transport.close();
  });

  it('gives a responder that loses the race to open a stream a closed writer that is told to stop', async () => {
    const transport = new MemoryTransport({ clock: realClock });
    let loser: StreamWriter | undefined;
    let loserCancelled = false;
    transport.subscribe('race.stream', (message) => {
      const writer = message.openStream();
      expect(message.openStream()).toBe(writer);
      writer.write(bytes('winner'));
      writer.end();
    });
    transport.subscribe('race.stream', (message) => {
      loser = message.openStream();
      loser.onCancel(() => {
        loserCancelled = true;
      });
    });
    expect(await collect(transport.stream('race.stream', bytes('go'), { idleTimeoutMs: 1000 }))).toEqual(['winner']);
    expect(loser?.closed).toBe(true);
    expect(loserCancelled).toBe(true);
    expect(() => loser?.write(bytes('late'))).toThrow(TransportError);
    await transport.close();
  });

  it('reports handler errors, thrown or rejected, to onHandlerError and keeps going', async () => {
    const errors: unknown[] = [];
    const transport = new MemoryTransport({ clock: realClock, onHandlerError: (error) => errors.push(error) });
    transport.subscribe('bug.sync', () => {
      throw new Error('sync bug');
    });
    transport.subscribe('bug.async', async () => {
      throw new Error('async bug');
    });
    transport.subscribe('bug.stream', (message) => message.openStream());
    transport.publish('bug.sync', bytes('x'));
    transport.publish('bug.async', bytes('x'));
    await expect(transport.request('bug.stream', bytes('x'), { timeoutMs: 30 })).rejects.toMatchObject({ kind: 'timeout' });
    expect(errors.map((error) => (error as Error).message)).toEqual([
      'sync bug',
      'async bug',
      'openStream() on a message to bug.stream that is not a stream request',
    ]);
    expect(errors[2]).toBeInstanceOf(AssertionError);
    await transport.close();
  });

  it('refuses wildcard and malformed subjects as programmer errors', async () => {
    const transport = new MemoryTransport({ clock: realClock });
    expect(() => transport.subscribe('tandem.*', () => undefined)).toThrow(AssertionError);
    expect(() => transport.subscribe('tandem.>', () => undefined)).toThrow(AssertionError);
    expect(() => transport.publish('tandem..x', bytes('x'))).toThrow(AssertionError);
    expect(() => transport.publish('', bytes('x'))).toThrow(AssertionError);
    expect(() => transport.publish('has space', bytes('x'))).toThrow(AssertionError);
    await transport.close();
  });
});

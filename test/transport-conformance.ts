// The behaviour every Transport must show, whatever library sits underneath. Each implementation's
// test file calls `transportConformance` with a factory; timings are small real durations so the
// suite runs against a live NATS server as well as in memory.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  TransportError,
  type InboundMessage,
  type ReplyStream,
  type StreamWriter,
  type Transport,
  type TransportErrorKind,
} from '../src/transport/transport.js';

/** What a factory hands the suite for one test. */
export interface TransportHarness {
  /** The connection that requests, publishes and opens streams. */
  transport: Transport;
  /** The connection that subscribes and responds; the same object for in-process transports. */
  peer?: Transport;
  /** Waits until subscriptions made so far are visible to the other connection (NATS: flush both). */
  settle?(): Promise<void>;
  /** Releases everything the factory made; it runs even after a test closed `transport` itself. */
  cleanup(): Promise<void>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (value: string): Uint8Array => encoder.encode(value);
const text = (value: Uint8Array): string => decoder.decode(value);
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Comfortably under nats-server's default max_payload (1 MiB), so a stock server passes too. */
const largePayloadBytes = 1000 * 1024;

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
}

function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((done) => {
    resolve = done;
  });
  return { promise, resolve };
}

/** Fails with a readable message instead of hanging until vitest's test timeout. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Retries `check` until it stops throwing, for effects that arrive asynchronously. */
async function eventually(check: () => void, ms = 2000): Promise<void> {
  const deadline = performance.now() + ms;
  for (;;) {
    try {
      check();
      return;
    } catch (error) {
      if (performance.now() > deadline) throw error;
      await pause(5);
    }
  }
}

function expectKind(error: unknown, kind: TransportErrorKind): TransportError {
  expect(error).toBeInstanceOf(TransportError);
  const transportError = error as TransportError;
  expect(transportError.kind).toBe(kind);
  expect(transportError.code).toBe(kind);
  return transportError;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection, got a value');
    },
    (error: unknown) => error,
  );
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

/** Reads a stream to its end; chunks received before a failure land in `into`. */
async function collect(stream: ReplyStream, into: string[] = []): Promise<string[]> {
  for await (const chunk of stream) into.push(text(chunk));
  return into;
}

/** The error a stream's iteration ends with; a stream may also refuse at once by throwing. */
async function streamFailure(open: () => ReplyStream, into: string[] = []): Promise<unknown> {
  try {
    await collect(open(), into);
  } catch (error) {
    return error;
  }
  throw new Error('expected the stream to fail, it ended normally');
}

/** Tracks a writer's onCancel calls so tests can wait for the first and count them all. */
function cancelProbe(): { onCancel: () => void; cancelled: Promise<void>; count(): number } {
  const done = deferred();
  let count = 0;
  return {
    onCancel: () => {
      count++;
      done.resolve();
    },
    cancelled: done.promise,
    count: () => count,
  };
}

/** Defines the conformance tests for one Transport implementation. */
export function transportConformance(name: string, make: () => Promise<TransportHarness>): void {
  describe(`${name} transport conformance`, () => {
    let harness: TransportHarness;
    let transport: Transport;
    let peer: Transport;

    beforeEach(async () => {
      harness = await make();
      transport = harness.transport;
      peer = harness.peer ?? harness.transport;
    });

    afterEach(async () => {
      await harness.cleanup();
    });

    const settle = async (): Promise<void> => {
      await harness.settle?.();
    };

    /** Subscribes a stream responder on `peer` and hands it the writer. */
    const serveStream = (subject: string, produce: (writer: StreamWriter, message: InboundMessage) => void): void => {
      peer.subscribe(subject, (message) => produce(message.openStream(), message));
    };

    describe('request', () => {
      it('resolves with the responder reply and tells the responder a reply is expected', async () => {
        const flags: boolean[] = [];
        peer.subscribe('conf.echo', (message) => {
          flags.push(message.expectsReply, message.isStream);
          message.respond(bytes(`echo:${text(message.data)}`));
        });
        await settle();
        const reply = await transport.request('conf.echo', bytes('hi'), { timeoutMs: 1000 });
        expect(text(reply)).toBe('echo:hi');
        expect(flags).toEqual([true, false]);
      });

      it('resolves with the first reply when a responder answers twice', async () => {
        peer.subscribe('conf.twice', (message) => {
          message.respond(bytes('first'));
          message.respond(bytes('second'));
        });
        await settle();
        expect(text(await transport.request('conf.twice', bytes('x'), { timeoutMs: 1000 }))).toBe('first');
      });

      it('rejects with no_responders when nobody subscribes, including after an unsubscribe', async () => {
        expectKind(await rejection(transport.request('conf.nobody', bytes('x'), { timeoutMs: 1000 })), 'no_responders');
        const subscription = peer.subscribe('conf.gone', (message) => message.respond(bytes('here')));
        subscription.unsubscribe();
        subscription.unsubscribe();
        await settle();
        expectKind(await rejection(transport.request('conf.gone', bytes('x'), { timeoutMs: 1000 })), 'no_responders');
      });

      it('rejects with timeout when the responder never answers', async () => {
        peer.subscribe('conf.silent', () => undefined);
        await settle();
        const startedMs = performance.now();
        expectKind(await rejection(transport.request('conf.silent', bytes('x'), { timeoutMs: 50 })), 'timeout');
        expect(performance.now() - startedMs).toBeGreaterThanOrEqual(40);
      });

      it('rejects with the signal reason when aborted, before or during the wait', async () => {
        peer.subscribe('conf.silent', () => undefined);
        await settle();
        const reason = new Error('caller gave up');
        const controller = new AbortController();
        const pending = transport.request('conf.silent', bytes('x'), { timeoutMs: 5000, signal: controller.signal });
        controller.abort(reason);
        expect(await rejection(pending)).toBe(reason);
        const early = transport.request('conf.silent', bytes('x'), { timeoutMs: 5000, signal: controller.signal });
        expect(await rejection(early)).toBe(reason);
      });
    });

    describe('close', () => {
      it('rejects pending requests with closed and refuses every later call', async () => {
        peer.subscribe('conf.silent', () => undefined);
        await settle();
        const pending = transport.request('conf.silent', bytes('x'), { timeoutMs: 5000 });
        await transport.close();
        expectKind(await rejection(pending), 'closed');
        expectKind(await rejection(transport.request('conf.silent', bytes('x'), { timeoutMs: 1000 })), 'closed');
        expectKind(thrown(() => transport.publish('conf.silent', bytes('x'))), 'closed');
        expectKind(thrown(() => transport.subscribe('conf.other', () => undefined)), 'closed');
        expectKind(await streamFailure(() => transport.stream('conf.silent', bytes('x'), { idleTimeoutMs: 1000 })), 'closed');
        await transport.close();
      });

      it('fails open streams with closed and tells their writers', async () => {
        const probe = cancelProbe();
        serveStream('conf.live', (writer) => {
          writer.onCancel(probe.onCancel);
          writer.write(bytes('before close'));
        });
        await settle();
        const iterator = transport.stream('conf.live', bytes('go'), { idleTimeoutMs: 5000 })[Symbol.asyncIterator]();
        expect(text((await iterator.next()).value as Uint8Array)).toBe('before close');
        await transport.close();
        expectKind(await rejection(iterator.next()), 'closed');
        await within(probe.cancelled, 1000, "the writer's onCancel");
        expect(probe.count()).toBe(1);
      });
    });

    describe('publish', () => {
      it('delivers a message to every subscriber without asking for a reply', async () => {
        const first: string[] = [];
        const second: string[] = [];
        const flags: boolean[] = [];
        peer.subscribe('conf.fan', (message) => {
          flags.push(message.expectsReply, message.isStream);
          first.push(text(message.data));
        });
        peer.subscribe('conf.fan', (message) => second.push(text(message.data)));
        await settle();
        transport.publish('conf.fan', bytes('one'));
        transport.publish('conf.fan', bytes('two'));
        await eventually(() => {
          expect(first).toEqual(['one', 'two']);
          expect(second).toEqual(['one', 'two']);
        });
        expect(flags).toEqual([false, false, false, false]);
      });

      it('drops a message nobody subscribes to without an error', () => {
        expect(() => transport.publish('conf.void', bytes('x'))).not.toThrow();
      });

      it('delivers each message to exactly one member of a queue group and to every plain subscriber', async () => {
        const members: string[][] = [[], [], []];
        const plain: string[] = [];
        for (const seen of members) peer.subscribe('conf.work', (message) => seen.push(text(message.data)), { queue: 'workers' });
        peer.subscribe('conf.work', (message) => plain.push(text(message.data)));
        await settle();
        const sent = Array.from({ length: 30 }, (_, index) => `job-${index}`);
        for (const job of sent) transport.publish('conf.work', bytes(job));
        await eventually(() => {
          expect(plain).toHaveLength(sent.length);
          expect(members.flat()).toHaveLength(sent.length);
        });
        await pause(20);
        expect(plain).toEqual(sent);
        expect(members.flat().sort()).toEqual([...sent].sort());
      });

      it('hands a request to exactly one member of a queue group', async () => {
        let handled = 0;
        for (const id of ['a', 'b', 'c']) {
          peer.subscribe(
            'conf.pool',
            (message) => {
              handled++;
              message.respond(bytes(id));
            },
            { queue: 'pool' },
          );
        }
        await settle();
        for (let round = 0; round < 6; round++) {
          expect(['a', 'b', 'c']).toContain(text(await transport.request('conf.pool', bytes('x'), { timeoutMs: 1000 })));
        }
        await pause(20);
        expect(handled).toBe(6);
      });
    });

    describe('stream', () => {
      it('delivers chunks in order and ends when the writer ends', async () => {
        const flags: boolean[] = [];
        serveStream('conf.count', (writer, message) => {
          flags.push(message.expectsReply, message.isStream);
          for (let index = 0; index < 100; index++) writer.write(bytes(String(index)));
          writer.end();
        });
        await settle();
        const chunks = await collect(transport.stream('conf.count', bytes('go'), { idleTimeoutMs: 1000 }));
        expect(chunks).toEqual(Array.from({ length: 100 }, (_, index) => String(index)));
        expect(flags).toEqual([true, true]);
      });

      it('ends at once when the writer ends at once, then refuses writes without calling onCancel', async () => {
        const probe = cancelProbe();
        const opened = deferred<StreamWriter>();
        serveStream('conf.empty', (writer) => {
          writer.onCancel(probe.onCancel);
          writer.end();
          opened.resolve(writer);
        });
        await settle();
        expect(await collect(transport.stream('conf.empty', bytes('go'), { idleTimeoutMs: 1000 }))).toEqual([]);
        const writer = await opened.promise;
        expect(writer.closed).toBe(true);
        expectKind(thrown(() => writer.write(bytes('late'))), 'closed');
        await pause(20);
        expect(probe.count()).toBe(0);
      });

      it('fails with no_responders when nobody subscribes', async () => {
        expectKind(await streamFailure(() => transport.stream('conf.nobody', bytes('go'), { idleTimeoutMs: 1000 })), 'no_responders');
      });

      it('runs the writer onCancel exactly once when the consumer cancels, and refuses later writes', async () => {
        const probe = cancelProbe();
        const opened = deferred<StreamWriter>();
        serveStream('conf.cancel', (writer) => {
          writer.onCancel(probe.onCancel);
          writer.write(bytes('first'));
          opened.resolve(writer);
        });
        await settle();
        const stream = transport.stream('conf.cancel', bytes('go'), { idleTimeoutMs: 5000 });
        const iterator = stream[Symbol.asyncIterator]();
        expect(text((await iterator.next()).value as Uint8Array)).toBe('first');
        stream.cancel();
        stream.cancel();
        expect((await iterator.next()).done).toBe(true);
        await within(probe.cancelled, 1000, "the writer's onCancel");
        const writer = await opened.promise;
        await eventually(() => expectKind(thrown(() => writer.write(bytes('late'))), 'closed'));
        expect(writer.closed).toBe(true);
        await pause(20);
        expect(probe.count()).toBe(1);
      });

      it('runs the writer onCancel when the consumer breaks out of for-await', async () => {
        const probe = cancelProbe();
        const opened = deferred<StreamWriter>();
        serveStream('conf.break', (writer) => {
          writer.onCancel(probe.onCancel);
          for (let index = 0; index < 10; index++) writer.write(bytes(String(index)));
          opened.resolve(writer);
        });
        await settle();
        const received: string[] = [];
        for await (const chunk of transport.stream('conf.break', bytes('go'), { idleTimeoutMs: 5000 })) {
          received.push(text(chunk));
          if (received.length === 3) break;
        }
        expect(received).toEqual(['0', '1', '2']);
        await within(probe.cancelled, 1000, "the writer's onCancel");
        const writer = await opened.promise;
        await eventually(() => expectKind(thrown(() => writer.write(bytes('late'))), 'closed'));
        await pause(20);
        expect(probe.count()).toBe(1);
      });

      it('throws the signal reason from the iteration and tells the writer when the signal aborts', async () => {
        const probe = cancelProbe();
        serveStream('conf.abort', (writer) => {
          writer.onCancel(probe.onCancel);
          writer.write(bytes('first'));
        });
        await settle();
        const controller = new AbortController();
        const reason = new Error('client went away');
        const received: string[] = [];
        const failure = streamFailure(() => transport.stream('conf.abort', bytes('go'), { idleTimeoutMs: 5000, signal: controller.signal }), received);
        await eventually(() => expect(received).toEqual(['first']));
        controller.abort(reason);
        expect(await failure).toBe(reason);
        await within(probe.cancelled, 1000, "the writer's onCancel");
        expect(probe.count()).toBe(1);
      });

      it('fails with timeout when the producer goes silent, and tells the writer', async () => {
        const probe = cancelProbe();
        serveStream('conf.mute', (writer) => {
          writer.onCancel(probe.onCancel);
          writer.write(bytes('only'));
        });
        await settle();
        const received: string[] = [];
        const startedMs = performance.now();
        const error = await streamFailure(() => transport.stream('conf.mute', bytes('go'), { idleTimeoutMs: 60 }), received);
        expectKind(error, 'timeout');
        expect(received).toEqual(['only']);
        expect(performance.now() - startedMs).toBeGreaterThanOrEqual(50);
        await within(probe.cancelled, 1000, "the writer's onCancel");
      });

      it('fails with timeout when the responder never opens the stream', async () => {
        peer.subscribe('conf.ignored', () => undefined);
        await settle();
        expectKind(await streamFailure(() => transport.stream('conf.ignored', bytes('go'), { idleTimeoutMs: 50 })), 'timeout');
      });

      it('fails a stream whose consumer falls behind with closed, and stops the writer early', async () => {
        const totalChunks = 200_000;
        const probe = cancelProbe();
        let written = 0;
        let stopped = false;
        serveStream('conf.flood', (writer) => {
          writer.onCancel(() => {
            stopped = true;
            probe.onCancel();
          });
          void (async () => {
            while (!stopped && written < totalChunks) {
              writer.write(bytes('chunk'));
              written++;
              if (written % 256 === 0) await nextTurn();
            }
          })().catch(() => undefined);
        });
        await settle();
        const iterator = transport.stream('conf.flood', bytes('go'), { idleTimeoutMs: 10_000 })[Symbol.asyncIterator]();
        await within(probe.cancelled, 10_000, "the flooding writer's onCancel");
        expect(written).toBeLessThan(totalChunks);
        let failure: unknown;
        for (let read = 0; read <= totalChunks; read++) {
          try {
            if ((await iterator.next()).done) break;
          } catch (error) {
            failure = error;
            break;
          }
        }
        expect(expectKind(failure, 'closed').message).toMatch(/slow consumer/);
      });
    });

    describe('payloads and handlers', () => {
      it('round-trips a payload of about a megabyte intact, by request and by stream', async () => {
        const payload = new Uint8Array(largePayloadBytes);
        for (let index = 0; index < payload.length; index++) payload[index] = (index * 31 + 7) & 0xff;
        peer.subscribe('conf.big', (message) => message.respond(message.data));
        serveStream('conf.big.stream', (writer, message) => {
          writer.write(message.data);
          writer.end();
        });
        await settle();
        const reply = await transport.request('conf.big', payload, { timeoutMs: 5000 });
        expect(Buffer.compare(reply, payload)).toBe(0);
        const chunks: Uint8Array[] = [];
        for await (const chunk of transport.stream('conf.big.stream', payload, { idleTimeoutMs: 5000 })) chunks.push(chunk);
        expect(chunks).toHaveLength(1);
        expect(Buffer.compare(chunks[0]!, payload)).toBe(0);
      });

      it('keeps delivering to other subscribers when a handler throws', async () => {
        peer.subscribe('conf.fragile', () => {
          throw new Error('handler bug');
        });
        peer.subscribe('conf.fragile', (message) => message.respond(bytes(`ok:${text(message.data)}`)));
        const seen: string[] = [];
        peer.subscribe('conf.fragile.pub', () => {
          throw new Error('handler bug');
        });
        peer.subscribe('conf.fragile.pub', (message) => seen.push(text(message.data)));
        await settle();
        expect(text(await transport.request('conf.fragile', bytes('1'), { timeoutMs: 1000 }))).toBe('ok:1');
        expect(text(await transport.request('conf.fragile', bytes('2'), { timeoutMs: 1000 }))).toBe('ok:2');
        transport.publish('conf.fragile.pub', bytes('a'));
        transport.publish('conf.fragile.pub', bytes('b'));
        await eventually(() => expect(seen).toEqual(['a', 'b']));
      });
    });

    describe('headers', () => {
      it('carries the sender headers to the handler by request, publish and stream, and an empty object when none', async () => {
        const seen: Record<string, Readonly<Record<string, string>>> = {};
        peer.subscribe('conf.headers.req', (message) => {
          seen[`request:${text(message.data)}`] = message.headers;
          message.respond(bytes('ok'));
        });
        peer.subscribe('conf.headers.pub', (message) => {
          seen[`publish:${text(message.data)}`] = message.headers;
        });
        serveStream('conf.headers.stream', (writer, message) => {
          seen['stream'] = message.headers;
          writer.end();
        });
        await settle();
        const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
        const headers = { traceparent, 'X-Tenant': 'a b' };
        await transport.request('conf.headers.req', bytes('with'), { timeoutMs: 1000, headers });
        await transport.request('conf.headers.req', bytes('without'), { timeoutMs: 1000 });
        transport.publish('conf.headers.pub', bytes('with'), { headers });
        transport.publish('conf.headers.pub', bytes('without'));
        await collect(transport.stream('conf.headers.stream', bytes('go'), { idleTimeoutMs: 1000, headers }));
        await eventually(() => expect(Object.keys(seen)).toHaveLength(5));
        expect(seen).toEqual({
          'request:with': headers,
          'request:without': {},
          'publish:with': headers,
          'publish:without': {},
          // The stream protocol's own headers stay inside the transport.
          stream: headers,
        });
      });
    });
  });
}

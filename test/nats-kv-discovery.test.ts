import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DiscoveryEvent, WorkerRecord } from '../src/discovery/discovery.js';
import { NatsKvDiscovery, type NatsKvDiscoveryOptions } from '../src/discovery/nats-kv/nats-kv-discovery.js';
import { WorkerCache } from '../src/discovery/nats-kv/worker-cache.js';
import { decodeEntry, encodeEntry, keyFor } from '../src/discovery/nats-kv/worker-entry.js';
import { ErrorCode } from '../src/errors.js';
import type { LogFields, Logger } from '../src/log.js';
import type { Clock } from '../src/time/clock.js';
import { realClock } from '../src/time/real-clock.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { decodeWorker, discoveryConformance, worker } from './discovery-conformance.js';
import { waitFor } from './helpers/deferred.js';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';

// Short intervals keep the file quick: a dead worker is reported within 600 + 100 ms.
const heartbeatIntervalMs = 200;
const staleAfterMs = 600;
const sweepIntervalMs = 100;
/** Room for scheduling and delivery on a loaded machine, on top of the bound under test. */
const slackMs = 400;

let server: NatsServer;
let bucketSeq = 0;
/** Everything a test opened, closed after it whatever happened. */
const opened: { close(): Promise<void> }[] = [];

beforeAll(async () => {
  server = await startNatsServer();
});

afterAll(async () => {
  await server?.stop();
});

afterEach(async () => {
  for (const thing of opened.splice(0).reverse()) await thing.close().catch(() => undefined);
});

/** A connection that reconnects quickly and forever, closed after the test. */
async function natsConnection(): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100, timeout: 2000 });
  opened.push({ close: () => (nc.isClosed() ? Promise.resolve() : nc.close()) });
  return nc;
}

/** A fresh bucket name, so tests cannot see each other's workers. */
function freshBucket(): string {
  bucketSeq += 1;
  return `test_workers_${bucketSeq}`;
}

interface LogLine {
  level: string;
  message: string;
  fields: LogFields;
}

/** A logger that keeps what it is told. */
function recordingLogger(lines: LogLine[] = [], base: LogFields = {}): Logger & { lines: LogLine[] } {
  const at =
    (level: string) =>
    (message: string, fields?: LogFields): void => {
      lines.push({ level, message, fields: { ...base, ...fields } });
    };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: (fields) => recordingLogger(lines, { ...base, ...fields }) };
}

async function discoveryOn(
  bucket: string,
  overrides: Partial<NatsKvDiscoveryOptions> = {},
): Promise<{ discovery: NatsKvDiscovery; nc: NatsConnection; log: ReturnType<typeof recordingLogger> }> {
  const nc = overrides.nc ?? (await natsConnection());
  const log = recordingLogger();
  const discovery = await NatsKvDiscovery.connect({
    nc,
    bucket,
    heartbeatIntervalMs,
    staleAfterMs,
    sweepIntervalMs,
    clock: realClock,
    log,
    ...overrides,
  });
  opened.push(discovery);
  return { discovery, nc, log };
}

/** A discovery's own watcher: everything it reports, with the time it arrived. */
function recordEvents(discovery: NatsKvDiscovery): { type: DiscoveryEvent['type']; id: string; atMs: number }[] {
  const seen: { type: DiscoveryEvent['type']; id: string; atMs: number }[] = [];
  discovery.watch((event) => seen.push({ type: event.type, id: event.record.instanceId, atMs: performance.now() }));
  return seen;
}

/** A real clock whose timers can be held back: pausing it freezes a worker like SIGSTOP would. */
function pausableClock(): { clock: Clock; pause(): void; resume(): void } {
  let paused = false;
  const held: (() => void)[] = [];
  const clock: Clock = {
    now: () => realClock.now(),
    setTimeout: (fn, ms) => realClock.setTimeout(() => (paused ? held.push(fn) : fn()), ms),
    clearTimeout: (id) => realClock.clearTimeout(id),
  };
  return {
    clock,
    pause: () => {
      paused = true;
    },
    resume: () => {
      paused = false;
      for (const fn of held.splice(0)) fn();
    },
  };
}

async function rawBucket(nc: NatsConnection, bucket: string): Promise<KV> {
  return new Kvm(jetstream(nc, { timeout: 2000 })).open(bucket);
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Calls `attempt` until it resolves, for operations a caller would retry. */
async function retry(attempt: () => Promise<void>, attemptsMax = 5): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (error) {
      if (i >= attemptsMax) throw error;
      await pause(100);
    }
  }
}

discoveryConformance('NatsKvDiscovery (two connections, one nats-server)', async () => {
  const bucket = freshBucket();
  const registrar = await discoveryOn(bucket);
  const observer = await discoveryOn(bucket);
  return {
    discovery: registrar.discovery,
    observer: observer.discovery,
    settle: () => pause(150),
    async cleanup() {
      await registrar.discovery.close();
      await observer.discovery.close();
    },
  };
});

describe('NatsKvDiscovery', () => {
  it('registers on one connection and is listed, watched and deregistered on another', async () => {
    const bucket = freshBucket();
    const { discovery: workerSide } = await discoveryOn(bucket);
    const { discovery: router } = await discoveryOn(bucket);
    const events = recordEvents(router);

    await workerSide.register(decodeWorker('decode-0', 128));
    await workerSide.register(worker('prefill-0', 'prefill'));
    // Its own writes show in its own view as soon as they are acknowledged.
    expect(workerSide.list().map((record) => record.instanceId)).toEqual(['decode-0', 'prefill-0']);
    await waitFor(() => router.list().length === 2, 3000, 'both workers');
    expect(router.list('decode')).toEqual([decodeWorker('decode-0', 128)]);
    expect(router.list('prefill')).toEqual([worker('prefill-0', 'prefill')]);

    // Heartbeats re-put the same record; watchers hear nothing of them.
    await pause(3 * heartbeatIntervalMs);
    expect(events.map((event) => `${event.type} ${event.id}`)).toEqual(['added decode-0', 'added prefill-0']);

    await workerSide.deregister('decode-0');
    await waitFor(() => events.length === 3, 3000, 'the deregistration');
    expect(router.list()).toEqual([worker('prefill-0', 'prefill')]);
    expect(events.map((event) => `${event.type} ${event.id}`)).toEqual(['added decode-0', 'added prefill-0', 'removed decode-0']);
    expect(workerSide.stats()).toMatchObject({ registrationCount: 1 });
  });

  it('lists, right after connecting, the workers registered before it started', async () => {
    const bucket = freshBucket();
    const { discovery: workerSide } = await discoveryOn(bucket);
    await workerSide.register(worker('prefill-0', 'prefill'));
    await workerSide.register(decodeWorker('decode-0', 8));
    const { discovery: late } = await discoveryOn(bucket);
    expect(late.list().map((record) => record.instanceId).sort()).toEqual(['decode-0', 'prefill-0']);
  });

  it('drops a worker that stops heartbeating within staleAfterMs plus one sweep, and re-adds it when heartbeats resume', async () => {
    const bucket = freshBucket();
    const frozen = pausableClock();
    const { discovery: workerSide } = await discoveryOn(bucket, { clock: frozen.clock });
    const { discovery: router } = await discoveryOn(bucket);
    const events = recordEvents(router);
    await workerSide.register(worker('prefill-0', 'prefill'));
    await waitFor(() => events.length === 1, 3000, 'added');

    frozen.pause();
    const pausedAtMs = performance.now();
    await waitFor(() => events.length === 2, staleAfterMs + sweepIntervalMs + slackMs + 1000, 'removed');
    const removed = events[1]!;
    expect(removed.type).toBe('removed');
    // Not before the worker could have been silent for staleAfterMs, and within the bound after.
    expect(removed.atMs - pausedAtMs).toBeGreaterThanOrEqual(staleAfterMs - heartbeatIntervalMs);
    expect(removed.atMs - pausedAtMs).toBeLessThanOrEqual(staleAfterMs + sweepIntervalMs + slackMs);
    expect(router.list()).toEqual([]);

    frozen.resume();
    await waitFor(() => events.length === 3, 3000, 'added again');
    expect(events[2]).toMatchObject({ type: 'added', id: 'prefill-0' });
    expect(router.list()).toEqual([worker('prefill-0', 'prefill')]);
  });

  it('drops a worker whose connection dies without deregistering, although its key is still in the bucket', async () => {
    const bucket = freshBucket();
    const { discovery: workerSide, nc: workerNc } = await discoveryOn(bucket);
    const { discovery: router, nc: routerNc } = await discoveryOn(bucket);
    const events = recordEvents(router);
    await workerSide.register(decodeWorker('decode-0', 16));
    await waitFor(() => events.length === 1, 3000, 'added');

    // Like kill -9: the socket goes away, no delete is ever sent.
    await workerNc.close();
    const killedAtMs = performance.now();
    await waitFor(() => events.length === 2, staleAfterMs + sweepIntervalMs + slackMs + 1000, 'removed');
    expect(events[1]).toMatchObject({ type: 'removed', id: 'decode-0' });
    expect(events[1]!.atMs - killedAtMs).toBeLessThanOrEqual(staleAfterMs + sweepIntervalMs + slackMs);
    expect(router.list()).toEqual([]);
    // nats-server 2.9 has not expired the key yet (TTL is 5 intervals) and would not say so when it does.
    const entry = await (await rawBucket(routerNc, bucket)).get(keyFor('decode-0'));
    expect(entry?.operation).toBe('PUT');
  });

  it('skips garbage in the bucket with a warning and keeps serving the valid workers', async () => {
    const bucket = freshBucket();
    const { discovery: workerSide } = await discoveryOn(bucket);
    const { discovery: router, nc, log } = await discoveryOn(bucket);
    const events = recordEvents(router);
    await workerSide.register(worker('prefill-0', 'prefill'));
    await workerSide.register(worker('prefill-1', 'prefill'));
    await waitFor(() => router.list().length === 2, 3000, 'two workers');

    const kv = await rawBucket(nc, bucket);
    const otherKey = encodeEntry(worker('someone-else', 'prefill'), 0);
    await kv.put('not-json', 'hello');
    await kv.put('binary', new Uint8Array([0xff, 0xfe, 0x00, 0x01]));
    await kv.put('empty', new Uint8Array(0));
    await kv.put('wrong-shape', JSON.stringify({ v: 1, record: { instance_id: 'wrong-shape' } }));
    await kv.put('future', JSON.stringify({ v: 99, heartbeat_at_ms: 0, record: {} }));
    await kv.put('wrong-key', otherKey);
    await kv.put('null', 'null');
    // A valid worker's key overwritten with garbage: the worker is gone as far as anyone can tell.
    await kv.put(keyFor('prefill-1'), '{"v":1');
    await waitFor(() => log.lines.filter((line) => line.level === 'warn').length >= 8, 3000, 'eight warnings');

    expect(router.list()).toEqual([worker('prefill-0', 'prefill')]);
    await waitFor(() => events.length === 3, 3000, 'prefill-1 removed');
    expect(events.at(-1)).toMatchObject({ type: 'removed', id: 'prefill-1' });
    const warnedKeys = log.lines.filter((line) => line.message.includes('unreadable')).map((line) => line.fields.key);
    expect(warnedKeys).toEqual(expect.arrayContaining(['not-json', 'binary', 'empty', 'wrong-shape', 'future', 'wrong-key', 'null', 'prefill-1']));

    // The watcher still works, and a discovery that reads the garbage in its first snapshot starts fine.
    await workerSide.register(worker('prefill-2', 'prefill'));
    await waitFor(() => router.list().length === 2, 3000, 'prefill-2');
    const { discovery: late, log: lateLog } = await discoveryOn(bucket);
    expect(late.list().map((record) => record.instanceId).sort()).toEqual(['prefill-0', 'prefill-2']);
    expect(lateLog.lines.some((line) => line.message.includes('unreadable'))).toBe(true);
  });

  it.each(['file', 'memory'] as const)('rebuilds its view after a nats-server restart (%s storage): records reappear and later changes are seen', async (storage) => {
    const bucket = freshBucket();
    const { discovery: workerSide, log: workerLog } = await discoveryOn(bucket, { storage });
    const { discovery: router, log } = await discoveryOn(bucket, { storage });
    const events = recordEvents(router);
    await workerSide.register(worker('prefill-0', 'prefill'));
    await workerSide.register(decodeWorker('decode-0', 32));
    await waitFor(() => router.list().length === 2, 3000, 'two workers');

    await server.restart();
    await waitFor(() => log.lines.some((line) => line.message.includes('reconnected')), 5000, 'the router reconnecting');
    await waitFor(() => workerLog.lines.some((line) => line.message.includes('reconnected')), 5000, 'the worker reconnecting');
    // With memory storage the bucket died with the server: the records are back only because the
    // worker re-created the bucket and re-put them, and the router re-created its watcher.
    await waitFor(() => router.list().length === 2, 5000, 'both workers back');

    // JetStream may still be recovering just after a restart; a caller retries a failed register.
    await retry(() => workerSide.register(worker('prefill-1', 'prefill')));
    await workerSide.deregister('decode-0');
    const lastWord = (): Record<string, string> => Object.fromEntries(events.map((event) => [event.id, event.type]));
    await waitFor(() => lastWord()['prefill-1'] === 'added' && lastWord()['decode-0'] === 'removed', 5000, 'the post-restart changes');
    // Whatever the router said during the outage, its last word on each worker matches the list.
    expect(lastWord()).toEqual({ 'prefill-0': 'added', 'decode-0': 'removed', 'prefill-1': 'added' });
    expect(router.list().map((record) => record.instanceId).sort()).toEqual(['prefill-0', 'prefill-1']);
    // Once reconnected, the worker keeps it alive: no flapping afterwards.
    const settledCount = events.length;
    await pause(staleAfterMs + 2 * sweepIntervalMs);
    expect(events.length).toBe(settledCount);
  });

  it('on close deletes only its own keys and leaves an adopted connection open', async () => {
    const bucket = freshBucket();
    const { discovery: a, nc } = await discoveryOn(bucket);
    const { discovery: b } = await discoveryOn(bucket);
    await a.register(worker('a-0', 'prefill'));
    await b.register(worker('b-0', 'prefill'));
    await waitFor(() => a.list().length === 2 && b.list().length === 2, 3000, 'both workers everywhere');

    await a.close();
    expect(nc.isClosed()).toBe(false);
    await waitFor(() => b.list().length === 1, 3000, 'a-0 removed');
    expect(b.list()).toEqual([worker('b-0', 'prefill')]);
    const kv = await rawBucket(nc, bucket);
    expect((await kv.get(keyFor('b-0')))?.operation).toBe('PUT');
    expect(a.stats()).toEqual({ liveRecordCount: 0, cachedKeyCount: 0, registrationCount: 0, watcherCount: 0, pendingNotificationCount: 0 });
  });

  it('opens and closes its own connection when given connection options, and creates the bucket with a TTL', async () => {
    const bucket = freshBucket();
    const discovery = await NatsKvDiscovery.connect({
      connection: { servers: server.url },
      bucket,
      heartbeatIntervalMs,
      clock: realClock,
    });
    opened.push(discovery);
    await discovery.register(worker('p-0', 'prefill'));
    const nc = await natsConnection();
    const status = await (await rawBucket(nc, bucket)).status();
    expect(status.ttl).toBe(5 * heartbeatIntervalMs);
    expect(status.history).toBe(1);
    await discovery.close();
    await expect(discovery.register(worker('p-1', 'prefill'))).rejects.toMatchObject({ code: ErrorCode.Closed });
  });

  it('fails to connect with a TandemError when no server answers', async () => {
    await expect(
      NatsKvDiscovery.connect({ connection: { servers: '127.0.0.1:1', timeout: 500 }, clock: realClock }),
    ).rejects.toMatchObject({ name: 'TandemError', code: ErrorCode.Closed });
  });

  it('refuses to register a record that readers would skip', async () => {
    const { discovery } = await discoveryOn(freshBucket());
    await expect(discovery.register({ ...worker('p-0', 'prefill'), model: '' })).rejects.toMatchObject({ code: ErrorCode.BadRequest });
    await expect(discovery.register({ ...worker('p-0', 'prefill'), subjectPrefix: 'x'.repeat(70_000) })).rejects.toMatchObject({
      code: ErrorCode.BadRequest,
    });
    expect(discovery.stats().registrationCount).toBe(0);
  });
});

describe('worker entries', () => {
  it('round-trips a record through the bucket encoding', () => {
    const record = decodeWorker('decode-0', 64);
    expect(decodeEntry(encodeEntry(record, 1234))).toEqual({ record, heartbeatAtMs: 1234 });
  });

  it('maps any instance id to a valid, distinct single-token key', () => {
    expect(keyFor('decode-0_a')).toBe('decode-0_a');
    const odd = ['a.b', 'a b', 'host:1/x', 'ünï', '=x', '*', '>'].map(keyFor);
    for (const key of odd) expect(key).toMatch(/^=[-\w]+$/);
    expect(new Set(odd).size).toBe(odd.length);
  });

  it('refuses bytes that are not a worker entry with invalid_message, and another version with unsupported_version', () => {
    const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
    expect(() => decodeEntry(bytes('{'))).toThrow(expect.objectContaining({ code: ErrorCode.InvalidMessage }));
    expect(() => decodeEntry(bytes('[]'))).toThrow(expect.objectContaining({ code: ErrorCode.InvalidMessage }));
    expect(() => decodeEntry(bytes('{"v":2}'))).toThrow(expect.objectContaining({ code: ErrorCode.UnsupportedVersion }));
  });
});

describe('WorkerCache', () => {
  function setup(recordsMax = 16) {
    const clock = new VirtualClock();
    const events: string[] = [];
    const cache = new WorkerCache({
      clock,
      staleAfterMs: 300,
      forgetAfterMs: 800,
      recordsMax,
      emit: (event) => events.push(`${event.type} ${event.record.instanceId} ${event.record.epoch}`),
    });
    return { clock, cache, events };
  }
  const p = (id: string, epoch = 1): WorkerRecord => worker(id, 'prefill', epoch);

  it('counts only newer revisions as heartbeats, and only changed records as news', () => {
    const { clock, cache, events } = setup();
    expect(cache.put('a', 5, p('a'), 'local')).toBe('added');
    clock.advance(200);
    expect(cache.put('a', 5, p('a'), 'remote')).toBe('ignored'); // the echo of the local write
    expect(cache.put('a', 4, p('a'), 'remote')).toBe('ignored');
    clock.advance(150);
    expect(cache.list()).toEqual([]); // 350 ms since revision 5 arrived
    // No sweep has told watchers yet, so the next heartbeat brings it back silently.
    expect(cache.put('a', 6, p('a'), 'remote')).toBe('refreshed');
    clock.advance(301);
    cache.sweep();
    expect(cache.put('a', 7, p('a'), 'remote')).toBe('updated'); // revives it
    expect(cache.put('a', 8, p('a'), 'remote')).toBe('refreshed');
    expect(cache.put('a', 9, p('a', 2), 'remote')).toBe('updated');
    expect(events).toEqual(['added a 1', 'removed a 1', 'added a 1', 'added a 2']);
  });

  it('reports a silent record removed at the first sweep after staleAfterMs and forgets it after forgetAfterMs', () => {
    const { clock, cache, events } = setup();
    cache.put('a', 1, p('a'), 'remote');
    clock.advance(300);
    cache.sweep();
    expect(events).toEqual(['added a 1']);
    clock.advance(1);
    expect(cache.list()).toEqual([]);
    cache.sweep();
    expect(events).toEqual(['added a 1', 'removed a 1']);
    expect(cache.size).toBe(1);
    clock.advance(500);
    cache.sweep();
    expect(cache.size).toBe(0);
    expect(events).toHaveLength(2);
  });

  it('ignores remote puts of a key it deleted until the delete shows, so an in-flight heartbeat cannot resurrect it', () => {
    const { cache, events } = setup();
    cache.put('a', 1, p('a'), 'local');
    cache.removeLocal('a');
    expect(cache.put('a', 2, p('a'), 'remote')).toBe('ignored');
    cache.remove('a', 3, 'delete');
    expect(cache.put('a', 4, p('a', 2), 'remote')).toBe('added');
    expect(events).toEqual(['added a 1', 'removed a 1', 'added a 2']);
  });

  it('removes on rebuild the keys neither read nor written meanwhile, and keeps deletes seen during it', () => {
    const { cache, events } = setup();
    cache.put('a', 1, p('a'), 'remote');
    cache.put('b', 2, p('b'), 'remote');
    cache.put('c', 3, p('c'), 'remote');
    const generation = cache.beginRebuild();
    cache.remove('c', 5, 'delete'); // the watcher saw c deleted...
    cache.put('c', 3, p('c'), 'remote'); // ...before a slower snapshot read returned its old value
    cache.put('a', 1, p('a'), 'remote'); // the snapshot re-read a
    cache.endRebuild(generation);
    expect(cache.list().map((record) => record.instanceId)).toEqual(['a']);
    expect(events).toEqual(['added a 1', 'added b 1', 'added c 1', 'removed c 1', 'removed b 1']);
  });

  it('takes a rebuild\'s reads as authoritative, so revisions that restarted after the bucket was lost still count', () => {
    const { clock, cache, events } = setup();
    cache.put('a', 57, p('a'), 'remote');
    const generation = cache.beginRebuild();
    clock.advance(200);
    expect(cache.put('a', 2, p('a'), 'remote')).toBe('refreshed'); // first sight in this rebuild
    expect(cache.put('a', 1, p('a'), 'remote')).toBe('ignored'); // from now on, order counts again
    cache.endRebuild(generation);
    clock.advance(200);
    expect(cache.list()).toEqual([p('a')]);
    expect(cache.put('a', 3, p('a'), 'remote')).toBe('refreshed');
    expect(events).toEqual(['added a 1']);
  });

  it('refuses new keys beyond recordsMax', () => {
    const { cache } = setup(2);
    cache.put('a', 1, p('a'), 'remote');
    cache.put('b', 2, p('b'), 'remote');
    expect(cache.put('c', 3, p('c'), 'remote')).toBe('full');
    expect(cache.put('a', 4, p('a'), 'remote')).toBe('refreshed');
  });
});

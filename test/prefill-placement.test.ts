import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from './helpers/deferred.js';
import { Router } from '../src/actors/router.js';
import { MemoryDiscovery } from '../src/discovery/memory/memory-discovery.js';
import type { SimEngine } from '../src/engine/sim/sim-engine.js';
import { createCluster, silentLogger, type Cluster, type ClusterConfig } from '../src/index.js';
import { blockHashes } from '../src/kv/prefix-hash.js';
import { seededRandom } from '../src/random/random.js';
import { KvRouterFeed } from '../src/routing/kv-router-feed.js';
import { WorkerLoad } from '../src/routing/worker-load.js';
import { placePrefill } from '../src/routing/prefill-placement.js';
import { realClock } from '../src/time/real-clock.js';
import type { Transport } from '../src/transport/transport.js';

const workers = (...ids: string[]) => ids.map((instanceId) => ({ instanceId }));

describe('WorkerLoad', () => {
  it('counts blocks per worker until each ticket ends, once', () => {
    const load = new WorkerLoad();
    const a = load.begin('p0', 3);
    const b = load.begin('p0', 2);
    load.begin('p1', 4);
    expect([load.blocksOf('p0'), load.blocksOf('p1'), load.blocksOf('p2'), load.totalBlocks]).toEqual([5, 4, 0, 9]);
    a.end();
    a.end();
    expect(load.blocksOf('p0')).toBe(2);
    b.end();
    expect(load.blocksOf('p0')).toBe(0);
    expect(load.totalBlocks).toBe(4);
  });
});

describe('placePrefill', () => {
  it('always picks a prefill worker when conditional disaggregation is off (the default)', () => {
    expect(placePrefill({ candidates: [], uncachedTokens: 1 }, new WorkerLoad())).toEqual({ where: 'remote' });
    expect(placePrefill({ candidates: workers('p0'), uncachedTokens: 1 }, new WorkerLoad())).toEqual({ where: 'remote' });
  });

  it('prefills locally when the uncached part is short, the prefill workers are all busy, or there are none', () => {
    const load = new WorkerLoad();
    const policy = { localPrefillTokensMax: 32, prefillBusyBlocks: 4 };
    expect(placePrefill({ candidates: workers('p0', 'p1'), uncachedTokens: 32 }, load, policy)).toEqual({ where: 'local', reason: 'short' });
    expect(placePrefill({ candidates: workers('p0', 'p1'), uncachedTokens: 33 }, load, policy)).toEqual({ where: 'remote' });
    load.begin('p0', 4);
    expect(placePrefill({ candidates: workers('p0', 'p1'), uncachedTokens: 100 }, load, policy)).toEqual({ where: 'remote' });
    const p1 = load.begin('p1', 5);
    expect(placePrefill({ candidates: workers('p0', 'p1'), uncachedTokens: 100 }, load, policy)).toEqual({ where: 'local', reason: 'busy' });
    p1.end();
    expect(placePrefill({ candidates: workers('p0', 'p1'), uncachedTokens: 100 }, load, policy)).toEqual({ where: 'remote' });
    expect(placePrefill({ candidates: [], uncachedTokens: 100 }, load, policy)).toEqual({ where: 'local', reason: 'no_prefill_workers' });
    expect(placePrefill({ candidates: workers('p0'), uncachedTokens: 0 }, load, { prefillBusyBlocks: 1 })).toEqual({ where: 'local', reason: 'busy' });
  });
});

describe('Router modes', () => {
  async function discoveryWith(ids: string[]): Promise<MemoryDiscovery> {
    const discovery = new MemoryDiscovery({ clock: realClock });
    for (const id of ids) await discovery.register({ instanceId: id, role: 'prefill', model: 'm', epoch: 1, subjectPrefix: `tandem.prefill.${id}` });
    return discovery;
  }

  it('picks prefill workers at random from a seeded source: reproducible, and every worker gets some', async () => {
    const discovery = await discoveryWith(['p0', 'p1', 'p2']);
    const picks = (seed: number): string[] => {
      const router = new Router(discovery, 'm', { mode: 'random', random: seededRandom(seed) });
      return Array.from({ length: 60 }, () => router.choosePrefill([1, 2, 3]).candidates[0]!.instanceId);
    };
    expect(picks(5)).toEqual(picks(5));
    expect(picks(5)).not.toEqual(picks(6));
    expect(new Set(picks(5))).toEqual(new Set(['p0', 'p1', 'p2']));
    // Not round-robin: some worker is picked twice in a row somewhere.
    expect(picks(5).some((id, i, all) => i > 0 && all[i - 1] === id)).toBe(true);
    const router = new Router(discovery, 'm', { mode: 'random', random: seededRandom(1) });
    expect(new Set(router.choosePrefill([1]).candidates.map((w) => w.instanceId))).toEqual(new Set(['p0', 'p1', 'p2']));
  });

  it('puts the decode worker with the fewest context blocks in flight first with KV-aware routing, round-robin otherwise', async () => {
    const discovery = new MemoryDiscovery({ clock: realClock });
    for (const id of ['d0', 'd1', 'd2']) await discovery.register({ instanceId: id, role: 'decode', model: 'm', epoch: 1, subjectPrefix: `tandem.decode.${id}` });
    const transport = { subscribe: () => ({ unsubscribe: () => {} }) } as unknown as Transport;
    const feed = new KvRouterFeed({ transport, discovery, random: seededRandom(3), log: silentLogger });
    const kvAware = new Router(discovery, 'm', { kv: feed });
    const roundRobin = new Router(discovery, 'm');
    const d0 = kvAware.decodeLoad.begin('d0', 10);
    kvAware.decodeLoad.begin('d1', 3);
    roundRobin.decodeLoad.begin('d0', 10);
    expect(kvAware.decodeCandidates().map((w) => w.instanceId)).toEqual(['d2', 'd1', 'd0']);
    expect(kvAware.decodeCandidates().map((w) => w.instanceId)).toEqual(['d2', 'd1', 'd0']);
    d0.end();
    // d0 and d2 are both idle now: both are picked, in turn, and the loaded d1 never.
    const picks = Array.from({ length: 6 }, () => kvAware.decodeCandidates()[0]!.instanceId);
    expect(new Set(picks)).toEqual(new Set(['d0', 'd2']));
    expect([0, 1, 2].map(() => roundRobin.decodeCandidates()[0]!.instanceId)).toEqual(['d0', 'd1', 'd2']);
  });

  it('refuses a mode without what it needs', async () => {
    const discovery = await discoveryWith(['p0']);
    expect(() => new Router(discovery, 'm', { mode: 'kv-aware' })).toThrow(/KV ranker/);
    expect(() => new Router(discovery, 'm', { mode: 'random' })).toThrow(/random/);
  });

  it('weighs cached blocks against the load in flight, with weights per request', async () => {
    const discovery = await discoveryWith(['p0', 'p1']);
    const transport = { subscribe: () => ({ unsubscribe: () => {} }) } as unknown as Transport;
    const feed = new KvRouterFeed({ transport, discovery, random: seededRandom(3), log: silentLogger });
    const router = new Router(discovery, 'm', { kv: feed });
    const tokens = Array.from({ length: 16 * 8 }, (_, i) => i % 200);
    // p1 holds 6 of the prompt's 8 blocks.
    feed.apply({ worker: 'p1', seq: 0, kind: 'stored', blocks: blockHashes(tokens, 16).slice(0, 6).map((hash) => ({ hash })) });
    const first = (selection?: { overlapWeight?: number }) => router.choosePrefill(tokens, selection);
    expect(first().candidates[0]!.instanceId).toBe('p1');
    expect(first().cachedTokens).toBe(96);
    expect(first().uncachedTokens).toBe(32);
    // 5 blocks in flight on p1: cost p1 = 2 + 5 = 7 < p0 = 8, still p1.
    const five = router.prefillLoad.begin('p1', 5);
    expect(first().candidates[0]!.instanceId).toBe('p1');
    // 7 blocks: p1 = 9 > p0 = 8, the idle worker wins despite computing the whole prompt.
    const two = router.prefillLoad.begin('p1', 2);
    expect(first().candidates[0]!.instanceId).toBe('p0');
    expect(first().uncachedTokens).toBe(tokens.length);
    // Per request, a heavier overlap weight makes the cache count for more again: p1 = 3×2 + 7 = 13 < p0 = 24.
    expect(first({ overlapWeight: 3 }).candidates[0]!.instanceId).toBe('p1');
    five.end();
    two.end();
    expect(first().candidates[0]!.instanceId).toBe('p1');
  });
});

describe('conditional disaggregation on an embedded cluster', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  async function start(config: Partial<ClusterConfig>): Promise<Cluster> {
    cluster = await createCluster({ port: 0, seed: 4, log: silentLogger, prefillWorkers: 1, decodeWorkers: 1, ...config });
    return cluster;
  }

  async function complete(c: Cluster, prompt: string): Promise<string> {
    const response = await fetch(`${c.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tandem-sim', prompt, max_tokens: 12, temperature: 0, ignore_eos: true }),
    });
    const body = (await response.json()) as { choices: Array<{ text: string }> };
    expect(response.status).toBe(200);
    return body.choices[0]!.text;
  }

  const prefills = (c: Cluster): number => (c.prefill[0]!.engine as SimEngine).stats().prefills;

  it('prefills short prompts on the decode worker and long ones on the prefill worker, with the same text either way', async () => {
    const c = await start({ engine: { speedup: Infinity }, conditionalDisaggregation: { localPrefillTokensMax: 32 } });
    const short = await complete(c, 'short prompt');
    expect(prefills(c)).toBe(0);
    expect(c.stats().decode[0]!.localPrefills).toBe(1);
    const long = await complete(c, 'a prompt that is longer than thirty-two tokens, since each byte is a token');
    expect(prefills(c)).toBe(1);
    expect(c.stats().decode[0]!.localPrefills).toBe(1);
    expect(c.frontend!.prefillPlacements).toEqual({ remote: 1, local: 1 });
    await c.close();
    // The same prompts fully disaggregated give the same text.
    const plain = await start({ engine: { speedup: Infinity } });
    expect(await complete(plain, 'short prompt')).toBe(short);
    expect(await complete(plain, 'a prompt that is longer than thirty-two tokens, since each byte is a token')).toBe(long);
    expect(prefills(plain)).toBe(2);
    expect(plain.stats().decode[0]!.localPrefills).toBe(0);
    expect(plain.frontend!.prefillPlacements).toEqual({ remote: 2, local: 0 });
  });

  it('prefills on the decode worker while the prefill worker is busy', async () => {
    // Prefill takes 300 ms, so the first request is still in prefill when the second is routed.
    const c = await start({
      engine: { speedup: 1, timing: { prefillBaseMs: 300, prefillPerTokenMs: 0, prefillPerTokenSquaredMs: 0, decodeBaseMs: 0 } },
      conditionalDisaggregation: { prefillBusyBlocks: 1 },
    });
    const prompt = 'x'.repeat(64);
    const first = complete(c, prompt);
    // The second request is routed while the first one's prefill is running (its room is open).
    await waitFor(() => c.stats().prefill[0]!.rooms === 1, 5000, 'the first prefill to start');
    const second = complete(c, `${prompt}y`);
    await Promise.all([first, second]);
    expect(c.frontend!.prefillPlacements).toEqual({ remote: 1, local: 1 });
    expect(prefills(c)).toBe(1);
    expect(c.stats().decode[0]!.localPrefills).toBe(1);
    // Once the first prefill has answered, the prefill worker is free again.
    await complete(c, `${prompt}z`);
    expect(c.frontend!.prefillPlacements).toEqual({ remote: 2, local: 1 });
  });

  it('takes per-request routing weights and refuses bad ones', async () => {
    const c = await start({ engine: { speedup: Infinity }, routing: 'kv-aware' });
    const send = (routing: unknown) =>
      fetch(`${c.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tandem-sim', prompt: 'hi', max_tokens: 2, routing }) });
    expect((await send({ overlap_weight: 4, temperature: 0.5 })).status).toBe(200);
    const bad = await send({ overlap_weight: -1 });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toMatch(/routing\.overlap_weight/);
    expect((await send({ favourite: 'p0' })).status).toBe(400);
  });
});

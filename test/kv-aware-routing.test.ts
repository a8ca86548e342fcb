import { describe, expect, it } from 'vitest';
import { waitFor } from './helpers/deferred.js';
import { Router } from '../src/actors/router.js';
import type { Discovery, WorkerRecord } from '../src/discovery/discovery.js';
import { MemoryDiscovery } from '../src/discovery/memory/memory-discovery.js';
import type { EngineKvEvent } from '../src/engine/engine.js';
import { PrefixCache } from '../src/engine/sim/prefix-cache.js';
import type { SimEngine } from '../src/engine/sim/sim-engine.js';
import { createCluster, silentLogger } from '../src/index.js';
import { blockHashes } from '../src/kv/prefix-hash.js';
import { decode, encode } from '../src/protocol/codec.js';
import { subjects } from '../src/protocol/subjects.js';
import { seededRandom } from '../src/random/random.js';
import { KvRouterFeed } from '../src/routing/kv-router-feed.js';
import { memoryBackends } from '../src/runtime/backends.js';
import { realClock } from '../src/time/real-clock.js';
import type { Transport } from '../src/transport/transport.js';

const blockTokens = 16;
const prompt = (prefix: number, suffix: number, blocks = 8): number[] =>
  Array.from({ length: blocks * blockTokens + 5 }, (_, i) => (i < (blocks - 1) * blockTokens ? (prefix * 31 + i) % 250 : (suffix * 7 + i) % 250));

describe('PrefixCache KV events', () => {
  it('reports new blocks as stored and evicted ones as removed, with consecutive seqs', () => {
    const events: EngineKvEvent[] = [];
    const cache = new PrefixCache(blockTokens, 4, (event) => events.push(event));
    const a = blockHashes(prompt(1, 1, 3), blockTokens);
    cache.insert(a);
    cache.insert(a);
    const b = blockHashes(prompt(2, 2, 3), blockTokens);
    cache.insert(b);
    expect(events.map((e) => [e.seq, e.kind, e.blocks.length])).toEqual([
      [0, 'stored', 3],
      [1, 'stored', 3],
      [2, 'removed', 2],
    ]);
    expect(cache.snapshot()).toEqual({ seq: 2, blocks: [a[2], ...b] });
    expect(cache.lookup(b, prompt(2, 2, 3).length)).toBe(3 * blockTokens);
  });
});

describe('Router with a KvRouterFeed', () => {
  const silent = silentLogger;
  async function setup(): Promise<{ router: Router; feed: KvRouterFeed; workers: WorkerRecord[] }> {
    const discovery = new MemoryDiscovery({ clock: realClock });
    for (const id of ['p0', 'p1', 'p2']) {
      await discovery.register({ instanceId: id, role: 'prefill', model: 'm', epoch: 1, subjectPrefix: `tandem.prefill.${id}` });
    }
    const transport = { subscribe: () => ({ unsubscribe: () => {} }) } as unknown as Transport;
    const feed = new KvRouterFeed({ transport, discovery, random: seededRandom(7), log: silent });
    feed.start();
    return { router: new Router(discovery, 'm', feed), feed, workers: discovery.list('prefill') };
  }

  it('puts the worker holding the longest prefix first', async () => {
    const { router, feed } = await setup();
    const tokens = prompt(5, 1);
    const hashes = blockHashes(tokens, blockTokens);
    feed.apply({ worker: 'p2', seq: 0, kind: 'stored', blocks: hashes.slice(0, 6).map((hash) => ({ hash })) });
    feed.apply({ worker: 'p1', seq: 0, kind: 'stored', blocks: hashes.slice(0, 2).map((hash) => ({ hash })) });
    for (let i = 0; i < 3; i++) {
      expect(router.prefillCandidates(tokens).map((w) => w.instanceId)).toEqual(['p2', 'p1', 'p0']);
    }
  });

  it('stays round-robin without tokens', async () => {
    const { router, feed } = await setup();
    feed.apply({ worker: 'p2', seq: 0, kind: 'stored', blocks: blockHashes(prompt(5, 1), blockTokens).map((hash) => ({ hash })) });
    expect([0, 1, 2].map(() => router.prefillCandidates()[0]!.instanceId)).toEqual(['p0', 'p1', 'p2']);
  });

  it('forgets a worker that leaves discovery', async () => {
    const discovery = new MemoryDiscovery({ clock: realClock });
    await discovery.register({ instanceId: 'p0', role: 'prefill', model: 'm', epoch: 1, subjectPrefix: 'tandem.prefill.p0' });
    const transport = { subscribe: () => ({ unsubscribe: () => {} }) } as unknown as Transport;
    const feed = new KvRouterFeed({ transport, discovery, random: seededRandom(7), log: silent });
    feed.start();
    feed.apply({ worker: 'p0', seq: 0, kind: 'stored', blocks: [{ hash: 'aa' }] });
    await discovery.deregister('p0');
    // Memory discovery tells watchers one turn later.
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(feed.indexer.workerIds()).toEqual([]);
    feed.stop();
  });
});

describe('KV-aware routing on an embedded cluster', () => {
  /** Runs `prompts` one after another straight at the decode worker, prefill candidates from a Router. */
  async function cachedTokens(routing: 'round-robin' | 'kv-aware', prompts: number[][]): Promise<number> {
    let transport: Transport | undefined;
    let discovery: Discovery | undefined;
    const cluster = await createCluster({
      frontend: false,
      log: silentLogger,
      seed: 42,
      prefillWorkers: 2,
      decodeWorkers: 1,
      routing,
      engine: { speedup: Infinity },
      backends: async (context) => {
        const backends = await memoryBackends(context);
        transport = backends.transport;
        discovery = backends.discovery;
        return backends;
      },
    });
    try {
      const decodeWorker = cluster.decode[0]!;
      const model = (cluster.prefill[0]!.engine as SimEngine).model.name;
      const router = new Router(discovery!, model, cluster.kvFeed);
      for (const [i, tokens] of prompts.entries()) {
        const candidates = router.prefillCandidates(tokens).map((w) => ({ instance_id: w.instanceId, subject_prefix: w.subjectPrefix }));
        const stream = transport!.stream(
          subjects.generate(decodeWorker.subjectPrefix),
          encode('generate', {
            request_id: `r${i}`,
            model,
            prompt_tokens: tokens,
            sampling: { temperature: 0, top_p: 1, seed: 1, max_tokens: 2, ignore_eos: true },
            prefill_candidates: candidates,
          }),
          { idleTimeoutMs: 10_000 },
        );
        const kinds: string[] = [];
        for await (const chunk of stream) kinds.push(decode(chunk, 'tokens', 'finish', 'error').t);
        expect(kinds.at(-1)).toBe('finish');
        // Let the KV events of this prefill reach the router before the next request is routed.
        await new Promise((resolve) => setImmediate(resolve));
      }
      return cluster.prefill.reduce((sum, w) => sum + (w.engine as SimEngine).stats().cachedTokens, 0);
    } finally {
      await cluster.close();
    }
  }

  it('caches more prompt tokens than round-robin when requests share long prefixes', async () => {
    const prompts = [prompt(1, 1), prompt(1, 2), prompt(2, 1), prompt(2, 2), prompt(1, 3), prompt(1, 4), prompt(2, 3), prompt(2, 4)];
    const roundRobin = await cachedTokens('round-robin', prompts);
    const kvAware = await cachedTokens('kv-aware', prompts);
    console.log(`cached prompt tokens: round-robin ${roundRobin}, kv-aware ${kvAware}`);
    expect(kvAware).toBeGreaterThan(roundRobin);
  });
});

describe('KvRouterFeed over a transport', () => {
  it('indexes only prefill workers discovery lists, in the listed incarnation', async () => {
    const { MemoryTransport } = await import('../src/transport/memory/memory-transport.js');
    const { kvEventsSubject } = await import('../src/protocol/subjects.js');
    const transport = new MemoryTransport({ clock: realClock });
    const discovery = new MemoryDiscovery({ clock: realClock });
    await discovery.register({ instanceId: 'p0', role: 'prefill', model: 'm', epoch: 4, subjectPrefix: 'tandem.prefill.p0' });
    const feed = new KvRouterFeed({ transport, discovery, random: seededRandom(1), log: silentLogger });
    feed.start();
    const hashes = blockHashes(prompt(3, 3), blockTokens);
    const publish = (worker: string, epoch: number, seq: number) =>
      transport.publish(kvEventsSubject, encode('kv_events', { worker, epoch, seq, kind: 'stored', blocks: hashes.slice(0, 2) }));
    publish('forged', 1, 0);
    publish('p0', 99, 0);
    publish('p0', 3, 0);
    await waitFor(() => feed.ignoredEvents === 3, 2000, 'three ignored events');
    expect(feed.indexer.stats()).toMatchObject({ workers: 0, entries: 0 });
    publish('p0', 4, 0);
    await waitFor(() => feed.indexer.blocksOf('p0').length === 2, 2000, 'the listed worker indexed');
    expect(feed.indexer.blocksOf('p0')).toEqual(hashes.slice(0, 2));
    expect(feed.ignoredEvents).toBe(3);
    feed.stop();
    await transport.close();
  });
});

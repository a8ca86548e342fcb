import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EngineKvEvent, SamplingParams } from '../src/engine/engine.js';
import { LlamaEngine } from '../src/engine/llama/llama-engine.js';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { blockHashes, defaultBlockTokens } from '../src/kv/prefix-hash.js';
import { waitForIdle } from './helpers/cluster-idle.js';
import { promptOfLength, writeTinyModels, type TinyModels } from './helpers/llama-fixture.js';

const greedy: SamplingParams = { temperature: 0, topP: 1, seed: 0, maxTokens: 10, ignoreEos: true };

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

describe('llama engine prefix cache', () => {
  let models: TinyModels;
  let plain: LlamaEngine;
  let cached: LlamaEngine;
  let decode: LlamaEngine;
  const events: EngineKvEvent[] = [];

  beforeAll(async () => {
    models = await writeTinyModels();
    plain = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1 });
    cached = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1, prefixCacheSequencesMax: 1, onKvEvent: (event) => events.push(event) });
    decode = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1 });
  }, 60_000);

  afterAll(async () => {
    for (const engine of [plain, cached, decode]) await engine?.close();
    models?.remove();
  });

  /** Prefills on `engine`, then decodes greedily on the decode engine from the transferred state. */
  async function generate(engine: LlamaEngine, tokens: number[]): Promise<{ output: number[]; kvBytes: number; evaluated: number }> {
    const before = engine.stats().evaluatedTokens;
    const { firstToken, kv } = await engine.prefill(tokens, greedy);
    const evaluated = engine.stats().evaluatedTokens - before;
    const sequence = await decode.loadSequence(kv, tokens.length, firstToken, greedy);
    const output = [firstToken];
    while (output.length < greedy.maxTokens) output.push((await decode.decodeStep([sequence]))[0]!);
    decode.releaseSequence(sequence);
    return { output, kvBytes: kv.byteLength, evaluated };
  }

  it('gives the same greedy output as an uncached prefill while evaluating only what is not cached, and reports blocks stored and removed', async () => {
    const a = plain.tokenize(promptOfLength(100, 1));
    const aLonger = [...a, ...plain.tokenize(promptOfLength(60, 2)).slice(1)];
    const b = plain.tokenize(promptOfLength(90, 5));
    // A, A extended, a different B (evicting A: one cached sequence), then A again.
    const prompts = [a, aLonger, b, a];
    const expectedCached = [0, a.length, commonPrefix(aLonger, b), commonPrefix(b, a)];
    expect(expectedCached[2]).toBeLessThan(defaultBlockTokens);
    const measured: string[] = [];
    for (const [i, tokens] of prompts.entries()) {
      const reference = await generate(plain, tokens);
      const result = await generate(cached, tokens);
      expect(result.output, `prompt ${i}`).toEqual(reference.output);
      expect(result.kvBytes, `prompt ${i}`).toBe(reference.kvBytes);
      expect(reference.evaluated).toBe(tokens.length);
      expect(cached.stats().lastCachedTokens, `prompt ${i}`).toBe(expectedCached[i]);
      expect(result.evaluated, `prompt ${i}`).toBe(tokens.length - expectedCached[i]!);
      measured.push(`${tokens.length} tokens: ${reference.evaluated} evaluated without the cache, ${result.evaluated} with it`);
    }
    console.log(`llama prefix cache: ${measured.join('; ')}`);
    const stats = cached.stats();
    expect(stats).toMatchObject({ prefills: 4, promptTokens: a.length * 2 + aLonger.length + b.length, prefixCacheSequences: 1 });
    expect(stats.cachedTokens).toBe(expectedCached.reduce((sum, n) => sum + n, 0));
    expect(stats.evaluatedTokens).toBe(stats.promptTokens - stats.cachedTokens);

    const hashes = (tokens: number[]): string[] => blockHashes(tokens, defaultBlockTokens);
    expect(events.map((event) => event.seq)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(events.map((event) => [event.kind, event.blocks])).toEqual([
      ['stored', hashes(a)],
      ['stored', hashes(aLonger).slice(hashes(a).length)],
      ['removed', hashes(aLonger)],
      ['stored', hashes(b)],
      ['removed', hashes(b)],
      ['stored', hashes(a)],
    ]);
    expect(cached.kvSnapshot()).toEqual({ seq: 5, blocks: hashes(a) });
    expect(stats.prefixCacheBlocks).toBe(hashes(a).length);
  }, 30_000);

  it('runs prefills uncached when every cached sequence is busy, with the same output', async () => {
    const prompts = [0, 1, 2].map((salt) => plain.tokenize(promptOfLength(70, salt)));
    const reference = await Promise.all(prompts.map((tokens) => plain.prefill(tokens, greedy)));
    const before = cached.stats();
    const results = await Promise.all(prompts.map((tokens) => cached.prefill(tokens, greedy)));
    expect(results.map((result) => result.firstToken)).toEqual(reference.map((result) => result.firstToken));
    expect(results.map((result) => result.kv.byteLength)).toEqual(reference.map((result) => result.kv.byteLength));
    expect(cached.stats().prefills - before.prefills).toBe(3);
    expect(cached.stats().prefixCacheSequences).toBe(1);
    // Every plain slot is back: three sequences load at once beside the cached one.
    const loaded = await Promise.all(results.map((result, i) => cached.loadSequence(result.kv, prompts[i]!.length, result.firstToken, greedy)));
    for (const sequence of loaded) cached.releaseSequence(sequence);
  }, 30_000);

  it('refuses a cache that would take every sequence, or one beside keepPrefilled', async () => {
    await expect(LlamaEngine.load({ modelPath: models.model, sequencesMax: 2, threads: 1, prefixCacheSequencesMax: 2 })).rejects.toThrow(/below sequencesMax/);
    await expect(LlamaEngine.load({ modelPath: models.model, sequencesMax: 2, threads: 1, prefixCacheSequencesMax: 1, keepPrefilled: true })).rejects.toThrow(/keepPrefilled/);
  });
});

describe('llama prefix cache behind KV-aware routing', () => {
  let models: TinyModels;
  const clusters: Cluster[] = [];

  beforeAll(async () => {
    models = await writeTinyModels();
  });

  afterAll(async () => {
    for (const cluster of clusters) await cluster.close();
    models?.remove();
  });

  async function complete(cluster: Cluster, prompt: string): Promise<string> {
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', prompt, max_tokens: 8, temperature: 0, ignore_eos: true }),
    });
    const body = (await response.json()) as { choices?: Array<{ text: string }> };
    expect(response.status, JSON.stringify(body)).toBe(200);
    return body.choices?.[0]?.text ?? '';
  }

  it('sends shared-prefix requests to the worker that caches the prefix, with the text of an aggregated run', async () => {
    const llama = { modelPath: models.model, modelName: 'tiny', threads: 1, sequencesMax: 4 };
    const aggregated = await createCluster({ mode: 'aggregated', llama, port: 0, seed: 5, log: silentLogger });
    clusters.push(aggregated);
    const routed = await createCluster({ llama, routing: 'kv-aware', prefillWorkers: 2, port: 0, seed: 5, log: silentLogger });
    clusters.push(routed);
    const shared = promptOfLength(160, 3);
    const prompts = [0, 1, 2, 3].map((salt) => `${shared}${promptOfLength(30, salt + 4)}`);
    for (const prompt of prompts) {
      const expected = await complete(aggregated, prompt);
      expect(await complete(routed, prompt)).toBe(expected);
      // Let this prefill's KV events reach the router before the next request is routed.
      await new Promise((resolve) => setImmediate(resolve));
    }
    const engines = routed.prefill.map((worker) => worker.engine as LlamaEngine);
    const cachedTokens = engines.map((engine) => engine.stats().cachedTokens);
    console.log(`llama kv-aware: cached prompt tokens per prefill worker ${cachedTokens.join(', ')}`);
    // After the first request the prefix is cached on one worker, and the router keeps sending the prefix there.
    expect(cachedTokens.reduce((sum, n) => sum + n, 0)).toBeGreaterThanOrEqual(3 * 160);
    expect(engines.some((engine) => engine.kvSnapshot().blocks.length > 0)).toBe(true);
    await waitForIdle(routed);
  }, 30_000);
});

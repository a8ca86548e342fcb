import { afterEach, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { sseData } from './helpers/sse.js';

const model = 'tandem-sim';
const maxTokens = 60;

// Decoding takes 5 ms a token, so a 60-token request streams for about 300 ms: long enough to kill
// its decode worker after the first few tokens.
async function startCluster(migrationsMax?: number): Promise<Cluster> {
  return createCluster({
    port: 0,
    log: silentLogger,
    seed: 8,
    decodeWorkers: 2,
    ...(migrationsMax !== undefined ? { migrationsMax } : {}),
    engine: { speedup: 1, timing: { decodeBaseMs: 5, prefillBaseMs: 0, prefillPerTokenMs: 0, prefillPerTokenSquaredMs: 0 } },
  });
}

const body = { model, prompt: 'migrate me', max_tokens: maxTokens, temperature: 0, seed: 42, ignore_eos: true, stream: true, stream_options: { include_usage: true } };

interface Chunk {
  choices?: Array<{ text: string; finish_reason: string | null }>;
  usage?: { prompt_tokens: number; completion_tokens: number };
  error?: { message: string; code?: string };
}

/** Streams the request; after `killAfter` text chunks, stops the decode worker serving it. */
async function streamed(cluster: Cluster, killAfter?: number): Promise<{ text: string; finish: string | null; usage?: Chunk['usage']; error?: Chunk['error']; textAtKill: string }> {
  const response = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(response.status).toBe(200);
  let text = '';
  let textAtKill = '';
  let finish: string | null = null;
  let usage: Chunk['usage'];
  let error: Chunk['error'];
  let chunks = 0;
  for await (const data of sseData(response.body!)) {
    if (data === '[DONE]') break;
    const chunk = JSON.parse(data) as Chunk;
    if (chunk.error) error = chunk.error;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices ?? []) {
      text += choice.text;
      finish = choice.finish_reason ?? finish;
    }
    if (killAfter !== undefined && chunks === killAfter + 2) {
      // The stream now comes from the surviving worker, and its load is counted there alone.
      const serving = cluster.decode.find((worker) => cluster.stats().decode[cluster.decode.indexOf(worker)]!.activeRequests === 1)!;
      expect(Object.keys(cluster.frontend!.routingLoad().decode)).toEqual([serving.instanceId]);
    }
    if (++chunks === killAfter) {
      textAtKill = text;
      const serving = cluster.stats().decode.findIndex((worker) => worker.activeRequests === 1);
      expect(serving).toBeGreaterThanOrEqual(0);
      await cluster.decode[serving]!.stop();
    }
  }
  return { text, finish, textAtKill, ...(usage ? { usage } : {}), ...(error ? { error } : {}) };
}

describe('request migration', () => {
  let cluster: Cluster | undefined;

  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  it('moves a streamed request to another decode worker when its worker dies, without losing or repeating tokens', async () => {
    cluster = await startCluster();
    const uninterrupted = await streamed(cluster);
    expect(uninterrupted.text).toHaveLength(maxTokens);

    const migrated = await streamed(cluster, 5);
    expect(migrated.error).toBeUndefined();
    expect(migrated.finish).toBe('length');
    expect(migrated.usage).toEqual(uninterrupted.usage);
    expect(migrated.usage?.completion_tokens).toBe(maxTokens);
    // The sim engine's tokens are one character each, so the text length is the token count.
    expect(migrated.text).toHaveLength(maxTokens);
    expect(migrated.textAtKill.length).toBeGreaterThan(0);
    expect(migrated.textAtKill.length).toBeLessThan(maxTokens);
    // The other decode worker prefilled prompt + the tokens already streamed and went on from
    // there: the client's text is exactly the uninterrupted run's, nothing repeated or missing.
    expect(migrated.text).toBe(uninterrupted.text);
    expect(cluster.frontend!.routingLoad()).toMatchObject({ prefill: {}, decode: {} });
    expect(cluster.frontend!.migrations).toBe(1);
    const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
    expect(metrics).toMatch(/^tandem_migrations_total 1$/m);
  });

  it('fails the request with a clear error when migration is disabled', async () => {
    cluster = await startCluster(0);
    const result = await streamed(cluster, 5);
    expect(result.finish).toBeNull();
    expect(result.error?.message).toMatch(/migration is disabled/);
    expect(cluster.frontend!.migrations).toBe(0);
  });
});

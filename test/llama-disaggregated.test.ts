import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlamaEngine } from '../src/engine/llama/llama-engine.js';
import { createCluster, ErrorCode, silentLogger, type Cluster } from '../src/index.js';
import { runAggregated } from '../src/internal.js';
import { llamaEngineFactory } from '../src/runtime/engine-factory.js';
import { waitForIdle } from './helpers/cluster-idle.js';
import { promptOfLength, writeTinyModels, type TinyModels } from './helpers/llama-fixture.js';

// The llama engine behind the real actors, in one process: memory transport, simulated fabric.

const maxTokens = 12;
const lengths = [4, 50, 400, 1200];

interface Completion {
  status: number;
  text: string;
  body: { error?: { code?: string; message?: string }; choices?: Array<{ text: string; finish_reason: string }> };
}

async function complete(url: string, model: string, prompt: string): Promise<Completion> {
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true }),
  });
  const body = (await response.json()) as Completion['body'];
  return { status: response.status, text: body.choices?.[0]?.text ?? '', body };
}

describe('llama engine in an in-process cluster', () => {
  let models: TinyModels;
  let reference: LlamaEngine;
  const expected = new Map<string, string>();
  const clusters: Cluster[] = [];

  beforeAll(async () => {
    models = await writeTinyModels();
    reference = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1, keepPrefilled: true });
    for (const [i, length] of lengths.entries()) {
      const prompt = promptOfLength(length, i);
      const tokens = await runAggregated(reference, reference.tokenize(prompt), { temperature: 0, topP: 1, seed: 0, maxTokens, ignoreEos: true });
      const detokenizer = reference.createDetokenizer();
      expected.set(prompt, detokenizer.push(tokens) + detokenizer.flush());
    }
  }, 60_000);

  afterAll(async () => {
    for (const cluster of clusters) await cluster.close();
    await reference?.close();
    models?.remove();
  });

  async function start(mode: 'disaggregated' | 'aggregated', prefillModel?: string): Promise<Cluster> {
    const config = { modelPath: models.model, modelName: 'tiny', threads: 1, sequencesMax: 4 };
    const factory = llamaEngineFactory(config, mode);
    const other = prefillModel ? llamaEngineFactory({ ...config, modelPath: prefillModel }, mode) : undefined;
    const cluster = await createCluster({
      mode,
      port: 0,
      seed: 3,
      log: silentLogger,
      engineFactory: (role, hooks) => (role === 'prefill' && other ? other(role, hooks) : factory(role, hooks)),
    });
    clusters.push(cluster);
    return cluster;
  }

  for (const mode of ['disaggregated', 'aggregated'] as const) {
    it(`serves greedy output equal to one context's, token for token, prompts of ${lengths.join(', ')} tokens (${mode})`, async () => {
      const cluster = await start(mode);
      const prompts = [...expected.keys()];
      const results = await Promise.all(prompts.map((prompt) => complete(cluster.url, 'tiny', prompt)));
      for (const [i, prompt] of prompts.entries()) {
        expect(results[i]!.status, JSON.stringify(results[i]!.body)).toBe(200);
        expect(results[i]!.text, `prompt ${i}`).toBe(expected.get(prompt));
      }
      const stats = cluster.stats();
      if (mode === 'disaggregated') expect(stats.prefill[0]!.retired.released).toBe(prompts.length);
      expect(stats.decode[0]!.finished.done).toBe(prompts.length);
      await waitForIdle(cluster);
    }, 60_000);
  }

  it('answers a chat completion through the model chat template', async () => {
    const cluster = clusters[0]!;
    const response = await fetch(`${cluster.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hello' }], max_tokens: 5, temperature: 0 }),
    });
    const body = (await response.json()) as { usage?: { prompt_tokens: number } };
    expect(response.status).toBe(200);
    // <s> + '<|user|>\nhello\n<|assistant|>\n' byte by byte (a leading '▁' too).
    expect(body.usage?.prompt_tokens).toBe(reference.tokenize('<|user|>\nhello\n<|assistant|>\n').length);
  });

  it('refuses KV computed by another model of the same shapes and fails the request cleanly, giving every page back', async () => {
    const cluster = await start('disaggregated', models.other);
    const refused = await complete(cluster.url, 'tiny', promptOfLength(80));
    expect(refused.status).toBe(500);
    expect(refused.body.error?.code).toBe(ErrorCode.KvMismatch);
    expect(refused.body.error?.message).toMatch(/KV payload refused: it is for model 'gguf-sha256:[0-9a-f]+', this worker serves/);
    await waitForIdle(cluster);
    expect(cluster.stats().decode[0]!.finished.failed).toBe(1);
  }, 30_000);
});

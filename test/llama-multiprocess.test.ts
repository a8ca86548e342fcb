import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlamaEngine } from '../src/engine/llama/llama-engine.js';
import { runAggregated } from '../src/internal.js';
import { promptOfLength, writeTinyModels, type TinyModels } from './helpers/llama-fixture.js';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { healthCounts, startTandem, stopAll, waitForWorkers, type TandemProcess } from './helpers/tandem-process.js';

// `tandem frontend|worker --model`: a GGUF model served by a frontend (vocabulary only), a
// prefill worker and a decode worker, each its own process; the KV state moves between the
// prefill and decode processes over the TCP fabric.

const maxTokens = 10;

interface WorkerView {
  role: 'prefill' | 'decode';
  stats?: { finished?: { done: number }; retired?: { released: number }; region?: { rejectedWrites: number } };
}

async function workers(url: string): Promise<WorkerView[]> {
  return ((await (await fetch(`${url}/cluster`)).json()) as { workers: WorkerView[] }).workers;
}


describe('llama engine across processes over NATS and the TCP fabric', () => {
  let models: TinyModels;
  let nats: NatsServer;
  const processes: TandemProcess[] = [];
  let url = '';
  let common: string[] = [];

  beforeAll(async () => {
    models = await writeTinyModels();
    nats = await startNatsServer();
    common = ['--nats', nats.url, '--model', models.model, '--threads', '1', '--sequences', '4', '--log-level', 'warn', '--heartbeat-ms', '250'];
    for (const role of ['prefill', 'decode']) processes.push(startTandem(role, ['worker', '--role', role, ...common]));
    const frontend = startTandem('frontend', ['frontend', '--port', '0', ...common, '--log-level', 'info']);
    processes.push(frontend);
    url = (await frontend.waitFor(/frontend listening .*url=(http:\/\/\S+)/, 30_000))[1]!;
    await waitForWorkers(url, { prefill: 1, decode: 1 }, processes, 30_000);
  }, 60_000);

  afterAll(async () => {
    await stopAll(processes);
    await nats?.stop();
    models?.remove();
  }, 30_000);

  it('streams greedy output equal to one context, token for token, for prompts of 5 to 1100 tokens', async () => {
    const reference = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1, keepPrefilled: true });
    const prompts = [5, 60, 500, 1100].map((length, i) => promptOfLength(length, i));
    try {
      const texts = await Promise.all(
        prompts.map(async (prompt) => {
          const response = await fetch(`${url}/v1/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: 'tiny-llama', prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true }),
          });
          const body = (await response.json()) as { choices?: Array<{ text: string }> };
          expect(response.status, JSON.stringify(body)).toBe(200);
          return body.choices?.[0]?.text;
        }),
      );
      for (const [i, prompt] of prompts.entries()) {
        const tokens = await runAggregated(reference, reference.tokenize(prompt), { temperature: 0, topP: 1, seed: 0, maxTokens, ignoreEos: true });
        const detokenizer = reference.createDetokenizer();
        expect(texts[i], `prompt ${i}`).toBe(detokenizer.push(tokens) + detokenizer.flush());
      }
    } finally {
      await reference.close();
    }
    const view = await workers(url);
    const decode = view.find((worker) => worker.role === 'decode');
    const prefill = view.find((worker) => worker.role === 'prefill');
    expect(prefill?.stats?.retired?.released).toBe(prompts.length);
    expect(decode?.stats?.finished?.done).toBe(prompts.length);
    expect(decode?.stats?.region?.rejectedWrites).toBe(0);
  }, 60_000);

  it('refuses KV from a prefill process serving other weights under the same name: the client gets kv_mismatch, every page comes back', async () => {
    const good = processes[0]!;
    good.kill('SIGTERM');
    expect(await good.exited()).toBe(0);
    processes.push(startTandem('prefill-other', ['worker', '--role', 'prefill', ...common, '--model', models.other, '--model-name', 'tiny-llama']));
    // Starting a process that loads and hashes a model can take long on a loaded machine.
    const deadline = Date.now() + 45_000;
    while ((await workers(url)).filter((worker) => worker.role === 'prefill').length !== 1 || (await healthCounts(url)).prefill !== 1) {
      if (Date.now() > deadline) throw new Error(`the other prefill worker did not register\n${processes.at(-1)!.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const response = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', prompt: promptOfLength(200), max_tokens: maxTokens, temperature: 0 }),
    });
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    expect(response.status).toBe(500);
    expect(body.error?.code).toBe('kv_mismatch');
    expect(body.error?.message).toMatch(/KV payload refused: it is for model 'gguf-sha256:/);
    for (const poll = Date.now() + 10_000; ; ) {
      const decode = (await workers(url)).find((worker) => worker.role === 'decode') as { stats?: { pool?: { free: number; capacity: number } } } | undefined;
      if (decode?.stats?.pool && decode.stats.pool.free === decode.stats.pool.capacity) break;
      if (Date.now() > poll) throw new Error(`decode pages did not come back: ${JSON.stringify(decode?.stats?.pool)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }, 90_000);
});

import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SimEngine } from '../src/engine/sim/sim-engine.js';
import { realClock, runAggregated } from '../src/internal.js';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { healthCounts, startTandem, stopAll, waitForWorkers, type TandemProcess } from './helpers/tandem-process.js';

// The whole flow across processes: nats-server, a frontend, two prefill and two decode workers,
// each its own process; KV moves between processes over the TCP fabric.

interface WorkerStats {
  retired: { released: number };
  finished: { done: number };
  region: { rejectedWrites: number };
  pool: { free: number; capacity: number };
}

interface ClusterView {
  workers: Array<{ instance_id: string; role: 'prefill' | 'decode'; stats?: WorkerStats; error?: unknown }>;
}

export async function clusterView(url: string): Promise<ClusterView> {
  return (await (await fetch(`${url}/cluster`)).json()) as ClusterView;
}


const engineArgs = ['--speedup', '20', '--log-level', 'warn', '--heartbeat-ms', '250'];

describe('multi-process cluster over NATS and the TCP fabric', () => {
  let nats: NatsServer;
  const processes: TandemProcess[] = [];
  let url = '';

  beforeAll(async () => {
    nats = await startNatsServer();
    const common = ['--nats', nats.url, ...engineArgs];
    for (const role of ['prefill', 'prefill', 'decode', 'decode']) {
      processes.push(startTandem(role, ['worker', '--role', role, ...common]));
    }
    const frontend = startTandem('frontend', ['frontend', '--port', '0', ...common, '--log-level', 'info']);
    processes.push(frontend);
    url = (await frontend.waitFor(/frontend listening .*url=(http:\/\/\S+)/))[1]!;
    await waitForWorkers(url, { prefill: 2, decode: 2 }, processes);
  }, 60_000);

  afterAll(async () => {
    await stopAll(processes);
    await nats?.stop();
  }, 30_000);

  it('streams correct output through the openai client, and every worker serves some requests', async () => {
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const reference = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const prompts = Array.from({ length: 16 }, (_, i) => `request ${i}: ${'the quick brown fox '.repeat(1 + (i % 7))}`);
    const results = await Promise.all(
      prompts.map(async (prompt, i) => {
        const stream = await client.completions.create({ model: 'tandem-sim', prompt, max_tokens: 10, temperature: 0, seed: i, stream: true });
        let text = '';
        for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
        return text;
      }),
    );
    for (const [i, prompt] of prompts.entries()) {
      const tokens = await runAggregated(reference, reference.tokenize(prompt), { temperature: 0, topP: 1, seed: i, maxTokens: 10, ignoreEos: false });
      const detokenizer = reference.createDetokenizer();
      expect(results[i], `request ${i}`).toBe(detokenizer.push(tokens) + detokenizer.flush());
    }

    const view = await clusterView(url);
    const prefill = view.workers.filter((w) => w.role === 'prefill');
    const decode = view.workers.filter((w) => w.role === 'decode');
    expect(prefill).toHaveLength(2);
    expect(decode).toHaveLength(2);
    for (const worker of prefill) expect(worker.stats?.retired.released, worker.instance_id).toBeGreaterThan(0);
    for (const worker of decode) {
      expect(worker.stats?.finished.done, worker.instance_id).toBeGreaterThan(0);
      expect(worker.stats?.region.rejectedWrites).toBe(0);
    }
    const settled = await clusterView(url);
    for (const worker of settled.workers.filter((w) => w.role === 'decode')) expect(worker.stats?.pool.free).toBe(worker.stats?.pool.capacity);
  }, 60_000);

  it('takes a drained decode worker out of routing and keeps serving on the other', async () => {
    const victim = processes[3]!;
    victim.kill('SIGTERM');
    expect(await victim.exited()).toBe(0);
    expect(victim.output()).toMatch(/SIGTERM: draining/);
    let decodeWorkers = -1;
    const deadline = Date.now() + 5000;
    while (decodeWorkers !== 1 && Date.now() < deadline) {
      decodeWorkers = (await healthCounts(url)).decode;
      if (decodeWorkers !== 1) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(decodeWorkers).toBe(1);
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
    for (let i = 0; i < 4; i++) {
      const completion = await client.completions.create({ model: 'tandem-sim', prompt: `after drain ${i}`, max_tokens: 4 });
      expect(completion.choices[0]?.finish_reason).toBe('length');
    }
  }, 30_000);
});

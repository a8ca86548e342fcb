import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { startTandem, stopAll, waitForWorkers, type TandemProcess } from './helpers/tandem-process.js';

// `--routing kv-aware` across processes: two prefill worker processes publish KV events over
// NATS, the frontend process follows them and sends every request that shares a long prefix to
// the worker that already holds it (round-robin would alternate).

interface ClusterView {
  routing: { mode: string };
  workers: Array<{ instance_id: string; role: 'prefill' | 'decode'; stats?: { retired?: { released: number }; prefixCacheBlocks?: number } }>;
}

describe('KV-aware routing across processes', () => {
  let nats: NatsServer;
  const processes: TandemProcess[] = [];
  let url = '';

  beforeAll(async () => {
    nats = await startNatsServer();
    const common = ['--nats', nats.url, '--routing', 'kv-aware', '--speedup', 'inf', '--log-level', 'warn', '--heartbeat-ms', '250'];
    for (const role of ['prefill', 'prefill', 'decode']) processes.push(startTandem(role, ['worker', '--role', role, ...common]));
    const frontend = startTandem('frontend', ['frontend', '--port', '0', ...common, '--log-level', 'info']);
    processes.push(frontend);
    url = (await frontend.waitFor(/frontend listening .*url=(http:\/\/\S+)/))[1]!;
    await waitForWorkers(url, { prefill: 2, decode: 1 }, processes);
  }, 60_000);

  afterAll(async () => {
    await stopAll(processes);
    await nats?.stop();
  }, 30_000);

  it('sends every request sharing a prefix to the prefill worker that caches it', async () => {
    const prefix = 'You are a careful assistant who answers in one short sentence. '.repeat(4);
    const complete = async (suffix: string): Promise<void> => {
      const response = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tandem-sim', prompt: `${prefix}${suffix}`, max_tokens: 4 }),
      });
      expect(response.status).toBe(200);
    };
    await complete('first question');
    // Let the first prefill's KV event cross NATS to the frontend (it takes about a millisecond).
    await new Promise((resolve) => setTimeout(resolve, 500));
    for (let i = 0; i < 5; i++) await complete(`question ${i}`);
    const view = (await (await fetch(`${url}/cluster`)).json()) as ClusterView;
    expect(view.routing.mode).toBe('kv-aware');
    const prefill = view.workers.filter((worker) => worker.role === 'prefill').map((worker) => worker.stats!);
    const released = prefill.map((stats) => stats.retired!.released).sort((a, b) => b - a);
    console.log(`requests per prefill worker: ${released.join(', ')}; prefix-cache blocks: ${prefill.map((s) => s.prefixCacheBlocks).join(', ')}`);
    expect(released).toEqual([6, 0]);
    expect(Math.max(...prefill.map((stats) => stats.prefixCacheBlocks!))).toBeGreaterThanOrEqual(Math.floor(prefix.length / 16));
  }, 30_000);
});

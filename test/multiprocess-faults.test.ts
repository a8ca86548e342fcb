import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { startTandem, type TandemProcess } from './helpers/tandem-process.js';

// Faults with real processes under a steady load: kill -9 of a prefill worker, of a decode
// worker, and a restart of nats-server. Every request completes or fails with a clear error
// within its deadline (none hangs), new requests succeed once the cluster settles, and the
// surviving workers' page pools return to full.

/** Per-state deadlines of the cluster under test: a request can spend at most their sum (24 s). */
const deadlines = { bootstrap_ms: 1000, allocation_ms: 2000, prefill_ms: 2000, transfer_ms: 4000, polling_ms: 4000, cleanup_ms: 1000, decode_ms: 8000 };
/** A request that has not answered within its deadlines, plus a margin, counts as hung. */
const hungAfterMs = 3 * deadlines.bootstrap_ms + Object.values(deadlines).reduce((sum, ms) => sum + ms, 0) + 4000;
const common = ['--speedup', '20', '--log-level', 'warn', '--heartbeat-ms', '250', '--deadlines', JSON.stringify(deadlines)];

interface Outcome {
  kind: 'completed' | 'failed' | 'hung';
  detail: string;
}

async function oneRequest(url: string, i: number): Promise<Outcome> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), hungAfterMs);
  try {
    const response = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tandem-sim', prompt: `steady load ${i} `.repeat(8), max_tokens: 12, stream: true, ignore_eos: true }),
      signal: controller.signal,
    });
    const text = await response.text();
    if (!response.ok) {
      const body = JSON.parse(text) as { error?: { code?: string } };
      return { kind: 'failed', detail: `HTTP ${response.status} ${body.error?.code ?? 'no code'}` };
    }
    if (text.includes('"error"')) {
      const match = text.match(/"code":"([a-z_]+)"/);
      return { kind: 'failed', detail: `in-band ${match?.[1] ?? 'no code'}` };
    }
    return text.includes('[DONE]') ? { kind: 'completed', detail: 'ok' } : { kind: 'failed', detail: 'stream ended without [DONE]' };
  } catch (error) {
    if (controller.signal.aborted) return { kind: 'hung', detail: `no answer within ${hungAfterMs} ms` };
    return { kind: 'failed', detail: `client error: ${String(error)}` };
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `concurrency` clients in a loop until stopped; returns every outcome. */
function steadyLoad(url: string, concurrency: number) {
  const outcomes: Outcome[] = [];
  let running = true;
  let next = 0;
  const clients = Array.from({ length: concurrency }, async () => {
    while (running) outcomes.push(await oneRequest(url, next++));
  });
  return {
    outcomes,
    async stop(): Promise<Outcome[]> {
      running = false;
      await Promise.all(clients);
      return outcomes;
    },
  };
}

function tally(outcomes: Outcome[]): Record<string, number> {
  const counts: Record<string, number> = { completed: 0, failed: 0, hung: 0 };
  for (const outcome of outcomes) {
    counts[outcome.kind] = (counts[outcome.kind] ?? 0) + 1;
    if (outcome.kind !== 'completed') counts[outcome.detail] = (counts[outcome.detail] ?? 0) + 1;
  }
  return counts;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 20_000, describe?: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${describe ? `: ${JSON.stringify(await describe())}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

interface View {
  workers: Array<{ instance_id: string; role: string; stats?: { pool?: { free: number; capacity: number }; rooms?: number } }>;
}

async function view(url: string): Promise<View> {
  return (await (await fetch(`${url}/cluster`)).json()) as View;
}

describe('faults with real processes', () => {
  let nats: NatsServer;
  let url = '';
  const workers: Record<string, TandemProcess> = {};
  let frontend: TandemProcess;

  beforeAll(async () => {
    nats = await startNatsServer();
    const args = ['--nats', nats.url, ...common];
    for (const name of ['prefill-a', 'prefill-b', 'decode-a', 'decode-b']) {
      workers[name] = startTandem(name, ['worker', '--role', name.split('-')[0]!, ...args]);
    }
    frontend = startTandem('frontend', ['frontend', '--port', '0', ...args, '--log-level', 'info']);
    url = (await frontend.waitFor(/frontend listening .*url=(http:\/\/\S+)/))[1]!;
    await until('4 workers registered', async () => (await view(url)).workers.length === 4, 30_000);
  }, 60_000);

  afterAll(async () => {
    for (const child of [...Object.values(workers), frontend]) child?.kill('SIGKILL');
    await nats?.stop();
  }, 30_000);

  it('survives kill -9 of a prefill worker, of a decode worker, and a nats-server restart', { timeout: 120_000 }, async () => {
    const load = steadyLoad(url, 4);
    await new Promise((resolve) => setTimeout(resolve, 1500));

    workers['prefill-a']!.kill('SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 2500));
    workers['decode-a']!.kill('SIGKILL');
    await new Promise((resolve) => setTimeout(resolve, 2500));
    await nats.restart();
    await new Promise((resolve) => setTimeout(resolve, 4000));

    const during = tally(await load.stop());
    console.log('under faults:', JSON.stringify(during));
    expect(during.hung).toBe(0);
    expect(during.completed).toBeGreaterThan(0);

    // Settled: the dead workers have left routing and new requests all succeed.
    await until('dead workers to leave routing', async () => (await view(url)).workers.length === 2);
    const after: Outcome[] = [];
    for (let i = 0; i < 8; i++) after.push(await oneRequest(url, 10_000 + i));
    console.log('after settling:', JSON.stringify(tally(after)));
    expect(after.every((outcome) => outcome.kind === 'completed')).toBe(true);

    // The survivors give every page and room back.
    await until('surviving pools to be full', async () => {
      const { workers: live } = await view(url);
      return live.every((w) => (w.role === 'decode' ? w.stats?.pool?.free === w.stats?.pool?.capacity : w.stats?.rooms === 0));
    }, 20_000, () => view(url));
  });
});

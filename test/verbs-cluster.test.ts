// A whole cluster (frontend, decode and prefill workers, memory transport) moving its KV over the
// verbs fabric on the fake verbs table (no RDMA device here): a request is served from KV that
// arrived by RDMA WRITE_WITH_IMM, and a failed work completion reaches the request machine as
// transfer_failed, fails the request fast, and gives every page and room back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { realClock, runAggregated } from '../src/internal.js';
import { SimEngine } from '../src/engine/sim/sim-engine.js';
import type { Fabric } from '../src/fabric/fabric.js';
import { fakeVerbsLibraryPath, verbsAvailability } from '../src/fabric/verbs/verbs-addon.js';
import { WcStatus } from '../src/fabric/verbs/verbs-errors.js';
import { createVerbsFabric } from '../src/fabric/verbs/verbs-fabric.js';
import { memoryBackends, type BackendsFactory } from '../src/runtime/backends.js';
import { waitForIdle } from './helpers/cluster-idle.js';

const fake = verbsAvailability(fakeVerbsLibraryPath);
const fakeMissing = fake.reason !== 'ok' ? `the fake verbs library is not usable (${fake.reason}: ${fake.message})` : undefined;
console.log(fakeMissing ? `verbs cluster test skipped: ${fakeMissing}` : 'verbs cluster test runs through the fake verbs table (no RDMA device here)');

/** Memory transport and discovery, with every worker's fabric on the fake verbs device. */
const verbsBackends: BackendsFactory = async (context) => {
  const inner = await memoryBackends(context);
  const fabrics: Fabric[] = [];
  return {
    name: 'memory+verbs',
    transport: inner.transport,
    discovery: inner.discovery,
    async fabric() {
      const fabric = await createVerbsFabric({ host: '127.0.0.1', clock: context.clock, connectTimeoutMs: 2000, libraryPath: fakeVerbsLibraryPath, sliceBytesMax: 4096 });
      fabrics.push(fabric);
      return fabric;
    },
    async close() {
      for (const fabric of fabrics) await fabric.close();
      await inner.close();
    },
  };
};

async function complete(cluster: Cluster, prompt: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${cluster.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tandem-sim', prompt, max_tokens: 8, temperature: 0, ignore_eos: true }),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

describe.skipIf(fakeMissing !== undefined)('a cluster on the verbs fabric through the fake verbs table (no RDMA device here)', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({ port: 0, seed: 5, log: silentLogger, pageBytes: 1024, pageCount: 256, backends: verbsBackends, engine: { speedup: Number.POSITIVE_INFINITY } });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('serves a request from KV written by RDMA, counted on the decode side by its immediate', async () => {
    const prompt = 'the quick brown fox '.repeat(40);
    const { status, body } = await complete(cluster, prompt);
    expect(status).toBe(200);
    const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const reference = await runAggregated(engine, engine.tokenize(prompt), { temperature: 0, topP: 1, seed: 0, maxTokens: 8, ignoreEos: true });
    const detokenizer = engine.createDetokenizer();
    expect((body['choices'] as Array<{ text: string }>)[0]!.text).toBe(detokenizer.push(reference) + detokenizer.flush());
    const decode = cluster.stats().decode[0]!;
    expect(decode.region.completions).toBe(1);
    expect(decode.region.appliedWrites).toBeGreaterThan(0);
    await waitForIdle(cluster);
  });

  it('fails the request with transfer_failed when a work completion fails, gives everything back, and serves the next one on a new connection', async () => {
    const before = cluster.stats().decode[0]!.finished.failed;
    fake.addon!.fakeControl('fail_next_send', WcStatus.RemoteAccessError);
    const failed = await complete(cluster, 'a transfer that fails '.repeat(40));
    console.log(`client saw ${failed.status}: ${JSON.stringify(failed.body)}`);
    expect(failed.status).toBe(500);
    expect(JSON.stringify(failed.body)).toContain('transfer_failed');
    expect(cluster.stats().decode[0]!.finished.failed).toBe(before + 1);
    await waitForIdle(cluster);
    const next = await complete(cluster, 'the quick brown fox '.repeat(40));
    expect(next.status).toBe(200);
    await waitForIdle(cluster);
  });
});

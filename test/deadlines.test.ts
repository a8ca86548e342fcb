import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { waitForIdle } from './helpers/cluster-idle.js';

// Per-request deadlines (the `deadlines` extension of the request body) override the
// deployment's, and a request that outlives one fails with a clear error and gives everything back.

interface Reply {
  error: { code: string; message: string; param: string | null };
  usage: { completion_tokens: number };
}

async function complete(cluster: Cluster, body: Record<string, unknown>): Promise<{ status: number; json: Reply }> {
  const response = await fetch(`${cluster.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tandem-sim', prompt: 'deadline test prompt', ...body }),
  });
  return { status: response.status, json: (await response.json()) as Reply };
}

describe('per-request deadlines', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({
      port: 0,
      seed: 5,
      log: silentLogger,
      engine: { timing: { prefillBaseMs: 0, prefillPerTokenMs: 2, prefillPerTokenSquaredMs: 0, decodeBaseMs: 5, decodePerKvTokenMs: 0 } },
    });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('fails a request whose decode outlives its decode_ms with 504 deadline_exceeded', async () => {
    const { status, json } = await complete(cluster, { max_tokens: 400, ignore_eos: true, deadlines: { decode_ms: 40 } });
    expect(status).toBe(504);
    expect(json.error.code).toBe('deadline_exceeded');
    expect(json.error.message).toContain('40 ms');
    await waitForIdle(cluster);
  });

  it('fails a request whose KV is not posted within transfer_ms, without waiting for the deployment deadline', async () => {
    // 20 prompt tokens at 2 ms each: prefill posts the KV after about 40 ms, later than the 5 ms allowed.
    const { status, json } = await complete(cluster, { max_tokens: 2, deadlines: { transfer_ms: 5 } });
    expect(status).toBe(504);
    expect(json.error.code).toBe('deadline_exceeded');
    expect(json.error.message).toContain('5 ms');
    await waitForIdle(cluster);
  });

  it('serves a request within generous deadlines', async () => {
    const { status, json } = await complete(cluster, { max_tokens: 3, deadlines: { polling_ms: 10_000, decode_ms: 10_000 } });
    expect(status).toBe(200);
    expect(json.usage.completion_tokens).toBe(3);
  });

  it('refuses malformed deadlines with 400 naming the field', async () => {
    for (const deadlines of [{ decode_ms: 0 }, { decode_ms: 'soon' }, { decode_ms: 10 ** 9 }, { coffee_ms: 5 }]) {
      const { status, json } = await complete(cluster, { max_tokens: 2, deadlines });
      expect(status, JSON.stringify(deadlines)).toBe(400);
      expect(json.error.param).toMatch(/^deadlines/);
    }
  });
});

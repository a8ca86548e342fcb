import { describe, expect, it } from 'vitest';
import { createCluster, silentLogger } from '../src/index.js';
import type { SimEngine } from '../src/engine/sim/sim-engine.js';

// KV-aware routing through the HTTP frontend: requests that share long prefixes go to the
// prefill worker that already holds them, so more prompt tokens come from the prefix cache
// than with round-robin, measured side by side on the same requests.

async function cachedTokensAfter(routing: 'kv-aware' | 'round-robin'): Promise<number> {
  const cluster = await createCluster({ port: 0, seed: 9, log: silentLogger, prefillWorkers: 2, routing, engine: { speedup: Number.POSITIVE_INFINITY } });
  try {
    const prefixes = ['You are a careful assistant. '.repeat(6), 'Translate the following text. '.repeat(6)];
    for (let i = 0; i < 8; i++) {
      const response = await fetch(`${cluster.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tandem-sim', prompt: `${prefixes[Math.floor(i / 2) % 2]}question ${i}`, max_tokens: 2 }),
      });
      expect(response.status).toBe(200);
    }
    return cluster.prefill.reduce((sum, worker) => sum + (worker.engine as SimEngine).stats().cachedTokens, 0);
  } finally {
    await cluster.close();
  }
}

describe('KV-aware routing over HTTP', () => {
  it('serves more prompt tokens from the prefix cache than round-robin on shared prefixes', async () => {
    const kvAware = await cachedTokensAfter('kv-aware');
    const roundRobin = await cachedTokensAfter('round-robin');
    console.log(`cached prompt tokens: kv-aware ${kvAware}, round-robin ${roundRobin}`);
    expect(kvAware).toBeGreaterThan(roundRobin);
  });
});

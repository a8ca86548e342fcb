import { describe, expect, it } from 'vitest';
import { runRoutingMode } from '../simulations/routing-bench.js';
import { runSimulation } from '../simulations/run-simulation.js';
import { buildScenario, faultPlanFromPresets } from '../simulations/scenario.js';

describe('routing in the simulator', () => {
  it('gives a lower mean prefill time and TTFT with KV-aware routing than round-robin on shared prefixes', async () => {
    const rr = await runRoutingMode('round-robin', 120, 3);
    const kv = await runRoutingMode('kv-aware', 120, 3);
    console.log(
      `prefill ms/request: round-robin ${rr.prefillMsMean.toFixed(2)}, kv-aware ${kv.prefillMsMean.toFixed(2)}; ` +
        `TTFT mean: ${rr.ttftMs.mean.toFixed(2)} vs ${kv.ttftMs.mean.toFixed(2)} ms; cached ${(rr.cachedFraction * 100).toFixed(1)}% vs ${(kv.cachedFraction * 100).toFixed(1)}%`,
    );
    expect([rr.completed, kv.completed]).toEqual([120, 120]);
    expect(kv.cachedFraction).toBeGreaterThan(rr.cachedFraction);
    expect(kv.prefillMsMean).toBeLessThan(rr.prefillMsMean);
    expect(kv.ttftMs.mean).toBeLessThan(rr.ttftMs.mean);
  });

  it('is deterministic: the same seed gives the same numbers', async () => {
    const a = await runRoutingMode('kv-aware', 40, 5);
    const b = await runRoutingMode('kv-aware', 40, 5);
    expect(b).toEqual(a);
  });

  it('keeps every invariant with KV events lost, duplicated and reordered, workers crashing and partitions', async () => {
    const scenario = buildScenario({
      name: 'kv-aware-faults',
      seed: 11,
      cluster: { prefillWorkers: 3, decodeWorkers: 2, routing: 'kv-aware' },
      workload: { requests: 150, sharedPrefix: { fraction: 0.8, prefixes: 4, prefixTokens: 96 } },
      faults: faultPlanFromPresets('all'),
      probes: 8,
    });
    const result = await runSimulation(scenario);
    expect(result.violations).toEqual([]);
    expect(result.passed).toBe(true);
    const engines = result.workers.filter((worker) => worker.actor.startsWith('prefill')).map((worker) => worker.engine);
    expect(engines.reduce((sum, engine) => sum + engine.cachedTokens, 0)).toBeGreaterThan(0);
    // Lost KV events left gaps in the router's view, which it repaired by asking the workers.
    expect(result.observed['kv-router sequence gaps']).toBeGreaterThan(0);
  });
});

// KV-aware routing against round-robin in the simulator: the same seeded workload, where most
// requests share long prompt prefixes, runs once per routing mode without faults. Prints the
// prefill compute time per prefill, the share of prompt tokens served from prefix caches and the
// time to first token side by side, in virtual time (deterministic: the same numbers every run).
// `npx tsx simulations/routing-bench.ts [--requests N] [--seed S]`
import { parseArgs } from 'node:util';
import { percentiles, type Percentiles } from './report.js';
import { runSimulation } from './run-simulation.js';
import { buildScenario, type ScenarioInput } from './scenario.js';

/** What one routing mode achieved on the workload. */
export interface RoutingOutcome {
  routing: 'round-robin' | 'kv-aware';
  completed: number;
  failed: number;
  /** Mean virtual ms a prefill spent computing (uncached tokens only). */
  prefillMsMean: number;
  /** Share of prompt tokens the prefill workers found in their prefix caches. */
  cachedFraction: number;
  /** Time to first token of completed requests, virtual ms. */
  ttftMs: Percentiles;
}

/** A workload where prefixes are long and shared: 8 system prompts of 768 tokens, 90% of requests use one. */
export function sharedPrefixScenario(routing: RoutingOutcome['routing'], requests: number, seed: number): ScenarioInput {
  return {
    name: `routing-${routing}`,
    seed,
    cluster: {
      prefillWorkers: 4,
      decodeWorkers: 2,
      pageBytes: 1024,
      pageCount: 8192,
      routing,
      engine: { speedup: 1, prefixCacheBlocksMax: 256, timing: { prefillBaseMs: 2, prefillPerTokenMs: 0.05, prefillPerTokenSquaredMs: 1e-5 } },
    },
    workload: {
      requests,
      arrival: { kind: 'poisson', ratePerSec: 20 },
      promptTokens: { kind: 'uniform', min: 800, max: 1000 },
      outputTokens: { kind: 'uniform', min: 4, max: 16 },
      sharedPrefix: { fraction: 0.9, prefixes: 8, prefixTokens: 768 },
    },
    probes: 0,
  };
}

/** Runs the shared-prefix workload under one routing mode. */
export async function runRoutingMode(routing: RoutingOutcome['routing'], requests: number, seed: number): Promise<RoutingOutcome> {
  const result = await runSimulation(buildScenario(sharedPrefixScenario(routing, requests, seed)));
  if (!result.passed) throw new Error(`the ${routing} run broke an invariant: ${result.stoppedBy}`);
  const engines = result.workers.filter((worker) => worker.actor.startsWith('prefill')).map((worker) => worker.engine);
  const prefills = engines.reduce((sum, e) => sum + e.prefills, 0);
  const promptTokens = engines.reduce((sum, e) => sum + e.promptTokens, 0);
  const ttft = result.records.flatMap((record) => (record.outcome?.status === 'done' && record.tokenTimesMs.length > 0 ? [record.tokenTimesMs[0]! - record.spec.arrivalMs] : []));
  return {
    routing,
    completed: result.records.filter((record) => record.outcome?.status === 'done').length,
    failed: result.records.filter((record) => record.outcome?.status !== 'done').length,
    prefillMsMean: engines.reduce((sum, e) => sum + e.prefillMs, 0) / Math.max(1, prefills),
    cachedFraction: engines.reduce((sum, e) => sum + e.cachedTokens, 0) / Math.max(1, promptTokens),
    ttftMs: percentiles(ttft),
  };
}

/** Both modes on the same workload, printed side by side with the ratios. */
export async function compareRouting(requests: number, seed: number, log: (line: string) => void): Promise<RoutingOutcome[]> {
  const outcomes: RoutingOutcome[] = [];
  for (const routing of ['round-robin', 'kv-aware'] as const) {
    process.stderr.write(`routing bench: ${routing}, ${requests} requests...\n`);
    outcomes.push(await runRoutingMode(routing, requests, seed));
  }
  const [rr, kv] = outcomes as [RoutingOutcome, RoutingOutcome];
  const row = (o: RoutingOutcome) =>
    `${o.routing.padEnd(12)} ${o.prefillMsMean.toFixed(2).padStart(14)} ${(o.cachedFraction * 100).toFixed(1).padStart(9)}% ${o.ttftMs.mean.toFixed(2).padStart(10)} ${o.ttftMs.p50.toFixed(2).padStart(9)} ${o.ttftMs.p99.toFixed(2).padStart(9)} ${String(o.completed).padStart(6)}/${o.completed + o.failed}`;
  log(`\nrouting in the simulator (virtual time): ${requests} requests, 90% share one of 8 prefixes of 768 tokens, 4 prefill + 2 decode workers, seed ${seed}`);
  log(`${'routing'.padEnd(12)} ${'prefill ms/req'.padStart(14)} ${'cached'.padStart(10)} ${'TTFT mean'.padStart(10)} ${'TTFT p50'.padStart(9)} ${'TTFT p99'.padStart(9)} ${'done'.padStart(6)}`);
  log(row(rr));
  log(row(kv));
  log(`ratio kv/rr  ${(kv.prefillMsMean / rr.prefillMsMean).toFixed(2).padStart(14)} ${''.padStart(10)} ${(kv.ttftMs.mean / rr.ttftMs.mean).toFixed(2).padStart(10)} ${(kv.ttftMs.p50 / rr.ttftMs.p50).toFixed(2).padStart(9)} ${(kv.ttftMs.p99 / rr.ttftMs.p99).toFixed(2).padStart(9)}`);
  return outcomes;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { requests: { type: 'string', default: '400' }, seed: { type: 'string', default: '1' } } });
  await compareRouting(Number(values.requests), Number(values.seed), (line) => console.log(line));
}

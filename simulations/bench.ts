// Simulator speed: simulated requests and events per wall-clock second on a large cluster with
// faults on. `npx tsx simulations/bench.ts [--requests N] [--seed S] [--faults SPEC] [--no-check-outputs]`
import { parseArgs } from 'node:util';
import { realClock } from '../src/internal.js';
import { runSimulation } from './run-simulation.js';
import { buildScenario, faultPlanFromPresets } from './scenario.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '20000' },
    seed: { type: 'string', default: '1' },
    faults: { type: 'string', default: 'all' },
    prefill: { type: 'string', default: '16' },
    decode: { type: 'string', default: '16' },
    rate: { type: 'string', default: '400' },
    'no-check-outputs': { type: 'boolean', default: false },
  },
});

const requests = Number(values.requests);
const scenario = buildScenario({
  name: 'bench',
  seed: Number(values.seed),
  cluster: { prefillWorkers: Number(values.prefill), decodeWorkers: Number(values.decode) },
  workload: { requests, arrival: { kind: 'poisson', ratePerSec: Number(values.rate) } },
  faults: faultPlanFromPresets(values.faults),
  probes: 16,
  checkEveryEvents: 20_000,
});

const startMs = realClock.now();
let lastMs = startMs;
const result = await runSimulation(scenario, {
  checkOutputs: !values['no-check-outputs'],
  onProgress: (p) => {
    const nowMs = realClock.now();
    if (nowMs - lastMs < 2000 && p.phase !== 'done') return;
    lastMs = nowMs;
    process.stderr.write(`${p.phase} ${p.ended}/${p.total} requests ended, ${p.events} events, ${((nowMs - startMs) / 1000).toFixed(1)} s\n`);
  },
});
const wallMs = realClock.now() - startMs;
const total = result.records.length;
process.stdout.write(
  [
    `simulator: ${total} requests on ${scenario.cluster.prefillWorkers} prefill + ${scenario.cluster.decodeWorkers} decode workers, faults '${values.faults}', seed ${scenario.seed}`,
    `  ${(wallMs / 1000).toFixed(2)} s wall, ${(result.virtualMs / 1000).toFixed(1)} s virtual, ${result.events} events`,
    `  ${((total / wallMs) * 1000).toFixed(0)} simulated requests/s, ${((result.events / wallMs) * 1000).toFixed(0)} events/s`,
    `  invariants: ${result.passed ? 'all hold' : `VIOLATED: ${result.stoppedBy}`}; trace ${result.traceHash}`,
  ].join('\n') + '\n',
);
if (!result.passed) process.exitCode = 1;

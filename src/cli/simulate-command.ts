import { readFileSync, writeFileSync } from 'node:fs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { realClock, realSeed } from '../time/real-clock.js';
import { runSimulation, type SimulationProgress } from '../../simulations/run-simulation.js';
import { buildReport, formatReport, type SimulationReport } from '../../simulations/report.js';
import { renderHtml } from '../../simulations/report-html.js';
import { buildScenario, faultPlanFromPresets, faultPresets, merge, type ScenarioInput } from '../../simulations/scenario.js';

/** A commander argument parser for integers of at least `min`. */
export function integer(min: number) {
  return (value: string): number => {
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed < min) throw new InvalidArgumentError(`expected an integer >= ${min}, got '${value}'`);
    return parsed;
  };
}

function positive(value: string): number {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0) throw new InvalidArgumentError(`expected a number > 0, got '${value}'`);
  return parsed;
}

function readJson(path: string, what: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new Error(`cannot read the ${what} ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

type Options = Record<string, unknown>;

/** A scenario file, or the JSON report of an earlier run (which carries its whole scenario). */
function scenarioFile(options: Options): ScenarioInput {
  if (!options.scenario) return {};
  const json = readJson(options.scenario as string, 'scenario file') as ScenarioInput & { tool?: string; scenario?: ScenarioInput };
  return json.tool === 'tandem simulate' && json.scenario ? json.scenario : json;
}

/** The scenario file (if any) with `--faults` over it: read once for every run. */
function scenarioFromFiles(options: Options): ScenarioInput {
  const input = scenarioFile(options);
  const faults = options.faults as string | undefined;
  if (faults === undefined) return input;
  const plan = faults.endsWith('.json') ? merge(faultPlanFromPresets('none'), readJson(faults, 'fault plan')) : faultPlanFromPresets(faults);
  return { ...input, faults: plan };
}

/** The scenario of one run: what the files say, then the other flags and the seed over it. */
function scenarioFrom(options: Options, seed: number, input: ScenarioInput): ScenarioInput {
  const cluster: Record<string, unknown> = {};
  if (options.prefillWorkers !== undefined) cluster.prefillWorkers = options.prefillWorkers;
  if (options.decodeWorkers !== undefined) cluster.decodeWorkers = options.decodeWorkers;
  if (options.pages !== undefined) cluster.pageCount = options.pages;
  if (options.pageBytes !== undefined) cluster.pageBytes = options.pageBytes;
  if (options.speedup !== undefined) cluster.engine = { speedup: options.speedup };
  if (options.routing !== undefined) cluster.routing = options.routing;
  if (options.migrationsMax !== undefined) cluster.migrationsMax = options.migrationsMax;
  const workload: Record<string, unknown> = {};
  if (options.requests !== undefined) workload.requests = options.requests;
  if (options.rate !== undefined) workload.arrival = { kind: 'poisson', ratePerSec: options.rate };
  return merge(input, {
    seed,
    ...(options.name !== undefined ? { name: options.name } : {}),
    ...(options.probes !== undefined ? { probes: options.probes } : {}),
    ...(options.healAtMs !== undefined ? { healAtMs: options.healAtMs } : {}),
    ...(Object.keys(cluster).length ? { cluster } : {}),
    ...(Object.keys(workload).length ? { workload } : {}),
  });
}

/** A progress line on stderr: rewritten in place on a terminal, a line every few seconds otherwise. */
function progressLine(seed: number): (progress: SimulationProgress) => void {
  const tty = process.stderr.isTTY === true;
  let lastMs = 0;
  return (p) => {
    const nowMs = realClock.now();
    if (!tty && p.phase !== 'done' && nowMs - lastMs < 5000) return;
    lastMs = nowMs;
    const width = 24;
    const filled = p.total === 0 ? width : Math.round((p.ended / p.total) * width);
    const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
    const text = `seed ${seed} [${bar}] ${p.ended}/${p.total} requests ended, ${p.events} events, ${(p.virtualMs / 1000).toFixed(1)} s virtual, ${p.phase}`;
    process.stderr.write(tty ? `\r${text.padEnd(100)}${p.phase === 'done' ? '\n' : ''}` : `${text}\n`);
  };
}

async function simulateOnce(options: Options, seed: number, input: ScenarioInput): Promise<SimulationReport> {
  const scenario = buildScenario(scenarioFrom(options, seed, input));
  const startMs = realClock.now();
  const result = await runSimulation(scenario, { onProgress: options.progress === false ? undefined : progressLine(seed) });
  const wallMs = realClock.now() - startMs;
  const report = buildReport(result, { ttftMs: options.sloTtftMs as number, itlMs: options.sloItlMs as number });
  report.speed = { wallMs, requestsPerSecond: (result.records.length / wallMs) * 1000, eventsPerSecond: (result.events / wallMs) * 1000 };
  return report;
}

/** Adds `tandem simulate` to the CLI. */
export function registerSimulateCommand(program: Command): Command {
  return program
    .command('simulate')
    .description('Run the real actors and machines in virtual time with seeded faults, check the invariants, and report.')
    .addOption(new Option('--scenario <file>', 'scenario JSON (any subset of the fields; flags override it), or the JSON report of a run to replay'))
    .addOption(new Option('--seed <n>', 'seed of the run (default: random, printed)').argParser(integer(0)))
    .addOption(new Option('--runs <n>', 'run this many consecutive seeds; stops at the first failure').default(1).argParser(integer(1)))
    .addOption(new Option('--requests <n>', 'requests in the faulty phase').argParser(integer(0)))
    .addOption(new Option('--rate <per-second>', 'Poisson arrival rate, requests per virtual second').argParser(positive))
    .addOption(new Option('--faults <spec>', `fault sets, comma-separated (${Object.keys(faultPresets).join(', ')}), or a fault-plan JSON file`))
    .addOption(new Option('--prefill-workers <n>', 'prefill workers').argParser(integer(0)))
    .addOption(new Option('--decode-workers <n>', 'decode workers').argParser(integer(1)))
    .addOption(new Option('--pages <n>', 'KV pages per decode worker').argParser(integer(1)))
    .addOption(new Option('--page-bytes <n>', 'bytes per KV page').argParser(integer(1)))
    .addOption(new Option('--speedup <x>', "divide the sim engine's step times by x").argParser(positive))
    .addOption(new Option('--routing <mode>', 'how the client picks prefill workers (kv-aware: prefill workers publish KV events over the faulty network)').choices(['round-robin', 'random', 'kv-aware']))
    .addOption(new Option('--migrations-max <n>', 'times a request whose decode worker dies mid-stream moves to another one (default 0)').argParser(integer(0)))
    .addOption(new Option('--heal-at-ms <ms>', 'when faults stop (default: when the last request has arrived)').argParser(integer(0)))
    .addOption(new Option('--probes <n>', 'fault-free requests after healing that must all complete').argParser(integer(0)))
    .addOption(new Option('--name <name>', 'scenario name in the report'))
    .addOption(new Option('--slo-ttft-ms <ms>', 'goodput SLO: time to first token').default(1000).argParser(positive))
    .addOption(new Option('--slo-itl-ms <ms>', 'goodput SLO: mean inter-token latency').default(50).argParser(positive))
    .addOption(new Option('--out <prefix>', 'write <prefix>.json and <prefix>.html (default tandem-simulation-<seed>)'))
    .addOption(new Option('--no-write', 'print the report only'))
    .addOption(new Option('--no-progress', 'no progress line'))
    .action(async (options: Options) => {
      const input = scenarioFromFiles(options);
      const firstSeed = (options.seed as number | undefined) ?? input.seed ?? realSeed();
      let report: SimulationReport | undefined;
      for (let run = 0; run < (options.runs as number); run++) {
        const seed = (firstSeed + run) >>> 0;
        report = await simulateOnce(options, seed, input);
        if (!report.passed) break;
        if ((options.runs as number) > 1) process.stderr.write(`seed ${seed}: pass, trace ${report.traceHash}\n`);
      }
      if (!report) return;
      process.stdout.write(`${formatReport(report)}\n`);
      if (options.write !== false) {
        const prefix = (options.out as string | undefined) ?? `tandem-simulation-${report.seed}`;
        writeFileSync(`${prefix}.json`, `${JSON.stringify(report, null, 2)}\n`);
        writeFileSync(`${prefix}.html`, renderHtml(report));
        process.stdout.write(`wrote ${prefix}.json and ${prefix}.html${report.passed ? '' : `; replay with: tandem simulate --scenario ${prefix}.json`}\n`);
      }
      if (!report.passed) process.exitCode = 1;
    });
}

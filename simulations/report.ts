import type { SimFabricNetworkStats } from '../src/fabric/sim/sim-fabric.js';
import { describeFault } from './fault-schedule.js';
import type { InvariantResult, Violation } from './invariants.js';
import type { RequestRecord } from './records.js';
import type { SimulationResult } from './run-simulation.js';
import type { Scenario, ScheduledFault } from './scenario.js';

/** Service-level objectives a completed request must meet to count toward goodput. */
export interface Slo {
  /** Time to first token, virtual ms. */
  ttftMs: number;
  /** Mean time between tokens after the first, virtual ms. */
  itlMs: number;
}

export interface Percentiles {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** One request's path through its decode machine, for the timeline plot. */
export interface TimelineRow {
  requestId: string;
  kind: 'workload' | 'probe';
  arrivalMs: number;
  /** [state, enteredAtMs] pairs of the request machine (the last session), then the outcome. */
  states: Array<[string, number]>;
  outcome: string;
  endMs: number | undefined;
}

/** What `tandem simulate` writes as JSON (and renders as HTML). */
export interface SimulationReport {
  tool: 'tandem simulate';
  passed: boolean;
  stoppedBy: string | undefined;
  seed: number;
  traceHash: string;
  scenario: Scenario;
  faultSchedule: ScheduledFault[];
  healAtMs: number;
  livenessBoundMs: number;
  events: number;
  virtualMs: number;
  /** Filled in by the caller that measured it: wall-clock time and simulation speed. */
  speed?: { wallMs: number; requestsPerSecond: number; eventsPerSecond: number };
  requests: { total: number; workload: number; probes: number };
  outcomes: { byStatus: Record<string, number>; byCode: Record<string, number> };
  machines: { request: Record<string, number>; room: Record<string, number> };
  latency: { ttftMs: Percentiles; itlMs: Percentiles; e2eMs: Percentiles };
  /** ttft and itl of every completed request, for CDF plots. */
  samples: { ttftMs: number[]; itlMs: number[] };
  goodput: { slo: Slo; requests: number; fractionOfWorkload: number; perSecond: number };
  faults: Record<string, number>;
  observed: Record<string, number>;
  fabric: SimFabricNetworkStats;
  invariants: InvariantResult[];
  violations: Violation[];
  workers: SimulationResult['workers'];
  timeline: TimelineRow[];
}

/** Percentiles by the nearest-rank method. */
export function percentiles(values: number[]): Percentiles {
  if (values.length === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, max: 0 };
  const sorted = Float64Array.from(values).sort();
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
  const mean = sorted.reduce((sum, v) => sum + v, 0) / sorted.length;
  return { count: sorted.length, mean: round3(mean), p50: round3(at(0.5)), p90: round3(at(0.9)), p99: round3(at(0.99)), max: round3(sorted.at(-1)!) };
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}

function increment(counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1;
}

/** Rows kept for the timeline plot. */
const timelineRowsMax = 160;

function timelineOf(records: RequestRecord[]): TimelineRow[] {
  const step = Math.max(1, Math.ceil(records.length / timelineRowsMax));
  const rows: TimelineRow[] = [];
  for (let i = 0; i < records.length; i += step) {
    const record = records[i]!;
    const session = [...record.sessions].reverse().find((s) => s.machine === 'request');
    const states: Array<[string, number]> = session ? session.states.map((state, j) => [state, round3(session.timesMs[j]!)]) : [];
    const outcome = record.outcome ? `${record.outcome.status}${record.outcome.code && record.outcome.status !== 'done' ? ` ${record.outcome.code}` : ''}` : 'none';
    rows.push({ requestId: record.spec.requestId, kind: record.spec.kind, arrivalMs: record.spec.arrivalMs, states, outcome, endMs: record.outcome?.atMs });
  }
  return rows;
}

/** Turns a run's observations into the numbers `tandem simulate` reports. */
export function buildReport(result: SimulationResult, slo: Slo): SimulationReport {
  const byStatus: Record<string, number> = {};
  const byCode: Record<string, number> = {};
  const requestFinals: Record<string, number> = {};
  const roomFinals: Record<string, number> = {};
  const ttft: number[] = [];
  const itl: number[] = [];
  const e2e: number[] = [];
  let good = 0;
  let workload = 0;
  for (const record of result.records) {
    if (record.spec.kind === 'workload') workload++;
    const outcome = record.outcome;
    increment(byStatus, outcome?.status ?? 'none');
    if (outcome?.code && outcome.status !== 'done') increment(byCode, outcome.code);
    for (const session of record.sessions) {
      const key = session.lostAtMs !== undefined ? 'lost in a crash' : (session.final ?? 'unfinished');
      increment(session.machine === 'request' ? requestFinals : roomFinals, key);
    }
    if (outcome?.status !== 'done' || record.tokenTimesMs.length === 0) continue;
    const first = record.tokenTimesMs[0]! - record.spec.arrivalMs;
    ttft.push(first);
    e2e.push(outcome.atMs - record.spec.arrivalMs);
    let gaps = 0;
    for (let i = 1; i < record.tokenTimesMs.length; i++) {
      const gap = record.tokenTimesMs[i]! - record.tokenTimesMs[i - 1]!;
      itl.push(gap);
      gaps += gap;
    }
    const meanItl = record.tokenTimesMs.length > 1 ? gaps / (record.tokenTimesMs.length - 1) : 0;
    if (record.spec.kind === 'workload' && first <= slo.ttftMs && meanItl <= slo.itlMs) good++;
  }
  const { scenario } = result;
  const phaseMs = Math.max(result.healAtMs, 1);
  return {
    tool: 'tandem simulate',
    passed: result.passed,
    stoppedBy: result.stoppedBy,
    seed: scenario.seed,
    traceHash: result.traceHash,
    scenario,
    faultSchedule: result.faultSchedule,
    healAtMs: result.healAtMs,
    livenessBoundMs: result.livenessBoundMs,
    events: result.events,
    virtualMs: round3(result.virtualMs),
    requests: { total: result.records.length, workload, probes: result.records.length - workload },
    outcomes: { byStatus, byCode },
    machines: { request: requestFinals, room: roomFinals },
    latency: { ttftMs: percentiles(ttft), itlMs: percentiles(itl), e2eMs: percentiles(e2e) },
    samples: { ttftMs: ttft.map(round3), itlMs: itl.map(round3) },
    goodput: { slo, requests: good, fractionOfWorkload: workload === 0 ? 0 : round3(good / workload), perSecond: round3((good / phaseMs) * 1000) },
    faults: result.faults,
    observed: result.observed,
    fabric: result.fabric,
    invariants: result.invariants,
    violations: result.violations,
    workers: result.workers,
    timeline: timelineOf(result.records),
  };
}

/** The report as plain text, for the terminal. */
export function formatReport(report: SimulationReport): string {
  const lines: string[] = [];
  const p = (name: string, q: Percentiles): string =>
    `  ${name.padEnd(6)} n=${q.count}  p50 ${q.p50.toFixed(1)}  p90 ${q.p90.toFixed(1)}  p99 ${q.p99.toFixed(1)}  max ${q.max.toFixed(1)}  (virtual ms)`;
  lines.push(`tandem simulate: scenario '${report.scenario.name}', seed ${report.seed}`);
  lines.push(`  ${report.requests.workload} requests + ${report.requests.probes} probes; ${report.events} events; ${(report.virtualMs / 1000).toFixed(1)} s virtual; healed at ${(report.healAtMs / 1000).toFixed(1)} s`);
  if (report.speed) {
    lines.push(`  ${(report.speed.wallMs / 1000).toFixed(2)} s wall: ${report.speed.requestsPerSecond.toFixed(0)} simulated requests/s, ${report.speed.eventsPerSecond.toFixed(0)} events/s`);
  }
  lines.push('latency (completed requests)');
  lines.push(p('TTFT', report.latency.ttftMs), p('ITL', report.latency.itlMs), p('E2E', report.latency.e2eMs));
  const g = report.goodput;
  lines.push(`goodput at TTFT <= ${g.slo.ttftMs} ms and mean ITL <= ${g.slo.itlMs} ms: ${g.requests} requests (${(g.fractionOfWorkload * 100).toFixed(1)}% of the workload), ${g.perSecond} per virtual second`);
  lines.push(`outcomes: ${Object.entries(report.outcomes.byStatus).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  if (Object.keys(report.outcomes.byCode).length > 0) lines.push(`error codes: ${Object.entries(report.outcomes.byCode).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(`request machines: ${Object.entries(report.machines.request).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  lines.push(`room machines: ${Object.entries(report.machines.room).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  const faults = Object.entries(report.faults);
  lines.push(`faults injected: ${faults.length === 0 ? 'none' : faults.map(([k, v]) => `${k} ${v}`).join(', ')}`);
  for (const event of report.faultSchedule.slice(0, 12)) lines.push(`  ${describeFault(event)}`);
  if (report.faultSchedule.length > 12) lines.push(`  ... ${report.faultSchedule.length - 12} more scheduled faults`);
  lines.push('invariants:');
  for (const inv of report.invariants) lines.push(`  ${inv.status.padEnd(13)} ${inv.title} (${inv.checks} checks${inv.violations ? `, ${inv.violations} violations` : ''})`);
  for (const violation of report.violations.slice(0, 3)) {
    lines.push(`VIOLATION of '${violation.invariant}' at t=${violation.atMs.toFixed(3)}ms: ${violation.message}`);
    for (const history of violation.histories) lines.push(...history.map((line) => `  ${line}`));
  }
  if (!report.passed) {
    lines.push(`replay: tandem simulate --scenario <this run's JSON report> (it carries the scenario and seed ${report.seed})`);
  }
  lines.push(`trace hash ${report.traceHash}`);
  lines.push(report.passed ? 'PASS' : 'FAIL');
  return lines.join('\n');
}

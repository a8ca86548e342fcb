import type { Deadlines, Limits, SimEngineConfig } from '../src/index.js';
import { defaultDeadlines, defaultLimits } from '../src/index.js';

/** The deployment under test. */
export interface ClusterShape {
  /** Prefill workers. */
  prefillWorkers: number;
  /** Decode workers. */
  decodeWorkers: number;
  /** Bytes per KV page. */
  pageBytes: number;
  /** KV pages per decode worker. */
  pageCount: number;
  /** The sim engine every worker runs (model, timing, speedup, EOS rate). */
  engine: SimEngineConfig;
  /** One-way latency of every transport hop (message, reply, stream chunk), ms. */
  transportLatencyMs: number;
  /** The simulated fabric: one-way latency (ms) and bandwidth (bytes per ms) of a connection. */
  fabric: { latencyMs: number; bytesPerMs: number };
  /** Per-state deadlines of the request machine, over the defaults. */
  deadlines: Partial<Deadlines>;
  /** Limits, over the defaults. */
  limits: Partial<Limits>;
  /** How long the client lets a generate stream stay silent before giving up, ms. */
  streamIdleTimeoutMs: number;
  /** How long discovery keeps listing a crashed worker (its heartbeat TTL), ms. */
  discoveryTtlMs: number;
  /** How the client picks prefill workers; 'kv-aware' makes prefill workers publish KV events (over the faulty transport). */
  routing: 'round-robin' | 'random' | 'kv-aware';
  /** How many times the client moves a request whose decode worker died mid-stream to another one; 0 disables. */
  migrationsMax: number;
}

/** A distribution of integers: uniform in [min, max], or log-normal around a median, clamped. */
export interface LengthDistribution {
  kind: 'uniform' | 'lognormal';
  min: number;
  max: number;
  /** For 'lognormal': the median. */
  median?: number;
  /** For 'lognormal': sigma of the underlying normal; default 0.6. */
  sigma?: number;
}

/** The requests of a run. */
export interface WorkloadSpec {
  /** Requests in the safety phase. */
  requests: number;
  /** Poisson arrivals at a mean rate, or bursts of `burstSize` every `intervalMs`. */
  arrival: { kind: 'poisson'; ratePerSec: number } | { kind: 'bursts'; burstSize: number; intervalMs: number };
  /** Prompt length in tokens. */
  promptTokens: LengthDistribution;
  /** `max_tokens` of each request. */
  outputTokens: LengthDistribution;
  /** Share of requests whose prompt starts with one of `prefixes` common prefixes of `prefixTokens`. */
  sharedPrefix: { fraction: number; prefixes: number; prefixTokens: number };
  /** Share of requests sampled greedily (temperature 0); the rest sample at temperature 0.8 with a seed. */
  greedyFraction: number;
  /** Share of requests that keep generating past EOS. */
  ignoreEosFraction: number;
}

/** A fault at a fixed virtual time, in addition to the random ones. */
export type ScheduledFault =
  | { kind: 'partition'; atMs: number; durationMs: number; a: string; b: string; oneWay?: boolean }
  | { kind: 'crash'; atMs: number; actor: string; downMs: number };

/** What goes wrong, and how often. Rates are probabilities per message, write or request. */
export interface FaultPlan {
  /** Transport faults between actors. */
  messages: {
    dropRate: number;
    duplicateRate: number;
    /** Messages held back by up to `delayMsMax`, possibly past their sender's deadline. */
    delayRate: number;
    delayMsMax: number;
    /** Messages held back a little (up to `reorderMsMax`), so later ones overtake them. */
    reorderRate: number;
    reorderMsMax: number;
    /** Whether stream chunks (tokens to the client) get these faults too; partitions and crashes always apply. */
    streamChunks: boolean;
  };
  /** Random partitions between two workers (and the client, with `includeClient`). */
  partitions: { perMinute: number; durationMsMin: number; durationMsMax: number; oneWayFraction: number; includeClient: boolean };
  /** Random worker crashes; the worker restarts with a new epoch after its downtime. */
  crashes: { perMinute: number; downMsMin: number; downMsMax: number; roles: Array<'prefill' | 'decode'> };
  /** Fabric faults, per write. */
  fabric: { writeFailRate: number; slowRate: number; slowMsMax: number; lostCompletionRate: number };
  /** Clients that give up: the share of requests cancelled, at a uniform time after arrival. */
  clients: { cancelRate: number; cancelAfterMsMax: number };
  /** Faults at fixed times. */
  schedule: ScheduledFault[];
}

/** Everything one simulation run needs; JSON-serialisable so a report can replay it. */
export interface Scenario {
  name: string;
  seed: number;
  cluster: ClusterShape;
  workload: WorkloadSpec;
  faults: FaultPlan;
  /** When faults stop (virtual ms); default: when the last workload request has arrived. */
  healAtMs?: number;
  /** Fault-free requests sent once the faulty ones have settled; every one must complete. */
  probes: number;
  /** Every request must reach a terminal state this long after healing; default from the deadlines. */
  livenessBoundMs?: number;
  /** Most timers fired in the whole run. */
  eventsMax: number;
  /** Events between two invariant checks during the run. */
  checkEveryEvents: number;
}

export const defaultCluster: ClusterShape = {
  prefillWorkers: 2,
  decodeWorkers: 2,
  pageBytes: 256,
  pageCount: 2048,
  engine: { speedup: 1 },
  transportLatencyMs: 0.5,
  fabric: { latencyMs: 1, bytesPerMs: 20_000 },
  deadlines: {},
  limits: {},
  streamIdleTimeoutMs: 60_000,
  discoveryTtlMs: 3_000,
  routing: 'round-robin',
  migrationsMax: 0,
};

export const defaultWorkload: WorkloadSpec = {
  requests: 200,
  arrival: { kind: 'poisson', ratePerSec: 20 },
  promptTokens: { kind: 'lognormal', min: 4, max: 1024, median: 96 },
  outputTokens: { kind: 'uniform', min: 1, max: 24 },
  sharedPrefix: { fraction: 0.3, prefixes: 4, prefixTokens: 48 },
  greedyFraction: 0.5,
  ignoreEosFraction: 0.5,
};

export const noFaults: FaultPlan = {
  messages: { dropRate: 0, duplicateRate: 0, delayRate: 0, delayMsMax: 0, reorderRate: 0, reorderMsMax: 0, streamChunks: false },
  partitions: { perMinute: 0, durationMsMin: 0, durationMsMax: 0, oneWayFraction: 0, includeClient: false },
  crashes: { perMinute: 0, downMsMin: 0, downMsMax: 0, roles: ['prefill', 'decode'] },
  fabric: { writeFailRate: 0, slowRate: 0, slowMsMax: 0, lostCompletionRate: 0 },
  clients: { cancelRate: 0, cancelAfterMsMax: 0 },
  schedule: [],
};

/** Named fault sets; `--faults` takes one or a comma-separated list of them. */
export const faultPresets: Record<string, (plan: FaultPlan) => FaultPlan> = {
  none: (plan) => plan,
  drop: (plan) => ({ ...plan, messages: { ...plan.messages, dropRate: 0.02 } }),
  duplicate: (plan) => ({ ...plan, messages: { ...plan.messages, duplicateRate: 0.02 } }),
  delay: (plan) => ({ ...plan, messages: { ...plan.messages, delayRate: 0.02, delayMsMax: 4_000 } }),
  reorder: (plan) => ({ ...plan, messages: { ...plan.messages, reorderRate: 0.05, reorderMsMax: 20 } }),
  stream: (plan) => ({ ...plan, messages: { ...plan.messages, streamChunks: true } }),
  partition: (plan) => ({ ...plan, partitions: { perMinute: 6, durationMsMin: 200, durationMsMax: 6_000, oneWayFraction: 0.5, includeClient: false } }),
  crash: (plan) => ({ ...plan, crashes: { ...plan.crashes, perMinute: 3, downMsMin: 500, downMsMax: 5_000 } }),
  fabric: (plan) => ({ ...plan, fabric: { writeFailRate: 0.01, slowRate: 0.05, slowMsMax: 3_000, lostCompletionRate: 0.01 } }),
  cancel: (plan) => ({ ...plan, clients: { cancelRate: 0.1, cancelAfterMsMax: 2_000 } }),
  network: (plan) => ['drop', 'duplicate', 'delay', 'reorder'].reduce((p, name) => faultPresets[name]!(p), plan),
  // 'stream' stays out of 'all': a lost token chunk breaks its stream (generate() refuses a gap and
  // a short finish), so without migration most requests fail and hide the other faults. With
  // `--migrations-max` they move on from the last good token; `--faults all,stream` passes either way.
  all: (plan) => ['network', 'partition', 'crash', 'fabric', 'cancel'].reduce((p, name) => faultPresets[name]!(p), plan),
};

/** Builds a fault plan from preset names, e.g. 'drop,partition,cancel' or 'all'. */
export function faultPlanFromPresets(spec: string): FaultPlan {
  let plan = structuredClone(noFaults);
  for (const name of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const preset = faultPresets[name];
    if (!preset) throw new Error(`unknown fault set '${name}'; known: ${Object.keys(faultPresets).join(', ')}`);
    plan = preset(plan);
  }
  return plan;
}

/** A deep partial, for scenario files and overrides. */
export type ScenarioInput = {
  [K in keyof Scenario]?: Scenario[K] extends object ? Scenario[K] extends unknown[] ? Scenario[K] : DeepPartial<Scenario[K]> : Scenario[K];
};
type DeepPartial<T> = { [K in keyof T]?: T[K] extends unknown[] ? T[K] : T[K] extends object ? DeepPartial<T[K]> : T[K] };

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Merges `override` into `base`: objects field by field, everything else replaced. */
export function merge<T>(base: T, override: unknown): T {
  if (!isPlainObject(base) || !isPlainObject(override)) return (override === undefined ? base : override) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(override)) {
    if (value === undefined) continue;
    out[key] = key in out && isPlainObject(out[key]) && isPlainObject(value) ? merge(out[key], value) : value;
  }
  return out as T;
}

/** A complete scenario from defaults and a (partial) input. */
export function buildScenario(input: ScenarioInput = {}): Scenario {
  const base: Scenario = {
    name: 'default',
    seed: 1,
    cluster: defaultCluster,
    workload: defaultWorkload,
    faults: noFaults,
    probes: 8,
    eventsMax: 50_000_000,
    checkEveryEvents: 2_000,
  };
  const scenario = merge(structuredClone(base), structuredClone(input));
  validateScenario(scenario);
  return scenario;
}

/** Refuses a scenario that cannot run, with a message naming the field. */
export function validateScenario(scenario: Scenario): void {
  const problems: string[] = [];
  const positiveInt = (name: string, value: number, min = 1): void => {
    if (!Number.isInteger(value) || value < min) problems.push(`${name} must be an integer >= ${min}, got ${value}`);
  };
  const rate = (name: string, value: number): void => {
    if (!(value >= 0 && value <= 1)) problems.push(`${name} must be in [0, 1], got ${value}`);
  };
  const nonNegative = (name: string, value: number): void => {
    if (!(Number.isFinite(value) && value >= 0)) problems.push(`${name} must be a finite number >= 0, got ${value}`);
  };
  const { cluster, workload, faults } = scenario;
  if (!Number.isInteger(scenario.seed) || scenario.seed < 0 || scenario.seed > 0xffff_ffff) problems.push(`seed must be a 32-bit unsigned integer, got ${scenario.seed}`);
  positiveInt('cluster.prefillWorkers', cluster.prefillWorkers, 0);
  positiveInt('cluster.decodeWorkers', cluster.decodeWorkers);
  positiveInt('cluster.pageBytes', cluster.pageBytes);
  positiveInt('cluster.pageCount', cluster.pageCount);
  positiveInt('cluster.migrationsMax', cluster.migrationsMax, 0);
  if (!['round-robin', 'random', 'kv-aware'].includes(cluster.routing)) problems.push(`cluster.routing must be round-robin, random or kv-aware, got ${String(cluster.routing)}`);
  nonNegative('cluster.transportLatencyMs', cluster.transportLatencyMs);
  nonNegative('cluster.fabric.latencyMs', cluster.fabric.latencyMs);
  if (!(cluster.fabric.bytesPerMs > 0)) problems.push('cluster.fabric.bytesPerMs must be > 0');
  positiveInt('cluster.streamIdleTimeoutMs', cluster.streamIdleTimeoutMs);
  nonNegative('cluster.discoveryTtlMs', cluster.discoveryTtlMs);
  positiveInt('workload.requests', workload.requests, 0);
  if (workload.arrival.kind === 'poisson') {
    if (!(workload.arrival.ratePerSec > 0)) problems.push('workload.arrival.ratePerSec must be > 0');
  } else {
    positiveInt('workload.arrival.burstSize', workload.arrival.burstSize);
    nonNegative('workload.arrival.intervalMs', workload.arrival.intervalMs);
  }
  for (const [name, dist] of [['promptTokens', workload.promptTokens], ['outputTokens', workload.outputTokens]] as const) {
    positiveInt(`workload.${name}.min`, dist.min);
    if (!(dist.max >= dist.min)) problems.push(`workload.${name}.max must be >= min`);
  }
  rate('workload.sharedPrefix.fraction', workload.sharedPrefix.fraction);
  rate('workload.greedyFraction', workload.greedyFraction);
  rate('workload.ignoreEosFraction', workload.ignoreEosFraction);
  const m = faults.messages;
  for (const key of ['dropRate', 'duplicateRate', 'delayRate', 'reorderRate'] as const) rate(`faults.messages.${key}`, m[key]);
  nonNegative('faults.messages.delayMsMax', m.delayMsMax);
  nonNegative('faults.messages.reorderMsMax', m.reorderMsMax);
  for (const key of ['writeFailRate', 'slowRate', 'lostCompletionRate'] as const) rate(`faults.fabric.${key}`, faults.fabric[key]);
  rate('faults.clients.cancelRate', faults.clients.cancelRate);
  rate('faults.partitions.oneWayFraction', faults.partitions.oneWayFraction);
  nonNegative('faults.partitions.perMinute', faults.partitions.perMinute);
  nonNegative('faults.crashes.perMinute', faults.crashes.perMinute);
  if (faults.partitions.durationMsMax < faults.partitions.durationMsMin) problems.push('faults.partitions.durationMsMax must be >= durationMsMin');
  if (faults.crashes.downMsMax < faults.crashes.downMsMin) problems.push('faults.crashes.downMsMax must be >= downMsMin');
  positiveInt('probes', scenario.probes, 0);
  positiveInt('eventsMax', scenario.eventsMax);
  positiveInt('checkEveryEvents', scenario.checkEveryEvents);
  if (problems.length > 0) throw new Error(`invalid scenario: ${problems.join('; ')}`);
}

/** The per-state deadlines a run uses. */
export function deadlinesOf(scenario: Scenario): Deadlines {
  return { ...defaultDeadlines, ...scenario.cluster.deadlines };
}

/** The limits a run uses. */
export function limitsOf(scenario: Scenario): Limits {
  return { ...defaultLimits, ...scenario.cluster.limits };
}

/**
 * How long after healing a request may still run: the worst case of every state's deadline
 * (bootstrap tried on every candidate), the client's idle timeout, and the time discovery takes
 * to forget a crashed worker.
 */
export function livenessBoundMs(scenario: Scenario): number {
  if (scenario.livenessBoundMs !== undefined) return scenario.livenessBoundMs;
  const d = deadlinesOf(scenario);
  const attempts = limitsOf(scenario).bootstrapAttemptsMax;
  const requestMs = attempts * d.bootstrapMs + d.allocationMs + d.prefillMs + d.transferMs + d.pollingMs + d.cleanupMs + d.decodeMs;
  return requestMs + scenario.cluster.streamIdleTimeoutMs + scenario.cluster.discoveryTtlMs;
}

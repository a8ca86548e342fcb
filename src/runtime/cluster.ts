// The composition root: the only place that picks concrete transports, fabrics and engines.
import { DecodeWorker, type DecodeWorkerStats } from '../actors/decode-worker.js';
import { Frontend } from '../actors/frontend/frontend.js';
import { PrefillWorker, type PrefillWorkerStats } from '../actors/prefill-worker.js';
import { SimEngine } from '../engine/sim/sim-engine.js';
import { InspectionRecorder } from '../inspect/inspection-recorder.js';
import { TraceFileWriter } from '../inspect/trace-file.js';
import type { SimEngineOptions } from '../engine/sim/sim-options.js';
import type { Engine, EngineKvEvent } from '../engine/engine.js';
import { defaultDeadlines, defaultLimits, type Deadlines, type Limits } from '../limits.js';
import { consoleLogger, type Logger, type LogLevel } from '../log.js';
import { composeInspectors, requestStateInspector } from '../metrics/request-state-inspector.js';
import { TandemMetrics } from '../metrics/tandem-metrics.js';
import { seededRandom } from '../random/random.js';
import type { Clock } from '../time/clock.js';
import { realClock, realSeed } from '../time/real-clock.js';
import { RequestTracer, type OtelOptions } from '../trace/otel.js';
import { KvRouterFeed } from '../routing/kv-router-feed.js';
import type { ConditionalDisaggregation } from '../routing/prefill-placement.js';
import type { RoutingMode } from '../actors/router.js';
import { memoryBackends, type BackendsFactory } from './backends.js';
import { llamaEngineFactory, type EngineFactory, type LlamaClusterConfig } from './engine-factory.js';

/** Options of the sim engine each worker runs (the clock is the cluster's). */
export type SimEngineConfig = Omit<SimEngineOptions, 'clock'>;

/** How to build an embedded cluster. Every field is optional. */
export interface ClusterConfig {
  /** Interface the HTTP frontend listens on; default 127.0.0.1. */
  host?: string;
  /** HTTP port; default 8080, 0 picks a free one. */
  port?: number;
  /** Prefill workers; default 1. */
  prefillWorkers?: number;
  /** Decode workers; default 1. */
  decodeWorkers?: number;
  /** 'disaggregated' (default): prefill on prefill workers, KV over the fabric. 'aggregated': decode workers prefill locally. */
  mode?: 'disaggregated' | 'aggregated';
  /** Seed of ids, room numbers and default sampling seeds; default from the OS. */
  seed?: number;
  /** The sim engine's model and timing. */
  engine?: SimEngineConfig;
  /** Serve a GGUF model on llama.cpp instead of the sim engine. */
  llama?: LlamaClusterConfig;
  /** Builds every worker's engine, instead of the sim engine or `llama` (tests and embedders). */
  engineFactory?: EngineFactory;
  /** Bytes per KV page; default 16 KiB. */
  pageBytes?: number;
  /** KV pages per decode worker; default 4096 (64 MiB at 16 KiB pages). */
  pageCount?: number;
  /** Simulated fabric: one-way latency and bandwidth. */
  fabric?: { latencyMs?: number; bytesPerMs?: number };
  /** Overrides of the limits in src/limits.ts. */
  limits?: Partial<Limits>;
  /** Overrides of the per-state deadlines. */
  deadlines?: Partial<Deadlines>;
  /** How long a decode stream may stay silent before the frontend gives up; default 120 s. */
  streamIdleTimeoutMs?: number;
  /** How many times the frontend moves a request whose decode worker died mid-stream to another one; 0 disables; default 2. */
  migrationsMax?: number;
  /** How prefill workers are picked: 'round-robin' (default), 'random' (seeded) or 'kv-aware' (by cached prefix and load, from the workers' KV events). */
  routing?: RoutingMode;
  /** KV-aware routing: cost of one uncached prefill block relative to one block of work in flight; default 1. */
  overlapWeight?: number;
  /** KV-aware routing: softmax temperature over normalised costs; 0 (the default) always picks a cheapest worker. */
  routerTemperature?: number;
  /** When decode workers prefill prompts themselves instead of a prefill worker; absent (the default) never. */
  conditionalDisaggregation?: ConditionalDisaggregation;
  /** Log level of the default logger; default 'info'. */
  logLevel?: LogLevel;
  /** A logger to use instead of the default. */
  log?: Logger;
  /** The clock; default the real one. */
  clock?: Clock;
  /** Start the HTTP frontend; default true. */
  frontend?: boolean;
  /** Put into every worker's instance id, e.g. host and process id, so ids stay unique across processes. */
  instanceTag?: string;
  /** Incarnation number of this process's workers; default 1. */
  epoch?: number;
  /** Where transport, discovery and fabrics come from; default in-process (memory, sim fabric). */
  backends?: BackendsFactory;
  /** OpenTelemetry spans per request and request-machine state on decode workers; off when absent. */
  otel?: OtelOptions;
  /** The inspection feed of this process's request and room machines (the web UI reads its ring). */
  trace?: {
    /** Also append every transition to this JSONL file. */
    file?: string;
    /** Transitions the in-memory ring keeps; default 10,000. */
    ringMax?: number;
  };
}

/** A running embedded cluster. */
export interface Cluster {
  /** Base URL of the OpenAI-compatible API. */
  readonly url: string;
  /** The HTTP frontend, unless the config turned it off. */
  readonly frontend: Frontend | undefined;
  readonly prefill: readonly PrefillWorker[];
  readonly decode: readonly DecodeWorker[];
  /** Prometheus metrics of this process's frontend and workers (its own registry); the frontend serves them on GET /metrics. */
  readonly metrics: TandemMetrics;
  /** Transitions of this process's request and room machines. */
  readonly inspection: InspectionRecorder;
  /** With `routing: 'kv-aware'`, the index of which prefill worker caches which prefix blocks (pass it to a Router). */
  readonly kvFeed: KvRouterFeed | undefined;
  /** Counters of every worker. */
  stats(): { prefill: PrefillWorkerStats[]; decode: DecodeWorkerStats[]; inFlight: number };
  /** Stops the frontend and every worker at once, cancelling what is in flight. */
  close(): Promise<void>;
  /** Graceful shutdown: stop taking work, let what is in flight finish for up to `timeoutMs`, leave discovery, stop. */
  drain(timeoutMs: number): Promise<void>;
}

/**
 * Starts a frontend, prefill workers and decode workers in this process, over the memory
 * transport and the simulated fabric, with the sim engine.
 */
export async function createCluster(config: ClusterConfig = {}): Promise<Cluster> {
  const clock = config.clock ?? realClock;
  const seed = config.seed ?? realSeed();
  const random = seededRandom(seed);
  const log = config.log ?? consoleLogger(config.logLevel ?? 'info');
  const limits: Limits = { ...defaultLimits, ...config.limits };
  const deadlines: Deadlines = { ...defaultDeadlines, ...config.deadlines };
  const mode = config.mode ?? 'disaggregated';
  const prefillCount = mode === 'aggregated' ? 0 : (config.prefillWorkers ?? 1);
  const decodeCount = config.decodeWorkers ?? 1;
  const pageBytes = config.pageBytes ?? 16 * 1024;
  const pageCount = config.pageCount ?? 4096;

  const backends = await (config.backends ?? memoryBackends)({ config, clock, log, limits });
  const { transport, discovery } = backends;
  // What a start that fails half-way (a model that does not load, a port in use) must undo, newest first.
  const engines: Engine[] = [];
  const closeEngines = async (): Promise<void> => {
    for (const made of engines) await made.close();
  };
  const undo: Array<() => unknown> = [() => backends.close(), closeEngines];
  try {
    const engineFactory = config.engineFactory ?? (config.llama ? llamaEngineFactory(config.llama, mode) : undefined);
    const engine = async (role: 'frontend' | 'prefill' | 'decode', onKvEvent?: (event: EngineKvEvent) => void): Promise<Engine> => {
      // Loading a real model takes a while; say what is happening, once per role.
      if (config.llama) log.info('loading model', { role, path: config.llama.modelPath, weights: role === 'frontend' ? 'vocabulary only' : 'all' });
      const made = engineFactory
        ? await engineFactory(role, onKvEvent ? { onKvEvent } : {})
        : new SimEngine({ ...config.engine, clock, ...(onKvEvent ? { onKvEvent } : {}) });
      if (config.llama) {
        const { name, identity, kvLayout, kvBytesPerToken, contextTokensMax } = made.model;
        log.info('model ready', { role, name, identity, kv_layout: kvLayout, kv_bytes_per_token: kvBytesPerToken, context_tokens_max: contextTokensMax });
      }
      engines.push(made);
      return made;
    };
    const kvAware = config.routing === 'kv-aware';
    // The router counts prompt blocks as the engines' prefix caches do.
    const blockTokens = config.engine?.prefixBlockTokens !== undefined ? { blockTokens: config.engine.prefixBlockTokens } : {};
    const epoch = config.epoch ?? 1;
    const ids = random.split('instance-ids');
    const tag = config.instanceTag ? `${config.instanceTag}-` : '';
    const metrics = new TandemMetrics();
    const stateTimer = requestStateInspector(metrics, clock);
    const traceFile = config.trace?.file ? new TraceFileWriter(config.trace.file, log) : undefined;
    if (traceFile) undo.push(() => traceFile.close());
    const inspection = new InspectionRecorder({ clock, ringMax: config.trace?.ringMax, sink: traceFile && ((record) => traceFile.write(record)) });

    const prefill: PrefillWorker[] = [];
    for (let i = 0; i < prefillCount; i++) {
      const instanceId = `prefill-${tag}${i}-${ids.id(6)}`;
      // The engine reports cache changes before the worker exists, so the hook is bound late.
      const worker: PrefillWorker = new PrefillWorker({
          instanceId,
          epoch,
          transport,
          discovery,
          fabric: await backends.fabric(instanceId),
          engine: await engine('prefill', kvAware ? (event) => worker.publishKvEvent(event) : undefined),
          clock,
          random: random.split(instanceId),
          log: log.child({ worker: instanceId }),
          limits,
          deadlines,
          inspect: inspection.forWorker(instanceId),
          metrics,
        });
      prefill.push(worker);
    }
    const kvFeed = kvAware
      ? new KvRouterFeed({
          transport,
          discovery,
          random: random.split('kv-router'),
          log: log.child({ actor: 'kv-router' }),
          ...blockTokens,
          selection: { overlapWeight: config.overlapWeight ?? 1, temperature: config.routerTemperature ?? 0 },
        })
      : undefined;
    kvFeed?.start();
    if (kvFeed) undo.push(() => kvFeed.stop());
    const requestTracer = config.otel ? new RequestTracer({ exporter: config.otel.exporter, clock }) : undefined;
    if (requestTracer) undo.push(() => requestTracer.shutdown());
    const decode: DecodeWorker[] = [];
    for (let i = 0; i < decodeCount; i++) {
      const instanceId = `decode-${tag}${i}-${ids.id(6)}`;
      decode.push(
        new DecodeWorker({
          instanceId,
          epoch,
          transport,
          discovery,
          fabric: await backends.fabric(instanceId),
          engine: await engine('decode'),
          clock,
          log: log.child({ worker: instanceId }),
          pageBytes,
          pageCount,
          limits,
          deadlines,
          prefillLocally: mode === 'aggregated',
          inspect: composeInspectors(inspection.forWorker(instanceId), stateTimer),
          metrics,
          ...(requestTracer ? { requestTracer } : {}),
        }),
      );
    }
    const frontend =
      config.frontend === false
        ? undefined
        : new Frontend({
            transport,
            discovery,
            engine: await engine('frontend'),
            clock,
            random: random.split('frontend'),
            log: log.child({ actor: 'frontend' }),
            limits,
            host: config.host ?? '127.0.0.1',
            port: config.port ?? 8080,
            streamIdleTimeoutMs: config.streamIdleTimeoutMs ?? 120_000,
            ...(config.migrationsMax !== undefined ? { migrationsMax: config.migrationsMax } : {}),
            ...(kvFeed ? { kvFeed } : {}),
            routing: config.routing ?? 'round-robin',
            ...blockTokens,
            ...(config.conditionalDisaggregation ? { conditionalDisaggregation: config.conditionalDisaggregation } : {}),
            metrics,
            traceRandom: random.split('traceparent'),
            inspection,
          });

    for (const worker of [...prefill, ...decode]) {
      await worker.start();
      undo.push(() => worker.stop());
    }
    for (const worker of prefill) metrics.addPrefillWorker(worker);
    for (const worker of decode) metrics.addDecodeWorker(worker);
    if (frontend) metrics.addFrontend(frontend);
    const unwatchDeaths = discovery.watch((event) => {
      if (event.type === 'removed') metrics.recordWorkerDeath(event.record.role);
    });
    await frontend?.start();
    log.info('ready', { mode, frontend: frontend?.url ?? 'none', prefill: prefill.length, decode: decode.length, transport: backends.name, seed });

    const shutdown = async (drainMs: number | undefined): Promise<void> => {
      unwatchDeaths();
      kvFeed?.stop();
      if (drainMs === undefined) await frontend?.stop();
      else await frontend?.drain(drainMs);
      for (const worker of [...decode, ...prefill]) {
        if (drainMs === undefined) await worker.stop();
        else await worker.drain(drainMs);
      }
      await backends.close();
      await closeEngines();
      await traceFile?.close();
      await requestTracer?.shutdown();
    };
    return {
      url: frontend?.url ?? '',
      frontend,
      prefill,
      decode,
      inspection,
      metrics,
      kvFeed,
      stats: () => ({ prefill: prefill.map((w) => w.stats()), decode: decode.map((w) => w.stats()), inFlight: frontend?.inFlightRequests ?? 0 }),
      close: () => shutdown(undefined),
      drain: (timeoutMs) => shutdown(timeoutMs),
    };
  } catch (error) {
    for (const step of undo.reverse()) {
      try {
        await step();
      } catch (cleanupError) {
        log.warn('cleanup after a failed start failed', { error: String(cleanupError) });
      }
    }
    throw error;
  }
}

import { ErrorCode, TandemError, SimEngine, silentLogger, type ReplyStream, type Transport } from '../src/index.js';
import { KvRouterFeed, runAggregated, VirtualClock } from '../src/internal.js';
import { RequestRouting, type RoutedRequest } from '../src/actors/frontend/request-routing.js';
import type { WorkerRecord } from '../src/discovery/discovery.js';
import { generate, type GenerationPlan } from '../src/actors/frontend/generation.js';
import type { SimFabricNetworkStats } from '../src/fabric/sim/sim-fabric.js';
import type { SimEngineStats } from '../src/engine/sim/sim-engine.js';
import { EventQueueClock, type SteppableClock } from './event-queue-clock.js';
import { expandFaultSchedule, describeFault } from './fault-schedule.js';
import { FaultyNetwork } from './faulty-network.js';
import { InvariantChecker, type InvariantResult, type Violation } from './invariants.js';
import { chance, randomStreams } from './random-streams.js';
import { note, type ClientOutcome, type RequestRecord } from './records.js';
import { livenessBoundMs, type ScheduledFault, type Scenario } from './scenario.js';
import { Scheduler, settle } from './scheduler.js';
import { SimCluster, type ClusterHooks } from './sim-cluster.js';
import { TraceHash } from './trace.js';
import { WorkloadSource, type RequestSpec } from './workload.js';

/** Where a run is, for a progress line. */
export interface SimulationProgress {
  phase: 'safety' | 'healing' | 'probes' | 'quiescence' | 'checks' | 'done';
  virtualMs: number;
  events: number;
  /** Requests sent so far, and of those, ended. */
  sent: number;
  ended: number;
  /** Requests the run will send, probes included. */
  total: number;
}

/** How to run a scenario. */
export interface SimulationOptions {
  /** Test seams: change a worker before it starts (e.g. inject a bug the checkers must catch). */
  hooks?: ClusterHooks;
  /** Called every `scenario.checkEveryEvents` events and at each phase change. */
  onProgress?: (progress: SimulationProgress) => void;
  /** The event queue: a binary heap (default) or the runtime's own VirtualClock (same order, slower). */
  clock?: 'event-queue' | 'virtual-clock';
  /** Compare every client's tokens with aggregated serving; default true. */
  checkOutputs?: boolean;
}

/** Everything a run observed; report.ts turns it into numbers and pages. */
export interface SimulationResult {
  scenario: Scenario;
  /** The concrete faults the plan expanded to. */
  faultSchedule: ScheduledFault[];
  healAtMs: number;
  livenessBoundMs: number;
  /** Digest of every message, state, token and outcome with its virtual time. */
  traceHash: string;
  events: number;
  virtualMs: number;
  /** Why the run ended: 'completed', or the first violation that stopped it. */
  stoppedBy: string | undefined;
  records: RequestRecord[];
  invariants: InvariantResult[];
  violations: Violation[];
  passed: boolean;
  /** Faults injected, by kind. */
  faults: Record<string, number>;
  /** Notable things the run exercised. */
  observed: Record<string, number>;
  fabric: SimFabricNetworkStats;
  /** Each worker's counters and its current incarnation's engine counters. */
  workers: Array<{ actor: string; epoch: number; crashes: number; up: boolean; stats: unknown; engine: SimEngineStats }>;
}

const cancelled = (): TandemError => new TandemError(ErrorCode.Cancelled, 'the client went away');

/** Runs one scenario: the faulty safety phase, healing, the liveness phase, quiescence, then the end-of-run checks. */
export async function runSimulation(scenario: Scenario, options: SimulationOptions = {}): Promise<SimulationResult> {
  const streams = randomStreams(scenario.seed);
  const clock: SteppableClock = options.clock === 'virtual-clock' ? new VirtualClock() : new EventQueueClock();
  const trace = new TraceHash();
  // Closures below refer to the checker and the cluster, which exist by the time they run.
  const scheduler: Scheduler = new Scheduler(clock, {
    eventsMax: scenario.eventsMax,
    checkEvery: scenario.checkEveryEvents,
    onCheck: () => {
      checker.checkPools(cluster.slots);
      progress();
    },
  });
  const checker = new InvariantChecker(clock, trace, (violation) => scheduler.stop(`${violation.invariant}: ${violation.message}`));
  const network = new FaultyNetwork(scenario.faults.messages, streams.network);
  const cluster = new SimCluster(
    scenario,
    clock,
    network,
    streams.fabric,
    streams.ids,
    {
      traffic: checker.traffic,
      inspect: (slot, epoch) => checker.inspect(slot, epoch),
      region: (slot, epoch, region) => checker.regionRegistered(slot, epoch, region),
      error: (actor, message, fields) => checker.runtimeError(actor, message, fields),
      fabricFault: (owner, fault) => checker.fabricFault(owner, fault),
    },
    options.hooks,
  );
  const workload = new WorkloadSource(scenario.workload, streams.workload);
  const total = scenario.workload.requests + scenario.probes;
  let phase: SimulationProgress['phase'] = 'safety';
  let sent = 0;
  let ended = 0;
  const progress = (): void => options.onProgress?.({ phase, virtualMs: clock.now(), events: scheduler.events, sent, ended, total });
  const faults: Record<string, number> = {};
  const countFault = (kind: string): void => {
    faults[kind] = (faults[kind] ?? 0) + 1;
  };

  await cluster.start();
  const healAtMs = scenario.healAtMs ?? workload.lastArrivalMs;
  const boundMs = livenessBoundMs(scenario);
  const faultSchedule = expandFaultSchedule(scenario.faults, { all: cluster.actors, workers: cluster.slots }, healAtMs, streams.process);
  for (const fault of faultSchedule) {
    const named = fault.kind === 'partition' ? [fault.a, fault.b] : [fault.actor];
    const unknown = named.filter((actor) => !cluster.actors.includes(actor) || (fault.kind === 'crash' && actor === 'client'));
    if (unknown.length > 0) throw new Error(`scheduled fault '${describeFault(fault)}' names ${unknown.join(', ')}; the actors are ${cluster.actors.join(', ')}`);
  }
  const lifecycleFailed = (what: string) => (error: unknown) => checker.violate('runtime-errors', `${what} threw: ${String(error)}`);

  // Faults at their times; each does nothing once the run has healed.
  for (const fault of faultSchedule) {
    clock.setTimeout(() => {
      if (!network.faulty) return;
      trace.add('fault', clock.now(), describeFault(fault));
      if (fault.kind === 'partition') {
        countFault(fault.oneWay ? 'partition (one way)' : 'partition');
        network.cut(fault.a, fault.b, fault.oneWay ?? false);
        clock.setTimeout(() => network.mend(fault.a, fault.b, fault.oneWay ?? false), fault.durationMs);
        return;
      }
      const slot = cluster.slot(fault.actor);
      if (!slot.up) return;
      countFault(`crash ${slot.role}`);
      checker.crashed(slot.actor, slot.epoch);
      cluster.crash(slot.actor).catch(lifecycleFailed(`crashing ${slot.actor}`));
      clock.setTimeout(() => {
        if (!network.faulty || slot.up) return;
        countFault('restart');
        trace.add('restart', clock.now(), slot.actor);
        cluster.restart(slot.actor).catch(lifecycleFailed(`restarting ${slot.actor}`));
      }, fault.downMs);
    }, fault.atMs - clock.now());
  }

  // The client's router, as a frontend would run it; KV events reach it over the client's faulty transport.
  const { routing } = scenario.cluster;
  const kvFeed =
    routing === 'kv-aware'
      ? new KvRouterFeed({
          transport: cluster.clientTransport,
          discovery: cluster.discovery,
          random: streams.routing.split('kv-router'),
          log: silentLogger,
          ...(scenario.cluster.engine.prefixBlockTokens !== undefined ? { blockTokens: scenario.cluster.engine.prefixBlockTokens } : {}),
        })
      : undefined;
  kvFeed?.start();
  const requestRouting = new RequestRouting({
    discovery: cluster.discovery,
    model: cluster.clientEngine.model.name,
    random: streams.routing,
    routing,
    ...(kvFeed ? { kvFeed } : {}),
    ...(scenario.cluster.engine.prefixBlockTokens !== undefined ? { blockTokens: scenario.cluster.engine.prefixBlockTokens } : {}),
  });
  const runClient = async (spec: RequestSpec): Promise<void> => {
    sent++;
    const record = checker.request(spec);
    try {
      await serve(spec, record);
    } finally {
      ended++;
    }
  };
  const serve = async (spec: RequestSpec, record: RequestRecord): Promise<void> => {
    const finish = (outcome: Omit<ClientOutcome, 'atMs'>): void => checker.clientOutcome(record, { ...outcome, atMs: clock.now() });
    const promptTokens = Array.from(spec.promptTokens);
    let routed: RoutedRequest;
    try {
      routed = requestRouting.route(promptTokens, spec.maxTokens);
    } catch (error) {
      const failure = TandemError.from(error);
      return finish({ status: 'failed', code: failure.code, message: failure.message });
    }
    const { decode, prefillTicket, decodeTicket } = routed;
    // generate() moves on to the next candidate when one has no responder; the open message tells which one served.
    record.decodeActor = cluster.actorOfEndpoint(decode[0]!.instanceId);
    const controller = new AbortController();
    let cancelTimer: unknown;
    const { clients } = scenario.faults;
    if (spec.kind === 'workload' && network.faulty && chance(streams.clients, clients.cancelRate)) {
      const afterMs = Math.round(streams.clients.next() * clients.cancelAfterMsMax * 1000) / 1000;
      record.cancelAtMs = clock.now() + afterMs;
      countFault('client cancel');
      cancelTimer = clock.setTimeout(() => {
        note(record, clock.now(), 'client cancels');
        controller.abort(cancelled());
      }, afterMs);
    }
    const plan: GenerationPlan = {
      requestId: spec.requestId,
      model: cluster.clientEngine.model.name,
      promptTokens,
      sampling: { temperature: spec.temperature, top_p: 1, seed: spec.seed, max_tokens: spec.maxTokens, ignore_eos: spec.ignoreEos },
      stops: [],
      decode,
      prefill: routed.prefill,
    };
    const transport = recordingTransport(
      cluster.clientTransport,
      () => record.tokens.length,
      (chunk, stream) => checker.clientChunk(record, chunk, stream),
    );
    let outcome: Omit<ClientOutcome, 'atMs'> | undefined;
    try {
      const deps = {
        transport,
        engine: cluster.clientEngine,
        idleTimeoutMs: scenario.cluster.streamIdleTimeoutMs,
        migrationsMax: scenario.cluster.migrationsMax,
        onMigration: () => checker.count('client migrated a request'),
        onDecodeWorker: (worker: WorkerRecord) => decodeTicket.moveTo(worker),
      };
      for await (const event of generate(deps, plan, controller.signal)) {
        prefillTicket?.end();
        if (event.type === 'text') record.text += event.text;
        else outcome = { status: 'done', finishReason: event.finishReason, completionTokens: event.completionTokens };
      }
      outcome ??= { status: 'failed', code: ErrorCode.Internal, message: 'generate() ended without a finish' };
    } catch (error) {
      const wasCancelled = controller.signal.aborted && error === controller.signal.reason;
      const failure = error instanceof TandemError ? error : undefined;
      outcome = { status: wasCancelled ? 'cancelled' : 'failed', code: failure?.code, message: failure?.message ?? String(error) };
    } finally {
      prefillTicket?.end();
      decodeTicket.end();
      if (cancelTimer !== undefined) clock.clearTimeout(cancelTimer);
    }
    finish(outcome);
  };

  // Arrivals: one timer armed at a time, the next request drawn when the previous one leaves.
  const armNext = (): void => {
    const spec = workload.next();
    if (!spec) return;
    clock.setTimeout(() => {
      void runClient(spec);
      armNext();
    }, spec.arrivalMs - clock.now());
  };
  armNext();

  const records = checker.records;
  const stopped = (): boolean => scheduler.stopped !== undefined;

  // Safety phase: the workload under faults.
  progress();
  await scheduler.run({ untilMs: healAtMs });

  // Healing: every partition mended, every crashed worker restarted, no more random faults.
  if (!stopped()) {
    phase = 'healing';
    network.heal();
    trace.add('heal', clock.now());
    for (const slot of cluster.slots) {
      if (!slot.up) {
        countFault('restart');
        await cluster.restart(slot.actor);
      }
    }
    progress();
    const workloadEndsBy = Math.max(clock.now(), healAtMs) + boundMs;
    const outcome = await scheduler.run({ until: () => sent === scenario.workload.requests && ended === sent, untilMs: workloadEndsBy });
    if (outcome === 'event-bound') checker.violate('terminal', `the event bound (${scenario.eventsMax}) was reached before every request ended`);
    if (!stopped()) checker.checkTerminal(records.values(), () => workloadEndsBy, false);
  }

  // Liveness phase: fresh requests after healing must all complete.
  if (!stopped() && scenario.probes > 0) {
    phase = 'probes';
    progress();
    const startMs = clock.now();
    const probeRecords: RequestRecord[] = [];
    for (let i = 0; i < scenario.probes; i++) {
      const spec = workload.probe(scenario.workload.requests + i, startMs + i * 10);
      clock.setTimeout(() => {
        void runClient(spec);
        probeRecords.push(records.get(spec.requestId)!);
      }, spec.arrivalMs - startMs);
    }
    await scheduler.run({ until: () => ended === total, untilMs: startMs + boundMs });
    for (const record of probeRecords) {
      checker.checks.liveness++;
      if (stopped()) break;
      if (record.outcome?.status !== 'done') {
        checker.violate('liveness', `probe ${record.spec.requestId} sent after healing did not complete: ${record.outcome ? `${record.outcome.status} ${record.outcome.code ?? ''} ${record.outcome.message ?? ''}` : 'no outcome'}`, [record]);
      }
    }
    if (!stopped() && probeRecords.length < scenario.probes) checker.violate('liveness', `only ${probeRecords.length} of ${scenario.probes} probes were sent`);
  }

  // Quiescence: nothing left to happen.
  if (!stopped()) {
    phase = 'quiescence';
    progress();
    const outcome = await scheduler.run({ untilMs: clock.now() + boundMs });
    if (outcome !== 'idle' && !stopped()) {
      checker.violate('quiescence', `${clock.pendingCount} timers still pending ${boundMs} ms after the last request ended (next at ${clock.nextAtMs()?.toFixed(1)} ms)`);
    }
  }

  // End-of-run checks.
  if (!stopped()) {
    phase = 'checks';
    progress();
    checker.checkTerminal(records.values(), (record) => (record.spec.kind === 'probe' ? record.spec.arrivalMs : Math.max(healAtMs, record.spec.arrivalMs)) + boundMs, true);
    checker.checkPools(cluster.slots);
    const transport = cluster.transport.stats();
    const live = cluster.slots.filter((slot) => slot.up);
    // The client's KV router listens on one subscription of its own.
    const expectedSubscriptions = live.reduce((sum, slot) => sum + slot.startedSubscriptions, 0) + (kvFeed ? 1 : 0);
    const extra: string[] = [];
    if (transport.pendingRequestCount !== 0) extra.push(`transport: ${transport.pendingRequestCount} requests pending`);
    if (transport.openStreamCount !== 0) extra.push(`transport: ${transport.openStreamCount} streams open`);
    if (transport.timerCount !== 0) extra.push(`transport: ${transport.timerCount} timers armed`);
    if (transport.subscriptionCount !== expectedSubscriptions) extra.push(`transport: ${transport.subscriptionCount} subscriptions, the live workers started with ${expectedSubscriptions}`);
    const listed = new Map(cluster.discovery.list().map((record) => [record.instanceId, record.epoch]));
    for (const slot of cluster.slots) {
      const epoch = listed.get(slot.instanceId);
      if (slot.up && epoch !== slot.epoch) extra.push(`discovery: ${slot.actor} is listed at epoch ${epoch ?? '(none)'}, it runs epoch ${slot.epoch}`);
      if (!slot.up && epoch !== undefined) extra.push(`discovery: crashed ${slot.actor} is still listed`);
    }
    for (const slot of live) {
      if (slot.transport.subscriptionCount !== slot.startedSubscriptions) extra.push(`${slot.actor}: ${slot.transport.subscriptionCount} subscriptions, ${slot.startedSubscriptions} once started`);
    }
    if (clock.pendingCount !== 0) extra.push(`clock: ${clock.pendingCount} timers pending`);
    const pendingWrites = cluster.fabricNetwork.pendingWrites();
    if (pendingWrites !== 0) extra.push(`fabric: ${pendingWrites} writes in flight`);
    checker.checkLeftovers(cluster.slots, extra);
  }
  if (!stopped() && options.checkOutputs !== false) await checkOutputs(checker, records.values(), scenario);

  const workers = cluster.slots.map((slot) => ({ actor: slot.actor, epoch: slot.epoch, crashes: slot.crashes, up: slot.up, stats: slot.worker.stats(), engine: slot.engine.stats() }));
  const fabric = { ...cluster.fabricNetwork.stats };
  const virtualMs = clock.now();
  if (kvFeed) checker.observed['kv-router sequence gaps'] = kvFeed.indexer.stats().gaps;
  kvFeed?.stop();
  await cluster.close();
  if (!stopped() && cluster.transport.stats().subscriptionCount !== 0) {
    checker.violate('quiescence', `${cluster.transport.stats().subscriptionCount} subscriptions left after every worker stopped`);
  }
  phase = 'done';
  progress();
  for (const [kind, count] of Object.entries(network.counters)) faults[kind] = count;
  return {
    scenario,
    faultSchedule,
    healAtMs,
    livenessBoundMs: boundMs,
    traceHash: trace.digest(),
    events: scheduler.events,
    virtualMs,
    stoppedBy: scheduler.stopped,
    records: [...records.values()],
    invariants: checker.results(),
    violations: checker.violations,
    passed: checker.violations.length === 0,
    faults,
    observed: checker.observed,
    fabric,
    workers,
  };
}

/** The client's transport, recording each chunk generate() reads before it reads it. */
function recordingTransport(inner: Transport, tokensSoFar: () => number, onChunk: (chunk: Uint8Array, stream: { base: number; ordinal: number }) => void): Transport {
  let streams = 0;
  return {
    request: (subject, data, options) => inner.request(subject, data, options),
    publish: (subject, data) => inner.publish(subject, data),
    subscribe: (subject, handler, options) => inner.subscribe(subject, handler, options),
    close: () => inner.close(),
    stream: (subject, data, options): ReplyStream => {
      // A migrated request's new stream counts its tokens from 0 again, after those already received.
      const opened = { base: tokensSoFar(), ordinal: streams++ };
      const stream = inner.stream(subject, data, options);
      return {
        cancel: () => stream.cancel(),
        [Symbol.asyncIterator]: () => {
          const iterator = stream[Symbol.asyncIterator]();
          return {
            next: async () => {
              const result = await iterator.next();
              if (!result.done) onChunk(result.value, opened);
              return result;
            },
            return: async () => (iterator.return ? iterator.return() : { done: true, value: undefined }),
          };
        },
      };
    },
  };
}

/** Reference engines run side by side; each request's reference is independent of the others. */
const referenceLanes = 32;

/**
 * Invariant 7 (and the "exactly once, in order" half of 6): every client's tokens against what
 * runAggregated gives for the same prompt and sampling, on a zero-time engine driven by its
 * own clock. Completed requests must match in full, the others must have received a prefix.
 */
async function checkOutputs(checker: InvariantChecker, records: Iterable<RequestRecord>, scenario: Scenario): Promise<void> {
  const pending = [...records].filter((record) => record.tokens.length > 0 || record.outcome?.status === 'done');
  const clock = new EventQueueClock();
  const engineConfig = { ...scenario.cluster.engine, speedup: Number.POSITIVE_INFINITY, clock };
  let next = 0;
  let running = 0;
  const lane = async (): Promise<void> => {
    const engine = new SimEngine(engineConfig);
    for (let i = next++; i < pending.length; i = next++) {
      const record = pending[i]!;
      const { spec } = record;
      const sampling = { temperature: spec.temperature, topP: 1, seed: spec.seed, maxTokens: spec.maxTokens, ignoreEos: spec.ignoreEos };
      const reference = await runAggregated(engine, Array.from(spec.promptTokens), sampling);
      const detokenizer = engine.createDetokenizer();
      const text = detokenizer.push(reference) + detokenizer.flush();
      checker.checkOutput(record, reference, text);
    }
  };
  const lanes = Array.from({ length: Math.min(referenceLanes, pending.length) }, () => {
    running++;
    return lane().finally(() => running--);
  });
  // Zero-time engines still wait on their clock; independent lanes may fire a whole instant at once.
  for (let idleTurns = 0; running > 0; ) {
    await settle();
    const atMs = clock.nextAtMs();
    if (atMs === undefined) {
      if (++idleTurns > 1000) throw new Error('the reference engines stopped making progress');
      continue;
    }
    idleTurns = 0;
    while (clock.nextAtMs() === atMs) clock.step();
  }
  await Promise.all(lanes);
}

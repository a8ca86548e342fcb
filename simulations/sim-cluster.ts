import type { InspectionEvent } from 'xstate';
import { SimEngine, type Discovery, type EngineKvEvent, type Fabric, type Logger, type Random } from '../src/index.js';
import { DecodeWorker, MemoryDiscovery, MemoryTransport, PrefillWorker, SimFabricNetwork } from '../src/internal.js';
import type { SimFabric, SimWriteInfo } from '../src/fabric/sim/sim-fabric.js';
import type { SimRegion } from '../src/fabric/sim/sim-region.js';
import type { FaultyNetwork } from './faulty-network.js';
import { FaultyTransport, type TrafficObserver } from './faulty-transport.js';
import { chance } from './random-streams.js';
import { deadlinesOf, limitsOf, type FaultPlan, type Scenario } from './scenario.js';
import type { SteppableClock } from './event-queue-clock.js';

export type Role = 'prefill' | 'decode';

/** One worker position of the cluster; a crash and restart gives it a new incarnation (epoch). */
export interface WorkerSlot {
  /** Actor name used by fault plans and reports: 'prefill-0', 'decode-1'... */
  readonly actor: string;
  readonly role: Role;
  /** Instance id, kept across restarts so a restarted worker is the same name at a new epoch. */
  readonly instanceId: string;
  epoch: number;
  up: boolean;
  worker: PrefillWorker | DecodeWorker;
  engine: SimEngine;
  fabric: SimFabric;
  transport: FaultyTransport;
  /** The decode worker's KV region of the current incarnation. */
  region: SimRegion | undefined;
  crashes: number;
  /** Subscriptions the incarnation held once started: what it must hold again when idle. */
  startedSubscriptions: number;
}

/** What the run observes of the cluster. */
export interface ClusterObserver {
  traffic: TrafficObserver;
  /** The inspection callback for the machines of one worker incarnation. */
  inspect(slot: WorkerSlot, epoch: number): (event: InspectionEvent) => void;
  /** A decode incarnation registered its KV region. */
  region(slot: WorkerSlot, epoch: number, region: SimRegion): void;
  /** An error-level log line of a live incarnation: a bug report from the runtime itself. */
  error(actor: string, message: string, fields: Record<string, unknown>): void;
  /** A fabric fault hit a write of `owner` (a room's ownerKey). */
  fabricFault(owner: string, fault: string): void;
}

/** Test seams: run on every worker incarnation after it is built and before it starts. */
export interface ClusterHooks {
  decodeWorker?(worker: DecodeWorker, slot: WorkerSlot): void;
  prefillWorker?(worker: PrefillWorker, slot: WorkerSlot): void;
}

/** A logger that reports errors of a live incarnation and drops the rest. */
function incarnationLogger(actor: string, alive: () => boolean, observer: ClusterObserver, base: Record<string, unknown> = {}): Logger {
  return {
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (message, fields) => {
      if (alive()) observer.error(actor, message, { ...base, ...fields });
    },
    child: (fields) => incarnationLogger(actor, alive, observer, { ...base, ...fields }),
  };
}

/**
 * A crashed process does not deregister: its record stays in discovery until its heartbeat
 * expires. Each incarnation sees discovery through this view, which swallows the deregistration
 * its shutdown code attempts once it has crashed.
 */
function incarnationDiscovery(base: MemoryDiscovery, alive: () => boolean): Discovery {
  return {
    register: (record) => base.register(record),
    deregister: (instanceId) => (alive() ? base.deregister(instanceId) : Promise.resolve()),
    list: (role) => base.list(role),
    watch: (fn) => base.watch(fn),
    close: async () => {},
  };
}

/**
 * The cluster under simulation: the real prefill and decode workers over one memory transport
 * (each actor behind its own FaultyTransport), one memory discovery and one sim fabric network
 * whose fault hooks draw from the fabric stream. Workers can crash (subscriptions, fabric and
 * every in-memory page and room gone, discovery record left to expire) and restart at a new epoch.
 */
export class SimCluster {
  readonly transport: MemoryTransport;
  readonly discovery: MemoryDiscovery;
  readonly fabricNetwork: SimFabricNetwork;
  readonly slots: WorkerSlot[] = [];
  /** The client's (frontend's) view of the transport. */
  readonly clientTransport: FaultyTransport;
  /** The engine the client detokenizes with. */
  readonly clientEngine: SimEngine;
  private readonly actorByEndpoint = new Map<string, string>();

  constructor(
    private readonly scenario: Scenario,
    private readonly clock: SteppableClock,
    private readonly network: FaultyNetwork,
    private readonly fabricRandom: Random,
    ids: Random,
    private readonly observer: ClusterObserver,
    private readonly hooks: ClusterHooks = {},
  ) {
    const { cluster } = scenario;
    this.transport = new MemoryTransport({
      clock,
      deliveryDelayMs: cluster.transportLatencyMs,
      streamBufferMax: limitsOf(scenario).streamBufferMax,
      onHandlerError: (error, subject) => observer.error('transport', 'a message handler threw', { subject, error: String(error) }),
    });
    this.discovery = new MemoryDiscovery({ clock });
    this.fabricNetwork = new SimFabricNetwork({
      clock,
      latencyMs: cluster.fabric.latencyMs,
      bytesPerMs: cluster.fabric.bytesPerMs,
      faults: this.fabricFaults(scenario.faults.fabric),
    });
    this.clientTransport = new FaultyTransport(this.transport, 'client', network, clock, observer.traffic);
    this.clientEngine = this.newEngine();
    const add = (role: Role, count: number): void => {
      for (let i = 0; i < count; i++) {
        const actor = `${role}-${i}`;
        const instanceId = `${actor}-${ids.id(6)}`;
        this.actorByEndpoint.set(instanceId, actor);
        const slot = { actor, role, instanceId, epoch: 1, up: true, crashes: 0, region: undefined, startedSubscriptions: 0 } as WorkerSlot;
        this.incarnate(slot);
        this.slots.push(slot);
      }
    };
    add('prefill', cluster.prefillWorkers);
    add('decode', cluster.decodeWorkers);
  }

  /** Actor names of every worker and the client, in a fixed order. */
  get actors(): string[] {
    return ['client', ...this.slots.map((slot) => slot.actor)];
  }

  slot(actor: string): WorkerSlot {
    const slot = this.slots.find((s) => s.actor === actor);
    if (!slot) throw new Error(`no worker named ${actor}; workers: ${this.slots.map((s) => s.actor).join(', ')}`);
    return slot;
  }

  /** The actor behind a fabric endpoint (a worker's instance id). */
  actorOfEndpoint(endpoint: string): string {
    return this.actorByEndpoint.get(endpoint) ?? endpoint;
  }

  async start(): Promise<void> {
    for (const slot of this.slots) {
      await slot.worker.start();
      slot.startedSubscriptions = slot.transport.subscriptionCount;
    }
  }

  /**
   * Crashes a worker: from this instant it receives and sends nothing, its fabric endpoint closes
   * (its peers' connections break), and its pages, rooms and requests are gone. Its discovery
   * record stays until `discoveryTtlMs` has passed, as a missed heartbeat would.
   */
  async crash(actor: string): Promise<void> {
    const slot = this.slot(actor);
    if (!slot.up) return;
    slot.up = false;
    slot.crashes++;
    this.network.setDown(actor, true);
    slot.transport.kill();
    const deadEpoch = slot.epoch;
    // The process is gone: stopping the worker object only silences it (its transport is dead,
    // its logger muted, its discovery view swallows the deregistration).
    await slot.worker.stop();
    await slot.fabric.close();
    await slot.engine.close();
    this.clock.setTimeout(() => {
      if (slot.epoch === deadEpoch && !slot.up) void this.discovery.deregister(slot.instanceId);
    }, this.scenario.cluster.discoveryTtlMs);
  }

  /** Starts a crashed worker again under its instance id at the next epoch, with empty pages and rooms. */
  async restart(actor: string): Promise<void> {
    const slot = this.slot(actor);
    if (slot.up) return;
    slot.epoch++;
    slot.up = true;
    slot.region = undefined;
    this.incarnate(slot);
    this.network.setDown(actor, false);
    await slot.worker.start();
    slot.startedSubscriptions = slot.transport.subscriptionCount;
  }

  /** Stops every live worker and closes the transport, discovery and fabric. */
  async close(): Promise<void> {
    for (const slot of this.slots) if (slot.up) await slot.worker.stop();
    await this.fabricNetwork.close();
    await this.discovery.close();
    await this.transport.close();
  }

  private newEngine(onKvEvent?: (event: EngineKvEvent) => void): SimEngine {
    return new SimEngine({ ...this.scenario.cluster.engine, clock: this.clock, ...(onKvEvent ? { onKvEvent } : {}) });
  }

  /** Builds the worker objects of the slot's current epoch. */
  private incarnate(slot: WorkerSlot): void {
    const { scenario, clock, observer } = this;
    const { actor, role, instanceId, epoch } = slot;
    const alive = (): boolean => slot.up && slot.epoch === epoch;
    // With KV-aware routing a prefill engine reports its cache changes through its worker, bound late.
    const publishesKv = role === 'prefill' && scenario.cluster.routing === 'kv-aware';
    const engine = this.newEngine(publishesKv ? (event) => (slot.worker as PrefillWorker).publishKvEvent(event) : undefined);
    const simFabric = this.fabricNetwork.attach(instanceId);
    const transport = new FaultyTransport(this.transport, actor, this.network, clock, observer.traffic);
    const fabric: Fabric = {
      registerRegion: (options) => {
        const region = simFabric.registerRegion(options);
        slot.region = region;
        observer.region(slot, epoch, region);
        return region;
      },
      connect: (peer, writer) => simFabric.connect(peer, writer),
      onPeerClosed: (fn) => simFabric.onPeerClosed(fn),
      isConnected: (writer) => simFabric.isConnected(writer),
      close: () => simFabric.close(),
    };
    const common = {
      instanceId,
      epoch,
      transport,
      discovery: incarnationDiscovery(this.discovery, alive),
      fabric,
      engine,
      clock,
      log: incarnationLogger(actor, alive, observer),
      limits: limitsOf(scenario),
      deadlines: deadlinesOf(scenario),
      inspect: observer.inspect(slot, epoch),
    };
    slot.engine = engine;
    slot.fabric = simFabric;
    slot.transport = transport;
    if (role === 'prefill') {
      // Room numbers of each incarnation come from their own stream, as a restarted process would draw afresh.
      const worker = new PrefillWorker({ ...common, random: this.fabricRandom.split(`${instanceId}/${epoch}`) });
      slot.worker = worker;
      this.hooks.prefillWorker?.(worker, slot);
    } else {
      const worker = new DecodeWorker({
        ...common,
        pageBytes: scenario.cluster.pageBytes,
        pageCount: scenario.cluster.pageCount,
        prefillLocally: false,
      });
      slot.worker = worker;
      this.hooks.decodeWorker?.(worker, slot);
    }
  }

  /** The fabric's fault hooks: partitions and crashes cut writes; the plan's rates break some. */
  private fabricFaults(plan: FaultPlan['fabric']) {
    const { network, fabricRandom: random } = this;
    const endpoints = (info: SimWriteInfo): { from: string; to: string; owner: string } => ({
      from: this.actorOfEndpoint(info.from),
      to: this.actorOfEndpoint(info.to),
      owner: `${info.writer.instanceId}/${info.writer.epoch}/${info.room}`,
    });
    return {
      shouldFailWrite: (info: SimWriteInfo): boolean => {
        const { from, to, owner } = endpoints(info);
        // A reliable connection needs both directions: the write, and its acknowledgement.
        if (network.isCut(from, to) || network.isCut(to, from)) {
          network.count('fabric.write-partitioned');
          this.observer.fabricFault(owner, `fabric write ${from} -> ${to} lost to a partition`);
          return true;
        }
        if (network.faulty && chance(random, plan.writeFailRate)) {
          network.count('fabric.write-failed');
          this.observer.fabricFault(owner, `fabric write ${from} -> ${to} failed`);
          return true;
        }
        return false;
      },
      extraDelayMs: (info: SimWriteInfo): number => {
        if (!network.faulty || !chance(random, plan.slowRate)) return 0;
        const delayMs = random.next() * plan.slowMsMax;
        const { owner } = endpoints(info);
        network.count('fabric.write-slow');
        this.observer.fabricFault(owner, `fabric write slowed by ${delayMs.toFixed(1)} ms`);
        return delayMs;
      },
      dropCompletion: (info: SimWriteInfo): boolean => {
        if (!network.faulty || !chance(random, plan.lostCompletionRate)) return false;
        network.count('fabric.completion-lost');
        this.observer.fabricFault(endpoints(info).owner, 'fabric completion lost');
        return true;
      },
    };
  }
}

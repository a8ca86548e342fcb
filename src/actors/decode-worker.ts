import type { InspectionEvent } from 'xstate';
import type { Discovery } from '../discovery/discovery.js';
import type { Engine } from '../engine/engine.js';
import { ErrorCode, TandemError } from '../errors.js';
import type { Fabric, Region, RegionStats } from '../fabric/fabric.js';
import { ownerKey, ownerPrefix } from '../fabric/fabric.js';
import { PagePool, type PagePoolStats } from '../kv/page-pool.js';
import type { Deadlines, Limits } from '../limits.js';
import type { Logger } from '../log.js';
import type { TandemMetrics } from '../metrics/tandem-metrics.js';
import { decode, encode } from '../protocol/codec.js';
import { subjects, workerPrefix } from '../protocol/subjects.js';
import { waitUntil, type Clock } from '../time/clock.js';
import type { RequestTracer } from '../trace/otel.js';
import { withHeaderTraceparent } from '../trace/trace-headers.js';
import type { InboundMessage, Subscription, Transport } from '../transport/transport.js';
import { DecodeBatcher } from './decode-batcher.js';
import { DecodeRequest, disaggregatedLogic, localLogic, type DecodeRequestDeps, type RequestLogic } from './decode-request.js';
import { RoomFence } from './room-fence.js';

export interface DecodeWorkerOptions {
  /** Unique id of this worker incarnation. */
  instanceId: string;
  /** Incarnation number, published in discovery. */
  epoch: number;
  transport: Transport;
  discovery: Discovery;
  fabric: Fabric;
  engine: Engine;
  clock: Clock;
  log: Logger;
  /** Bytes per KV page. */
  pageBytes: number;
  /** Pages in the KV pool. */
  pageCount: number;
  limits: Limits;
  /** Default per-state deadlines; requests may override them. */
  deadlines: Deadlines;
  /** Prefill the prompt here instead of on a prefill worker (aggregated serving). */
  prefillLocally: boolean;
  /** Observes every request machine of this worker (xstate inspection), for simulators and visualizers. */
  inspect?: (event: InspectionEvent) => void;
  /** Where requests record inter-token latency; optional. */
  metrics?: TandemMetrics;
  /** Makes OpenTelemetry spans per request and state; absent (the default) makes none. */
  requestTracer?: RequestTracer;
}

/** Counters and gauges of a decode worker. */
export interface DecodeWorkerStats {
  pool: PagePoolStats;
  activeRequests: number;
  batch: { active: number; waiting: number };
  /** Requests by terminal status. */
  finished: Record<'done' | 'failed' | 'cancelled', number>;
  /** Prefill events that named a room this worker does not hold (late, duplicated or forged). */
  strayEvents: number;
  /** Messages that failed to decode. */
  invalidMessages: number;
  /** Requests whose prompt this worker prefilled itself (aggregated mode or conditional disaggregation). */
  localPrefills: number;
  /** Rooms whose pages are quarantined, waiting for the prefill side to acknowledge an abort. */
  fencedRooms: number;
  /** Writes applied to and refused by this worker's KV region. */
  region: RegionStats;
}

/**
 * The decode worker: owns a KV page pool registered with its fabric, accepts generate streams,
 * runs one request machine per request, and decodes in continuous batches.
 */
export class DecodeWorker {
  readonly subjectPrefix: string;
  private region!: Region;
  private pool!: PagePool;
  private readonly batcher: DecodeBatcher;
  private readonly fence: RoomFence;
  private readonly requests = new Map<string, DecodeRequest>();
  /** ownerKey → request, for routing prefill events to the request that holds the room. */
  private readonly rooms = new Map<string, DecodeRequest>();
  private readonly subscriptions: Subscription[] = [];
  private readonly counters = { done: 0, failed: 0, cancelled: 0, strayEvents: 0, invalidMessages: 0, localPrefills: 0 };
  private readonly machines: RequestLogic;
  private deps: DecodeRequestDeps | undefined;
  private unwatchPeers: (() => void) | undefined;
  private unwatchDiscovery: (() => void) | undefined;
  private accepting = false;

  constructor(private readonly options: DecodeWorkerOptions) {
    this.subjectPrefix = workerPrefix('decode', options.instanceId);
    this.batcher = new DecodeBatcher(options.engine, options.limits.decodeBatchMax, options.log);
    const requestOf = (requestId: string): DecodeRequest => {
      const request = this.requests.get(requestId);
      if (!request) throw new TandemError(ErrorCode.Internal, `no request ${requestId} on this worker`);
      return request;
    };
    this.machines = { disaggregated: disaggregatedLogic(requestOf), local: localLogic(requestOf) };
    this.fence = new RoomFence({
      transport: options.transport,
      clock: options.clock,
      log: options.log,
      deadlines: options.deadlines,
      // A writer without a connection cannot write at all (every fabric needs one), and a connection
      // opened later is admitted (TCP) or granted (verbs) writes only to pages its rooms still hold,
      // so pages freed now are safe from a writer that is neither connected nor alive. This trusts
      // writers to follow the protocol: see README, On RDMA hardware, for the verbs trust boundary.
      writerMayWrite: (writer) =>
        options.fabric.isConnected(writer) || options.discovery.list('prefill').some((r) => r.instanceId === writer.instanceId && r.epoch === writer.epoch),
    });
  }

  get instanceId(): string {
    return this.options.instanceId;
  }

  /** Registers the page pool with the fabric, subscribes, and announces the worker in discovery. */
  async start(): Promise<void> {
    const { fabric, pageBytes, pageCount, limits, transport, log } = this.options;
    this.region = fabric.registerRegion({ pageBytes, pageCount });
    this.pool = new PagePool({ pageCount, ownership: this.region, waitersMax: limits.allocationWaitersMax });
    this.fence.attach(this.pool);
    // A prefill worker whose fabric connection is gone can no longer write: its fenced pages are safe to reuse.
    this.unwatchPeers = fabric.onPeerClosed((writer) => {
      // Fail the writer's requests first: their pages get fenced, and then released below,
      // since nothing of a writer whose connection closed can land any more.
      this.prefillGone(writer.instanceId, 'closed its fabric connection');
      this.fence.writerGone(writer);
    });
    // A prefill worker that leaves discovery (deregistered, or its heartbeat went stale) will not
    // finish its rooms: fail the requests waiting on them now, not at their deadlines.
    this.unwatchDiscovery = this.options.discovery.watch((event) => {
      if (event.type === 'removed' && event.record.role === 'prefill') this.prefillGone(event.record.instanceId, 'left discovery');
    });
    this.subscriptions.push(
      transport.subscribe(subjects.generate(this.subjectPrefix), (message) => this.onGenerate(message)),
      transport.subscribe(subjects.events(this.subjectPrefix), (message) => this.onEvent(message)),
      transport.subscribe(subjects.stats(this.subjectPrefix), (message) => this.onStats(message)),
    );
    this.accepting = true;
    await this.options.discovery.register({
      instanceId: this.options.instanceId,
      role: 'decode',
      model: this.options.engine.model.name,
      epoch: this.options.epoch,
      subjectPrefix: this.subjectPrefix,
      region: this.region.descriptor,
      pageCount,
    });
    log.info('decode worker started', {
      worker: this.options.instanceId,
      subjects: this.subjectPrefix,
      fabric: this.region.descriptor.fabric,
      pages: pageCount,
      pageBytes,
      prefill: this.options.prefillLocally ? 'local' : 'remote',
    });
  }

  /**
   * Graceful shutdown: leaves discovery so no new work is routed here, refuses new work, lets
   * what is in flight finish for up to `timeoutMs`, then stops.
   */
  async drain(timeoutMs: number): Promise<void> {
    await this.leave();
    await waitUntil(this.options.clock, () => this.requests.size === 0, timeoutMs);
    this.options.log.info('drained', { worker: this.options.instanceId, leftInFlight: this.requests.size });
    this.halt();
  }

  /** Stops taking work, cancels what is in flight, and leaves discovery. */
  async stop(): Promise<void> {
    await this.leave();
    this.halt();
  }

  /** Refuses new work and leaves discovery. */
  private async leave(): Promise<void> {
    this.accepting = false;
    await this.options.discovery.deregister(this.options.instanceId);
  }

  /** Unsubscribes and cancels what is in flight. */
  private halt(): void {
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    for (const request of [...this.requests.values()]) request.cancel();
    this.batcher.stop();
    this.unwatchPeers?.();
    this.unwatchDiscovery?.();
    this.fence.stop();
  }

  private onStats(message: InboundMessage): void {
    if (!message.expectsReply) return;
    message.respond(encode('stats_reply', { instance_id: this.options.instanceId, role: 'decode', stats: { ...this.stats() } }));
  }

  stats(): DecodeWorkerStats {
    return {
      pool: this.pool.stats(),
      activeRequests: this.requests.size,
      batch: this.batcher.size,
      finished: { done: this.counters.done, failed: this.counters.failed, cancelled: this.counters.cancelled },
      strayEvents: this.counters.strayEvents,
      invalidMessages: this.counters.invalidMessages,
      localPrefills: this.counters.localPrefills,
      fencedRooms: this.fence.size,
      region: { ...this.region.stats },
    };
  }

  /** Checks page conservation; a violation is a bug and throws. */
  checkConservation(): void {
    this.pool.checkConservation();
  }

  private onGenerate(message: InboundMessage): void {
    if (!message.isStream) {
      if (message.expectsReply) message.respond(encode('error', { error: { code: ErrorCode.BadRequest, message: 'generate must be opened as a stream' } }));
      return;
    }
    const writer = message.openStream();
    const refuse = (error: TandemError, requestId?: string): void => {
      writer.write(encode('error', { request_id: requestId, error: error.toWire() }));
      writer.end();
    };
    let body;
    try {
      body = withHeaderTraceparent(decode(message.data, 'generate'), message);
    } catch (error) {
      this.counters.invalidMessages++;
      this.options.log.warn('refused a malformed generate request', { error: String(error) });
      refuse(TandemError.from(error, ErrorCode.InvalidMessage));
      return;
    }
    if (!this.accepting) return refuse(new TandemError(ErrorCode.ShuttingDown, 'the decode worker is stopping'), body.request_id);
    if (body.model !== this.options.engine.model.name) {
      return refuse(new TandemError(ErrorCode.ModelNotFound, `this worker serves '${this.options.engine.model.name}', not '${body.model}'`), body.request_id);
    }
    if (this.requests.has(body.request_id)) {
      return refuse(new TandemError(ErrorCode.BadRequest, `request ${body.request_id} is already in flight`), body.request_id);
    }
    if (body.prompt_tokens.length === 0 || body.prompt_tokens.length > this.options.limits.promptTokensMax) {
      return refuse(new TandemError(ErrorCode.PromptTooLong, `prompt has ${body.prompt_tokens.length} tokens; allowed 1..${this.options.limits.promptTokensMax}`), body.request_id);
    }
    this.deps ??= this.requestDeps();
    const request = new DecodeRequest(this.deps, body, writer);
    this.requests.set(body.request_id, request);
    if (request.prefillsLocally) this.counters.localPrefills++;
    request.start();
  }

  private requestDeps(): DecodeRequestDeps {
    return {
      ...this.options,
      machines: this.machines,
      subjectPrefix: this.subjectPrefix,
      region: this.region,
      pool: this.pool,
      batcher: this.batcher,
      fence: this.fence,
      bindRoom: (owner, request) => this.rooms.set(owner, request),
      unbindRoom: (owner) => this.rooms.delete(owner),
      finished: (request, status) => {
        this.requests.delete(request.requestId);
        this.counters[status]++;
      },
    };
  }

  /** Fails every request still waiting on a room of prefill worker `instanceId`. */
  private prefillGone(instanceId: string, why: string): void {
    const prefix = ownerPrefix(instanceId);
    for (const [owner, request] of this.rooms) {
      if (!owner.startsWith(prefix)) continue;
      request.send({ type: 'PREFILL_FAILED', error: { code: ErrorCode.PrefillFailed, message: `prefill worker ${instanceId} ${why}` } });
    }
  }

  private onEvent(message: InboundMessage): void {
    let event;
    try {
      event = decode(message.data, 'transfer_posted', 'prefill_failed');
    } catch (error) {
      this.counters.invalidMessages++;
      this.options.log.warn('dropped a malformed prefill event', { error: String(error) });
      return;
    }
    const owner = ownerKey({ instanceId: event.prefill_id, epoch: event.epoch }, event.room);
    const request = this.rooms.get(owner);
    if (!request || request.requestId !== event.request_id) {
      this.counters.strayEvents++;
      this.options.log.debug('dropped an event for a room this worker does not hold', { owner, request: event.request_id, type: event.t });
      return;
    }
    if (event.t === 'transfer_posted') request.send({ type: 'TRANSFER_POSTED' });
    else request.send({ type: 'PREFILL_FAILED', error: { code: event.error.code as ErrorCode, message: event.error.message } });
  }
}

import type { InspectionEvent } from 'xstate';
import type { Discovery } from '../discovery/discovery.js';
import type { Engine, EngineKvEvent } from '../engine/engine.js';
import { ErrorCode, TandemError } from '../errors.js';
import type { Fabric } from '../fabric/fabric.js';
import type { Deadlines, Limits } from '../limits.js';
import type { Logger } from '../log.js';
import type { TandemMetrics } from '../metrics/tandem-metrics.js';
import { decode, encode } from '../protocol/codec.js';
import { kvBlocksPerMessageMax } from '../protocol/messages.js';
import { kvEventsSubject, subjects, workerPrefix } from '../protocol/subjects.js';
import type { Random } from '../random/random.js';
import { waitUntil, type Clock } from '../time/clock.js';
import { assert } from '../util/assert.js';
import { withHeaderTraceparent } from '../trace/trace-headers.js';
import type { InboundMessage, Subscription, Transport } from '../transport/transport.js';
import { FabricLinks } from './fabric-links.js';
import { PrefillRoom, roomLogic, type RoomDeps } from './prefill-room.js';

export interface PrefillWorkerOptions {
  /** Unique id of this worker incarnation. */
  instanceId: string;
  /** Incarnation number; stamped on every room so rooms of an earlier life are told apart. */
  epoch: number;
  transport: Transport;
  discovery: Discovery;
  fabric: Fabric;
  engine: Engine;
  clock: Clock;
  random: Random;
  log: Logger;
  limits: Limits;
  deadlines: Deadlines;
  /** Observes every room machine of this worker (xstate inspection), for simulators and visualizers. */
  inspect?: (event: InspectionEvent) => void;
  /** Where rooms record KV transfer bytes and time; optional. */
  metrics?: TandemMetrics;
}

export interface PrefillWorkerStats {
  /** Rooms held now. */
  rooms: number;
  /** Rooms by how they ended. */
  retired: Record<'released' | 'expired' | 'failed', number>;
  /** Messages refused: malformed, unknown room, stale epoch, duplicate start. */
  refused: number;
  /** Fabric connections open to decode workers. */
  connections: number;
  /** Blocks in the engine's prefix cache (0 for an engine without one). */
  prefixCacheBlocks: number;
}

/** Rooms remembered after they end, so a repeated release is acknowledged instead of refused. */
const retiredRoomsMax = 4096;

/**
 * The prefill worker: its bootstrap endpoint grants rooms; each room computes a prompt's KV and
 * writes it one-sided into the pages its decode worker allocated.
 */
export class PrefillWorker {
  readonly subjectPrefix: string;
  private readonly rooms = new Map<number, PrefillRoom>();
  private readonly retiredRooms = new Set<number>();
  private readonly subscriptions: Subscription[] = [];
  private readonly links: FabricLinks;
  private readonly counters = { released: 0, expired: 0, failed: 0, refused: 0 };
  private nextRoom: number;
  private readonly deps: RoomDeps;
  private accepting = false;

  constructor(private readonly options: PrefillWorkerOptions) {
    this.subjectPrefix = workerPrefix('prefill', options.instanceId);
    this.links = new FabricLinks(options.fabric, { instanceId: options.instanceId, epoch: options.epoch });
    // Rooms start at a random point so a restarted worker does not reissue its last life's numbers.
    this.nextRoom = options.random.uint32() || 1;
    this.deps = this.roomDeps();
  }

  get instanceId(): string {
    return this.options.instanceId;
  }

  /** The engine this worker prefills with (simulations read its counters). */
  get engine(): Engine {
    return this.options.engine;
  }

  async start(): Promise<void> {
    const { transport, log } = this.options;
    this.subscriptions.push(
      transport.subscribe(subjects.bootstrap(this.subjectPrefix), (m) => this.guard(m, () => this.onBootstrap(m))),
      transport.subscribe(subjects.prefill(this.subjectPrefix), (m) => this.guard(m, () => this.onPrefill(m))),
      transport.subscribe(subjects.release(this.subjectPrefix), (m) => this.guard(m, () => this.onRelease(m))),
      transport.subscribe(subjects.stats(this.subjectPrefix), (m) => this.onStats(m)),
      transport.subscribe(subjects.kvBlocks(this.subjectPrefix), (m) => this.guard(m, () => this.onKvBlocks(m))),
    );
    this.accepting = true;
    await this.options.discovery.register({
      instanceId: this.options.instanceId,
      role: 'prefill',
      model: this.options.engine.model.name,
      epoch: this.options.epoch,
      subjectPrefix: this.subjectPrefix,
    });
    log.info('prefill worker started', { worker: this.options.instanceId, epoch: this.options.epoch, subjects: this.subjectPrefix, roomsMax: this.options.limits.roomsMax });
  }

  /**
   * Graceful shutdown: leaves discovery so no new work is routed here, refuses new work, lets
   * what is in flight finish for up to `timeoutMs`, then stops.
   */
  async drain(timeoutMs: number): Promise<void> {
    await this.leave();
    await waitUntil(this.options.clock, () => this.rooms.size === 0, timeoutMs);
    this.options.log.info('drained', { worker: this.options.instanceId, leftInFlight: this.rooms.size });
    this.halt();
  }

  /** Stops granting rooms, leaves discovery, and tears down fabric connections. */
  async stop(): Promise<void> {
    await this.leave();
    this.halt();
  }

  /** Refuses new work and leaves discovery. */
  private async leave(): Promise<void> {
    this.accepting = false;
    await this.options.discovery.deregister(this.options.instanceId);
  }

  /** Unsubscribes, stops the rooms and closes the fabric connections. */
  private halt(): void {
    for (const subscription of this.subscriptions.splice(0)) subscription.unsubscribe();
    for (const room of [...this.rooms.values()]) room.stop();
    this.links.closeAll();
  }

  /** Publishes a change of this worker's prefix cache to routers (wire the engine's `onKvEvent` here). */
  publishKvEvent(event: EngineKvEvent): void {
    const { kind, seq } = event;
    // One insert stores at most a prompt's blocks, far below the message limit.
    assert(event.blocks.length <= kvBlocksPerMessageMax, `a KV event names ${event.blocks.length} blocks`);
    this.options.transport.publish(kvEventsSubject, encode('kv_events', { worker: this.options.instanceId, epoch: this.options.epoch, seq, kind, blocks: event.blocks }));
  }

  private onKvBlocks(message: InboundMessage): void {
    decode(message.data, 'kv_blocks_request');
    if (!message.expectsReply) return;
    const snapshot = this.options.engine.kvSnapshot?.() ?? { seq: -1, blocks: [] };
    // The newest blocks matter most for routing, so an oversized cache loses its oldest ones.
    const blocks = snapshot.blocks.slice(-kvBlocksPerMessageMax);
    message.respond(encode('kv_blocks_reply', { worker: this.options.instanceId, epoch: this.options.epoch, seq: snapshot.seq, blocks }));
  }

  private onStats(message: InboundMessage): void {
    if (!message.expectsReply) return;
    message.respond(encode('stats_reply', { instance_id: this.options.instanceId, role: 'prefill', stats: { ...this.stats() } }));
  }

  stats(): PrefillWorkerStats {
    return {
      rooms: this.rooms.size,
      retired: { released: this.counters.released, expired: this.counters.expired, failed: this.counters.failed },
      refused: this.counters.refused,
      connections: this.links.size,
      prefixCacheBlocks: this.options.engine.kvBlockCount?.() ?? 0,
    };
  }

  /** Runs a handler; an operating error becomes an error reply, never a crash. */
  private guard(message: InboundMessage, handle: () => void): void {
    try {
      handle();
    } catch (error) {
      const failure = TandemError.from(error, ErrorCode.InvalidMessage);
      this.counters.refused++;
      this.options.log.warn('refused a message', { subject: message.subject, code: failure.code, error: failure.message });
      if (message.expectsReply) message.respond(encode('error', { error: failure.toWire() }));
    }
  }

  private onBootstrap(message: InboundMessage): void {
    const body = withHeaderTraceparent(decode(message.data, 'bootstrap_request'), message);
    if (!this.accepting) throw new TandemError(ErrorCode.ShuttingDown, 'the prefill worker is stopping');
    if (body.model !== this.options.engine.model.name) {
      throw new TandemError(ErrorCode.ModelNotFound, `this worker serves '${this.options.engine.model.name}', not '${body.model}'`);
    }
    if (this.rooms.size >= this.options.limits.roomsMax) {
      throw new TandemError(ErrorCode.Overloaded, `all ${this.options.limits.roomsMax} rooms are in use`);
    }
    const number = this.allocateRoomNumber();
    const room = new PrefillRoom(this.deps, { requestId: body.request_id, room: number, traceparent: body.traceparent });
    this.rooms.set(number, room);
    room.start();
    message.respond(encode('bootstrap_grant', { request_id: body.request_id, prefill_id: this.options.instanceId, epoch: this.options.epoch, room: number }));
  }

  private onPrefill(message: InboundMessage): void {
    const body = withHeaderTraceparent(decode(message.data, 'prefill_request'), message);
    const room = this.roomFor(body);
    room.begin(body);
    message.respond(encode('prefill_started', { request_id: body.request_id, prefill_id: body.prefill_id, epoch: body.epoch, room: body.room }));
  }

  private onRelease(message: InboundMessage): void {
    const body = withHeaderTraceparent(decode(message.data, 'release_request'), message);
    const ack = encode('release_ack', { request_id: body.request_id, prefill_id: body.prefill_id, epoch: body.epoch, room: body.room });
    if (body.prefill_id === this.options.instanceId && body.epoch === this.options.epoch && this.retiredRooms.has(body.room)) {
      message.respond(ack);
      return;
    }
    this.roomFor(body).release(body.outcome, () => message.respond(ack));
  }

  /** The room a message names, after checking that it is ours, of this life, and of this request. */
  private roomFor(body: { prefill_id: string; epoch: number; room: number; request_id: string }): PrefillRoom {
    if (body.prefill_id !== this.options.instanceId) {
      throw new TandemError(ErrorCode.UnknownRoom, `room ${body.room} belongs to ${body.prefill_id}, not ${this.options.instanceId}`);
    }
    if (body.epoch !== this.options.epoch) {
      throw new TandemError(ErrorCode.StaleEpoch, `room ${body.room} is of epoch ${body.epoch}; this worker is at epoch ${this.options.epoch}`);
    }
    const room = this.rooms.get(body.room);
    if (!room || room.requestId !== body.request_id) {
      throw new TandemError(ErrorCode.UnknownRoom, `no room ${body.room} for request ${body.request_id}`);
    }
    return room;
  }

  private allocateRoomNumber(): number {
    for (;;) {
      const number = this.nextRoom;
      this.nextRoom = (this.nextRoom + 1) >>> 0 || 1;
      if (!this.rooms.has(number) && !this.retiredRooms.has(number)) return number;
    }
  }

  private roomDeps(): RoomDeps {
    const roomOf = (number: number): PrefillRoom => {
      const room = this.rooms.get(number);
      if (!room) throw new TandemError(ErrorCode.Internal, `no room ${number} on this worker`);
      return room;
    };
    return {
      ...this.options,
      machine: roomLogic(roomOf),
      links: this.links,
      retired: (room, status) => {
        this.rooms.delete(room.room);
        this.retiredRooms.add(room.room);
        if (this.retiredRooms.size > retiredRoomsMax) {
          const oldest = this.retiredRooms.values().next().value;
          if (oldest !== undefined) this.retiredRooms.delete(oldest);
        }
        this.counters[status]++;
      },
    };
  }
}

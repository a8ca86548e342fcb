import { createActor, fromPromise, type Actor } from 'xstate';
import { ErrorCode, TandemError } from '../errors.js';
import type { RegionDescriptor } from '../fabric/fabric.js';
import { encodeKvPayload } from '../kv/kv-payload.js';
import { pagesFor } from '../kv/page-pool.js';
import type { Logger } from '../log.js';
import { roomMachine, type RoomContext, type RoomOutput } from '../machines/room-machine.js';
import { encode } from '../protocol/codec.js';
import type { MessageOf } from '../protocol/messages.js';
import { sleep } from '../time/clock.js';
import type { FabricLinks } from './fabric-links.js';
import type { PrefillWorkerOptions } from './prefill-worker.js';
import { samplingFromWire } from './wire-sampling.js';

/** Pages in one fabric write. */
const writePagesMax = 64;
/** Writes of one room in flight at once; an abort stops the rest from being posted. */
const writesInFlightMax = 4;

/**
 * The room machine with effects that find their room by number. Providing implementations
 * builds a new machine, so it is done once per worker rather than once per room.
 */
export function roomLogic(roomOf: (room: number) => PrefillRoom) {
  return roomMachine.provide({
    actors: {
      compute: fromPromise(async ({ input, signal }) => roomOf(input.room).compute(signal)),
      transfer: fromPromise(async ({ input, signal }) => roomOf(input.room).transfer(signal)),
      drain: fromPromise(async ({ input }) => roomOf(input.room).drain()),
    },
    actions: {
      notifyPosted: (_, { context }) => {
        const room = roomOf(context.room);
        room.publish(encode('transfer_posted', { ...room.roomFields(context), kv_bytes: context.kvBytes }));
      },
      notifyFailed: (_, { context }) => {
        const room = roomOf(context.room);
        room.publish(encode('prefill_failed', { ...room.roomFields(context), error: context.error ?? { code: ErrorCode.PrefillFailed, message: 'prefill failed' } }));
      },
      retire: (_, { context, status }) => roomOf(context.room).retire(status),
    },
  });
}

export interface RoomDeps extends PrefillWorkerOptions {
  machine: ReturnType<typeof roomLogic>;
  links: FabricLinks;
  retired(room: PrefillRoom, status: RoomOutput['status']): void;
}

interface Job {
  readonly body: MessageOf<'prefill_request'>;
  readonly region: RegionDescriptor;
  payload?: Uint8Array;
}

function regionFromWire(wire: MessageOf<'prefill_request'>['region']): RegionDescriptor {
  return { fabric: wire.fabric, endpoint: wire.endpoint, regionId: wire.region_id, pageBytes: wire.page_bytes, pageCount: wire.page_count };
}

/** One room on the prefill worker: its machine, its KV payload and its writes in flight. */
export class PrefillRoom {
  readonly requestId: string;
  readonly room: number;
  private readonly actor: Actor<ReturnType<typeof roomLogic>>;
  private job: Job | undefined;
  private readonly inflight = new Set<Promise<void>>();
  private readonly pendingAcks: Array<() => void> = [];
  /** Logs with the request id, room and trace context on every line. */
  private readonly log: Logger;

  constructor(
    private readonly deps: RoomDeps,
    identity: { requestId: string; room: number; traceparent?: string | undefined },
  ) {
    this.requestId = identity.requestId;
    this.room = identity.room;
    this.log = deps.log.child({ request: identity.requestId, room: identity.room, ...(identity.traceparent ? { traceparent: identity.traceparent } : {}) });
    const { deadlines } = deps;
    this.actor = createActor(deps.machine, {
      clock: deps.clock,
      inspect: deps.inspect,
      input: {
        requestId: identity.requestId,
        prefillId: deps.instanceId,
        epoch: deps.epoch,
        room: identity.room,
        deadlines: {
          // Decode may queue for pages before it sends the prefill request.
          reservedMs: deadlines.allocationMs + deadlines.prefillMs,
          computeMs: deadlines.prefillMs,
          transferMs: deadlines.transferMs,
          drainMs: deadlines.transferMs,
          releaseMs: deadlines.pollingMs + deadlines.cleanupMs,
        },
      },
    });
  }

  start(): void {
    this.log.debug('room granted', { epoch: this.deps.epoch });
    this.actor.start();
  }

  /** Starts the room's prefill; a second start, or one after an abort, is refused. */
  begin(body: MessageOf<'prefill_request'>): void {
    if (this.job || this.actor.getSnapshot().value !== 'reserved') {
      throw new TandemError(ErrorCode.DuplicateRoom, `room ${this.room} was already started`);
    }
    const region = regionFromWire(body.region);
    const outOfRange = body.pages.find((page) => page >= region.pageCount);
    if (outOfRange !== undefined) throw new TandemError(ErrorCode.InvalidMessage, `page ${outOfRange} is outside the region's ${region.pageCount} pages`);
    if (new Set(body.pages).size !== body.pages.length) throw new TandemError(ErrorCode.InvalidMessage, 'destination pages repeat');
    this.job = { body, region };
    this.log.debug('prefill started', { prompt_tokens: body.prompt_tokens.length, pages: body.pages.length, decode: body.decode_id });
    this.actor.send({ type: 'START' });
  }

  /** Confirms or aborts the room; `ack` runs once the room has ended and none of its writes is in flight. */
  release(outcome: 'confirmed' | 'aborted', ack: () => void): void {
    this.pendingAcks.push(ack);
    this.actor.send({ type: 'RELEASE', outcome });
  }

  /** The worker is stopping: drop the room without answering. */
  stop(): void {
    this.actor.stop();
    this.job = undefined;
  }

  roomFields(context: RoomContext) {
    return { request_id: context.requestId, prefill_id: context.prefillId, epoch: context.epoch, room: context.room };
  }

  publish(data: Uint8Array): void {
    if (this.job) this.deps.transport.publish(this.job.body.events_subject, data);
  }

  async compute(signal: AbortSignal): Promise<{ kvBytes: number }> {
    const job = this.job!;
    const { engine } = this.deps;
    const { firstToken, kv } = await engine.prefill(job.body.prompt_tokens, samplingFromWire(job.body.sampling), signal);
    const payload = encodeKvPayload({
      modelIdentity: engine.model.identity,
      kvLayout: engine.model.kvLayout,
      tokenCount: job.body.prompt_tokens.length,
      firstToken,
      kv,
    });
    const needed = pagesFor(payload.byteLength, job.region.pageBytes);
    if (needed > job.body.pages.length) {
      throw new TandemError(ErrorCode.KvMismatch, `the KV needs ${needed} pages; decode allocated ${job.body.pages.length} (different models or page sizes?)`);
    }
    job.payload = payload;
    return { kvBytes: payload.byteLength };
  }

  /** Writes the payload page run by page run, at most `writesInFlightMax` at once; the last write carries the room. */
  async transfer(signal: AbortSignal): Promise<void> {
    const job = this.job!;
    const payload = job.payload!;
    const pageBytes = job.region.pageBytes;
    const startedAtMs = this.deps.clock.now();
    const connection = await this.deps.links.get(job.region);
    const pageCount = pagesFor(payload.byteLength, pageBytes);
    // The room transfers once, so its writes in flight are exactly `inflight` (which drain() also waits on).
    let failure: unknown;
    for (let first = 0; first < pageCount && !signal.aborted && failure === undefined; first += writePagesMax) {
      const last = Math.min(first + writePagesMax, pageCount);
      const write = connection.write({
        room: this.room,
        pages: job.body.pages.slice(first, last),
        data: payload.subarray(first * pageBytes, Math.min(last * pageBytes, payload.byteLength)),
        final: last === pageCount,
      });
      const tracked = write.then(
        () => {},
        (error: unknown) => {
          failure ??= error;
        },
      );
      this.inflight.add(tracked);
      void tracked.finally(() => this.inflight.delete(tracked));
      if (this.inflight.size >= writesInFlightMax) await Promise.race(this.inflight);
    }
    await Promise.all(this.inflight);
    if (failure !== undefined) throw TandemError.from(failure, ErrorCode.TransferFailed);
    if (signal.aborted) throw signal.reason;
    const seconds = (this.deps.clock.now() - startedAtMs) / 1000;
    this.deps.metrics?.observeKvTransfer(job.region.fabric, payload.byteLength, seconds);
    this.log.debug('kv transferred', { fabric: job.region.fabric, bytes: payload.byteLength, pages: pageCount, seconds });
  }

  /** Resolves once no write of the room is in flight, tearing the connection down if they do not settle in time. */
  async drain(): Promise<void> {
    if (this.inflight.size === 0) return;
    const settled = Promise.allSettled([...this.inflight]).then(() => true);
    const patience = sleep(this.deps.clock, this.deps.deadlines.transferMs / 2).then(() => false);
    if (await Promise.race([settled, patience])) return;
    this.log.warn('writes did not settle; tearing down the fabric connection');
    if (this.job) this.deps.links.reset(this.job.region);
    await settled;
  }

  retire(status: RoomOutput['status']): void {
    this.log.debug('room retired', { status });
    this.job = undefined;
    this.deps.retired(this, status);
    for (const ack of this.pendingAcks.splice(0)) ack();
  }
}

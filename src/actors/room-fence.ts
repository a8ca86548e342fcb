import { ErrorCode, TandemError } from '../errors.js';
import { ownerPrefix, type WriterIdentity } from '../fabric/fabric.js';
import type { PagePool } from '../kv/page-pool.js';
import type { Deadlines } from '../limits.js';
import type { Logger } from '../log.js';
import type { RoomGrant } from '../machines/request-machine.js';
import { decode, encode } from '../protocol/codec.js';
import { subjects } from '../protocol/subjects.js';
import { sleep, type Clock } from '../time/clock.js';
import { traceHeaders } from '../trace/trace-headers.js';
import type { Transport } from '../transport/transport.js';

/** Longest pause between two requests for an abort acknowledgement. */
const abortRetryMsMax = 5_000;

interface Fenced {
  readonly grant: RoomGrant;
  readonly requestId: string;
  readonly controller: AbortController;
  readonly traceparent: string | undefined;
}

/**
 * Fencing of aborted transfers on the decode side. Pages of a room whose writes may still be in
 * flight are quarantined, not freed, until the prefill worker acknowledges the abort (it answers
 * only after its in-flight writes settle) or its fabric connection is torn down. A late write can
 * then only land in the room's own quarantined pages, never in another request's.
 */
export class RoomFence {
  private pool: PagePool | undefined;
  private readonly fenced = new Map<string, Fenced>();

  constructor(
    private readonly deps: {
      transport: Transport;
      clock: Clock;
      log: Logger;
      deadlines: Deadlines;
      /**
       * Whether a writer could still land a write: it is connected to this worker's fabric, or it
       * is alive (in discovery) and may connect. One that is neither, for example a prefill
       * worker that died before it ever connected, never acknowledges and never closes a
       * connection; its fenced pages are released on the next retry instead. Default: always.
       */
      writerMayWrite?: (writer: WriterIdentity) => boolean;
    },
  ) {}

  attach(pool: PagePool): void {
    this.pool = pool;
  }

  /** Rooms whose pages are quarantined now. */
  get size(): number {
    return this.fenced.size;
  }

  /**
   * Aborts `owner`'s room at its prefill worker. With `pagesAtRisk`, its pages are quarantined
   * until the abort is acknowledged; without, the abort only frees the prefill side sooner.
   */
  abort(owner: string, grant: RoomGrant, requestId: string, pagesAtRisk: boolean, traceparent?: string): void {
    if (pagesAtRisk) {
      this.pool!.quarantine(owner);
      const entry: Fenced = { grant, requestId, controller: new AbortController(), traceparent };
      this.fenced.set(owner, entry);
      void this.askUntilAcknowledged(owner, entry);
    } else {
      void this.ask(grant, requestId, 'aborted', undefined, traceparent).catch(() => {});
    }
  }

  /** Tells the prefill worker the transfer is confirmed; resolves on its acknowledgement. */
  confirm(grant: RoomGrant, requestId: string, signal: AbortSignal, traceparent?: string): Promise<void> {
    return this.ask(grant, requestId, 'confirmed', signal, traceparent);
  }

  /** The writer's connection is gone, so none of its writes can land any more: free its fenced pages. */
  writerGone(writer: WriterIdentity): void {
    const prefix = ownerPrefix(writer.instanceId, writer.epoch);
    for (const [owner, entry] of this.fenced) {
      if (!owner.startsWith(prefix)) continue;
      entry.controller.abort();
      this.unfence(owner, 'writer connection closed');
    }
  }

  /** Stops asking; quarantined pages stay quarantined. */
  stop(): void {
    for (const entry of this.fenced.values()) entry.controller.abort();
  }

  private async askUntilAcknowledged(owner: string, entry: Fenced): Promise<void> {
    // Ask until the prefill side answers or its connection closes: giving up would leave the
    // pages quarantined for good, and a partition or a slow drain can outlast any fixed budget.
    for (let attempt = 1; !entry.controller.signal.aborted; attempt++) {
      if (this.deps.writerMayWrite?.({ instanceId: entry.grant.prefillId, epoch: entry.grant.epoch }) === false) {
        // Its connection is gone (or never was) and it has left discovery: nothing of it can land.
        this.unfence(owner, 'the writer left discovery without a fabric connection');
        return;
      }
      try {
        await this.ask(entry.grant, entry.requestId, 'aborted', entry.controller.signal, entry.traceparent);
        this.unfence(owner, 'abort acknowledged');
        return;
      } catch (error) {
        const code = TandemError.from(error).code;
        // The room is gone on the prefill side, which retires a room only after its writes settle.
        if (code === ErrorCode.UnknownRoom || code === ErrorCode.StaleEpoch) {
          this.unfence(owner, `prefill answered ${code}`);
          return;
        }
        if (entry.controller.signal.aborted) return;
        if (attempt === 1 || attempt % 10 === 0) this.deps.log.warn('abort not acknowledged; pages stay quarantined', { request: entry.requestId, room: entry.grant.room, traceparent: entry.traceparent, owner, attempt, code });
        await sleep(this.deps.clock, Math.min(this.deps.deadlines.cleanupMs * attempt, abortRetryMsMax), entry.controller.signal).catch(() => {});
      }
    }
  }

  private unfence(owner: string, why: string): void {
    const entry = this.fenced.get(owner);
    if (!entry || !this.fenced.delete(owner)) return;
    const pages = this.pool!.releaseQuarantined(owner);
    this.deps.log.debug('released quarantined pages', { request: entry.requestId, room: entry.grant.room, traceparent: entry.traceparent, owner, pages, why });
  }

  private async ask(grant: RoomGrant, requestId: string, outcome: 'confirmed' | 'aborted', signal: AbortSignal | undefined, traceparent: string | undefined): Promise<void> {
    const request = encode('release_request', {
      request_id: requestId,
      prefill_id: grant.prefillId,
      epoch: grant.epoch,
      room: grant.room,
      outcome,
      ...(traceparent ? { traceparent } : {}),
    });
    const reply = decode(
      await this.deps.transport.request(subjects.release(grant.subjectPrefix), request, { timeoutMs: this.deps.deadlines.cleanupMs, signal, headers: traceHeaders(traceparent) }),
      'release_ack',
      'error',
    );
    if (reply.t === 'error') throw TandemError.fromWire(reply.error);
    if (reply.room !== grant.room || reply.epoch !== grant.epoch || reply.prefill_id !== grant.prefillId) {
      throw new TandemError(ErrorCode.InvalidMessage, `release acknowledgement names another room (${reply.prefill_id}/${reply.epoch}/${reply.room})`);
    }
  }
}

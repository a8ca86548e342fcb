import { ErrorCode, TandemError } from '../../errors.js';
import type { TimerId } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import { ownerKey, type FabricConnection, type FabricWrite, type RegionDescriptor, type WriterIdentity } from '../fabric.js';
import type { SimFabric, SimFabricNetwork, SimWriteInfo } from './sim-fabric.js';
import type { SimRegion } from './sim-region.js';

interface PendingWrite {
  readonly write: FabricWrite;
  readonly owner: string;
  readonly dueAtMs: number;
  readonly fail: boolean;
  readonly dropCompletion: boolean;
  readonly resolve: () => void;
  readonly reject: (error: TandemError) => void;
}

/**
 * A writer's connection to one region of a peer endpoint. Like an RC queue pair it delivers in
 * order: each write occupies the connection for bytes/bytesPerMs, then travels latencyMs (plus
 * any injected delay). Writes wait in one queue and a clock timer is armed only for its head, so
 * a write is never applied before the one posted ahead of it, however their delays compare.
 */
export class SimConnection implements FabricConnection {
  readonly peer: RegionDescriptor;
  readonly writer: WriterIdentity;
  private closedFlag = false;
  private readonly queue: PendingWrite[] = [];
  private timer: TimerId | undefined;
  private busyUntilMs = 0;

  constructor(
    private readonly network: SimFabricNetwork,
    private readonly from: SimFabric,
    private readonly to: SimFabric,
    private readonly region: SimRegion,
    writer: WriterIdentity,
  ) {
    this.peer = region.descriptor;
    this.writer = { instanceId: writer.instanceId, epoch: writer.epoch };
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Writes posted and not yet applied or refused. */
  get pendingCount(): number {
    return this.queue.length;
  }

  write(write: FabricWrite): Promise<void> {
    const owner = ownerKey(this.writer, write.room);
    if (this.closedFlag) return Promise.reject(this.closedError(owner));
    if (this.queue.length >= this.network.writesInFlightMax) {
      return Promise.reject(
        new TandemError(ErrorCode.TransferFailed, `connection ${this.describe()} has ${this.queue.length} writes in flight (writesInFlightMax)`),
      );
    }
    const { clock, latencyMs, bytesPerMs, stats } = this.network;
    const faults = this.network.faults;
    const info: SimWriteInfo = {
      from: this.from.name,
      to: this.to.name,
      writer: this.writer,
      room: write.room,
      pages: write.pages,
      byteLength: write.data.byteLength,
      final: write.final,
    };
    const nowMs = clock.now();
    const extraDelayMs = faults?.extraDelayMs?.(info) ?? 0;
    assert(Number.isFinite(extraDelayMs) && extraDelayMs >= 0, `extraDelayMs fault returned ${extraDelayMs}`);
    this.busyUntilMs = Math.max(nowMs, this.busyUntilMs) + write.data.byteLength / bytesPerMs;
    const dueAtMs = this.busyUntilMs + latencyMs + extraDelayMs;
    stats.writesPosted++;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({
        // Copied so the caller may reuse its buffer at once, as the TCP fabric allows.
        write: { room: write.room, pages: [...write.pages], data: write.data.slice(), final: write.final },
        owner,
        dueAtMs,
        fail: faults?.shouldFailWrite?.(info) ?? false,
        dropCompletion: write.final && (faults?.dropCompletion?.(info) ?? false),
        resolve,
        reject,
      });
      if (this.timer === undefined) this.armHead();
    });
  }

  close(): void {
    if (this.closedFlag) return;
    this.shutDown('closed by the writer');
    this.to.inboundClosed(this);
  }

  /** Breaks the connection because its receiving endpoint closed; the receiver is not notified. */
  breakFromReceiver(): void {
    if (this.closedFlag) return;
    this.shutDown('closed by the receiver');
  }

  private shutDown(why: string): void {
    this.closedFlag = true;
    if (this.timer !== undefined) this.network.clock.clearTimeout(this.timer);
    this.timer = undefined;
    const dropped = this.queue.splice(0);
    this.network.stats.writesDropped += dropped.length;
    this.network.stats.connectionsClosed++;
    this.from.outboundClosed(this);
    for (const pending of dropped) pending.reject(this.closedError(pending.owner, why));
  }

  private armHead(): void {
    const head = this.queue[0];
    if (!head) return;
    const { clock } = this.network;
    this.timer = clock.setTimeout(() => this.applyHead(), Math.max(0, head.dueAtMs - clock.now()));
  }

  private applyHead(): void {
    this.timer = undefined;
    const head = this.queue.shift();
    assert(head !== undefined && !this.closedFlag, 'a sim connection timer fires only for a queued write on an open connection');
    const { stats, clock } = this.network;
    const { write, owner } = head;
    let applied = false;
    if (head.fail) {
      stats.writesFailed++;
      head.reject(new TandemError(ErrorCode.TransferFailed, `write for ${owner} over ${this.describe()} was lost (injected fault)`));
    } else {
      try {
        this.region.apply(owner, write.pages, write.data);
        applied = true;
      } catch (error) {
        if (!(error instanceof TandemError)) throw error;
        stats.writesRejected++;
        head.reject(error);
      }
    }
    if (applied) {
      stats.writesApplied++;
      stats.bytesApplied += write.data.byteLength;
      head.resolve();
    }
    this.armHead();
    // Completion listeners run last, so one that closes this connection finds it consistent.
    if (applied && write.final) {
      if (head.dropCompletion) stats.completionsDropped++;
      else if (this.region.complete({ owner, imm: write.room, atMs: clock.now() })) stats.completionsRecorded++;
    }
  }

  private closedError(owner: string, why = 'closed'): TandemError {
    return new TandemError(ErrorCode.TransferFailed, `write for ${owner} dropped: connection ${this.describe()} ${why}`);
  }

  private describe(): string {
    return `${this.from.name} -> ${this.to.name}/${this.peer.regionId}`;
  }
}

import { connect as netConnect, type Socket } from 'node:net';
import type { TandemError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Clock, TimerId } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import { ownerKey, type FabricConnection, type FabricWrite, type RegionDescriptor, type WriterIdentity } from '../fabric.js';
import { Fifo } from '../tcp/fifo.js';
import { ControlReader, controlVersion, encodeControl, receiverMessage, type ReceiverMessage, type WriterMessage } from './control-codec.js';
import { planSlices, type Slice } from './slice-plan.js';
import type { VerbsCompletion, VerbsMemory } from './verbs-addon.js';
import type { QueuePairHandler, VerbsDevice } from './verbs-device.js';
import { transferFailed, VerbsError, WcStatus } from './verbs-errors.js';

/** What a connection needs from the fabric that opened it. */
export interface VerbsConnectionHost {
  readonly clock: Clock;
  readonly log: Logger;
  readonly device: VerbsDevice;
  readonly connectTimeoutMs: number;
  /** Longest a write may wait to be applied before the connection is torn down. */
  readonly writeTimeoutMs: number;
  /** Largest RDMA WRITE posted; also the size of one staging slot. */
  readonly sliceBytesMax: number;
  /** Staging slots, hence RDMA WRITEs in flight per connection. */
  readonly stagingSlots: number;
  /** Writes posted and not yet settled before write() rejects. */
  readonly writesInFlightMax: number;
  /** How long a failed queue pair's outstanding work requests may take to flush before the connection is torn down anyway. */
  readonly flushWaitMs: number;
  /** A starting packet sequence number for a new queue pair. */
  nextPsn(qpn: number): number;
  /** Called once when the connection closes, for whatever reason. */
  outboundClosed(connection: VerbsConnection): void;
}

interface PendingWrite {
  readonly seq: number;
  readonly owner: string;
  readonly room: number;
  readonly pages: readonly number[];
  readonly data: Uint8Array;
  readonly postedAtMs: number;
  slices: Slice[] | undefined;
  nextSlice: number;
  /** Work requests posted for this write whose completions have not arrived. */
  outstanding: number;
  readonly resolve: () => void;
  readonly reject: (error: TandemError) => void;
}

interface PostedWr {
  readonly write: PendingWrite;
  readonly slot: number | undefined;
}

type Phase = 'connecting' | 'open' | 'failing' | 'done';

/**
 * A writer's connection to one region of a peer's verbs fabric: an RC queue pair to the peer's,
 * set up through the control channel (a TCP connection to the region's endpoint) and reused for
 * every room. For each write the receiver first checks that the destination pages are held for
 * the room and grants it; the bytes then go as RDMA WRITEs straight into the peer's registered
 * pages, the last one WRITE_WITH_IMM carrying the room, and the write settles once the receiver
 * has counted that immediate. The caller's bytes are copied into registered staging slots first.
 */
export class VerbsConnection implements FabricConnection, QueuePairHandler {
  readonly peer: RegionDescriptor;
  readonly writer: WriterIdentity;
  private phase: Phase = 'connecting';
  private socket: Socket | undefined;
  private readonly reader = new ControlReader(receiverMessage);
  private qpn: number | undefined;
  private psn = 0;
  private staging: VerbsMemory | undefined;
  private stagingBytes = new Uint8Array(0);
  private readonly freeSlots: number[] = [];
  private remote = { address: 0n, rkey: 0 };
  private readonly writes = new Map<number, PendingWrite>();
  private readonly ready = new Fifo<PendingWrite>();
  /** Work requests posted and not yet completed, by work request id; never more than sendWrMax. */
  private readonly posted = new Map<number, PostedWr>();
  private nextSeq = 0;
  private nextWrId = 1;
  private firstError: VerbsError | undefined;
  private timer: TimerId | undefined;
  private writeTimer: TimerId | undefined;
  private lastSocketError: Error | undefined;
  private opening: { resolve: () => void; reject: (error: TandemError) => void } | undefined;

  constructor(
    private readonly host: VerbsConnectionHost,
    peer: RegionDescriptor,
    writer: WriterIdentity,
    private readonly address: { host: string; port: number },
  ) {
    this.peer = { ...peer };
    this.writer = { instanceId: writer.instanceId, epoch: writer.epoch };
  }

  get closed(): boolean {
    return this.phase === 'done';
  }

  /** The local queue pair number, once created. */
  get queuePairNumber(): number | undefined {
    return this.qpn;
  }

  /**
   * Depth of the send queue: one work request per staging slot, plus one for a zero-length
   * WRITE_WITH_IMM. Empty writes take no slot, so pump() bounds posts by this, not by the slots.
   */
  private get sendWrMax(): number {
    return this.host.stagingSlots + 1;
  }

  /** Creates the queue pair, exchanges addresses with the receiver and brings the pair to RTS. */
  open(): Promise<void> {
    const { clock, connectTimeoutMs, device, stagingSlots, sliceBytesMax } = this.host;
    return new Promise<void>((resolve, reject) => {
      this.opening = { resolve, reject };
      this.timer = clock.setTimeout(() => {
        this.timer = undefined;
        this.shutDown(`got no answer within ${connectTimeoutMs} ms (connectTimeoutMs)`);
      }, connectTimeoutMs);
      try {
        this.qpn = device.createQueuePair(this, this.sendWrMax, 1);
        this.psn = this.host.nextPsn(this.qpn);
        this.staging = device.context.registerMemory(stagingSlots * sliceBytesMax);
      } catch (error) {
        this.shutDown(`cannot set up a queue pair: ${(error as Error).message}`);
        return;
      }
      this.stagingBytes = new Uint8Array(this.staging.buffer);
      for (let slot = stagingSlots - 1; slot >= 0; slot--) this.freeSlots.push(slot);
      const socket = netConnect({ host: this.address.host, port: this.address.port });
      this.socket = socket;
      socket.setNoDelay(true);
      socket.on('error', (error) => (this.lastSocketError = error));
      socket.on('close', () => this.shutDown(this.lastSocketError ? `failed: ${this.lastSocketError.message}` : 'was closed by the receiver'));
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      this.send({
        t: 'hello',
        version: controlVersion,
        instanceId: this.writer.instanceId,
        epoch: this.writer.epoch,
        regionId: this.peer.regionId,
        pageBytes: this.peer.pageBytes,
        pageCount: this.peer.pageCount,
        ...device.address(this.qpn, this.psn),
      });
    });
  }

  write(write: FabricWrite): Promise<void> {
    const owner = ownerKey(this.writer, write.room);
    if (this.phase === 'done') return Promise.reject(transferFailed(`write for ${owner} dropped: connection ${this.describe()} is closed`));
    if (this.firstError) return Promise.reject(transferFailed(`write for ${owner} not posted: connection ${this.describe()} failed`, this.firstError));
    const invalid = this.validate(write);
    if (invalid !== undefined) return Promise.reject(transferFailed(`write for ${owner} to region ${this.peer.regionId} refused: ${invalid}`));
    if (this.writes.size >= this.host.writesInFlightMax) {
      return Promise.reject(transferFailed(`connection ${this.describe()} has ${this.writes.size} writes in flight (writesInFlightMax)`));
    }
    const seq = this.nextSeq;
    this.nextSeq = (this.nextSeq + 1) >>> 0;
    return new Promise<void>((resolve, reject) => {
      this.writes.set(seq, { seq, owner, room: write.room, pages: [...write.pages], data: write.data, postedAtMs: this.host.clock.now(), slices: undefined, nextSlice: 0, outstanding: 0, resolve, reject });
      if (this.writeTimer === undefined) this.armWriteTimer(this.host.writeTimeoutMs);
      this.send({ t: 'write', seq, room: write.room, pages: [...write.pages], byteLength: write.data.byteLength, final: write.final });
    });
  }

  close(): void {
    this.shutDown('was closed by the writer');
  }

  onCompletion(completion: VerbsCompletion): void {
    const entry = this.posted.get(completion.wrId);
    if (!entry) return;
    this.posted.delete(completion.wrId);
    if (entry.slot !== undefined) this.freeSlots.push(entry.slot);
    const { write } = entry;
    write.outstanding--;
    if (completion.status === WcStatus.Success) {
      this.pump();
      return;
    }
    const error = VerbsError.fromCompletion(completion);
    if (!this.firstError) {
      this.firstError = error;
      this.phase = 'failing';
      this.settle(write, transferFailed(`RDMA write for ${write.owner} failed`, error));
      // Writes with nothing on the wire cannot be flushed by the device: fail them now.
      const flushed = new VerbsError('flushed', WcStatus.WrFlushError, 'not posted', `not posted after an earlier error on queue pair ${completion.qpn}: ${error.message}`);
      for (const other of [...this.writes.values()]) {
        if (other.outstanding === 0) this.settle(other, transferFailed(`RDMA write for ${other.owner} failed`, flushed));
      }
      this.timer = this.host.clock.setTimeout(() => {
        this.timer = undefined;
        this.shutDown(`failed: ${error.message}`);
      }, this.host.flushWaitMs);
    } else {
      const flushed = new VerbsError(error.kind, error.status, error.statusName, `${error.message}, after an earlier error: ${this.firstError.message}`);
      this.settle(write, transferFailed(`RDMA write for ${write.owner} flushed`, flushed));
    }
    if (this.posted.size === 0) this.shutDown(`failed: ${this.firstError.message}`);
  }

  onFatal(error: VerbsError): void {
    this.firstError ??= error;
    for (const write of [...this.writes.values()]) this.settle(write, transferFailed(`RDMA write for ${write.owner} failed`, error));
    this.shutDown(`failed: ${error.message}`, error);
  }

  private onData(chunk: Buffer): void {
    const messages = this.reader.push(chunk);
    if (typeof messages === 'string') {
      this.shutDown(`sent a bad control frame: ${messages}`);
      return;
    }
    for (const message of messages) {
      if (this.phase === 'done') return;
      this.onMessage(message);
    }
  }

  private onMessage(message: ReceiverMessage): void {
    if (this.phase === 'connecting') {
      if (message.t === 'refused') return this.shutDown(`refused: ${message.message}`);
      if (message.t !== 'welcome') return this.shutDown(`sent ${message.t} before welcome`);
      try {
        this.host.device.connectQueuePair(this.qpn!, this.psn, message);
      } catch (error) {
        return this.shutDown(`cannot connect queue pair ${this.qpn}: ${(error as Error).message}`);
      }
      this.remote = { address: BigInt(message.address), rkey: message.rkey };
      this.phase = 'open';
      this.clearTimer();
      this.opening?.resolve();
      this.opening = undefined;
      return;
    }
    if (message.t === 'welcome' || message.t === 'refused') return this.shutDown(`sent ${message.t} on an open connection`);
    const write = this.writes.get(message.seq);
    if (!write) return;
    if (message.t === 'grant') {
      write.slices = planSlices(write.pages, write.data.byteLength, this.peer.pageBytes, this.host.sliceBytesMax);
      this.ready.push(write);
      this.pump();
    } else if (message.t === 'applied') {
      this.writes.delete(write.seq);
      write.resolve();
    } else {
      this.settle(write, transferFailed(`write for ${write.owner} to region ${this.peer.regionId} refused: ${message.message}`));
    }
  }

  /** Posts granted writes' slices, in order, while staging slots and send queue entries are free. */
  private pump(): void {
    while (this.phase === 'open') {
      // A full send queue would refuse the post (ENOMEM); completions free entries and pump again.
      if (this.posted.size >= this.sendWrMax) return;
      const write = this.ready.peek();
      if (!write) return;
      if (!this.writes.has(write.seq)) {
        this.ready.shift();
        continue;
      }
      const slices = write.slices!;
      if (slices.length === 0) {
        // Nothing to copy: one zero-length WRITE_WITH_IMM carries the room.
        this.ready.shift();
        this.post(write, undefined, { dataOffset: 0, regionOffset: 0, byteLength: 0 }, true);
        continue;
      }
      const slot = this.freeSlots.pop();
      if (slot === undefined) return;
      const slice = slices[write.nextSlice]!;
      const last = write.nextSlice === slices.length - 1;
      write.nextSlice++;
      if (last) this.ready.shift();
      this.stagingBytes.set(write.data.subarray(slice.dataOffset, slice.dataOffset + slice.byteLength), slot * this.host.sliceBytesMax);
      this.post(write, slot, slice, last);
    }
  }

  private post(write: PendingWrite, slot: number | undefined, slice: Slice, last: boolean): void {
    const staging = this.staging!;
    const wrId = this.nextWrId++;
    const local = staging.address + BigInt((slot ?? 0) * this.host.sliceBytesMax);
    try {
      this.host.device.context.postWrite(this.qpn!, wrId, local, slice.byteLength, staging.lkey, this.remote.address + BigInt(slice.regionOffset), this.remote.rkey, last ? write.room : null);
    } catch (error) {
      if (slot !== undefined) this.freeSlots.push(slot);
      this.settle(write, transferFailed(`RDMA write for ${write.owner} could not be posted: ${(error as Error).message}`));
      this.shutDown(`failed to post: ${(error as Error).message}`);
      return;
    }
    write.outstanding++;
    this.posted.set(wrId, { write, slot });
    assert(this.posted.size <= this.sendWrMax, `connection ${this.describe()} posted more work requests than its send queue holds`);
  }

  private settle(write: PendingWrite, error: TandemError): void {
    if (!this.writes.delete(write.seq)) return;
    write.reject(error);
  }

  private send(message: WriterMessage): void {
    this.socket?.write(encodeControl(message));
  }

  private validate(write: FabricWrite): string | undefined {
    const { pageBytes, pageCount } = this.peer;
    if (!Number.isInteger(write.room) || write.room < 0 || write.room > 0xffff_ffff) return `room ${write.room} is not a u32`;
    if (write.pages.length === 0 && write.data.byteLength > 0) return 'no destination pages';
    for (const page of write.pages) {
      if (!Number.isInteger(page) || page < 0 || page >= pageCount) return `page ${page} is outside the region's ${pageCount} pages`;
    }
    if (write.data.byteLength > write.pages.length * pageBytes) return `${write.data.byteLength} bytes do not fit ${write.pages.length} pages of ${pageBytes} B`;
    return undefined;
  }

  /** Tears the connection down when the oldest unsettled write has waited writeTimeoutMs. */
  private armWriteTimer(delayMs: number): void {
    this.writeTimer = this.host.clock.setTimeout(() => {
      this.writeTimer = undefined;
      if (this.phase === 'done') return;
      const oldest = this.writes.values().next();
      if (oldest.done) return;
      const ageMs = this.host.clock.now() - oldest.value.postedAtMs;
      if (ageMs >= this.host.writeTimeoutMs) {
        this.shutDown(`left the write for ${oldest.value.owner} unapplied for ${this.host.writeTimeoutMs} ms (writeTimeoutMs)`);
        return;
      }
      this.armWriteTimer(this.host.writeTimeoutMs - ageMs);
    }, delayMs);
  }

  private clearTimer(): void {
    if (this.timer === undefined) return;
    this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private describe(): string {
    return `${this.peer.endpoint}/${this.peer.regionId}`;
  }

  /** Fails everything still pending and releases the queue pair, staging memory and socket. */
  private shutDown(why: string, cause?: VerbsError): void {
    if (this.phase === 'done') return;
    const wasOpening = this.phase === 'connecting';
    this.phase = 'done';
    this.clearTimer();
    if (this.writeTimer !== undefined) this.host.clock.clearTimeout(this.writeTimer);
    this.writeTimer = undefined;
    if (wasOpening && this.opening) this.opening.reject(transferFailed(`verbs fabric cannot connect to ${this.describe()}: ${why}`, cause));
    this.opening = undefined;
    for (const write of [...this.writes.values()]) {
      this.settle(write, transferFailed(`write for ${write.owner} dropped: connection ${this.describe()} ${why}`, cause ?? this.firstError));
    }
    this.posted.clear();
    if (this.qpn !== undefined) this.host.device.destroyQueuePair(this.qpn);
    if (this.staging) this.host.device.deregisterMemory(this.staging.id);
    this.socket?.destroy();
    this.host.outboundClosed(this);
  }
}

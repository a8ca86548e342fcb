import { connect as netConnect, type Socket } from 'node:net';
import { ErrorCode, TandemError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Clock, TimerId } from '../../time/clock.js';
import { ownerKey, type FabricConnection, type FabricWrite, type RegionDescriptor, type WriterIdentity } from '../fabric.js';
import { Fifo } from './fifo.js';
import {
  ByteGatherer,
  FrameType,
  ackFixedBytes,
  checkFrameStart,
  decodeReplyFixed,
  encodeHello,
  encodeWriteHeader,
  helloReplyFixedBytes,
  protocolVersion,
  reasonBytesMax,
  u32Max,
} from './frame-codec.js';

/** What a connection needs from the fabric that opened it. */
export interface ConnectionHost {
  readonly clock: Clock;
  readonly log: Logger;
  readonly connectTimeoutMs: number;
  /** Longest a posted write may wait for its acknowledgement before the connection is torn down. */
  readonly writeTimeoutMs: number;
  /** Writes posted and not yet acknowledged before write() rejects. */
  readonly writesInFlightMax: number;
  /** Bytes handed to a socket and not yet sent before further writes wait for 'drain'. */
  readonly sendQueueBytesMax: number;
  /** Called once when the connection closes, for whatever reason. */
  outboundClosed(connection: TcpConnection): void;
}

interface PendingWrite {
  readonly writeId: number;
  readonly owner: string;
  readonly postedAtMs: number;
  readonly header: Buffer;
  readonly data: Uint8Array;
  readonly resolve: () => void;
  readonly reject: (error: TandemError) => void;
}

type Phase = 'connecting' | 'reply' | 'reason' | 'done';

/**
 * A writer's connection to one region of a peer's TCP fabric. Writes are pipelined: each is
 * framed and handed to the socket at once (or when the socket drains), and its promise settles
 * when the receiver's acknowledgement comes back, which it sends only after the last byte is in
 * the region. Acknowledgements arrive in posting order, since the receiver applies in order.
 *
 * The data is not copied: like a verbs write, the caller leaves `data` unchanged until the write
 * settles.
 */
export class TcpConnection implements FabricConnection {
  readonly peer: RegionDescriptor;
  readonly writer: WriterIdentity;
  private phase: Phase = 'connecting';
  private socket: Socket | undefined;
  private readonly gather = new ByteGatherer();
  private replyType: FrameType = FrameType.HelloReply;
  private reply = { status: 0, reasonBytes: 0, writeId: 0 };
  /** Posted, waiting for the socket to drain before they are sent. */
  private readonly unsent = new Fifo<PendingWrite>();
  /** Sent, waiting for their acknowledgement, oldest first. */
  private readonly sent = new Fifo<PendingWrite>();
  private waitingForDrain = false;
  private nextWriteId = 0;
  private timer: TimerId | undefined;
  private lastSocketError: Error | undefined;
  private opening: { resolve: () => void; reject: (error: TandemError) => void } | undefined;

  constructor(
    private readonly host: ConnectionHost,
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

  /** Connects and says hello; resolves once the receiver accepts, rejects with transfer_failed otherwise. */
  open(): Promise<void> {
    const { clock, connectTimeoutMs } = this.host;
    return new Promise<void>((resolve, reject) => {
      this.opening = { resolve, reject };
      this.timer = clock.setTimeout(() => {
        this.timer = undefined;
        this.shutDown(`did not answer within ${connectTimeoutMs} ms (connectTimeoutMs)`);
      }, connectTimeoutMs);
      const socket = netConnect({ host: this.address.host, port: this.address.port });
      this.socket = socket;
      socket.setNoDelay(true);
      socket.on('error', (error) => (this.lastSocketError = error));
      socket.on('close', () => this.shutDown(this.lastSocketError ? `failed: ${this.lastSocketError.message}` : 'was closed by the receiver'));
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      socket.on('drain', () => {
        this.waitingForDrain = false;
        this.pump();
      });
      socket.write(
        encodeHello({
          version: protocolVersion,
          instanceId: this.writer.instanceId,
          epoch: this.writer.epoch,
          regionId: this.peer.regionId,
          pageBytes: this.peer.pageBytes,
          pageCount: this.peer.pageCount,
        }),
      );
      this.phase = 'reply';
      this.replyType = FrameType.HelloReply;
      this.gather.expect(helloReplyFixedBytes);
    });
  }

  write(write: FabricWrite): Promise<void> {
    const owner = ownerKey(this.writer, write.room);
    if (this.phase === 'done') return Promise.reject(this.droppedError(owner, 'is closed'));
    const invalid = this.validate(write);
    if (invalid !== undefined) {
      return Promise.reject(new TandemError(ErrorCode.TransferFailed, `write for ${owner} to region ${this.peer.regionId} refused: ${invalid}`));
    }
    const inFlight = this.unsent.length + this.sent.length;
    if (inFlight >= this.host.writesInFlightMax) {
      return Promise.reject(new TandemError(ErrorCode.TransferFailed, `connection ${this.describe()} has ${inFlight} writes in flight (writesInFlightMax)`));
    }
    const writeId = this.nextWriteId;
    this.nextWriteId = (this.nextWriteId + 1) >>> 0;
    const header = encodeWriteHeader({ writeId, room: write.room, final: write.final, pageCount: write.pages.length, dataBytes: write.data.byteLength }, write.pages);
    return new Promise<void>((resolve, reject) => {
      this.unsent.push({ writeId, owner, postedAtMs: this.host.clock.now(), header, data: write.data, resolve, reject });
      if (this.timer === undefined) this.armWriteTimer(this.host.writeTimeoutMs);
      this.pump();
    });
  }

  close(): void {
    this.shutDown('was closed by the writer');
  }

  /** Why the receiver would refuse `write` whatever the page owners, checked here so a peer only ever sees well-formed frames. */
  private validate(write: FabricWrite): string | undefined {
    const { pageBytes, pageCount } = this.peer;
    if (!Number.isInteger(write.room) || write.room < 0 || write.room > u32Max) return `room ${write.room} is not a 32-bit unsigned integer`;
    if (write.data.byteLength > write.pages.length * pageBytes) {
      return `${write.data.byteLength} bytes do not fit in ${write.pages.length} pages of ${pageBytes} bytes`;
    }
    if (write.data.byteLength > u32Max) return `${write.data.byteLength} bytes exceed one write's limit of ${u32Max}`;
    const seen = new Set<number>();
    for (const page of write.pages) {
      if (!Number.isInteger(page) || page < 0 || page >= pageCount) return `page ${page} is outside 0..${pageCount - 1}`;
      if (seen.has(page)) return `page ${page} is listed twice`;
      seen.add(page);
    }
    return undefined;
  }

  /**
   * Hands posted writes to the socket until more than sendQueueBytesMax wait in its buffer, then
   * waits for 'drain'. The buffer only holds references to the callers' data, and keeping a few
   * frames queued lets the kernel's send buffer refill without a round through the event loop.
   */
  private pump(): void {
    const socket = this.socket;
    if (this.phase !== 'reply' && this.phase !== 'reason') return;
    if (this.opening || this.waitingForDrain || !socket) return;
    while (this.unsent.length > 0) {
      const pending = this.unsent.shift()!;
      this.sent.push(pending);
      // Corked so header and data leave in one writev; the data is handed over without a copy.
      socket.cork();
      socket.write(pending.header);
      if (pending.data.byteLength > 0) socket.write(pending.data);
      socket.uncork();
      // Past the socket's high-water mark write() returned false, so 'drain' will come.
      if (socket.writableLength > this.host.sendQueueBytesMax) {
        this.waitingForDrain = true;
        return;
      }
    }
  }

  private onData(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.byteLength && !this.closed) {
      offset = this.gather.take(chunk, offset);
      while (this.gather.complete && !this.closed) this.onGathered();
    }
  }

  private onGathered(): void {
    if (this.phase === 'reply') {
      const frame = this.gather.bytes;
      const bad = checkFrameStart(frame, this.replyType);
      if (bad) return this.protocolError(bad);
      this.reply = decodeReplyFixed(frame, this.replyType);
      if (this.reply.status > 1) return this.protocolError(`unknown status ${this.reply.status}`);
      if (this.reply.reasonBytes > reasonBytesMax) return this.protocolError(`a reason of ${this.reply.reasonBytes} bytes`);
      this.phase = 'reason';
      this.gather.expect(this.reply.reasonBytes);
      return;
    }
    const reason = this.gather.bytes.toString('utf8');
    this.phase = 'reply';
    this.replyType = FrameType.Ack;
    this.gather.expect(ackFixedBytes);
    if (this.opening) return this.onHelloReply(this.reply.status === 0, reason);
    const head = this.sent.peek();
    if (!head || head.writeId !== this.reply.writeId) {
      return this.protocolError(`an acknowledgement of write ${this.reply.writeId}, expected ${head?.writeId ?? 'none'}`);
    }
    this.sent.shift();
    if (this.reply.status === 0) head.resolve();
    else head.reject(new TandemError(ErrorCode.TransferFailed, reason || `write for ${head.owner} was refused`));
  }

  private onHelloReply(accepted: boolean, reason: string): void {
    const opening = this.opening!;
    if (!accepted) {
      this.shutDown(`was refused: ${reason}`);
      return;
    }
    this.opening = undefined;
    if (this.timer !== undefined) this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    opening.resolve();
    if (this.unsent.length > 0) this.armWriteTimer(this.host.writeTimeoutMs);
    this.pump();
  }

  /**
   * One timer watches the oldest unacknowledged write: when it fires it checks that write's age
   * and re-arms for the next one, so acknowledgements never touch the timer.
   */
  private armWriteTimer(delayMs: number): void {
    this.timer = this.host.clock.setTimeout(() => {
      this.timer = undefined;
      if (this.phase === 'done' || this.opening) return;
      const oldest = this.sent.peek() ?? this.unsent.peek();
      if (!oldest) return;
      const ageMs = this.host.clock.now() - oldest.postedAtMs;
      if (ageMs >= this.host.writeTimeoutMs) {
        this.shutDown(`left write ${oldest.writeId} unacknowledged for ${this.host.writeTimeoutMs} ms (writeTimeoutMs)`);
        return;
      }
      this.armWriteTimer(this.host.writeTimeoutMs - ageMs);
    }, delayMs);
  }

  private protocolError(reason: string): void {
    this.host.log.warn('tcp fabric closed a connection: the receiver broke the protocol', { connection: this.describe(), reason });
    this.shutDown(`broke the protocol: ${reason}`);
  }

  /** Closes the socket and rejects every write not yet acknowledged, oldest first. Idempotent. */
  private shutDown(why: string): void {
    if (this.phase === 'done') return;
    this.phase = 'done';
    if (this.timer !== undefined) this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.socket?.destroy();
    const opening = this.opening;
    this.opening = undefined;
    const dropped = [...this.sent.drain(), ...this.unsent.drain()];
    this.host.outboundClosed(this);
    opening?.reject(new TandemError(ErrorCode.TransferFailed, `tcp fabric cannot connect to ${this.describe()}: it ${why}`));
    for (const pending of dropped) pending.reject(this.droppedError(pending.owner, why));
  }

  private droppedError(owner: string, why: string): TandemError {
    return new TandemError(ErrorCode.TransferFailed, `write for ${owner} dropped: connection ${this.describe()} ${why}`);
  }

  private describe(): string {
    return `${this.writer.instanceId}/${this.writer.epoch} -> ${this.peer.endpoint}/${this.peer.regionId}`;
  }
}

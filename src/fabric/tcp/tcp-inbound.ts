import type { Socket } from 'node:net';
import type { Logger } from '../../log.js';
import type { Clock, TimerId } from '../../time/clock.js';
import { ownerKey, type WriterIdentity } from '../fabric.js';
import {
  ByteGatherer,
  FrameType,
  checkFrameStart,
  decodeHelloFixed,
  decodeWriteHeader,
  encodeAck,
  encodeHelloReply,
  helloFixedBytes,
  helloIdBytesMax,
  protocolVersion,
  u32Max,
  writeFixedBytes,
  type Hello,
} from './frame-codec.js';
import type { TcpRegion } from './tcp-region.js';

/** What an inbound connection needs from the fabric that accepted it. */
export interface InboundHost {
  readonly clock: Clock;
  readonly log: Logger;
  /** How long a new socket may take to say hello. */
  readonly connectTimeoutMs: number;
  /** Acknowledgement bytes queued towards a writer that does not read them before it is dropped. */
  readonly ackBacklogBytesMax: number;
  /** The region a hello asks for, or why it is refused. */
  admit(hello: Hello): TcpRegion | string;
  /** Called once a writer's hello is accepted. */
  opened(inbound: TcpInbound): void;
  /** Called once the socket has closed; `opened` was called before iff `inbound.writer` is set. */
  closed(inbound: TcpInbound): void;
}

type Phase = 'hello' | 'hello-ids' | 'header' | 'pages' | 'payload' | 'done';

/**
 * The receiving end of one writer's connection. It parses frames incrementally as socket chunks
 * arrive and copies each write's payload straight from the chunks into the destination pages,
 * checking before every copy that the page is still held for the write's room. A write is
 * acknowledged only once its last byte is in the region (or it was refused). Anything that does
 * not follow the protocol closes the connection with a logged reason; every length is bounded by
 * the region's size before a byte of it is trusted.
 */
export class TcpInbound {
  /** The writer, once its hello was accepted. */
  writer: WriterIdentity | undefined;
  private region: TcpRegion | undefined;
  private phase: Phase = 'hello';
  private readonly gather = new ByteGatherer();
  private handshakeTimer: TimerId | undefined;
  private helloFixed: ReturnType<typeof decodeHelloFixed> | undefined;
  // The write being received.
  private pageList = new Uint32Array(0);
  private pageSeen = new Uint32Array(0);
  private pageSeenStamp = 0;
  private writeId = 0;
  private room = 0;
  private final = false;
  private owner = '';
  private dataBytes = 0;
  private dataDone = 0;
  private refusal: string | undefined;

  constructor(
    private readonly host: InboundHost,
    readonly socket: Socket,
  ) {
    socket.setNoDelay(true);
    this.gather.expect(helloFixedBytes);
    this.handshakeTimer = host.clock.setTimeout(() => {
      this.handshakeTimer = undefined;
      this.fail(`no hello within ${host.connectTimeoutMs} ms`);
    }, host.connectTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => host.log.debug('tcp fabric inbound socket error', { remote: this.remote(), error: error.message }));
    socket.on('close', () => {
      this.phase = 'done';
      this.clearHandshakeTimer();
      host.closed(this);
    });
  }

  /** Drops the connection without a reason to log (the fabric is closing). */
  destroy(): void {
    this.phase = 'done';
    this.clearHandshakeTimer();
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    // Corked, so the acks of every write finished in this chunk leave in one system call.
    this.socket.cork();
    let offset = 0;
    while (offset < chunk.byteLength && this.phase !== 'done') {
      if (this.phase === 'payload') {
        offset = this.consumePayload(chunk, offset);
        continue;
      }
      offset = this.gather.take(chunk, offset);
      while (this.gather.complete && this.gathering()) this.onGathered();
    }
    if (this.socket.destroyed) return;
    this.socket.uncork();
    if (this.socket.writableLength > this.host.ackBacklogBytesMax) {
      this.fail(`the writer left ${this.socket.writableLength} bytes of acknowledgements unread`);
    }
  }

  /** True while the next bytes are a header, a page list or hello ids (gathered), not payload. */
  private gathering(): boolean {
    return this.phase !== 'done' && this.phase !== 'payload';
  }

  private onGathered(): void {
    switch (this.phase) {
      case 'hello':
        return this.onHelloFixed();
      case 'hello-ids':
        return this.onHelloIds();
      case 'header':
        return this.onWriteHeader();
      case 'pages':
        return this.onPageList();
      default:
        return;
    }
  }

  private onHelloFixed(): void {
    const frame = this.gather.bytes;
    const bad = checkFrameStart(frame, FrameType.Hello);
    if (bad) return this.fail(`hello: ${bad}`);
    const fixed = decodeHelloFixed(frame);
    if (fixed.instanceIdBytes === 0 || fixed.instanceIdBytes > helloIdBytesMax || fixed.regionIdBytes === 0 || fixed.regionIdBytes > helloIdBytesMax) {
      return this.fail(`hello: id lengths ${fixed.instanceIdBytes} and ${fixed.regionIdBytes} are outside 1..${helloIdBytesMax}`);
    }
    if (!Number.isSafeInteger(fixed.epoch) || fixed.epoch < 0) return this.fail(`hello: epoch ${fixed.epoch} is not a non-negative integer`);
    this.helloFixed = fixed;
    this.phase = 'hello-ids';
    this.gather.expect(fixed.instanceIdBytes + fixed.regionIdBytes);
  }

  private onHelloIds(): void {
    const fixed = this.helloFixed!;
    const ids = this.gather.bytes;
    const hello: Hello = {
      version: fixed.version,
      instanceId: ids.toString('utf8', 0, fixed.instanceIdBytes),
      epoch: fixed.epoch,
      regionId: ids.toString('utf8', fixed.instanceIdBytes),
      pageBytes: fixed.pageBytes,
      pageCount: fixed.pageCount,
    };
    this.clearHandshakeTimer();
    const admitted = hello.version === protocolVersion ? this.host.admit(hello) : `protocol version ${hello.version} is not ${protocolVersion}`;
    if (typeof admitted === 'string') {
      this.host.log.info('tcp fabric refused a writer', { remote: this.remote(), writer: hello.instanceId, epoch: hello.epoch, reason: admitted });
      this.phase = 'done';
      this.socket.end(encodeHelloReply(false, admitted));
      return;
    }
    this.writer = { instanceId: hello.instanceId, epoch: hello.epoch };
    this.region = admitted;
    const { pageCount } = admitted.descriptor;
    this.pageList = new Uint32Array(Math.min(pageCount, 1024));
    this.pageSeen = new Uint32Array(pageCount);
    this.host.opened(this);
    this.socket.write(encodeHelloReply(true));
    this.phase = 'header';
    this.gather.expect(writeFixedBytes);
  }

  private onWriteHeader(): void {
    const region = this.region!;
    const { pageBytes, pageCount } = region.descriptor;
    const frame = this.gather.bytes;
    const bad = checkFrameStart(frame, FrameType.Write);
    if (bad) return this.fail(bad);
    const header = decodeWriteHeader(frame);
    if ((header.flags & ~1) !== 0) return this.fail(`write ${header.writeId}: unknown flags 0x${header.flags.toString(16)}`);
    if (header.pageCount > pageCount) return this.fail(`write ${header.writeId}: ${header.pageCount} pages in a region of ${pageCount}`);
    if (header.dataBytes > header.pageCount * pageBytes) {
      return this.fail(`write ${header.writeId}: ${header.dataBytes} bytes do not fit in ${header.pageCount} pages of ${pageBytes} bytes`);
    }
    this.writeId = header.writeId;
    this.room = header.room;
    this.final = header.final;
    this.owner = ownerKey(this.writer!, header.room);
    this.dataBytes = header.dataBytes;
    this.dataDone = 0;
    this.refusal = undefined;
    this.phase = 'pages';
    this.gather.expect(4 * header.pageCount);
  }

  private onPageList(): void {
    const region = this.region!;
    const { pageCount } = region.descriptor;
    const bytes = this.gather.bytes;
    const count = bytes.byteLength / 4;
    if (this.pageList.length < count) this.pageList = new Uint32Array(Math.max(count, 2 * this.pageList.length));
    // A stamp per write marks the pages seen in it, so duplicates are found without clearing an array.
    if (this.pageSeenStamp === u32Max) {
      this.pageSeen.fill(0);
      this.pageSeenStamp = 0;
    }
    const stamp = ++this.pageSeenStamp;
    for (let i = 0; i < count; i++) {
      const page = bytes.readUInt32LE(4 * i);
      if (page >= pageCount) return this.fail(`write ${this.writeId}: page ${page} is outside 0..${pageCount - 1}`);
      if (this.pageSeen[page] === stamp) return this.fail(`write ${this.writeId}: page ${page} is listed twice`);
      this.pageSeen[page] = stamp;
      this.pageList[i] = page;
      if (this.refusal === undefined && !region.heldFor(page, this.owner)) {
        this.refusal = `page ${page} is held for ${region.ownerOf(page) ?? 'nobody'}, not ${this.owner}`;
      }
    }
    this.phase = 'payload';
    if (this.dataBytes === 0) this.finishWrite();
  }

  /** Copies the payload bytes in `chunk` from `offset` into their pages; returns the offset after them. */
  private consumePayload(chunk: Buffer, offset: number): number {
    const region = this.region!;
    const { pageBytes } = region.descriptor;
    const end = offset + Math.min(this.dataBytes - this.dataDone, chunk.byteLength - offset);
    let position = offset;
    let done = this.dataDone;
    while (this.refusal === undefined && position < end) {
      const index = Math.floor(done / pageBytes);
      const inPage = done - index * pageBytes;
      const page = this.pageList[index]!;
      const length = Math.min(pageBytes - inPage, end - position);
      // The decode side may release a page between two chunks of one write: stop copying at once.
      if (!region.heldFor(page, this.owner)) {
        this.refusal = `page ${page} was released while the write was arriving`;
        break;
      }
      chunk.copy(region.memory, page * pageBytes + inPage, position, position + length);
      position += length;
      done += length;
    }
    this.dataDone += end - offset;
    if (this.dataDone === this.dataBytes) this.finishWrite();
    return end;
  }

  private finishWrite(): void {
    const region = this.region!;
    this.phase = 'header';
    this.gather.expect(writeFixedBytes);
    if (this.refusal !== undefined) {
      region.stats.rejectedWrites++;
      this.socket.write(encodeAck(this.writeId, false, `write for ${this.owner} to region ${region.descriptor.regionId} refused: ${this.refusal}`));
      return;
    }
    region.stats.appliedWrites++;
    region.stats.appliedBytes += this.dataBytes;
    this.socket.write(encodeAck(this.writeId, true));
    // Completion listeners run last, so one that closes the fabric finds this connection consistent.
    if (this.final) region.complete({ owner: this.owner, imm: this.room, atMs: this.host.clock.now() });
  }

  private fail(reason: string): void {
    if (this.phase === 'done') return;
    this.host.log.warn('tcp fabric closed an inbound connection', {
      remote: this.remote(),
      writer: this.writer ? `${this.writer.instanceId}/${this.writer.epoch}` : undefined,
      region: this.region?.descriptor.regionId,
      reason,
    });
    this.destroy();
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer === undefined) return;
    this.host.clock.clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
  }

  private remote(): string {
    return `${this.socket.remoteAddress ?? '?'}:${this.socket.remotePort ?? '?'}`;
  }
}

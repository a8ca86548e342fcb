// The TCP fabric's wire format. Every frame starts with a fixed little-endian header whose first
// four bytes are a magic number, so a stray or hostile stream is recognised at its first frame.
// A write is its header, its page indices and then its raw bytes: the receiver copies those bytes
// from socket chunks straight into the region, so nothing here ever holds a whole payload.
//
//   hello        (writer -> receiver, once)      28 B + instance id + region id
//     magic u32 | type u8 = 1 | version u8 | instanceIdBytes u16 | epoch f64
//     | pageBytes u32 | pageCount u32 | regionIdBytes u16 | reserved u16
//   hello reply  (receiver -> writer, once)       8 B + reason
//     magic u32 | type u8 = 2 | status u8 (0 accepted, 1 refused) | reasonBytes u16
//   write        (writer -> receiver)            24 B + 4 B per page + data
//     magic u32 | type u8 = 3 | flags u8 (bit 0: final) | reserved u16 | writeId u32
//     | room u32 | pageCount u32 | dataBytes u32 | page u32 * pageCount | data
//   ack          (receiver -> writer)            12 B + reason
//     magic u32 | type u8 = 4 | status u8 (0 applied, 1 rejected) | reasonBytes u16 | writeId u32

/** 'TDMF' as it appears on the wire. */
export const frameMagic = 0x464d4454;
/** The protocol version a hello carries; a receiver refuses any other. */
export const protocolVersion = 1;

export const FrameType = { Hello: 1, HelloReply: 2, Write: 3, Ack: 4 } as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const helloFixedBytes = 28;
export const helloReplyFixedBytes = 8;
export const writeFixedBytes = 24;
export const ackFixedBytes = 12;

/** Longest instance id or region id a hello may carry, in UTF-8 bytes. */
export const helloIdBytesMax = 256;
/** Longest reason a hello reply or an ack carries, in UTF-8 bytes; longer ones are cut. */
export const reasonBytesMax = 1024;
/** Largest value a u32 field holds: bounds rooms, page indices, write ids and data lengths. */
export const u32Max = 0xffff_ffff;

const writeFlagFinal = 1;

/** What a writer says about itself and the region it wants. */
export interface Hello {
  version: number;
  instanceId: string;
  epoch: number;
  regionId: string;
  pageBytes: number;
  pageCount: number;
}

/** The fixed part of a write frame. */
export interface WriteHeader {
  writeId: number;
  room: number;
  final: boolean;
  pageCount: number;
  dataBytes: number;
}

/** The fixed part of a hello reply or an ack. */
export interface ReplyHeader {
  status: number;
  reasonBytes: number;
  /** Only in acks. */
  writeId: number;
}

function utf8Cut(text: string, bytesMax: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return bytes.byteLength <= bytesMax ? bytes : bytes.subarray(0, bytesMax);
}

/** The writer's first frame. Ids longer than helloIdBytesMax are a caller bug the fabric checks first. */
export function encodeHello(hello: Hello): Buffer {
  const instanceId = Buffer.from(hello.instanceId, 'utf8');
  const regionId = Buffer.from(hello.regionId, 'utf8');
  const frame = Buffer.alloc(helloFixedBytes + instanceId.byteLength + regionId.byteLength);
  frame.writeUInt32LE(frameMagic, 0);
  frame.writeUInt8(FrameType.Hello, 4);
  frame.writeUInt8(hello.version, 5);
  frame.writeUInt16LE(instanceId.byteLength, 6);
  frame.writeDoubleLE(hello.epoch, 8);
  frame.writeUInt32LE(hello.pageBytes, 16);
  frame.writeUInt32LE(hello.pageCount, 20);
  frame.writeUInt16LE(regionId.byteLength, 24);
  instanceId.copy(frame, helloFixedBytes);
  regionId.copy(frame, helloFixedBytes + instanceId.byteLength);
  return frame;
}

/** Reads a hello's fixed part; the ids follow (instanceIdBytes, then regionIdBytes). */
export function decodeHelloFixed(frame: Buffer): { version: number; instanceIdBytes: number; epoch: number; pageBytes: number; pageCount: number; regionIdBytes: number } {
  return {
    version: frame.readUInt8(5),
    instanceIdBytes: frame.readUInt16LE(6),
    epoch: frame.readDoubleLE(8),
    pageBytes: frame.readUInt32LE(16),
    pageCount: frame.readUInt32LE(20),
    regionIdBytes: frame.readUInt16LE(24),
  };
}

/** The receiver's answer to a hello. */
export function encodeHelloReply(accepted: boolean, reason = ''): Buffer {
  const text = utf8Cut(reason, reasonBytesMax);
  const frame = Buffer.alloc(helloReplyFixedBytes + text.byteLength);
  frame.writeUInt32LE(frameMagic, 0);
  frame.writeUInt8(FrameType.HelloReply, 4);
  frame.writeUInt8(accepted ? 0 : 1, 5);
  frame.writeUInt16LE(text.byteLength, 6);
  text.copy(frame, helloReplyFixedBytes);
  return frame;
}

/** A write frame's header and page list; the data follows it on the wire, sent separately. */
export function encodeWriteHeader(header: WriteHeader, pages: readonly number[]): Buffer {
  const frame = Buffer.allocUnsafe(writeFixedBytes + 4 * pages.length);
  frame.writeUInt32LE(frameMagic, 0);
  frame.writeUInt8(FrameType.Write, 4);
  frame.writeUInt8(header.final ? writeFlagFinal : 0, 5);
  frame.writeUInt16LE(0, 6);
  frame.writeUInt32LE(header.writeId, 8);
  frame.writeUInt32LE(header.room, 12);
  frame.writeUInt32LE(header.pageCount, 16);
  frame.writeUInt32LE(header.dataBytes, 20);
  for (let i = 0; i < pages.length; i++) frame.writeUInt32LE(pages[i]!, writeFixedBytes + 4 * i);
  return frame;
}

/** Reads a write frame's fixed part. */
export function decodeWriteHeader(frame: Buffer): WriteHeader & { flags: number } {
  const flags = frame.readUInt8(5);
  return {
    flags,
    final: (flags & writeFlagFinal) !== 0,
    writeId: frame.readUInt32LE(8),
    room: frame.readUInt32LE(12),
    pageCount: frame.readUInt32LE(16),
    dataBytes: frame.readUInt32LE(20),
  };
}

/** The receiver's verdict on one write, sent once its bytes are in the region (or refused). */
export function encodeAck(writeId: number, applied: boolean, reason = ''): Buffer {
  const text = utf8Cut(reason, reasonBytesMax);
  const frame = Buffer.alloc(ackFixedBytes + text.byteLength);
  frame.writeUInt32LE(frameMagic, 0);
  frame.writeUInt8(FrameType.Ack, 4);
  frame.writeUInt8(applied ? 0 : 1, 5);
  frame.writeUInt16LE(text.byteLength, 6);
  frame.writeUInt32LE(writeId, 8);
  text.copy(frame, ackFixedBytes);
  return frame;
}

/** Reads the fixed part of a hello reply or an ack (writeId is 0 for a hello reply). */
export function decodeReplyFixed(frame: Buffer, type: FrameType): ReplyHeader {
  return {
    status: frame.readUInt8(5),
    reasonBytes: frame.readUInt16LE(6),
    writeId: type === FrameType.Ack ? frame.readUInt32LE(8) : 0,
  };
}

/** Magic and type of a frame's first bytes, or a reason it is not a frame this side expects. */
export function checkFrameStart(frame: Buffer, expected: FrameType): string | undefined {
  const magic = frame.readUInt32LE(0);
  if (magic !== frameMagic) return `bad magic 0x${magic.toString(16).padStart(8, '0')}`;
  const type = frame.readUInt8(4);
  if (type !== expected) return `unexpected frame type ${type} (expected ${expected})`;
  return undefined;
}

/**
 * Collects a fixed number of bytes that may arrive split over several socket chunks. Used for
 * headers, page lists and reasons, all of them bounded before `expect` is called.
 */
export class ByteGatherer {
  private scratch = Buffer.allocUnsafe(64);
  private filled = 0;
  private wanted = 0;

  /** Starts collecting `byteLength` bytes, forgetting what was collected before. */
  expect(byteLength: number): void {
    if (this.scratch.byteLength < byteLength) this.scratch = Buffer.allocUnsafe(Math.max(byteLength, 2 * this.scratch.byteLength));
    this.filled = 0;
    this.wanted = byteLength;
  }

  /** Copies what is still wanted from `chunk` at `offset`; returns the offset after the bytes taken. */
  take(chunk: Buffer, offset: number): number {
    const count = Math.min(this.wanted - this.filled, chunk.byteLength - offset);
    chunk.copy(this.scratch, this.filled, offset, offset + count);
    this.filled += count;
    return offset + count;
  }

  get complete(): boolean {
    return this.filled === this.wanted;
  }

  /** The collected bytes; valid until the next `expect`. */
  get bytes(): Buffer {
    return this.scratch.subarray(0, this.wanted);
  }
}

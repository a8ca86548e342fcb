import { z } from 'zod';

/**
 * The verbs fabric's control channel: a TCP connection to the region's endpoint that carries the
 * queue-pair handshake and, per write, the request the receiver checks page ownership against.
 * Frames are a 4-byte big-endian length and a UTF-8 JSON message; the bytes themselves go over RDMA.
 */

/** Version of the control messages; a hello with another is refused. */
export const controlVersion = 1;

/** Longest control frame accepted; a write naming this many pages' worth of JSON is refused. */
export const controlFrameBytesMax = 1024 * 1024;

const u32 = z.number().int().min(0).max(0xffff_ffff);
const id = z.string().min(1).max(256);
/** A queue pair's address: QPN, starting PSN, LID (InfiniBand), GID (hex, RoCE or routed IB) and the port's active MTU (ibv_mtu). */
const queuePairAddress = { qpn: u32, psn: u32, lid: u32, gid: z.string().regex(/^[0-9a-f]{32}$/), mtu: z.number().int().min(1).max(5) };

const hello = z.object({ t: z.literal('hello'), version: z.number().int(), instanceId: id, epoch: z.number().int().min(0), regionId: id, pageBytes: u32, pageCount: u32, ...queuePairAddress });
const welcome = z.object({ t: z.literal('welcome'), ...queuePairAddress, address: z.string().regex(/^\d{1,20}$/), rkey: u32 });
const refused = z.object({ t: z.literal('refused'), message: z.string().max(4096) });
const write = z.object({ t: z.literal('write'), seq: u32, room: u32, pages: z.array(u32), byteLength: z.number().int().min(0), final: z.boolean() });
const grant = z.object({ t: z.literal('grant'), seq: u32 });
const applied = z.object({ t: z.literal('applied'), seq: u32 });
const rejected = z.object({ t: z.literal('rejected'), seq: u32, message: z.string().max(4096) });

/** What a writer sends. */
export const writerMessage = z.discriminatedUnion('t', [hello, write]);
/** What a receiver sends. */
export const receiverMessage = z.discriminatedUnion('t', [welcome, refused, grant, applied, rejected]);

export type WriterMessage = z.infer<typeof writerMessage>;
export type ReceiverMessage = z.infer<typeof receiverMessage>;
export type Hello = z.infer<typeof hello>;
export type Welcome = z.infer<typeof welcome>;
export type WriteRequest = z.infer<typeof write>;

/** A queue pair's address as the handshake carries it. */
export interface QueuePairAddress {
  qpn: number;
  psn: number;
  lid: number;
  gid: string;
  /** The port's active MTU as an ibv_mtu value; the path uses the smaller of both sides'. */
  mtu: number;
}

/** Frames one message. */
export function encodeControl(message: WriterMessage | ReceiverMessage): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const frame = Buffer.allocUnsafe(4 + body.byteLength);
  frame.writeUInt32BE(body.byteLength, 0);
  body.copy(frame, 4);
  return frame;
}

/** Splits a byte stream into frames and validates each against `schema`. */
export class ControlReader<T> {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes the next frame needs before it can be parsed (its length prefix, then the whole frame). */
  private neededBytes = 4;

  constructor(private readonly schema: z.ZodType<T>) {}

  /** Adds bytes; returns the complete messages, or a string saying why the stream is unusable. */
  push(chunk: Buffer): T[] | string {
    this.pending.push(chunk);
    this.pendingBytes += chunk.byteLength;
    const out: T[] = [];
    // Joining the pieces only once a frame is complete keeps a large frame from being copied per chunk.
    if (this.pendingBytes < this.neededBytes) return out;
    let buffer = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    while (buffer.byteLength >= 4) {
      const length = buffer.readUInt32BE(0);
      if (length > controlFrameBytesMax) return `control frame of ${length} bytes exceeds controlFrameBytesMax`;
      if (buffer.byteLength < 4 + length) break;
      let parsed: unknown;
      try {
        parsed = JSON.parse(buffer.subarray(4, 4 + length).toString('utf8'));
      } catch {
        return 'control frame is not JSON';
      }
      const result = this.schema.safeParse(parsed);
      if (!result.success) return `invalid control message: ${result.error.issues[0]?.message ?? 'schema mismatch'}`;
      out.push(result.data);
      buffer = buffer.subarray(4 + length);
    }
    this.pending = buffer.byteLength > 0 ? [buffer] : [];
    this.pendingBytes = buffer.byteLength;
    this.neededBytes = buffer.byteLength >= 4 ? 4 + buffer.readUInt32BE(0) : 4;
    return out;
  }
}

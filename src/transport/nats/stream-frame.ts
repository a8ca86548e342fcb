// The binary frames of the stream protocol (see nats-stream.ts). Every frame is one NATS message:
//   byte 0     protocol version (1)
//   byte 1     kind
//   bytes 2-5  sequence number, unsigned 32-bit big-endian
//   bytes 6-   body: the chunk of a data frame, the heartbeat interval of an open frame, the
//              message of an error frame; empty for the others
// Decoding never throws: anything else is reported as malformed and dropped by the caller.

/** Bytes in front of every frame's body. */
export const frameHeaderBytes = 6;

const protocolVersion = 1;
const seqMax = 0xffff_ffff;
/** Error frames carry a short human-readable message, not a payload. */
const errorMessageBytesMax = 4096;
/** At most three UTF-8 bytes per UTF-16 unit, so this many characters always fit `errorMessageBytesMax`. */
const errorMessageCharsMax = 1024;

/** Frame kinds on the wire; producer → consumer first, then consumer → producer. */
export const FrameKind = {
  /** Producer claims the stream; body: its heartbeat interval (uint32 ms); the NATS reply subject is its control subject. */
  Open: 1,
  /** One chunk; seq counts chunks from 1. */
  Data: 2,
  /** Producer is alive; seq is the last data seq it sent. */
  Heartbeat: 3,
  /** Producer ended normally; seq is the last data seq it sent. */
  End: 4,
  /** Producer failed the stream; seq is the last data seq it sent; body: the reason, UTF-8. */
  Error: 5,
  /** Consumer has read `seq` chunks; also its heartbeat. */
  Credit: 6,
  /** Consumer stopped reading; seq is what it had read. */
  Cancel: 7,
} as const;

export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** A decoded frame. */
export type Frame =
  | { kind: typeof FrameKind.Open; seq: number; heartbeatMs: number }
  | { kind: typeof FrameKind.Data; seq: number; chunk: Uint8Array }
  | { kind: typeof FrameKind.Error; seq: number; message: string }
  | { kind: typeof FrameKind.Heartbeat | typeof FrameKind.End | typeof FrameKind.Credit | typeof FrameKind.Cancel; seq: number };

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Encodes a frame; a data frame copies its chunk, so the caller may reuse its buffer at once. */
export function encodeFrame(frame: Frame): Uint8Array {
  const body =
    frame.kind === FrameKind.Data
      ? frame.chunk
      : frame.kind === FrameKind.Open
        ? uint32(frame.heartbeatMs)
        : frame.kind === FrameKind.Error
          ? encoder.encode(frame.message.slice(0, errorMessageCharsMax))
          : undefined;
  const bytes = new Uint8Array(frameHeaderBytes + (body?.length ?? 0));
  const view = new DataView(bytes.buffer);
  view.setUint8(0, protocolVersion);
  view.setUint8(1, frame.kind);
  view.setUint32(2, frame.seq);
  if (body) bytes.set(body, frameHeaderBytes);
  return bytes;
}

/** Decodes a frame, or says why the bytes are not one. */
export function decodeFrame(bytes: Uint8Array): Frame | { malformed: string } {
  if (bytes.length < frameHeaderBytes) return { malformed: `${bytes.length} bytes is shorter than a frame header` };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint8(0);
  if (version !== protocolVersion) return { malformed: `unknown stream protocol version ${version}` };
  const kind = view.getUint8(1);
  const seq = view.getUint32(2);
  const body = bytes.subarray(frameHeaderBytes);
  switch (kind) {
    case FrameKind.Open: {
      if (body.length !== 4 || seq !== 0) return { malformed: 'open frame needs seq 0 and a 4-byte heartbeat interval' };
      const heartbeatMs = view.getUint32(frameHeaderBytes);
      if (heartbeatMs < 1) return { malformed: 'open frame with a zero heartbeat interval' };
      return { kind, seq, heartbeatMs };
    }
    case FrameKind.Data:
      if (seq < 1) return { malformed: 'data frame with seq 0' };
      // A copy, so a chunk held by the reader does not pin the socket buffer it arrived in.
      return { kind, seq, chunk: body.slice() };
    case FrameKind.Error: {
      if (body.length > errorMessageBytesMax) return { malformed: 'error frame message too long' };
      try {
        return { kind, seq, message: decoder.decode(body) };
      } catch {
        return { malformed: 'error frame message is not UTF-8' };
      }
    }
    case FrameKind.Heartbeat:
    case FrameKind.End:
    case FrameKind.Credit:
    case FrameKind.Cancel:
      if (body.length !== 0) return { malformed: `frame of kind ${kind} has a body` };
      return { kind, seq };
    default:
      return { malformed: `unknown frame kind ${kind}` };
  }
}

/** True when another data frame still fits the 32-bit sequence space. */
export function seqHasRoom(lastSeq: number): boolean {
  return lastSeq < seqMax;
}

function uint32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, Math.min(Math.max(Math.round(value), 0), seqMax));
  return bytes;
}

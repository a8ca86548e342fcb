import { ErrorCode, TandemError } from '../errors.js';
import { assert } from '../util/assert.js';
import { fmix32 } from '../util/fmix32.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * The stamp prefill puts in front of the KV bytes it writes into decode's pages, so decode can
 * refuse KV that belongs to another model, layout or request, or that arrived damaged (a page
 * lost, misplaced or overwritten). Little-endian layout:
 *
 *   0  magic 'TKV1'                 4 bytes
 *   4  header length, bytes         u32
 *   8  model identity length (n)    u8, then n UTF-8 bytes
 *      KV layout length (m)         u8, then m UTF-8 bytes
 *      token count                  u32
 *      first token                  u32
 *      KV byte length               u64 (below 2^53)
 *      checksum                     u32: murmur3-32 of the header up to here, then of the KV bytes
 *
 * The KV bytes follow the header. Bytes after them (the rest of the last page) are ignored.
 */

const magic = [0x54, 0x4b, 0x56, 0x31]; // 'TKV1'
const fixedHeaderBytes = 4 + 4 + 1 + 1 + 4 + 4 + 8 + 4;
/** Longest model identity or KV layout string, in UTF-8 bytes. */
export const kvStampStringBytesMax = 255;

/** What prefill stamps on the KV it sends. */
export interface KvPayload {
  /** The model the KV was computed with (name and weights revision). */
  modelIdentity: string;
  /** How the KV bytes are laid out (engine, dtype, layers, heads). */
  kvLayout: string;
  /** Prompt tokens the KV covers. */
  tokenCount: number;
  /** The token prefill sampled after the prompt. */
  firstToken: number;
  /** The KV bytes themselves. */
  kv: Uint8Array;
}

/** What decode gets back from a payload that passed every check. */
export type DecodedKvPayload = Omit<KvPayload, 'modelIdentity' | 'kvLayout'>;

/** What decode expects of a payload before it loads the KV. */
export interface KvExpectation {
  /** The model this decode worker serves. */
  modelIdentity: string;
  /** The KV layout this decode worker's engine loads. */
  kvLayout: string;
  /** The request's prompt token count, when decode wants it checked too. */
  tokenCount?: number;
}

/** Total bytes of a payload carrying `kvBytes` of KV, so decode can size its pages before the KV exists. */
export function kvPayloadBytes(kvBytes: number, modelIdentity: string, kvLayout: string): number {
  assert(Number.isSafeInteger(kvBytes) && kvBytes >= 0, 'kvBytes is a non-negative integer');
  return headerBytes(utf8(modelIdentity, 'model identity'), utf8(kvLayout, 'KV layout')) + kvBytes;
}

/** Stamps `payload.kv` with its header; the result is what prefill writes into decode's pages. */
export function encodeKvPayload(payload: KvPayload): Uint8Array {
  const identity = utf8(payload.modelIdentity, 'model identity');
  const layout = utf8(payload.kvLayout, 'KV layout');
  assert(isUint32(payload.tokenCount), 'tokenCount is an unsigned 32-bit integer');
  assert(isUint32(payload.firstToken), 'firstToken is an unsigned 32-bit integer');
  const headerLength = headerBytes(identity, layout);
  const out = new Uint8Array(headerLength + payload.kv.byteLength);
  const view = new DataView(out.buffer);
  out.set(magic, 0);
  view.setUint32(4, headerLength, true);
  let offset = 8;
  out[offset++] = identity.byteLength;
  out.set(identity, offset);
  offset += identity.byteLength;
  out[offset++] = layout.byteLength;
  out.set(layout, offset);
  offset += layout.byteLength;
  view.setUint32(offset, payload.tokenCount, true);
  view.setUint32(offset + 4, payload.firstToken, true);
  setUint64(view, offset + 8, payload.kv.byteLength);
  offset += 16;
  view.setUint32(offset, checksum(out.subarray(0, offset), payload.kv), true);
  out.set(payload.kv, headerLength);
  return out;
}

/**
 * Checks a received payload against what decode expects and returns its contents; `kv` is a view
 * into `bytes`, not a copy. Throws TandemError(kv_mismatch) saying what did not match.
 */
export function decodeKvPayload(bytes: Uint8Array, expected: KvExpectation): DecodedKvPayload {
  const refuse = (why: string): never => {
    throw new TandemError(ErrorCode.KvMismatch, `KV payload refused: ${why}`);
  };
  if (bytes.byteLength < fixedHeaderBytes) refuse(`${bytes.byteLength} bytes are shorter than any header`);
  if (magic.some((byte, i) => bytes[i] !== byte)) refuse('it does not start with TKV1');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getUint32(4, true);
  let offset = 8;
  const identityLength = bytes[offset]!;
  const layoutLength = bytes[offset + 1 + identityLength];
  if (layoutLength === undefined || headerLength !== fixedHeaderBytes + identityLength + layoutLength) {
    refuse(`header length ${headerLength} does not match its contents`);
  }
  if (headerLength > bytes.byteLength) refuse(`header of ${headerLength} bytes is cut off at ${bytes.byteLength}`);
  const modelIdentity = decoder.decode(bytes.subarray(offset + 1, offset + 1 + identityLength));
  offset += 1 + identityLength;
  const kvLayout = decoder.decode(bytes.subarray(offset + 1, offset + 1 + layoutLength!));
  offset += 1 + layoutLength!;
  if (modelIdentity !== expected.modelIdentity) refuse(`it is for model '${modelIdentity}', this worker serves '${expected.modelIdentity}'`);
  if (kvLayout !== expected.kvLayout) refuse(`its KV layout is '${kvLayout}', this worker loads '${expected.kvLayout}'`);
  const tokenCount = view.getUint32(offset, true);
  const firstToken = view.getUint32(offset + 4, true);
  const kvLength = getUint64(view, offset + 8);
  const stamped = view.getUint32(offset + 16, true);
  if (expected.tokenCount !== undefined && tokenCount !== expected.tokenCount) {
    refuse(`it covers ${tokenCount} tokens, the request has ${expected.tokenCount}`);
  }
  if (kvLength > bytes.byteLength - headerLength) refuse(`it says ${kvLength} KV bytes, only ${bytes.byteLength - headerLength} arrived`);
  const kv = bytes.subarray(headerLength, headerLength + kvLength);
  const actual = checksum(bytes.subarray(0, offset + 16), kv);
  if (actual !== stamped) refuse(`checksum ${hex(actual)} of the received KV differs from the stamped ${hex(stamped)} (a page was lost or misplaced)`);
  return { tokenCount, firstToken, kv };
}

function headerBytes(identity: Uint8Array, layout: Uint8Array): number {
  return fixedHeaderBytes + identity.byteLength + layout.byteLength;
}

function utf8(text: string, what: string): Uint8Array {
  const bytes = encoder.encode(text);
  assert(bytes.byteLength <= kvStampStringBytesMax, `${what} is ${bytes.byteLength} UTF-8 bytes; at most ${kvStampStringBytesMax}`);
  return bytes;
}

function isUint32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

function setUint64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 0x1_0000_0000, true);
  view.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
}

function getUint64(view: DataView, offset: number): number {
  return view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 0x1_0000_0000;
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(8, '0')}`;
}

/** The header's checksum: murmur3-32 of the header prefix seeds murmur3-32 of the KV. */
function checksum(header: Uint8Array, kv: Uint8Array): number {
  return murmur3(kv, murmur3(header, 0));
}

/**
 * murmur3 x86 32-bit. Each 4-byte step is a bijection of the running hash, so changing any one
 * word (one flipped byte) always changes the result; page swaps are caught with probability
 * 1 - 2^-32. About 3 GB/s in V8, so a 64 MiB payload costs ~20 ms.
 */
function murmur3(bytes: Uint8Array, seed: number): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const wordsEnd = bytes.byteLength & ~3;
  let h = seed | 0;
  for (let i = 0; i < wordsEnd; i += 4) {
    h ^= mixWord(view.getUint32(i, true));
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  let tail = 0;
  for (let i = bytes.byteLength - 1; i >= wordsEnd; i--) tail = (tail << 8) | bytes[i]!;
  if (bytes.byteLength > wordsEnd) h ^= mixWord(tail);
  return fmix32(h ^ bytes.byteLength);
}

function mixWord(word: number): number {
  let k = Math.imul(word, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  return Math.imul(k, 0x1b873593);
}

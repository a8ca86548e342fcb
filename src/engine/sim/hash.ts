import { fmix32 } from '../../util/fmix32.js';

/**
 * Small integer hashes for the sim engine. Everything here is a bijection in its first argument
 * where noted, so a chain of them never merges two different histories into one state.
 */

/** Mixes `value` into `state`; for a fixed `value` it is a bijection on 32-bit states. */
export function mix32(state: number, value: number): number {
  return fmix32(Math.imul((state ^ value) >>> 0, 0x9e3779b1));
}

/**
 * FNV-1a over bytes. Each step is a bijection of the running hash, so changing any single byte
 * always changes the digest; that is what makes a corrupted KV byte visible in decoded tokens.
 */
export function fnv1aBytes(bytes: Uint8Array, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    h = Math.imul(h ^ bytes[i]!, 0x01000193);
  }
  return h >>> 0;
}

const floatView = new DataView(new ArrayBuffer(8));

/** The two 32-bit halves of a float64 folded into one, so e.g. 0.7 and 0.70001 hash apart. */
export function floatBits32(value: number): number {
  floatView.setFloat64(0, value);
  return mix32(floatView.getUint32(0), floatView.getUint32(4));
}

/** Eight lowercase hex digits of a 32-bit value. */
export function hex32(value: number): string {
  return (value >>> 0).toString(16).padStart(8, '0');
}

/** Folds any number (a client seed may be above 2^32, negative or fractional) into 32 bits. */
export function foldNumber32(value: number): number {
  if (Number.isSafeInteger(value)) return mix32(value >>> 0, Math.floor(value / 0x1_0000_0000) >>> 0);
  return floatBits32(value);
}

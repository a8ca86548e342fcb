import { fnv1aBytes, mix32 } from './hash.js';

/** The KV layout tag of the sim engine: each token's entry carries its chain hash and position. */
export const SIM_KV_LAYOUT = 'sim-v2';

/** Bytes of a token's entry that name it: its chain hash and its position, little-endian. */
export const SIM_KV_HEADER_BYTES = 8;

// Arbitrary constants so that the chain, the sampler and the digest live in different spaces.
const ROOT_SALT = 0x51a1c0de;
const KV_DIGEST_SEED = 0x2545f491;

/** The chain hash before any token: it depends only on the weights. */
export function chainRoot(weightsSeed: number): number {
  return mix32(ROOT_SALT, weightsSeed);
}

/** The chain hash after `token` joined a context whose hash was `hash`; a bijection of `hash`. */
export function chainStep(hash: number, token: number, weightsSeed: number): number {
  return mix32(mix32(hash, token), weightsSeed);
}

/**
 * The causal hash chain of a prompt: h[i] = chainStep(h[i-1], token[i]), starting from the root.
 * Each step is a bijection of the previous hash, so two prompts have equal h[i] exactly when (up
 * to 32-bit collisions) their first i+1 tokens agree, and different weights give different
 * hashes at every position. Decoding extends the same chain one token at a time, so a prefill of
 * prompt + generated tokens lands on the hash an uninterrupted decode holds.
 */
export function chainHashes(tokens: readonly number[], weightsSeed: number): Uint32Array {
  const hashes = new Uint32Array(tokens.length);
  let h = chainRoot(weightsSeed);
  for (let i = 0; i < tokens.length; i++) {
    h = chainStep(h, tokens[i]!, weightsSeed);
    hashes[i] = h;
  }
  return hashes;
}

/** Writes position `position`'s entry: header (hash, position), then a mulberry32 stream seeded by the hash. */
function writeEntry(kv: Uint8Array, offset: number, entryBytes: number, hash: number, position: number): void {
  const view = new DataView(kv.buffer, kv.byteOffset + offset, entryBytes);
  view.setUint32(0, hash, true);
  view.setUint32(4, position, true);
  let state = hash;
  let written = SIM_KV_HEADER_BYTES;
  while (written < entryBytes) {
    // mulberry32, inlined: this loop runs once per 4 KV bytes.
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    let word = (t ^ (t >>> 14)) >>> 0;
    for (let b = 0; b < 4 && written < entryBytes; b++, written++) {
      kv[offset + written] = word & 0xff;
      word >>>= 8;
    }
  }
}

/**
 * The KV bytes: position i gets `kvBytesPerToken` bytes, its chain hash and position followed by
 * a stream seeded by the hash. Equal prefixes therefore give equal KV prefixes, like a real
 * causal model's cache.
 */
export function fillKv(hashes: Uint32Array, kvBytesPerToken: number): Uint8Array {
  const kv = new Uint8Array(hashes.length * kvBytesPerToken);
  for (let i = 0; i < hashes.length; i++) writeEntry(kv, i * kvBytesPerToken, kvBytesPerToken, hashes[i]!, i);
  return kv;
}

/**
 * The chain hash a received KV continues from: its last entry's hash when every entry is intact
 * and in its place; otherwise that hash mixed with a digest of all the bytes, so corrupt or
 * misplaced KV decodes into different tokens (as it would in a real model) instead of failing.
 */
export function kvChainHash(kv: Uint8Array, kvBytesPerToken: number): number {
  const tokenCount = kv.length / kvBytesPerToken;
  if (tokenCount === 0) return mix32(KV_DIGEST_SEED, 0);
  const view = new DataView(kv.buffer, kv.byteOffset, kv.byteLength);
  const expected = new Uint8Array(kvBytesPerToken);
  let intact = true;
  for (let i = 0; i < tokenCount && intact; i++) {
    const offset = i * kvBytesPerToken;
    writeEntry(expected, 0, kvBytesPerToken, view.getUint32(offset, true), i);
    for (let b = 0; b < kvBytesPerToken; b++) {
      if (expected[b] !== kv[offset + b]) {
        intact = false;
        break;
      }
    }
  }
  const last = view.getUint32((tokenCount - 1) * kvBytesPerToken, true);
  return intact ? last : mix32(last, fnv1aBytes(kv, KV_DIGEST_SEED));
}

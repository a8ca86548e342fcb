import { fnv1aBytes, mix32 } from './hash.js';

/** The KV layout tag of the sim engine. */
export const SIM_KV_LAYOUT = 'sim-v1';

// Arbitrary constants so that the chain, the sampler and the digest live in different spaces.
const ROOT_SALT = 0x51a1c0de;
const KV_DIGEST_SEED = 0x2545f491;

/**
 * The causal hash chain of a prompt: h[i] = mix(mix(h[i-1], token[i]), weightsSeed), starting
 * from a root that depends on the weights. Each step is a bijection of the previous hash, so two
 * prompts have equal h[i] exactly when (up to 32-bit collisions) their first i+1 tokens agree,
 * and different weights give different hashes at every position.
 */
export function chainHashes(tokens: readonly number[], weightsSeed: number): Uint32Array {
  const hashes = new Uint32Array(tokens.length);
  let h = mix32(ROOT_SALT, weightsSeed);
  for (let i = 0; i < tokens.length; i++) {
    h = mix32(mix32(h, tokens[i]!), weightsSeed);
    hashes[i] = h;
  }
  return hashes;
}

/**
 * The KV bytes: position i gets `kvBytesPerToken` bytes from a mulberry32 stream seeded by h[i].
 * Equal prefixes therefore give equal KV prefixes, like a real causal model's cache.
 */
export function fillKv(hashes: Uint32Array, kvBytesPerToken: number): Uint8Array {
  const kv = new Uint8Array(hashes.length * kvBytesPerToken);
  let offset = 0;
  for (let i = 0; i < hashes.length; i++) {
    let state = hashes[i]!;
    let written = 0;
    while (written < kvBytesPerToken) {
      // mulberry32, inlined: this loop runs once per 4 KV bytes.
      state = (state + 0x6d2b79f5) >>> 0;
      let t = Math.imul(state ^ (state >>> 15), state | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      let word = (t ^ (t >>> 14)) >>> 0;
      for (let b = 0; b < 4 && written < kvBytesPerToken; b++, written++) {
        kv[offset++] = word & 0xff;
        word >>>= 8;
      }
    }
  }
  return kv;
}

/** A digest of every KV byte; any single-byte change gives a different digest. */
export function kvDigest(kv: Uint8Array): number {
  return fnv1aBytes(kv, KV_DIGEST_SEED);
}

import { assert } from '../util/assert.js';
import { fmix32 } from '../util/fmix32.js';

/**
 * A chained hash of one full block of tokens: 16 lowercase hex digits, two 32-bit lanes.
 * Because each block's hash folds in its parent's, a hash names the whole prefix up to and
 * including its block, so two prompts share a hash at position i exactly when they share
 * their first (i + 1) blocks (up to hash collisions, about 2^-64 per pair).
 */
export type BlockHash = string;

/** Tokens per KV block when a deployment does not say otherwise. */
export const defaultBlockTokens = 16;

// Seeds of the two lanes for the root (the empty prefix). Any fixed, distinct values work;
// they are part of the wire contract between engines and the router, so never change them.
const rootLaneA = 0x811c9dc5;
const rootLaneB = 0x9e3779b9;


function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

/**
 * Cuts `tokens` into blocks of `blockTokens` and returns one chained hash per FULL block, in
 * order; a partial last block is ignored because engines cache only full blocks. Tokens must be
 * integers in [0, 2^32).
 */
export function blockHashes(tokens: readonly number[], blockTokens: number = defaultBlockTokens): BlockHash[] {
  assert(Number.isInteger(blockTokens) && blockTokens > 0, `blockTokens must be a positive integer, got ${blockTokens}`);
  const blockCount = Math.floor(tokens.length / blockTokens);
  const hashes: BlockHash[] = [];
  let a = rootLaneA;
  let b = rootLaneB;
  for (let block = 0; block < blockCount; block++) {
    // Each lane starts from the parent's two lanes, so the chain carries the whole prefix.
    let la = fmix32(a ^ Math.imul(b, 0x27d4eb2f));
    let lb = fmix32(b ^ Math.imul(a, 0x165667b1));
    for (let i = block * blockTokens; i < (block + 1) * blockTokens; i++) {
      const token = tokens[i]!;
      assert(Number.isInteger(token) && token >= 0 && token <= 0xffffffff, `token ${token} is not a u32`);
      // Two different multiply-xor streams: a collision must happen in both lanes at once.
      la = Math.imul(la ^ token, 0x01000193) >>> 0;
      lb = Math.imul((lb + token) >>> 0, 0x5bd1e995) >>> 0;
      lb ^= lb >>> 15;
    }
    a = fmix32(la ^ blockTokens);
    b = fmix32(lb + Math.imul(block + 1, 0x9e3779b1));
    hashes.push(hex8(a) + hex8(b));
  }
  return hashes;
}

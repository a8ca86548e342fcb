import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { blockHashes, defaultBlockTokens } from '../src/kv/prefix-hash.js';
import { AssertionError } from '../src/util/assert.js';

const token = fc.integer({ min: 0, max: 0xffffffff });

describe('blockHashes', () => {
  it('gives one 16-hex-digit hash per full block and ignores a partial last block', () => {
    const tokens = Array.from({ length: 2 * defaultBlockTokens + 5 }, (_, i) => i);
    const hashes = blockHashes(tokens);
    expect(hashes).toHaveLength(2);
    for (const hash of hashes) expect(hash).toMatch(/^[0-9a-f]{16}$/);
    expect(blockHashes(tokens.slice(0, 2 * defaultBlockTokens))).toEqual(hashes);
    expect(blockHashes(tokens.slice(0, defaultBlockTokens - 1))).toEqual([]);
  });

  it('chains: equal blocks under different parents hash differently', () => {
    const block = [7, 7, 7, 7];
    const [, afterA] = blockHashes([1, 2, 3, 4, ...block], 4);
    const [, afterB] = blockHashes([1, 2, 3, 5, ...block], 4);
    const [alone] = blockHashes(block, 4);
    expect(afterA).not.toBe(afterB);
    expect(alone).not.toBe(afterA);
  });

  it('depends on the block size', () => {
    const tokens = Array.from({ length: 8 }, (_, i) => i);
    expect(blockHashes(tokens, 8)[0]).not.toBe(blockHashes(tokens, 4)[1]);
  });

  it('rejects a bad block size or a token that is not a u32', () => {
    expect(() => blockHashes([1, 2], 0)).toThrow(AssertionError);
    expect(() => blockHashes([1, -2], 2)).toThrow(AssertionError);
    expect(() => blockHashes([1, 2.5], 2)).toThrow(AssertionError);
  });

  it('has no collisions over many distinct small prompts', () => {
    const seen = new Set<string>();
    for (let a = 0; a < 64; a++) for (let b = 0; b < 64; b++) for (const hash of blockHashes([a, b], 1)) seen.add(hash);
    // 64 distinct first blocks plus 64 × 64 distinct two-block prefixes.
    expect(seen.size).toBe(64 + 64 * 64);
  });
});

describe('blockHashes property', () => {
  // fast-check prints the seed and counterexample path when these fail; paste them into a regression test.
  it('equal leading full blocks give equal leading hashes, and the first differing block differs', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.array(token, { maxLength: 40 }),
        fc.array(token, { maxLength: 40 }),
        fc.array(token, { maxLength: 40 }),
        (blockTokens, shared, tailA, tailB) => {
          const a = blockHashes([...shared, ...tailA], blockTokens);
          const b = blockHashes([...shared, ...tailB], blockTokens);
          const tokensA = [...shared, ...tailA];
          const tokensB = [...shared, ...tailB];
          const blocks = Math.min(a.length, b.length);
          for (let i = 0; i < blocks; i++) {
            const sameBlocks = tokensA.slice(0, (i + 1) * blockTokens).join() === tokensB.slice(0, (i + 1) * blockTokens).join();
            expect(a[i] === b[i]).toBe(sameBlocks);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('ignores whatever follows the last full block', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.array(token, { maxLength: 50 }), (blockTokens, tokens) => {
        const full = tokens.length - (tokens.length % blockTokens);
        const hashes = blockHashes(tokens, blockTokens);
        expect(hashes).toHaveLength(full / blockTokens);
        expect(blockHashes(tokens.slice(0, full), blockTokens)).toEqual(hashes);
      }),
      { numRuns: 300 },
    );
  });
});

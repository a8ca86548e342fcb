import { assert } from '../../util/assert.js';

/**
 * Which full prompt blocks the engine has computed recently, keyed by the chained hash at each
 * block's last token (so a block's key covers the whole prefix before it). Bounded: the least
 * recently used block goes first. It only changes how long a prefill takes, never its result.
 */
export class PrefixCache {
  // A Map iterates in insertion order; re-inserting on use makes the first entry the LRU one.
  private readonly blocks = new Map<number, true>();

  constructor(
    private readonly blockTokens: number,
    private readonly blocksMax: number,
  ) {
    assert(Number.isInteger(blockTokens) && blockTokens >= 1, 'blockTokens is a positive integer');
    assert(Number.isInteger(blocksMax) && blocksMax >= 0, 'blocksMax is a non-negative integer');
  }

  /** Blocks held now. */
  get size(): number {
    return this.blocks.size;
  }

  /**
   * Prompt tokens covered by leading cached blocks. The last prompt token is always computed
   * (its logits give the first token), so a fully cached prompt still costs one token.
   */
  lookup(hashes: Uint32Array): number {
    const usableBlocks = Math.floor((hashes.length - 1) / this.blockTokens);
    let hits = 0;
    for (; hits < usableBlocks; hits++) {
      const key = this.keyOf(hashes, hits);
      if (!this.blocks.delete(key)) break;
      this.blocks.set(key, true);
    }
    return hits * this.blockTokens;
  }

  /** Records every full block of a computed prompt. */
  insert(hashes: Uint32Array): void {
    if (this.blocksMax === 0) return;
    const fullBlocks = Math.floor(hashes.length / this.blockTokens);
    for (let block = 0; block < fullBlocks; block++) {
      const key = this.keyOf(hashes, block);
      this.blocks.delete(key);
      this.blocks.set(key, true);
    }
    for (const key of this.blocks.keys()) {
      if (this.blocks.size <= this.blocksMax) break;
      this.blocks.delete(key);
    }
  }

  private keyOf(hashes: Uint32Array, block: number): number {
    return hashes[(block + 1) * this.blockTokens - 1]!;
  }
}

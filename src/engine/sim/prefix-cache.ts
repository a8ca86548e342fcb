import type { BlockHash } from '../../kv/prefix-hash.js';
import { assert } from '../../util/assert.js';
import type { EngineKvEvent } from '../engine.js';

/**
 * Which full prompt blocks the engine has computed recently, keyed by the chained block hashes of
 * `blockHashes` (so a block's key covers the whole prefix before it, and the router's index can use
 * the same keys). Bounded: the least recently used block goes first. It only changes how long a
 * prefill takes, never its result.
 */
export class PrefixCache {
  // A Map iterates in insertion order; re-inserting on use makes the first entry the LRU one.
  private readonly blocks = new Map<BlockHash, true>();
  private nextSeq = 0;

  constructor(
    private readonly blockTokens: number,
    private readonly blocksMax: number,
    private readonly onKvEvent?: (event: EngineKvEvent) => void,
  ) {
    assert(Number.isInteger(blockTokens) && blockTokens >= 1, 'blockTokens is a positive integer');
    assert(Number.isInteger(blocksMax) && blocksMax >= 0, 'blocksMax is a non-negative integer');
  }

  /** Blocks held now. */
  get size(): number {
    return this.blocks.size;
  }

  /** The blocks held now, least recently used first, and the seq of the last event they include (-1: none yet). */
  snapshot(): { seq: number; blocks: BlockHash[] } {
    return { seq: this.nextSeq - 1, blocks: [...this.blocks.keys()] };
  }

  /**
   * Prompt tokens covered by leading cached blocks of a prompt of `promptTokens` tokens whose full
   * blocks hash to `hashes`. The last prompt token is always computed (its logits give the first
   * token), so a fully cached prompt still costs one token.
   */
  lookup(hashes: readonly BlockHash[], promptTokens: number): number {
    const usableBlocks = Math.min(hashes.length, Math.floor((promptTokens - 1) / this.blockTokens));
    let hits = 0;
    for (; hits < usableBlocks; hits++) {
      const key = hashes[hits]!;
      if (!this.blocks.delete(key)) break;
      this.blocks.set(key, true);
    }
    return hits * this.blockTokens;
  }

  /** Records every full block of a computed prompt; reports new blocks, then evicted ones. */
  insert(hashes: readonly BlockHash[]): void {
    if (this.blocksMax === 0) return;
    const stored: BlockHash[] = [];
    for (const key of hashes) {
      if (!this.blocks.delete(key)) stored.push(key);
      this.blocks.set(key, true);
    }
    const removed: BlockHash[] = [];
    for (const key of this.blocks.keys()) {
      if (this.blocks.size <= this.blocksMax) break;
      this.blocks.delete(key);
      removed.push(key);
    }
    // A block stored and evicted in the same insert never needs to reach the router.
    const evicted = new Set(removed);
    this.emit('stored', stored.filter((key) => !evicted.has(key)));
    const fresh = new Set(stored);
    this.emit('removed', removed.filter((key) => !fresh.has(key)));
  }

  private emit(kind: EngineKvEvent['kind'], blocks: BlockHash[]): void {
    if (this.onKvEvent === undefined || blocks.length === 0) return;
    this.onKvEvent({ seq: this.nextSeq++, kind, blocks });
  }
}

import type { BlockHash } from '../../kv/prefix-hash.js';
import { assert } from '../../util/assert.js';
import type { EngineKvEvent } from '../engine.js';

/**
 * The full prompt blocks that the llama engine's cached sequences hold, by chained block hash,
 * and the KV events that report their changes to the router. Unlike the sim engine's
 * `PrefixCache`, which decides for itself which blocks to keep, what is cached here is whatever
 * llama.cpp keeps in the cached sequences, so a block is held while at least one sequence holds
 * it: the ledger counts holders and reports a block when its first holder takes it (`stored`)
 * and when its last one lets it go (`removed`).
 */
export class KvBlockLedger {
  // A Map iterates in insertion order, so a snapshot lists the oldest blocks first.
  private readonly holders = new Map<BlockHash, number>();
  private nextSeq = 0;

  constructor(private readonly onKvEvent?: (event: EngineKvEvent) => void) {}

  /** Blocks held now. */
  get size(): number {
    return this.holders.size;
  }

  /** The blocks held now, oldest first, and the seq of the last event they include (-1: none yet). */
  snapshot(): { seq: number; blocks: BlockHash[] } {
    return { seq: this.nextSeq - 1, blocks: [...this.holders.keys()] };
  }

  /** One holder's blocks change from `before` to `after`; reports blocks new to the ledger, then blocks it no longer holds. */
  replace(before: readonly BlockHash[], after: readonly BlockHash[]): void {
    const delta = new Map<BlockHash, number>();
    for (const key of after) delta.set(key, (delta.get(key) ?? 0) + 1);
    for (const key of before) delta.set(key, (delta.get(key) ?? 0) - 1);
    const stored: BlockHash[] = [];
    const removed: BlockHash[] = [];
    for (const [key, change] of delta) {
      if (change === 0) continue;
      const held = this.holders.get(key) ?? 0;
      const now = held + change;
      assert(now >= 0, 'a block is let go by more holders than took it');
      if (now === 0) {
        this.holders.delete(key);
        removed.push(key);
      } else {
        this.holders.set(key, now);
        if (held === 0) stored.push(key);
      }
    }
    this.emit('stored', stored);
    this.emit('removed', removed);
  }

  private emit(kind: EngineKvEvent['kind'], blocks: BlockHash[]): void {
    if (this.onKvEvent === undefined || blocks.length === 0) return;
    this.onKvEvent({ seq: this.nextSeq++, kind, blocks });
  }
}

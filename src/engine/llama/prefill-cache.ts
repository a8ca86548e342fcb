import type { LlamaContextSequence } from 'node-llama-cpp';
import { blockHashes, type BlockHash } from '../../kv/prefix-hash.js';
import { assert } from '../../util/assert.js';
import type { EngineKvEvent } from '../engine.js';
import { KvBlockLedger } from './kv-block-ledger.js';
import type { SequenceSlots } from './sequence-slots.js';

/** A context sequence whose evaluated tokens outlive the prefill that computed them. */
interface CachedSequence {
  /** Undefined only while its slot is being acquired. */
  native: LlamaContextSequence | undefined;
  /** The tokens its KV holds, as of the end of its last prefill. */
  tokens: readonly number[];
  /** Chained hashes of the full blocks of `tokens`. */
  blocks: readonly BlockHash[];
  /** A prefill is using it. */
  busy: boolean;
  /** When it was last picked, in picks (not time): the smallest is the least recently used. */
  usedAt: number;
}

/** A sequence lent to one prefill: evaluate the prompt from `cachedTokens` on. */
export interface PrefillLease {
  readonly native: LlamaContextSequence;
  /** Leading prompt tokens whose KV the sequence already holds. */
  readonly cachedTokens: number;
  /** The cached sequence lent, or undefined for a plain slot that is released after the prefill. */
  readonly entry: CachedSequence | undefined;
}

/** How long the common start of two token lists is. */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const length = Math.min(a.length, b.length);
  let i = 0;
  while (i < length && a[i] === b[i]) i++;
  return i;
}

/**
 * The prefill side's prefix cache: up to `sequencesMax` sequences of the context keep their
 * tokens after a prefill instead of being cleared, and a later prompt that starts the same way
 * continues one of them, so only the rest of the prompt is evaluated. A prompt continues the
 * idle cached sequence it shares the longest start with, when it extends that sequence's tokens
 * or shares at least a block with them; otherwise it gets a new cached sequence while there is
 * room, else the least recently used idle one. When every cached sequence is busy, the prefill
 * runs uncached in a plain slot. Changes of the full blocks held are reported as KV events (see
 * `KvBlockLedger`).
 */
export class PrefillCache {
  private readonly entries: CachedSequence[] = [];
  private readonly ledger: KvBlockLedger;
  private picks = 0;

  constructor(
    private readonly slots: SequenceSlots,
    /** Cached sequences at most; they keep their slots, so it must leave at least one slot to the rest. */
    private readonly sequencesMax: number,
    private readonly blockTokens: number,
    onKvEvent?: (event: EngineKvEvent) => void,
  ) {
    assert(Number.isInteger(sequencesMax) && sequencesMax >= 0, 'sequencesMax is a non-negative integer');
    assert(Number.isInteger(blockTokens) && blockTokens >= 1, 'blockTokens is a positive integer');
    this.ledger = new KvBlockLedger(onKvEvent);
  }

  /** Full blocks the cached sequences hold now. */
  get blockCount(): number {
    return this.ledger.size;
  }

  /** Cached sequences now (busy or not). */
  get sequenceCount(): number {
    return this.entries.length;
  }

  /** The blocks held now and the seq of the last KV event they include. */
  snapshot(): { seq: number; blocks: BlockHash[] } {
    return this.ledger.snapshot();
  }

  /**
   * A sequence for prefilling `prompt`, holding the KV of the prompt's first `cachedTokens`
   * tokens and nothing after them. At least the last prompt token is left to evaluate, since its
   * logits give the first token.
   */
  async acquire(prompt: readonly number[], signal?: AbortSignal): Promise<PrefillLease> {
    const usable = (entry: CachedSequence): number => Math.min(commonPrefix(entry.tokens, prompt), prompt.length - 1);
    const idle = this.entries.filter((entry) => !entry.busy);
    let best: CachedSequence | undefined;
    for (const entry of idle) {
      if (!best || usable(entry) > usable(best) || (usable(entry) === usable(best) && entry.usedAt > best.usedAt)) best = entry;
    }
    let entry: CachedSequence | undefined;
    if (best && (commonPrefix(best.tokens, prompt) === best.tokens.length || usable(best) >= this.blockTokens)) {
      // The prompt extends (or repeats) it, or shares at least a block with it: continuing it saves
      // that much now, where a new sequence would save nothing (what it loses is its own tail).
      entry = best;
    } else if (this.entries.length < this.sequencesMax) {
      entry = { native: undefined, tokens: [], blocks: [], busy: true, usedAt: 0 };
      this.entries.push(entry);
      try {
        entry.native = await this.slots.acquire(signal);
      } catch (error) {
        this.entries.splice(this.entries.indexOf(entry), 1);
        throw error;
      }
    } else if (idle.length > 0) {
      entry = idle.reduce((oldest, candidate) => (candidate.usedAt < oldest.usedAt ? candidate : oldest));
    }
    if (!entry) return { native: await this.slots.acquire(signal), cachedTokens: 0, entry: undefined };
    entry.busy = true;
    entry.usedAt = ++this.picks;
    const native = entry.native!;
    const keep = usable(entry);
    try {
      if (keep < native.nextTokenIndex) await native.eraseContextTokenRanges([{ start: keep, end: native.nextTokenIndex }]);
    } catch (error) {
      this.release({ native, cachedTokens: 0, entry });
      throw error;
    }
    this.record(entry, native);
    assert(entry.tokens.length === keep, 'a cached sequence holds exactly the prefix it was cut to');
    return { native, cachedTokens: keep, entry };
  }

  /** Gives a lease back: a cached sequence keeps what it now holds, a plain slot is freed. */
  release(lease: PrefillLease): void {
    const { entry, native } = lease;
    if (!entry) {
      this.slots.release(native);
      return;
    }
    assert(entry.busy && entry.native === native, 'a lease returns the cached sequence it lent');
    this.record(entry, native);
    entry.busy = false;
  }

  /** Takes the tokens llama.cpp's sequence holds as the entry's, and reports the blocks that changed. */
  private record(entry: CachedSequence, native: LlamaContextSequence): void {
    const tokens = native.disposed ? [] : native.contextTokens.slice();
    const blocks = blockHashes(tokens, this.blockTokens);
    this.ledger.replace(entry.blocks, blocks);
    entry.tokens = tokens;
    entry.blocks = blocks;
  }
}

import { assert } from '../util/assert.js';

/** One piece of work counted against a worker until `end()`; ending twice is harmless. */
export interface LoadTicket {
  end(): void;
}

/**
 * The work a frontend has routed to each worker and not yet seen finished, in KV blocks: for a
 * prefill worker the prompt blocks it has to compute until the first tokens arrive, for a decode
 * worker the context blocks of the streams it is decoding. It is the load term of KV-aware
 * routing and what tells conditional disaggregation that the prefill workers are busy. It counts
 * only this frontend's requests: a deployment with several frontends sees each one's share,
 * which is enough to steer away from a queue it built.
 */
export class WorkerLoad {
  private readonly blocks = new Map<string, number>();

  /** Counts `blockCount` blocks against `worker` until the ticket ends. */
  begin(worker: string, blockCount: number): LoadTicket {
    assert(Number.isInteger(blockCount) && blockCount >= 0, `blockCount must be a natural number, got ${blockCount}`);
    this.blocks.set(worker, (this.blocks.get(worker) ?? 0) + blockCount);
    let open = true;
    return {
      end: () => {
        if (!open) return;
        open = false;
        const left = (this.blocks.get(worker) ?? 0) - blockCount;
        assert(left >= 0, `the load of ${worker} went negative`);
        if (left === 0) this.blocks.delete(worker);
        else this.blocks.set(worker, left);
      },
    };
  }

  /** Blocks in flight on `worker`. */
  blocksOf(worker: string): number {
    return this.blocks.get(worker) ?? 0;
  }

  /** Blocks in flight per worker, for workers with any. */
  snapshot(): Record<string, number> {
    return Object.fromEntries(this.blocks);
  }

  /** Blocks in flight on every worker together. */
  get totalBlocks(): number {
    let total = 0;
    for (const count of this.blocks.values()) total += count;
    return total;
  }
}

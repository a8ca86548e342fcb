import type { LlamaContext, LlamaContextSequence } from 'node-llama-cpp';
import { ErrorCode, TandemError } from '../../errors.js';

/** Callers that may wait for a free sequence of a context at once. */
const slotWaitersMax = 4096;

/**
 * The sequences of one llama.cpp context, handed out one per prefill or decoding request. A
 * context has a fixed number; callers beyond it wait in arrival order until one is released.
 */
export class SequenceSlots {
  private free: number;
  private readonly waiters: Array<{ resolve: () => void; reject: (error: unknown) => void; signal: AbortSignal | undefined }> = [];

  constructor(
    private readonly context: LlamaContext,
    slots: number,
  ) {
    this.free = slots;
  }

  /** Sequences free now. */
  get available(): number {
    return this.free;
  }

  /** An empty sequence, once one is free. */
  async acquire(signal?: AbortSignal): Promise<LlamaContextSequence> {
    signal?.throwIfAborted();
    if (this.free === 0) {
      if (this.waiters.length >= slotWaitersMax) throw new TandemError(ErrorCode.Overloaded, `llama engine: ${slotWaitersMax} requests already wait for a sequence`);
      await new Promise<void>((resolve, reject) => {
        const waiter = { resolve, reject, signal };
        const onAbort = (): void => {
          const index = this.waiters.indexOf(waiter);
          if (index >= 0) this.waiters.splice(index, 1);
          reject(signal?.reason);
        };
        signal?.addEventListener('abort', onAbort, { once: true });
        waiter.resolve = () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        };
        this.waiters.push(waiter);
      });
    } else {
      this.free--;
    }
    return this.context.getSequence();
  }

  /** Refuses every caller still waiting for a sequence (the engine is closing). */
  close(): void {
    for (const waiter of this.waiters.splice(0)) waiter.reject(new TandemError(ErrorCode.ShuttingDown, 'llama engine is closing'));
  }

  /** Disposes `sequence`; its slot goes to the next waiter once llama.cpp has cleared it. */
  release(sequence: LlamaContextSequence): void {
    void sequence.dispose().finally(() => {
      const next = this.waiters.shift();
      if (next) next.resolve();
      else this.free++;
    });
  }
}

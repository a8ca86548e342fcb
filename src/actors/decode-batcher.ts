import type { DecodeSequence, Engine } from '../engine/engine.js';
import { TandemError, ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';

/** What a sequence in the batch reports per generated token; return true to leave the batch. */
export type TokenSink = (token: number) => boolean;

interface Member {
  readonly sequence: DecodeSequence;
  readonly onToken: TokenSink;
  readonly done: (error?: unknown) => void;
  left: boolean;
}

/**
 * Continuous batching: every step generates one token for each member; sequences join and leave
 * between steps. At most `batchMax` members decode at once; the rest wait in arrival order.
 */
export class DecodeBatcher {
  private readonly active: Member[] = [];
  private readonly waiting: Member[] = [];
  private running = false;
  private stopped = false;

  constructor(
    private readonly engine: Engine,
    private readonly batchMax: number,
    private readonly log: Logger,
  ) {}

  /** Sequences decoding now, and waiting for a slot. */
  get size(): { active: number; waiting: number } {
    return { active: this.active.length, waiting: this.waiting.length };
  }

  /** Active KV tokens across the batch, which sets the step time of most engines. */
  get activeKvTokens(): number {
    return this.active.reduce((sum, member) => sum + member.sequence.contextTokens, 0);
  }

  /**
   * Decodes `sequence` until `onToken` returns true. Resolves when it leaves; rejects with the
   * signal's reason when aborted (it leaves before the next step) or with the engine's error.
   */
  run(sequence: DecodeSequence, onToken: TokenSink, signal?: AbortSignal): Promise<void> {
    if (this.stopped) return Promise.reject(new TandemError(ErrorCode.ShuttingDown, 'the decode batcher is stopped'));
    return new Promise<void>((resolve, reject) => {
      const member: Member = {
        sequence,
        onToken,
        left: false,
        done: (error) => {
          if (member.left) return;
          member.left = true;
          signal?.removeEventListener('abort', onAbort);
          if (error === undefined) resolve();
          else reject(error);
        },
      };
      const onAbort = (): void => member.done(signal?.reason ?? new TandemError(ErrorCode.Cancelled, 'decode aborted'));
      if (signal?.aborted) {
        onAbort();
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(member);
      this.kick();
    });
  }

  /** Fails every member and refuses new ones. */
  stop(): void {
    this.stopped = true;
    for (const member of [...this.active, ...this.waiting]) member.done(new TandemError(ErrorCode.ShuttingDown, 'the decode worker is stopping'));
    this.active.length = 0;
    this.waiting.length = 0;
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    void this.loop().finally(() => {
      this.running = false;
      if (!this.stopped && this.waiting.some((m) => !m.left)) this.kick();
    });
  }

  private admit(): void {
    for (let i = this.active.length - 1; i >= 0; i--) if (this.active[i]!.left) this.active.splice(i, 1);
    while (this.active.length < this.batchMax && this.waiting.length > 0) {
      const next = this.waiting.shift()!;
      if (!next.left) this.active.push(next);
    }
  }

  private async loop(): Promise<void> {
    for (this.admit(); this.active.length > 0; this.admit()) {
      const batch = this.active.slice();
      let tokens: number[];
      try {
        tokens = await this.engine.decodeStep(batch.map((member) => member.sequence));
      } catch (error) {
        this.log.error('decode step failed; failing its batch', { batch: batch.length, error: String(error) });
        for (const member of batch) member.done(TandemError.from(error));
        continue;
      }
      batch.forEach((member, i) => {
        if (member.left) return;
        const token = tokens[i];
        if (token === undefined) {
          member.done(new TandemError(ErrorCode.Internal, `decode step returned ${tokens.length} tokens for ${batch.length} sequences`));
          return;
        }
        let finished: boolean;
        try {
          finished = member.onToken(token);
        } catch (error) {
          member.done(error);
          return;
        }
        if (finished) member.done();
      });
    }
  }
}

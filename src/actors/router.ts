import type { Discovery, WorkerRecord, WorkerRole } from '../discovery/discovery.js';
import type { KvPrefillRanker } from '../routing/kv-router-feed.js';

/**
 * Picks workers for a request: round-robin over the decode workers serving the model, and an
 * ordered list of prefill candidates starting at the next prefill worker in turn, so bootstrap
 * retries land on other workers.
 */
export class Router {
  private readonly turn: Record<WorkerRole, number> = { prefill: 0, decode: 0 };

  constructor(
    private readonly discovery: Discovery,
    private readonly model: string,
    /** When given, prefill candidates are ordered by cached prefix (KV-aware routing); otherwise round-robin. */
    private readonly kv?: KvPrefillRanker,
  ) {}

  /** Workers of a role that serve the model, in registration order. */
  workers(role: WorkerRole): WorkerRecord[] {
    return this.discovery.list(role).filter((record) => record.model === this.model);
  }

  /** The next decode worker in turn, or undefined when none is registered. */
  pickDecode(): WorkerRecord | undefined {
    return this.rotate('decode')[0];
  }

  /** Every decode worker, starting with the next one in turn. */
  decodeCandidates(): WorkerRecord[] {
    return this.rotate('decode');
  }

  /**
   * Every prefill worker, starting with the next one in turn; with a KV ranker and the prompt's
   * `tokens`, the worker with the cheapest uncached prefill comes first instead.
   */
  prefillCandidates(tokens?: readonly number[]): WorkerRecord[] {
    const rotated = this.rotate('prefill');
    return this.kv !== undefined && tokens !== undefined ? this.kv.rank(rotated, tokens) : rotated;
  }

  private rotate(role: WorkerRole): WorkerRecord[] {
    const all = this.workers(role);
    if (all.length === 0) return all;
    const start = this.turn[role] % all.length;
    this.turn[role] = (start + 1) % all.length;
    return [...all.slice(start), ...all.slice(0, start)];
  }
}

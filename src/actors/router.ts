import type { Discovery, WorkerRecord, WorkerRole } from '../discovery/discovery.js';
import { defaultBlockTokens } from '../kv/prefix-hash.js';
import { assert } from '../util/assert.js';
import type { Random } from '../random/random.js';
import type { KvSelectionOptions } from '../routing/kv-aware-selection.js';
import type { KvPrefillRanker } from '../routing/kv-router-feed.js';
import { WorkerLoad } from '../routing/worker-load.js';

/** How prefill workers are picked. */
export type RoutingMode = 'round-robin' | 'random' | 'kv-aware';

/** How to build a Router beyond its discovery and model. */
export interface RouterOptions {
  /** Prefill ranking by cached prefix; required for (and implied by) 'kv-aware'. */
  kv?: KvPrefillRanker;
  /** Default: 'kv-aware' when `kv` is given, else 'round-robin'. */
  mode?: RoutingMode;
  /** Draws of 'random' routing; seeded, so routing is reproducible. Required for 'random'. */
  random?: Random;
  /** Tokens per prefix block, to count a prompt's blocks for the load term; default 16 (the engines' must match). */
  blockTokens?: number;
}

/** Prefill workers in order of preference for one prompt. */
export interface PrefillChoice {
  /** Every prefill worker serving the model, best first; bootstrap retries go down the list. */
  candidates: WorkerRecord[];
  /** Prompt tokens the first candidate holds cached, as far as KV-aware routing knows (0 otherwise). */
  cachedTokens: number;
  /** Prompt tokens the first candidate would compute. */
  uncachedTokens: number;
}

/**
 * Picks workers for a request: decode workers round-robin (least loaded first with KV-aware
 * routing), and an ordered list of prefill candidates — round-robin, seeded random, or KV-aware
 * (cheapest uncached prefill plus load first) — so bootstrap retries land on other workers. It
 * also keeps the load its requests put on each worker (`prefillLoad`, `decodeLoad`).
 */
export class Router {
  /** Prompt blocks routed to each prefill worker and not yet answered. */
  readonly prefillLoad = new WorkerLoad();
  /** Context blocks of the streams each decode worker is serving for this router's requests. */
  readonly decodeLoad = new WorkerLoad();
  readonly mode: RoutingMode;
  /** Tokens per prefix block. */
  readonly blockTokens: number;
  private readonly turn: Record<WorkerRole, number> = { prefill: 0, decode: 0 };
  private readonly options: RouterOptions;

  constructor(
    private readonly discovery: Discovery,
    private readonly model: string,
    options: RouterOptions | KvPrefillRanker = {},
  ) {
    this.options = 'rank' in options ? { kv: options } : options;
    this.mode = this.options.mode ?? (this.options.kv ? 'kv-aware' : 'round-robin');
    this.blockTokens = this.options.blockTokens ?? defaultBlockTokens;
    assert(this.mode !== 'kv-aware' || this.options.kv !== undefined, "routing 'kv-aware' needs a KV ranker");
    assert(this.mode !== 'random' || this.options.random !== undefined, "routing 'random' needs a seeded random source");
  }

  /** Workers of a role that serve the model, in registration order. */
  workers(role: WorkerRole): WorkerRecord[] {
    return this.discovery.list(role).filter((record) => record.model === this.model);
  }

  /** The next decode worker in turn, or undefined when none is registered. */
  pickDecode(): WorkerRecord | undefined {
    return this.rotate('decode')[0];
  }

  /**
   * Every decode worker, starting with the next one in turn; with KV-aware routing the least
   * loaded (fewest context blocks in flight) come first, in turn among equals.
   */
  decodeCandidates(): WorkerRecord[] {
    const rotated = this.rotate('decode');
    if (this.mode !== 'kv-aware') return rotated;
    // Array.prototype.sort is stable, so equal loads keep the round-robin order.
    return rotated.sort((a, b) => this.decodeLoad.blocksOf(a.instanceId) - this.decodeLoad.blocksOf(b.instanceId));
  }

  /**
   * Every prefill worker, starting with the next one in turn; with KV-aware routing and the
   * prompt's `tokens`, the worker with the cheapest uncached prefill comes first instead.
   */
  prefillCandidates(tokens?: readonly number[]): WorkerRecord[] {
    return tokens === undefined ? this.rotate('prefill') : this.choosePrefill(tokens).candidates;
  }

  /** The prefill candidates for a prompt of `tokens`, with per-request KV-aware weights. */
  choosePrefill(tokens: readonly number[], selection?: KvSelectionOptions): PrefillChoice {
    const rotated = this.rotate('prefill');
    if (this.mode === 'kv-aware' && rotated.length > 0) {
      const ranking = this.options.kv!.rank(rotated, tokens, { activeBlocks: (worker) => this.prefillLoad.blocksOf(worker), ...(selection ? { selection } : {}) });
      return { candidates: ranking.workers, cachedTokens: ranking.cachedTokens, uncachedTokens: tokens.length - ranking.cachedTokens };
    }
    if (this.mode === 'random' && rotated.length > 1) {
      const first = this.options.random!.int(rotated.length);
      return { candidates: [...rotated.slice(first), ...rotated.slice(0, first)], cachedTokens: 0, uncachedTokens: tokens.length };
    }
    return { candidates: rotated, cachedTokens: 0, uncachedTokens: tokens.length };
  }

  private rotate(role: WorkerRole): WorkerRecord[] {
    const all = this.workers(role);
    if (all.length === 0) return all;
    const start = this.turn[role] % all.length;
    this.turn[role] = (start + 1) % all.length;
    return [...all.slice(start), ...all.slice(0, start)];
  }
}

import type { Random } from '../random/random.js';
import { assert } from '../util/assert.js';

/** A candidate worker and its current load. */
export interface WorkerCandidate {
  /** The worker's id, as used in the KV indexer. */
  worker: string;
  /**
   * KV blocks of the work in flight on the worker: the "active decode blocks" of the cost. For a
   * prefill worker it is the prompt blocks routed to it and not yet answered (see WorkerLoad).
   */
  activeBlocks: number;
}

/** Weights of the KV-aware cost; configurable per deployment and per request. */
export interface KvSelectionOptions {
  /** Cost of one block of prefill the worker does not have cached, relative to one active block. Default 1. */
  overlapWeight?: number;
  /** Softmax temperature over normalised costs; 0 (the default) always picks a lowest-cost worker. */
  temperature?: number;
}

/** A candidate with its cost. */
export interface WorkerCost {
  /** The worker's id. */
  worker: string;
  /** `overlapWeight × uncachedPrefillBlocks + activeBlocks`; lower is better. */
  cost: number;
}

/**
 * Prices each candidate for a request of `requestBlocks` full blocks, given the matched prefix
 * lengths from `KvIndexer.match` (a worker absent from `matched` has nothing cached).
 */
export function workerCosts(
  candidates: readonly WorkerCandidate[],
  requestBlocks: number,
  matched: ReadonlyMap<string, number>,
  overlapWeight = 1,
): WorkerCost[] {
  assert(requestBlocks >= 0 && overlapWeight >= 0, 'requestBlocks and overlapWeight must not be negative');
  return candidates.map(({ worker, activeBlocks }) => {
    const cachedBlocks = Math.min(matched.get(worker) ?? 0, requestBlocks);
    return { worker, cost: overlapWeight * (requestBlocks - cachedBlocks) + activeBlocks };
  });
}

/**
 * Picks the worker to send a request to: the lowest cost wins, ties broken by `random`; with a
 * positive temperature, a softmax over costs normalised to [0, 1] spreads load across near-ties.
 * Returns undefined when there are no candidates.
 */
export function selectKvAwareWorker(
  candidates: readonly WorkerCandidate[],
  requestBlocks: number,
  matched: ReadonlyMap<string, number>,
  random: Random,
  options: KvSelectionOptions = {},
): string | undefined {
  return pickByCost(workerCosts(candidates, requestBlocks, matched, options.overlapWeight ?? 1), random, options.temperature ?? 0);
}

/**
 * Picks among priced workers: the lowest cost wins, ties broken by `random`; with a positive
 * temperature, a softmax over costs normalised to [0, 1]. Undefined when there are none.
 */
export function pickByCost(costs: readonly WorkerCost[], random: Random, temperature = 0): string | undefined {
  assert(temperature >= 0, `temperature must not be negative, got ${temperature}`);
  if (costs.length === 0) return undefined;
  const minCost = Math.min(...costs.map((c) => c.cost));
  if (temperature === 0) {
    const lowest = costs.filter((c) => c.cost === minCost);
    return lowest[random.int(lowest.length)]!.worker;
  }
  // Normalising makes the temperature mean the same thing whatever the scale of the costs.
  const range = Math.max(...costs.map((c) => c.cost)) - minCost || 1;
  const weights = costs.map((c) => Math.exp(-(c.cost - minCost) / range / temperature));
  const total = weights.reduce((sum, w) => sum + w, 0);
  let draw = random.next() * total;
  for (let i = 0; i < costs.length; i++) {
    draw -= weights[i]!;
    if (draw < 0) return costs[i]!.worker;
  }
  return costs[costs.length - 1]!.worker;
}

import type { WorkerLoad } from './worker-load.js';

/**
 * When a decode worker prefills a prompt itself instead of handing it to a prefill worker.
 * Moving KV costs a bootstrap, a fabric transfer and a few messages; for a short uncached part,
 * or while every prefill worker is backed up, computing it where it will be decoded is cheaper.
 * Off unless configured: absent fields never trigger.
 */
export interface ConditionalDisaggregation {
  /** Prefill locally when the best prefill worker would compute at most this many tokens (the uncached part). */
  localPrefillTokensMax?: number;
  /** Prefill locally when every prefill worker has at least this many prompt blocks in flight. */
  prefillBusyBlocks?: number;
}

/** Where one prompt is prefilled, and why. */
export type PrefillPlacement =
  | { where: 'remote' }
  | { where: 'local'; reason: 'short' | 'busy' | 'no_prefill_workers' };

/** The numbers the placement depends on. */
export interface PlacementInput {
  /** Prefill workers that could take the prompt, best first. */
  candidates: ReadonlyArray<{ instanceId: string }>;
  /** Prompt tokens the best candidate would compute. */
  uncachedTokens: number;
}

/** Decides where to prefill; without `policy` (the default) always on a prefill worker. */
export function placePrefill(input: PlacementInput, load: WorkerLoad, policy?: ConditionalDisaggregation): PrefillPlacement {
  if (policy === undefined) return { where: 'remote' };
  if (input.candidates.length === 0) return { where: 'local', reason: 'no_prefill_workers' };
  const { localPrefillTokensMax, prefillBusyBlocks } = policy;
  if (localPrefillTokensMax !== undefined && input.uncachedTokens <= localPrefillTokensMax) return { where: 'local', reason: 'short' };
  if (prefillBusyBlocks !== undefined && input.candidates.every((worker) => load.blocksOf(worker.instanceId) >= prefillBusyBlocks)) {
    return { where: 'local', reason: 'busy' };
  }
  return { where: 'remote' };
}

/**
 * The sim engine's timing model, after Dynamo's mocker: prefill time is a polynomial in the
 * tokens the prefix cache did not cover; a decode step's time grows with the KV it reads.
 */
export interface SimTiming {
  /** Fixed cost of one prefill, ms. */
  prefillBaseMs: number;
  /** Linear prefill cost per uncached prompt token, ms. */
  prefillPerTokenMs: number;
  /** Quadratic prefill cost (attention) per uncached token squared, ms. */
  prefillPerTokenSquaredMs: number;
  /** Fixed cost of one decode step (one token for every sequence of the batch), ms. */
  decodeBaseMs: number;
  /** Decode step cost per KV token the batch holds (sum of the sequences' context), ms. */
  decodePerKvTokenMs: number;
}

/** Roughly a small (1-3B) model on one GPU. */
export const defaultSimTiming: Readonly<SimTiming> = {
  prefillBaseMs: 5,
  prefillPerTokenMs: 0.05,
  prefillPerTokenSquaredMs: 1e-6,
  decodeBaseMs: 8,
  decodePerKvTokenMs: 0.0001,
};

/** Unscaled time of a prefill that computes `uncachedTokens` tokens. */
export function prefillMs(timing: SimTiming, uncachedTokens: number): number {
  const n = uncachedTokens;
  return timing.prefillBaseMs + timing.prefillPerTokenMs * n + timing.prefillPerTokenSquaredMs * n * n;
}

/** Unscaled time of a decode step over a batch holding `activeKvTokens` tokens of context. */
export function decodeStepMs(timing: SimTiming, activeKvTokens: number): number {
  return timing.decodeBaseMs + timing.decodePerKvTokenMs * activeKvTokens;
}

/** Divides a duration by the speedup; an infinite speedup means zero time. */
export function scaleMs(ms: number, speedup: number): number {
  return speedup === Infinity ? 0 : ms / speedup;
}

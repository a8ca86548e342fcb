import type { ControlledEvaluateInputItem, ControlledEvaluateIndexOutput, Token } from 'node-llama-cpp';
import { ErrorCode, TandemError } from '../../errors.js';
import { hashString, seededRandom } from '../../random/random.js';
import type { SamplingParams } from '../engine.js';

/**
 * What to ask llama.cpp for after `token`: the greedy argmax (temperature 0), or the raw logits,
 * which `pickToken` samples from.
 */
export function evaluateItem(token: number, sampling: SamplingParams): ControlledEvaluateInputItem {
  if (sampling.temperature <= 0) return [token as Token, { generateNext: { token: true, options: { temperature: 0 } } }];
  return [token as Token, { generateNext: { logits: true } }];
}

/**
 * The next token from llama.cpp's output. With temperature > 0 it is drawn with a generator
 * seeded by the request's seed and the token's position, so the same request gives the same
 * tokens whichever worker samples them, and prefill and decode need not share sampler state.
 */
export function pickToken(output: ControlledEvaluateIndexOutput | undefined, sampling: SamplingParams, position: number): number {
  if (sampling.temperature <= 0) {
    const token = output?.next.token;
    if (token === undefined || token === null) throw new TandemError(ErrorCode.Internal, 'llama engine: evaluation returned no token');
    return token;
  }
  const logits = output?.next.logits;
  if (!logits || logits.size === 0) throw new TandemError(ErrorCode.Internal, 'llama engine: evaluation returned no logits');
  // The map is sorted by logit, highest first.
  const entries = [...logits.entries()];
  const top = entries[0]![1];
  const weights = entries.map(([, logit]) => Math.exp((logit - top) / sampling.temperature));
  const total = weights.reduce((sum, weight) => sum + weight, 0);
  let kept = 0;
  let mass = 0;
  while (kept < weights.length && mass < sampling.topP * total) mass += weights[kept++]!;
  const random = seededRandom(hashString(`${position}`, sampling.seed >>> 0));
  let target = random.next() * mass;
  for (let i = 0; i < kept; i++) {
    target -= weights[i]!;
    if (target < 0) return entries[i]![0];
  }
  return entries[Math.max(0, kept - 1)]![0];
}

import { ErrorCode, TandemError } from '../errors.js';
import type { Engine, SamplingParams } from './engine.js';

/**
 * Prefill and decode in one place, one sequence alone: the reference a disaggregated run is
 * compared against. Returns the generated tokens, first token included, up to `maxTokens`; when
 * generation ends on EOS (and `ignoreEos` is off) the EOS token is the last element. It also
 * stops when the context reaches the model's `contextTokensMax`.
 */
export async function runAggregated(
  engine: Engine,
  tokens: readonly number[],
  sampling: SamplingParams,
  signal?: AbortSignal,
): Promise<number[]> {
  if (!Number.isInteger(sampling.maxTokens) || sampling.maxTokens < 1) {
    throw new TandemError(ErrorCode.BadRequest, `maxTokens must be a positive integer, got ${sampling.maxTokens}`);
  }
  const endsGeneration = (token: number): boolean => token === engine.model.eosToken && !sampling.ignoreEos;
  const { firstToken, kv } = await engine.prefill(tokens, sampling, signal);
  const output = [firstToken];
  if (endsGeneration(firstToken) || output.length >= sampling.maxTokens) {
    engine.discardKv?.(kv);
    return output;
  }
  const sequence = await engine.loadSequence(kv, tokens.length, firstToken, sampling);
  try {
    while (output.length < sampling.maxTokens && sequence.contextTokens < engine.model.contextTokensMax) {
      const [token] = await engine.decodeStep([sequence], signal);
      if (token === undefined) throw new TandemError(ErrorCode.Internal, 'decodeStep returned no token');
      output.push(token);
      if (endsGeneration(token)) break;
    }
  } finally {
    engine.releaseSequence(sequence);
  }
  return output;
}

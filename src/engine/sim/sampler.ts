import type { SamplingParams } from '../engine.js';
import { floatBits32, foldNumber32, mix32 } from './hash.js';
import { SIM_EOS_TOKEN } from './tokenizer.js';

const START_SALT = 0x3c6ef372;
const SAMPLE_SALT = 0xa54ff53a;
const EOS_SALT = 0x510e527f;
const GREEDY_KEY = 0x9b05688c;

// Printable ASCII weighted roughly like English letters, so sim output looks like text.
const CHARACTERS =
  '                eeeeeeeeeeeetttttttttaaaaaaaaooooooooiiiiiiinnnnnnnssssssshhhhhhrrrrrrddddd' +
  'llllcccuuummmwwffggyyppbbvkjxqz,,..TAI';

/**
 * The sampler's part of a sequence's state. With temperature 0 (greedy) the seed and top-p do not
 * matter; with temperature > 0 the seed, temperature and top-p all change the output.
 */
export function samplingKey(sampling: SamplingParams): number {
  if (sampling.temperature <= 0) return GREEDY_KEY;
  const key = mix32(foldNumber32(sampling.seed), floatBits32(sampling.temperature));
  return mix32(key, floatBits32(sampling.topP));
}

/** The state from which the next token is sampled: the context's chain hash mixed with the sampler. */
export function sequenceStart(chainHash: number, sampling: SamplingParams): number {
  return mix32(mix32(chainHash, START_SALT), samplingKey(sampling));
}

/**
 * The token a state yields: printable ASCII (32..126), or EOS with probability about
 * 1/eosEvery unless the request ignores EOS.
 */
export function sampleToken(state: number, sampling: SamplingParams, eosEvery: number | undefined): number {
  const x = mix32(state, SAMPLE_SALT);
  if (eosEvery !== undefined && !sampling.ignoreEos && mix32(x, EOS_SALT) % eosEvery === 0) return SIM_EOS_TOKEN;
  return CHARACTERS.charCodeAt(x % CHARACTERS.length);
}


import type { SamplingParams } from '../engine/engine.js';
import type { MessageOf } from '../protocol/messages.js';

/** Converts wire sampling parameters to the engine's. */
export function samplingFromWire(wire: MessageOf<'generate'>['sampling']): SamplingParams {
  return { temperature: wire.temperature, topP: wire.top_p, seed: wire.seed, maxTokens: wire.max_tokens, ignoreEos: wire.ignore_eos };
}

import type { Engine, EngineKvEvent } from '../engine/engine.js';
import type { LlamaGpu } from '../engine/llama/llama-model-file.js';

/** Which worker an engine is for: frontends only tokenize, prefill workers only prefill. */
export type EngineRole = 'frontend' | 'prefill' | 'decode';

/** Builds the engine of one worker (or frontend) of a cluster. */
export type EngineFactory = (role: EngineRole, hooks: { onKvEvent?: (event: EngineKvEvent) => void }) => Promise<Engine>;

/** How workers run a GGUF model on llama.cpp. */
export interface LlamaClusterConfig {
  /** Path of the GGUF file. */
  modelPath: string;
  /** Name clients use in the `model` field; default the file's general.name. */
  modelName?: string;
  /** Largest context of one sequence; default the trained context, at most 2048. */
  contextTokensMax?: number;
  /** Sequences a worker's context holds (a decode worker's largest batch); prefill and decode workers must agree; default 8. */
  sequencesMax?: number;
  /** CPU threads of one evaluation; default node-llama-cpp's choice. */
  threads?: number;
  /** The llama.cpp binary: false (default) is the CPU build; 'cuda', 'vulkan', 'metal' or 'auto' need that prebuilt installed. */
  gpu?: LlamaGpu;
  /** Sequences a prefill worker keeps for its prefix cache (at most sequencesMax - 1); default 2, fewer when sequencesMax is smaller. */
  prefixCacheSequencesMax?: number;
}

/** Prefix-cache sequences of a prefill worker when the config does not say. */
const defaultPrefixCacheSequences = 2;

/**
 * Engines on llama.cpp: a vocabulary-only load for frontends, a multi-sequence context per prefill
 * worker (concurrent prefills share its batches) and per decode worker, which in
 * aggregated serving also prefills in the context it decodes in. Workers of one process share
 * the loaded weights.
 */
export function llamaEngineFactory(config: LlamaClusterConfig, mode: 'disaggregated' | 'aggregated'): EngineFactory {
  const common = {
    modelPath: config.modelPath,
    ...(config.modelName !== undefined ? { modelName: config.modelName } : {}),
    ...(config.contextTokensMax !== undefined ? { contextTokensMax: config.contextTokensMax } : {}),
    ...(config.threads !== undefined ? { threads: config.threads } : {}),
    ...(config.sequencesMax !== undefined ? { sequencesMax: config.sequencesMax } : {}),
    ...(config.gpu !== undefined ? { gpu: config.gpu } : {}),
  };
  return async (role, hooks) => {
    // Loaded on first use, so processes serving the sim engine never load node-llama-cpp.
    const { createLlamaEngine, defaultSequences } = await import('../engine/llama/llama-engine.js');
    const sequences = config.sequencesMax ?? defaultSequences;
    const prefixCacheSequencesMax = config.prefixCacheSequencesMax ?? Math.max(0, Math.min(defaultPrefixCacheSequences, sequences - 1));
    if (role === 'frontend') return createLlamaEngine({ ...common, vocabOnly: true });
    if (role === 'prefill') {
      return createLlamaEngine({ ...common, prefixCacheSequencesMax, ...(hooks.onKvEvent ? { onKvEvent: hooks.onKvEvent } : {}) });
    }
    return createLlamaEngine({ ...common, keepPrefilled: mode === 'aggregated' });
  };
}

import { ErrorCode, TandemError } from '../../errors.js';
import type { Clock } from '../../time/clock.js';
import type { EngineKvEvent } from '../engine.js';
import { SIM_KV_HEADER_BYTES } from './kv-model.js';
import { defaultSimTiming, type SimTiming } from './timing.js';

/** How to build a SimEngine. */
export interface SimEngineOptions {
  /** The only source of time; prefill and decode wait on it. */
  clock: Clock;
  /** The name clients use in the `model` field; default 'tandem-sim'. */
  modelName?: string;
  /** Stands for the weights: engines with different seeds have different identities and KV; default 0. */
  weightsSeed?: number;
  /** KV bytes per token of context, at least 8 (each entry names its chain hash and position); default 64. */
  kvBytesPerToken?: number;
  /** Largest context (prompt + generated tokens); default 65536. */
  contextTokensMax?: number;
  /** Timing model overrides, merged over `defaultSimTiming`. */
  timing?: Partial<SimTiming>;
  /** Divides every duration; `Infinity` means zero time (each step still yields); default 1. */
  speedup?: number;
  /** When set, EOS comes with probability about 1/eosEvery per sampled token; default never. */
  eosEvery?: number;
  /** Tokens per prefix-cache block; default 16. */
  prefixBlockTokens?: number;
  /** Most blocks the prefix cache remembers (0 turns it off); default 8192. */
  prefixCacheBlocksMax?: number;
  /** Called on every prefix-cache change (blocks stored or evicted), for KV-aware routing; default none. */
  onKvEvent?: (event: EngineKvEvent) => void;
}

/** Options with every default filled in and every value checked. */
export type ResolvedSimOptions = Required<Omit<SimEngineOptions, 'eosEvery' | 'timing' | 'onKvEvent'>> & {
  eosEvery: number | undefined;
  timing: SimTiming;
};

function invalid(message: string): TandemError {
  return new TandemError(ErrorCode.BadRequest, `sim engine: ${message}`);
}

function checkInteger(name: string, value: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalid(`${name} must be an integer in [${min}, ${max}], got ${value}`);
  }
}

/** Fills in defaults and rejects nonsense with a BadRequest TandemError. */
export function resolveSimOptions(options: SimEngineOptions): ResolvedSimOptions {
  const resolved: ResolvedSimOptions = {
    clock: options.clock,
    modelName: options.modelName ?? 'tandem-sim',
    weightsSeed: options.weightsSeed ?? 0,
    kvBytesPerToken: options.kvBytesPerToken ?? 64,
    contextTokensMax: options.contextTokensMax ?? 65_536,
    timing: { ...defaultSimTiming, ...options.timing },
    speedup: options.speedup ?? 1,
    eosEvery: options.eosEvery,
    prefixBlockTokens: options.prefixBlockTokens ?? 16,
    prefixCacheBlocksMax: options.prefixCacheBlocksMax ?? 8192,
  };
  if (resolved.modelName.length === 0) throw invalid('modelName must not be empty');
  checkInteger('weightsSeed', resolved.weightsSeed, 0, 0xffff_ffff);
  checkInteger('kvBytesPerToken', resolved.kvBytesPerToken, SIM_KV_HEADER_BYTES);
  checkInteger('contextTokensMax', resolved.contextTokensMax, 2);
  checkInteger('prefixBlockTokens', resolved.prefixBlockTokens, 1);
  checkInteger('prefixCacheBlocksMax', resolved.prefixCacheBlocksMax, 0);
  if (resolved.eosEvery !== undefined) checkInteger('eosEvery', resolved.eosEvery, 1);
  if (!(resolved.speedup > 0)) throw invalid(`speedup must be > 0, got ${resolved.speedup}`);
  for (const [name, value] of Object.entries(resolved.timing)) {
    if (!Number.isFinite(value) || value < 0) throw invalid(`timing.${name} must be finite and >= 0, got ${value}`);
  }
  return resolved;
}

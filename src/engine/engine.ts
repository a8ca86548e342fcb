/** Who a model is; decode refuses KV whose stamp does not match its own. */
export interface ModelInfo {
  /** The name clients use in the `model` field. */
  name: string;
  /** A hash of the weights (or their metadata): two different models never share it. */
  identity: string;
  /** The KV layout tag, e.g. 'sim-v2' or 'f16'; part of the payload stamp. */
  kvLayout: string;
  /** KV bytes per token of context. */
  kvBytesPerToken: number;
  /** Largest context (prompt + generated tokens) the model takes. */
  contextTokensMax: number;
  /** Token id that ends generation. */
  eosToken: number;
}

/** Sampling parameters; the engine must be deterministic for a given seed. */
export interface SamplingParams {
  /** 0 is greedy. */
  temperature: number;
  /** Nucleus sampling mass, (0, 1]. */
  topP: number;
  /** Seed of the sampler; requests without one get a seed from the frontend. */
  seed: number;
  /** Most tokens to generate, counting the first token. */
  maxTokens: number;
  /** Keep generating after EOS (for benchmarks). */
  ignoreEos: boolean;
}

/** A chat message before templating. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** Turns token ids into text incrementally, holding back incomplete characters. */
export interface Detokenizer {
  /** Adds tokens; returns the text they complete. */
  push(tokens: readonly number[]): string;
  /** Returns whatever is held back. */
  flush(): string;
}

/** What prefill returns: the first sampled token and the sequence's KV bytes. */
export interface PrefillResult {
  firstToken: number;
  kv: Uint8Array;
}

/** A sequence being decoded on the decode worker. */
export interface DecodeSequence {
  /** Tokens of context so far: prompt plus generated. */
  readonly contextTokens: number;
}

/**
 * A model runtime. Prefill and decode may be the same engine (aggregated) or two engines in
 * different workers (disaggregated); with the same inputs both give the same tokens.
 */
/** A change of a prefix cache, as engines report it to the router (see `KvIndexer.apply`). */
export interface EngineKvEvent {
  /** Per-engine sequence number: 0 for the first event, then +1 per event. */
  seq: number;
  /** `stored`: the blocks are now cached; `removed`: they were evicted. */
  kind: 'stored' | 'removed';
  /** The blocks concerned, by chained hash. */
  blocks: string[];
}

export interface Engine {
  readonly model: ModelInfo;
  tokenize(text: string): number[];
  createDetokenizer(): Detokenizer;
  applyChatTemplate(messages: readonly ChatMessage[]): string;
  /** KV bytes a sequence of `tokenCount` tokens occupies. */
  kvBytes(tokenCount: number): number;
  /** Computes the prompt's KV and samples the first token. */
  prefill(tokens: readonly number[], sampling: SamplingParams, signal?: AbortSignal): Promise<PrefillResult>;
  /**
   * Starts decoding from KV computed elsewhere (or locally); `firstToken` is the token prefill
   * sampled. Engines whose state loads asynchronously (llama.cpp) return a promise.
   */
  loadSequence(kv: Uint8Array, promptTokens: number, firstToken: number, sampling: SamplingParams): DecodeSequence | Promise<DecodeSequence>;
  /** Frees what prefill still holds for `kv` when it will not be loaded (e.g. generation ended on the first token). */
  discardKv?(kv: Uint8Array): void;
  /** Generates one token for each sequence, as one batch. */
  decodeStep(batch: readonly DecodeSequence[], signal?: AbortSignal): Promise<number[]>;
  /** Frees a sequence's state. */
  releaseSequence(sequence: DecodeSequence): void;
  /** Frees the engine. */
  close(): Promise<void>;
  /** The prefix-cache block hashes held now and the seq of the last KV event they include; engines without KV events omit it. */
  kvSnapshot?(): { seq: number; blocks: string[] };
  /** Blocks in the prefix cache now (what `kvSnapshot().blocks.length` would say, without the copy). */
  kvBlockCount?(): number;
}

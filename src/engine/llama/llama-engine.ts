import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { ErrorCode, TandemError } from '../../errors.js';
import { assert } from '../../util/assert.js';
import { defaultBlockTokens, type BlockHash } from '../../kv/prefix-hash.js';
import type { ChatMessage, DecodeSequence, Detokenizer, Engine, EngineKvEvent, ModelInfo, PrefillResult, SamplingParams } from '../engine.js';
import { loadLlamaModel, type LlamaGpu, type LlamaModelFacts } from './llama-model-file.js';
import { evaluateItem, pickToken } from './llama-sampler.js';
import { LlamaStateFiles } from './llama-state.js';
import { PrefillCache, type PrefillLease } from './prefill-cache.js';
import { LlamaChatTemplate, LlamaDetokenizer } from './llama-text.js';
import { SequenceSlots } from './sequence-slots.js';

/** How to load and run a GGUF model. */
export interface LlamaEngineOptions {
  /** Path of the GGUF file. */
  modelPath: string;
  /** Name clients use in the `model` field; default the file's general.name. */
  modelName?: string;
  /** Load only the vocabulary: tokenize, detokenize and template, no inference (a frontend). */
  vocabOnly?: boolean;
  /** Largest context of one sequence (prompt + generated); default the trained context, at most 2048. */
  contextTokensMax?: number;
  /**
   * Sequences the engine's context holds at once: decoding requests plus prefills in flight;
   * default 8. llama.cpp keeps one KV stream per sequence and loads a sequence's state only into a
   * context with as many streams, so prefill and decode engines must agree on it (it is part of
   * the KV layout).
   */
  sequencesMax?: number;
  /**
   * Aggregated serving: a prefill leaves its sequence in this engine's context for the
   * `loadSequence` that follows, instead of copying its state out, so prompts and decode steps
   * share one context and one batch (as they share a GPU in aggregated serving).
   */
  keepPrefilled?: boolean;
  /** CPU threads of one evaluation; default node-llama-cpp's choice. */
  threads?: number;
  /** Tokens evaluated in one llama.cpp batch; default 512. */
  batchTokens?: number;
  /** The llama.cpp binary: false (default) is the CPU build; a GPU kind needs its prebuilt package installed (README). */
  gpu?: LlamaGpu;
  /**
   * Sequences that keep their tokens after a prefill, so a later prompt with the same start
   * evaluates only the rest (the prefix cache); default 0 (none). They hold their slots, so at
   * most `sequencesMax - 1`; not with `keepPrefilled`, whose prefills stay for decoding.
   */
  prefixCacheSequencesMax?: number;
  /** Tokens per prefix-cache block, as KV events and the router count them; default 16 (`defaultBlockTokens`). */
  prefixBlockTokens?: number;
  /** Receives the prefix cache's changes (full blocks stored or removed), for KV-aware routing. */
  onKvEvent?: (event: EngineKvEvent) => void;
}

/** Counters of what a LlamaEngine's prefills have done, for tests and reports. */
export interface LlamaEngineStats {
  /** Prefills completed. */
  prefills: number;
  /** Prompt tokens of completed prefills. */
  promptTokens: number;
  /** Of those, tokens the prefix cache covered (not evaluated). */
  cachedTokens: number;
  /** Cached tokens of the latest completed prefill. */
  lastCachedTokens: number;
  /** Tokens llama.cpp evaluated for completed prefills, by its own sequences' token meters. */
  evaluatedTokens: number;
  /** Sequences the prefix cache holds. */
  prefixCacheSequences: number;
  /** Full blocks the prefix cache holds. */
  prefixCacheBlocks: number;
}

/** A sequence decoding in a llama.cpp context. */
class LlamaSequence implements DecodeSequence {
  busy = false;

  constructor(
    readonly native: LlamaContextSequence,
    /** The last sampled token, not yet evaluated. */
    public pending: number,
    public contextTokens: number,
    readonly sampling: SamplingParams,
  ) {}
}

let engineCount = 0;
/** Sequences of an engine's context when `sequencesMax` is not given. */
export const defaultSequences = 8;

/**
 * An engine on llama.cpp (node-llama-cpp, CPU build). Prefill evaluates the prompt in a sequence
 * of the engine's context (with `prefixCacheSequencesMax`, continuing a kept sequence that starts
 * like the prompt), samples the first token, and hands out the sequence's KV state as bytes;
 * decode loads such bytes into a sequence of its own context and decodes every sequence of a
 * step in one llama.cpp batch.
 */
export class LlamaEngine implements Engine {
  readonly model: ModelInfo;
  private readonly detokenizerModel: LlamaModel;
  private readonly template: LlamaChatTemplate;
  private readonly states: LlamaStateFiles;
  /** Sequences kept in place by prefill (keepPrefilled), keyed by the marker prefill returned as `kv`. */
  private readonly kept = new WeakMap<Uint8Array, { native: LlamaContextSequence; tokens: number }>();
  private readonly live = new Set<LlamaSequence>();
  private readonly prefillCache: PrefillCache | undefined;
  private readonly counters: Omit<LlamaEngineStats, 'prefixCacheSequences' | 'prefixCacheBlocks'> = {
    prefills: 0,
    promptTokens: 0,
    cachedTokens: 0,
    lastCachedTokens: 0,
    evaluatedTokens: 0,
  };
  private closed = false;

  private constructor(
    private readonly llamaModel: LlamaModel,
    readonly facts: LlamaModelFacts,
    private readonly context: LlamaContext | undefined,
    private readonly slots: SequenceSlots | undefined,
    private readonly options: LlamaEngineOptions,
    contextTokensMax: number,
  ) {
    this.detokenizerModel = llamaModel;
    this.template = new LlamaChatTemplate(llamaModel);
    this.states = new LlamaStateFiles(`e${engineCount++}`);
    const eos = llamaModel.tokens.eos;
    const streams = options.sequencesMax ?? defaultSequences;
    this.model = {
      name: options.modelName ?? facts.name,
      identity: `gguf-sha256:${facts.sha256}`,
      kvLayout: `${facts.kvLayout}/streams${streams}`,
      kvBytesPerToken: facts.kvBytesPerToken,
      contextTokensMax,
      eosToken: eos ?? -1,
    };
    const cacheSequences = options.prefixCacheSequencesMax ?? 0;
    if (slots && cacheSequences > 0) {
      this.prefillCache = new PrefillCache(slots, cacheSequences, options.prefixBlockTokens ?? defaultBlockTokens, options.onKvEvent);
    }
  }

  /** Refuses prefix-cache options the context cannot honour, before any context is made. */
  private static checkPrefixCache(options: LlamaEngineOptions): void {
    const sequences = options.sequencesMax ?? defaultSequences;
    const cacheSequences = options.prefixCacheSequencesMax ?? 0;
    if (!Number.isInteger(cacheSequences) || cacheSequences < 0 || cacheSequences > sequences - 1) {
      throw new TandemError(ErrorCode.BadRequest, `llama engine: prefixCacheSequencesMax ${cacheSequences} must be an integer from 0 to below sequencesMax (${sequences})`);
    }
    if (cacheSequences > 0 && options.keepPrefilled) throw new TandemError(ErrorCode.BadRequest, 'llama engine: prefixCacheSequencesMax needs keepPrefilled off');
    const blockTokens = options.prefixBlockTokens ?? defaultBlockTokens;
    if (!Number.isInteger(blockTokens) || blockTokens < 1) throw new TandemError(ErrorCode.BadRequest, `llama engine: prefixBlockTokens ${blockTokens} is not a positive integer`);
  }

  /** Loads the model (once per process) and, unless `vocabOnly`, creates the engine's context. */
  static async load(options: LlamaEngineOptions): Promise<LlamaEngine> {
    const vocabOnly = options.vocabOnly ?? false;
    if (!vocabOnly) LlamaEngine.checkPrefixCache(options);
    const { model, facts } = await loadLlamaModel(options.modelPath, vocabOnly, options.gpu ?? false);
    const contextTokensMax = options.contextTokensMax ?? Math.min(facts.trainContextTokens, 2048);
    if (vocabOnly) return new LlamaEngine(model, facts, undefined, undefined, options, contextTokensMax);
    const sequences = options.sequencesMax ?? defaultSequences;
    const context = await model.createContext({
      contextSize: contextTokensMax,
      sequences,
      batchSize: options.batchTokens ?? 512,
      ...(options.threads !== undefined ? { threads: options.threads } : {}),
    });
    return new LlamaEngine(model, facts, context, new SequenceSlots(context, sequences), options, context.contextSize);
  }

  /** What the engine's prefills have done so far. */
  stats(): LlamaEngineStats {
    return { ...this.counters, prefixCacheSequences: this.prefillCache?.sequenceCount ?? 0, prefixCacheBlocks: this.prefillCache?.blockCount ?? 0 };
  }

  kvBlockCount(): number {
    return this.prefillCache?.blockCount ?? 0;
  }

  /** The prefix cache's blocks now and the seq of the last KV event they include, for a router's resync. */
  kvSnapshot(): { seq: number; blocks: BlockHash[] } {
    return this.prefillCache?.snapshot() ?? { seq: -1, blocks: [] };
  }

  /** Sequences of the context free now (0 for a vocabulary-only engine). */
  get freeSequences(): number {
    return this.slots?.available ?? 0;
  }

  tokenize(text: string): number[] {
    const tokens = this.llamaModel.tokenize(text, true);
    const bos = this.llamaModel.tokens.bos;
    return bos !== null && this.llamaModel.tokens.shouldPrependBosToken && tokens[0] !== bos ? [bos, ...tokens] : tokens;
  }

  createDetokenizer(): Detokenizer {
    return new LlamaDetokenizer(this.detokenizerModel);
  }

  applyChatTemplate(messages: readonly ChatMessage[]): string {
    return this.template.apply(messages);
  }

  /**
   * An upper bound of the state bytes of a sequence of `tokenCount` tokens: K and V rows of every
   * layer plus per-cell bookkeeping, and a fixed header (test/llama-engine.test.ts measures it).
   */
  kvBytes(tokenCount: number): number {
    return this.facts.kvFixedBytes + tokenCount * this.facts.kvBytesPerToken;
  }

  async prefill(tokens: readonly number[], sampling: SamplingParams, signal?: AbortSignal): Promise<PrefillResult> {
    const slots = this.inferenceSlots();
    this.checkPrompt(tokens);
    const lease: PrefillLease = this.prefillCache
      ? await this.prefillCache.acquire(tokens, signal)
      : { native: await slots.acquire(signal), cachedTokens: 0, entry: undefined };
    const { native, cachedTokens } = lease;
    let keep = false;
    try {
      signal?.throwIfAborted();
      // llama.cpp's meter counts an evaluated token that yields logits as output, the rest as input.
      const metered = (): number => native.tokenMeter.usedInputTokens + native.tokenMeter.usedOutputTokens;
      const meteredBefore = metered();
      const rest = tokens.slice(cachedTokens);
      const items = rest.map((token, i) => (i === rest.length - 1 ? evaluateItem(token, sampling) : (token as Token)));
      const outputs = await native.controlledEvaluate(items);
      signal?.throwIfAborted();
      const firstToken = pickToken(outputs[rest.length - 1], sampling, tokens.length);
      // The state saved (and the stamp's token count) must be the prompt's, whatever was cached.
      assert(native.nextTokenIndex === tokens.length, 'a prefilled sequence holds exactly its prompt');
      const evaluatedTokens = metered() - meteredBefore;
      let kv: Uint8Array;
      if (this.options.keepPrefilled) {
        kv = new Uint8Array(0);
        this.kept.set(kv, { native, tokens: tokens.length });
        keep = true;
      } else {
        kv = await this.states.save(native);
      }
      this.counters.prefills++;
      this.counters.promptTokens += tokens.length;
      this.counters.cachedTokens += cachedTokens;
      this.counters.lastCachedTokens = cachedTokens;
      this.counters.evaluatedTokens += evaluatedTokens;
      return { firstToken, kv };
    } finally {
      if (keep) {
        // keepPrefilled never caches: the sequence goes on to decode.
        assert(lease.entry === undefined, 'a kept prefill is not a cached sequence');
      } else if (this.prefillCache) {
        this.prefillCache.release(lease);
      } else {
        slots.release(native);
      }
    }
  }

  async loadSequence(kv: Uint8Array, promptTokens: number, firstToken: number, sampling: SamplingParams): Promise<DecodeSequence> {
    const slots = this.inferenceSlots();
    if (!Number.isInteger(firstToken) || firstToken < 0 || firstToken >= this.facts.vocabSize) {
      throw new TandemError(ErrorCode.KvMismatch, `llama engine: first token ${firstToken} is not in the vocabulary`);
    }
    const kept = this.kept.get(kv);
    if (kept) {
      this.kept.delete(kv);
      assert(kept.tokens === promptTokens, 'a kept prefill is loaded with its own token count');
      return this.track(new LlamaSequence(kept.native, firstToken, promptTokens + 1, { ...sampling }));
    }
    if (kv.byteLength > this.kvBytes(promptTokens)) {
      throw new TandemError(ErrorCode.KvMismatch, `llama engine: ${kv.byteLength} state bytes exceed the ${this.kvBytes(promptTokens)} that ${promptTokens} tokens take`);
    }
    const native = await slots.acquire();
    try {
      await this.states.load(native, kv);
    } catch (error) {
      slots.release(native);
      throw new TandemError(ErrorCode.KvMismatch, `llama engine: the KV state did not load: ${String(error)}`, { cause: error });
    }
    if (native.nextTokenIndex !== promptTokens) {
      slots.release(native);
      throw new TandemError(ErrorCode.KvMismatch, `llama engine: the KV state holds ${native.nextTokenIndex} tokens, the request has ${promptTokens}`);
    }
    return this.track(new LlamaSequence(native, firstToken, promptTokens + 1, { ...sampling }));
  }

  /** Gives back the sequence a kept prefill holds when it will not be loaded. */
  discardKv(kv: Uint8Array): void {
    const kept = this.kept.get(kv);
    if (!kept) return;
    this.kept.delete(kv);
    this.slots?.release(kept.native);
  }

  async decodeStep(batch: readonly DecodeSequence[], signal?: AbortSignal): Promise<number[]> {
    this.inferenceSlots();
    const sequences = batch.map((handle) => this.own(handle));
    assert(new Set(sequences).size === sequences.length, 'a sequence appears twice in one decode batch');
    for (const sequence of sequences) {
      if (sequence.contextTokens >= this.model.contextTokensMax) throw new TandemError(ErrorCode.PromptTooLong, 'llama engine: a sequence reached contextTokensMax');
    }
    signal?.throwIfAborted();
    for (const sequence of sequences) sequence.busy = true;
    try {
      // Evaluations queued in the same tick go to llama.cpp as one batch.
      const outputs = await Promise.all(sequences.map((sequence) => sequence.native.controlledEvaluate([evaluateItem(sequence.pending, sequence.sampling)])));
      return sequences.map((sequence, i) => {
        const token = pickToken(outputs[i]![0], sequence.sampling, sequence.contextTokens);
        sequence.pending = token;
        sequence.contextTokens++;
        return token;
      });
    } finally {
      for (const sequence of sequences) sequence.busy = false;
    }
  }

  releaseSequence(sequence: DecodeSequence): void {
    if (!(sequence instanceof LlamaSequence) || !this.live.delete(sequence)) return;
    this.slots?.release(sequence.native);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.live.clear();
    this.slots?.close();
    await this.context?.dispose();
    this.states.close();
  }

  /** Where this engine's state files pass through (made on first use), for tests. */
  get stateDirectory(): string | undefined {
    return this.states.path;
  }

  private track(sequence: LlamaSequence): LlamaSequence {
    this.live.add(sequence);
    return sequence;
  }

  private inferenceSlots(): SequenceSlots {
    if (this.closed) throw new TandemError(ErrorCode.ShuttingDown, 'llama engine is closed');
    if (!this.slots) throw new TandemError(ErrorCode.Internal, 'llama engine: a vocabulary-only engine cannot run the model');
    return this.slots;
  }

  private checkPrompt(tokens: readonly number[]): void {
    if (tokens.length === 0) throw new TandemError(ErrorCode.BadRequest, 'llama engine: the prompt has no tokens');
    if (tokens.length >= this.model.contextTokensMax) {
      throw new TandemError(ErrorCode.PromptTooLong, `llama engine: ${tokens.length} prompt tokens leave no room in a context of ${this.model.contextTokensMax}`);
    }
    for (const token of tokens) {
      if (!Number.isInteger(token) || token < 0 || token >= this.facts.vocabSize) throw new TandemError(ErrorCode.BadRequest, `llama engine: token ${token} is not in the vocabulary`);
    }
  }

  private own(handle: DecodeSequence): LlamaSequence {
    assert(handle instanceof LlamaSequence && this.live.has(handle), 'decode of a sequence this engine does not hold');
    assert(!handle.busy, 'a sequence is in two decode steps at once');
    return handle;
  }
}

/** Loads a LlamaEngine. */
export function createLlamaEngine(options: LlamaEngineOptions): Promise<LlamaEngine> {
  return LlamaEngine.load(options);
}

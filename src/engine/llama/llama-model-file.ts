import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel } from 'node-llama-cpp';
import { ErrorCode, TandemError } from '../../errors.js';

/** K and V are cached as f16 (node-llama-cpp's default; tandem never changes it). */
const kvTypeBytes = 2;
/** Per cell a state file also holds the token id, its position and its sequence ids. */
const stateBytesPerTokenExtra = 16;
/** Bytes of a state file that do not grow with its tokens: file header, then per-layer type and row-size fields. */
const stateFixedBytes = 64;
const stateFixedBytesPerLayer = 64;

/** What tandem needs to know about a GGUF model beyond node-llama-cpp's handle. */
export interface LlamaModelFacts {
  /** SHA-256 of the GGUF file, hex: the model's identity in every KV stamp. */
  sha256: string;
  /** general.architecture, e.g. 'llama'. */
  architecture: string;
  /** general.name, or the file name. */
  name: string;
  layers: number;
  /** Width of one token's K row and V row (all KV heads). */
  kvWidth: number;
  /** Tokens in the vocabulary; ids are 0..vocabSize-1. */
  vocabSize: number;
  /** Context the model was trained with. */
  trainContextTokens: number;
  /** KV layout tag: engine, cache type, layers and widths; decode refuses a payload with another. */
  kvLayout: string;
  /** State-file bytes per token of context. */
  kvBytesPerToken: number;
  /** State-file bytes that do not depend on the token count. */
  kvFixedBytes: number;
}

/** Which llama.cpp binary to run on: the CPU build (default), or a GPU build the user installed. */
export type LlamaGpu = false | 'cuda' | 'vulkan' | 'metal' | 'auto';

const runtimes = new Map<LlamaGpu, Promise<Llama>>();

/**
 * The process's llama.cpp runtime: a prebuilt binary npm installed (by default the CPU one),
 * never a build or a download at run time (a GPU build is an opt-in, see the README).
 */
export function llamaRuntime(gpu: LlamaGpu): Promise<Llama> {
  let runtime = runtimes.get(gpu);
  if (!runtime) {
    runtime = getLlama({ gpu, build: 'never', logLevel: LlamaLogLevel.error, progressLogs: false });
    runtimes.set(gpu, runtime);
  }
  return runtime;
}

const loaded = new Map<string, Promise<{ model: LlamaModel; facts: LlamaModelFacts }>>();

/**
 * Loads the model at `path` once per process and mode: workers of one process share the weights.
 * `vocabOnly` loads just the tokenizer (what a frontend needs).
 */
export function loadLlamaModel(path: string, vocabOnly: boolean, gpu: LlamaGpu = false): Promise<{ model: LlamaModel; facts: LlamaModelFacts }> {
  const key = `${vocabOnly ? 'vocab' : 'full'}:${String(gpu)}:${path}`;
  let entry = loaded.get(key);
  if (!entry) {
    entry = (async () => {
      const [llama, sha256] = await Promise.all([llamaRuntime(gpu), fileSha256(path)]);
      const model = await llama.loadModel({ modelPath: path, vocabOnly });
      return { model, facts: modelFacts(model, sha256) };
    })();
    entry.catch(() => loaded.delete(key));
    loaded.set(key, entry);
  }
  return entry;
}

/** Streams the file through SHA-256. */
export async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function positiveInteger(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new TandemError(ErrorCode.BadRequest, `the model file has no usable ${what} (got ${String(value)})`);
  }
  return value;
}

function modelFacts(model: LlamaModel, sha256: string): LlamaModelFacts {
  const metadata = model.fileInfo.metadata as unknown as Record<string, Record<string, unknown> | undefined>;
  const general = metadata.general ?? {};
  const architecture = String(general.architecture ?? 'unknown');
  const arch = metadata[architecture] ?? {};
  const attention = (arch.attention ?? {}) as Record<string, unknown>;
  const layers = positiveInteger(arch.block_count, `${architecture}.block_count`);
  const width = positiveInteger(arch.embedding_length, `${architecture}.embedding_length`);
  const heads = positiveInteger(attention.head_count, `${architecture}.attention.head_count`);
  const kvHeads = attention.head_count_kv === undefined ? heads : positiveInteger(attention.head_count_kv, 'head_count_kv');
  const keyWidth = (attention.key_length === undefined ? width / heads : positiveInteger(attention.key_length, 'key_length')) * kvHeads;
  const valueWidth = (attention.value_length === undefined ? width / heads : positiveInteger(attention.value_length, 'value_length')) * kvHeads;
  return {
    sha256,
    architecture,
    name: String(general.name ?? model.filename ?? 'model'),
    layers,
    kvWidth: keyWidth,
    vocabSize: positiveInteger((metadata.tokenizer?.ggml as { tokens?: unknown[] } | undefined)?.tokens?.length ?? arch.vocab_size, 'vocabulary'),
    // A vocabulary-only load reports no trained context; the metadata has it either way.
    trainContextTokens: positiveInteger(arch.context_length ?? model.trainContextSize, `${architecture}.context_length`),
    kvLayout: `llama.cpp-state/${architecture}/f16/${layers}x${keyWidth}+${valueWidth}`,
    kvBytesPerToken: layers * (keyWidth + valueWidth) * kvTypeBytes + stateBytesPerTokenExtra,
    kvFixedBytes: stateFixedBytes + stateFixedBytesPerLayer * layers,
  };
}

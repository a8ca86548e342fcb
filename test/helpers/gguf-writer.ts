// Writes tiny llama-architecture GGUF files with seeded random f32 weights, so the llama engine
// can be tested on real inference without downloading a model. The vocabulary is byte-level
// SentencePiece: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF> (type BYTE) and one normal
// token '▁' (U+2581), which llama.cpp's SPM tokenizer maps spaces to; without it a space would be
// spelled as the three bytes of '▁' and come back from the detokenizer as '▁', not ' '.
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';

/** Shape and seed of a generated model. */
export interface TinyLlamaSpec {
  /** Seed of the weights: same seed, same file; different seed, same shapes, different weights. */
  seed: number;
  /** Transformer blocks. */
  layers: number;
  /** Hidden width (n_embd). */
  width: number;
  /** Attention heads; width must divide by it. */
  heads: number;
  /** Key/value heads (grouped-query attention); heads must divide by it. */
  kvHeads: number;
  /** Feed-forward width. */
  ffWidth: number;
  /** Trained context length written into the metadata. */
  contextTokens: number;
  /** Model name in general.name. */
  name?: string;
  /** A Jinja chat template to embed as tokenizer.chat_template; none when absent. */
  chatTemplate?: string;
  /**
   * Zero the output rows of every token but printable ASCII and '▁', so greedy output is
   * readable text, one character per token (and never EOS); default true.
   */
  printableOutput?: boolean;
}

/** A test-sized model: loads in milliseconds and decodes hundreds of tokens per second on one core. */
export const tinySpec: TinyLlamaSpec = { seed: 1, layers: 2, width: 64, heads: 4, kvHeads: 2, ffWidth: 128, contextTokens: 2048 };

/** A model big enough that a long prefill takes real time (the interference benchmark). */
export const benchSpec: TinyLlamaSpec = { seed: 7, layers: 8, width: 512, heads: 8, kvHeads: 8, ffWidth: 1376, contextTokens: 4096 };

/** A ChatML-style template, as many models carry. */
export const chatmlTemplate =
  "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

export const byteVocabSize = 3 + 256 + 1;

const gguf = { uint32: 4, int32: 5, float32: 6, string: 8, array: 9 } as const;
const alignment = 32;

type MetaValue =
  | { type: 'u32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'str'; value: string }
  | { type: 'strs'; value: string[] }
  | { type: 'f32s'; value: number[] }
  | { type: 'i32s'; value: number[] };

class ByteSink {
  private readonly chunks: Buffer[] = [];
  length = 0;
  push(buffer: Buffer): void {
    this.chunks.push(buffer);
    this.length += buffer.length;
  }
  u32(value: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(value);
    this.push(b);
  }
  i32(value: number): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(value);
    this.push(b);
  }
  u64(value: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(value));
    this.push(b);
  }
  f32(value: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(value);
    this.push(b);
  }
  str(text: string): void {
    const bytes = Buffer.from(text, 'utf8');
    this.u64(bytes.length);
    this.push(bytes);
  }
  pad(): void {
    const rest = this.length % alignment;
    if (rest !== 0) this.push(Buffer.alloc(alignment - rest));
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

function writeMeta(sink: ByteSink, key: string, meta: MetaValue): void {
  sink.str(key);
  switch (meta.type) {
    case 'u32':
      sink.u32(gguf.uint32);
      sink.u32(meta.value);
      return;
    case 'f32':
      sink.u32(gguf.float32);
      sink.f32(meta.value);
      return;
    case 'str':
      sink.u32(gguf.string);
      sink.str(meta.value);
      return;
    case 'strs':
      sink.u32(gguf.array);
      sink.u32(gguf.string);
      sink.u64(meta.value.length);
      for (const text of meta.value) sink.str(text);
      return;
    case 'f32s':
      sink.u32(gguf.array);
      sink.u32(gguf.float32);
      sink.u64(meta.value.length);
      for (const value of meta.value) sink.f32(value);
      return;
    case 'i32s':
      sink.u32(gguf.array);
      sink.u32(gguf.int32);
      sink.u64(meta.value.length);
      for (const value of meta.value) sink.i32(value);
  }
}

/** mulberry32: a small seeded PRNG, enough for test weights. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface TensorPlan {
  name: string;
  /** ggml order: dims[0] is the innermost (input) dimension. */
  dims: number[];
  /** Uniform weights in [-scale, scale]; 0 means all ones (norm weights). */
  scale: number;
}

function tensorPlans(spec: TinyLlamaSpec): TensorPlan[] {
  const { width, ffWidth, heads, kvHeads } = spec;
  const kvWidth = (width / heads) * kvHeads;
  const proj = (fanIn: number): number => Math.sqrt(3 / fanIn);
  const plans: TensorPlan[] = [
    { name: 'token_embd.weight', dims: [width, byteVocabSize], scale: 1 },
    { name: 'output_norm.weight', dims: [width], scale: 0 },
    // Output weights several times larger than a unit-variance projection spread the logits, so
    // the greedy argmax has clear margins over the runner-up (float noise of batching cannot flip it).
    { name: 'output.weight', dims: [width, byteVocabSize], scale: 4 * proj(width) },
  ];
  for (let i = 0; i < spec.layers; i++) {
    plans.push(
      { name: `blk.${i}.attn_norm.weight`, dims: [width], scale: 0 },
      { name: `blk.${i}.attn_q.weight`, dims: [width, width], scale: proj(width) },
      { name: `blk.${i}.attn_k.weight`, dims: [width, kvWidth], scale: proj(width) },
      { name: `blk.${i}.attn_v.weight`, dims: [width, kvWidth], scale: proj(width) },
      { name: `blk.${i}.attn_output.weight`, dims: [width, width], scale: proj(width) },
      { name: `blk.${i}.ffn_norm.weight`, dims: [width], scale: 0 },
      { name: `blk.${i}.ffn_gate.weight`, dims: [width, ffWidth], scale: proj(width) },
      { name: `blk.${i}.ffn_up.weight`, dims: [width, ffWidth], scale: proj(width) },
      { name: `blk.${i}.ffn_down.weight`, dims: [ffWidth, width], scale: proj(ffWidth) },
    );
  }
  return plans;
}

function vocabulary(): { tokens: string[]; scores: number[]; types: number[] } {
  const tokens = ['<unk>', '<s>', '</s>'];
  const types = [2, 3, 3]; // UNKNOWN, CONTROL, CONTROL
  for (let byte = 0; byte < 256; byte++) {
    tokens.push(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6); // BYTE
  }
  tokens.push('\u2581');
  types.push(1); // NORMAL
  return { tokens, scores: tokens.map(() => 0), types };
}

function header(spec: TinyLlamaSpec, plans: TensorPlan[]): Buffer {
  const vocab = vocabulary();
  const meta: Array<[string, MetaValue]> = [
    ['general.architecture', { type: 'str', value: 'llama' }],
    ['general.name', { type: 'str', value: spec.name ?? `tiny-llama-${spec.layers}x${spec.width}-seed${spec.seed}` }],
    ['general.file_type', { type: 'u32', value: 0 }],
    ['llama.context_length', { type: 'u32', value: spec.contextTokens }],
    ['llama.embedding_length', { type: 'u32', value: spec.width }],
    ['llama.block_count', { type: 'u32', value: spec.layers }],
    ['llama.feed_forward_length', { type: 'u32', value: spec.ffWidth }],
    ['llama.rope.dimension_count', { type: 'u32', value: spec.width / spec.heads }],
    ['llama.attention.head_count', { type: 'u32', value: spec.heads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: spec.kvHeads }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: 1e-5 }],
    ['llama.vocab_size', { type: 'u32', value: byteVocabSize }],
    ['tokenizer.ggml.model', { type: 'str', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'strs', value: vocab.tokens }],
    ['tokenizer.ggml.scores', { type: 'f32s', value: vocab.scores }],
    ['tokenizer.ggml.token_type', { type: 'i32s', value: vocab.types }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: 0 }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: 1 }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: 2 }],
  ];
  if (spec.chatTemplate !== undefined) meta.push(['tokenizer.chat_template', { type: 'str', value: spec.chatTemplate }]);
  const sink = new ByteSink();
  sink.push(Buffer.from('GGUF', 'latin1'));
  sink.u32(3);
  sink.u64(plans.length);
  sink.u64(meta.length);
  for (const [key, value] of meta) writeMeta(sink, key, value);
  let offset = 0;
  for (const plan of plans) {
    sink.str(plan.name);
    sink.u32(plan.dims.length);
    for (const dim of plan.dims) sink.u64(dim);
    sink.u32(0); // GGML_TYPE_F32
    sink.u64(offset);
    offset += Math.ceil((elements(plan) * 4) / alignment) * alignment;
  }
  sink.pad();
  return sink.concat();
}

/** Printable ASCII byte tokens and '▁' (token ids: 3 + byte, and the last one). */
function printable(token: number): boolean {
  return (token >= 3 + 0x20 && token <= 3 + 0x7e) || token === byteVocabSize - 1;
}

function elements(plan: TensorPlan): number {
  return plan.dims.reduce((product, dim) => product * dim, 1);
}

/** Writes the model described by `spec` to `path`. */
export async function writeTinyLlama(path: string, spec: TinyLlamaSpec): Promise<void> {
  if (spec.width % spec.heads !== 0 || spec.heads % spec.kvHeads !== 0) throw new Error('width must divide by heads, heads by kvHeads');
  const plans = tensorPlans(spec);
  const out = createWriteStream(path);
  const write = async (buffer: Buffer): Promise<void> => {
    if (!out.write(buffer)) await once(out, 'drain');
  };
  await write(header(spec, plans));
  const random = prng(spec.seed);
  for (const plan of plans) {
    const count = elements(plan);
    const bytes = Math.ceil((count * 4) / alignment) * alignment;
    const data = Buffer.alloc(bytes);
    const mute = plan.name === 'output.weight' && (spec.printableOutput ?? true);
    for (let i = 0; i < count; i++) {
      const value = plan.scale === 0 ? 1 : (random() * 2 - 1) * plan.scale;
      data.writeFloatLE(mute && !printable(Math.floor(i / spec.width)) ? 0 : value, i * 4);
    }
    await write(data);
  }
  out.end();
  await once(out, 'finish');
}

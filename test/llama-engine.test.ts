import { existsSync, readdirSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { DecodeSequence, SamplingParams } from '../src/engine/engine.js';
import { LlamaEngine } from '../src/engine/llama/llama-engine.js';
import { decodeKvPayload, encodeKvPayload, runAggregated } from '../src/internal.js';
import { promptOfLength, writeTinyModels, type TinyModels } from './helpers/llama-fixture.js';

const greedy: SamplingParams = { temperature: 0, topP: 1, seed: 0, maxTokens: 24, ignoreEos: true };

describe('llama engine', () => {
  let models: TinyModels;
  let aggregated: LlamaEngine;
  let prefill: LlamaEngine;
  let decode: LlamaEngine;

  beforeAll(async () => {
    models = await writeTinyModels();
    aggregated = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1, keepPrefilled: true });
    prefill = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1 });
    decode = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 4, threads: 1 });
  }, 60_000);

  afterAll(async () => {
    for (const engine of [aggregated, prefill, decode]) await engine?.close();
    models?.remove();
  });

  /** Prefill on one engine, the KV through a stamped payload, then decode on another. */
  async function loadDisaggregated(tokens: number[], sampling: SamplingParams): Promise<{ first: number; sequence: DecodeSequence }> {
    const { firstToken, kv } = await prefill.prefill(tokens, sampling);
    const { identity, kvLayout } = prefill.model;
    const bytes = encodeKvPayload({ modelIdentity: identity, kvLayout, tokenCount: tokens.length, firstToken, kv });
    const payload = decodeKvPayload(bytes, { modelIdentity: decode.model.identity, kvLayout: decode.model.kvLayout, tokenCount: tokens.length });
    return { first: payload.firstToken, sequence: await decode.loadSequence(payload.kv, payload.tokenCount, payload.firstToken, sampling) };
  }

  it('round-trips text through its byte vocabulary, streaming multi-byte characters whole', () => {
    const text = 'héllo wörld — 日本 ok';
    const tokens = aggregated.tokenize(text);
    expect(tokens[0]).toBe(1); // <s>
    const detokenizer = aggregated.createDetokenizer();
    let streamed = '';
    for (const token of tokens.slice(1)) {
      const piece = detokenizer.push([token]);
      expect(piece).not.toContain('\uFFFD');
      streamed += piece;
    }
    expect(streamed + detokenizer.flush()).toBe(text);
  });

  it("applies the model's chat template, and a plain one when the model has none", async () => {
    const messages = [{ role: 'user', content: 'hi there' }];
    expect(aggregated.applyChatTemplate(messages)).toBe('<|user|>\nhi there\n<|assistant|>\n');
    const plain = await LlamaEngine.load({ modelPath: models.plain, vocabOnly: true });
    expect(plain.applyChatTemplate(messages)).toBe('user: hi there\nassistant:');
    await expect(plain.prefill([1, 2], greedy)).rejects.toThrow(/vocabulary-only/);
  });

  it('stamps the model file hash, so same shapes with other weights get another identity', async () => {
    const other = await LlamaEngine.load({ modelPath: models.other, vocabOnly: true, sequencesMax: 4 });
    expect(aggregated.model.identity).toMatch(/^gguf-sha256:[0-9a-f]{64}$/);
    expect(other.model.kvLayout).toBe(aggregated.model.kvLayout);
    expect(other.model.name).toBe(aggregated.model.name);
    expect(other.model.identity).not.toBe(aggregated.model.identity);
  });

  it('bounds the state bytes from above with kvBytes, within its fixed overhead', async () => {
    for (const length of [1, 2, 17, 300, 1100]) {
      const tokens = aggregated.tokenize(promptOfLength(length)).slice(0, length);
      const { kv } = await prefill.prefill(tokens, greedy);
      expect(kv.byteLength, `${tokens.length} tokens`).toBeLessThanOrEqual(prefill.kvBytes(tokens.length));
      expect(prefill.kvBytes(tokens.length) - kv.byteLength, `${tokens.length} tokens`).toBeLessThanOrEqual(prefill.facts.kvFixedBytes);
    }
  });

  it('decodes greedily from transferred KV exactly as one context does, prompts of 3 to 1100 tokens, batched', async () => {
    const lengths = [3, 40, 300, 1100];
    const prompts = lengths.map((length, i) => aggregated.tokenize(promptOfLength(length, i)));
    const reference: number[][] = [];
    for (const tokens of prompts) reference.push(await runAggregated(aggregated, tokens, greedy));
    // All four decode together, one llama.cpp batch per step.
    const loaded = await Promise.all(prompts.map((tokens) => loadDisaggregated(tokens, greedy)));
    const outputs = loaded.map(({ first }) => [first]);
    for (let step = 1; step < greedy.maxTokens; step++) {
      const tokens = await decode.decodeStep(loaded.map(({ sequence }) => sequence));
      tokens.forEach((token, i) => outputs[i]!.push(token));
    }
    for (const { sequence } of loaded) decode.releaseSequence(sequence);
    for (const [i, output] of outputs.entries()) expect(output, `prompt of ${prompts[i]!.length} tokens`).toEqual(reference[i]);
    expect(new Set(reference.map((tokens) => tokens.join(','))).size).toBe(lengths.length);
  }, 60_000);

  it('gives the same seeded samples at temperature > 0 whether disaggregated or not', async () => {
    const sampling: SamplingParams = { temperature: 0.8, topP: 0.95, seed: 42, maxTokens: 16, ignoreEos: true };
    const tokens = aggregated.tokenize(promptOfLength(60));
    const reference = await runAggregated(aggregated, tokens, sampling);
    const { first, sequence } = await loadDisaggregated(tokens, sampling);
    const output = [first];
    while (output.length < sampling.maxTokens) output.push((await decode.decodeStep([sequence]))[0]!);
    decode.releaseSequence(sequence);
    expect(output).toEqual(reference);
    expect(await runAggregated(aggregated, tokens, { ...sampling, seed: 43 })).not.toEqual(reference);
  });

  it('refuses state whose token count differs from the request, and gives every sequence back', async () => {
    const tokens = aggregated.tokenize(promptOfLength(20));
    const { firstToken, kv } = await prefill.prefill(tokens, greedy);
    await expect(decode.loadSequence(kv, tokens.length + 1, firstToken, greedy)).rejects.toThrow(/holds \d+ tokens/);
    await expect(decode.loadSequence(kv, tokens.length - 5, firstToken, greedy)).rejects.toThrow(/exceed/);
    // Every slot is free again: four sequences load at once.
    const four = await Promise.all([0, 1, 2, 3].map(() => decode.loadSequence(kv, tokens.length, firstToken, greedy)));
    for (const sequence of four) decode.releaseSequence(sequence);
  });

  it('gives a kept prefill back when generation ends on the first token', async () => {
    const tokens = aggregated.tokenize(promptOfLength(30));
    for (let i = 0; i < 6; i++) expect(await runAggregated(aggregated, tokens, { ...greedy, maxTokens: 1 })).toHaveLength(1);
    await vi.waitFor(() => expect(aggregated.freeSequences).toBe(4));
  });

  it('leaves no state file behind, in a private directory it removes on close', async () => {
    const directory = prefill.stateDirectory!;
    expect(directory).toMatch(new RegExp(`tandem-kv-${process.pid}-`));
    expect(statSync(directory).mode & 0o777).toBe(0o700);
    expect(readdirSync(directory)).toEqual([]);
    const spare = await LlamaEngine.load({ modelPath: models.model, sequencesMax: 2, threads: 1 });
    const { kv } = await spare.prefill(spare.tokenize('a prompt'), greedy);
    expect(kv.length).toBeGreaterThan(0);
    const spareDirectory = spare.stateDirectory!;
    expect(existsSync(spareDirectory)).toBe(true);
    await spare.close();
    expect(existsSync(spareDirectory)).toBe(false);
  });
});

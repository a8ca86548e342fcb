import fc from 'fast-check';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, SimEngine, silentLogger, type Cluster, type SamplingParams, type SimEngineConfig } from '../src/index.js';
import { realClock, runAggregated } from '../src/internal.js';
import { leftovers, waitForIdle } from './helpers/cluster-idle.js';

const model = 'tandem-sim';

function clientOf(cluster: Cluster): OpenAI {
  return new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 20_000 });
}

/** A streamed completion's text, finish reason and usage (the usage chunk is asked for). */
async function streamCompletion(client: OpenAI, params: Omit<OpenAI.CompletionCreateParamsStreaming, 'stream' | 'model'>) {
  const stream = await client.completions.create({ ...params, model, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finishReason: string | null = null;
  let usage: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finishReason = choice.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, finishReason, usage };
}

/** UTF-8 bytes of a string, as the sim tokenizer counts them (a lone surrogate is U+FFFD, three bytes). */
function byteLength(text: string): number {
  return new TextEncoder().encode(text).length;
}

describe('Frontend (OpenAI API over a disaggregated cluster)', () => {
  let cluster: Cluster;
  let client: OpenAI;

  beforeAll(async () => {
    cluster = await createCluster({ port: 0, log: silentLogger, seed: 1234, engine: { speedup: Infinity }, prefillWorkers: 2, decodeWorkers: 2 });
    client = clientOf(cluster);
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('answers a completion with the text, finish reason length and exact usage', async () => {
    const prompt = 'The quick brown fox';
    const completion = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
    expect(completion.object).toBe('text_completion');
    expect(completion.model).toBe(model);
    expect(completion.choices).toHaveLength(1);
    const [choice] = completion.choices;
    expect(choice!.finish_reason).toBe('length');
    // The sim tokenizer is byte-level and its tokens are printable ASCII, one character each.
    expect(choice!.text).toHaveLength(24);
    expect(completion.usage).toEqual({ prompt_tokens: byteLength(prompt), completion_tokens: 24, total_tokens: byteLength(prompt) + 24 });
  });

  it('streams the same completion text as the non-streamed answer, with a usage chunk when asked', async () => {
    const prompt = 'Once upon a time, in a land far away,';
    const whole = await client.completions.create({ model, prompt, max_tokens: 40, temperature: 0, seed: 7 });
    const streamed = await streamCompletion(client, { prompt, max_tokens: 40, temperature: 0, seed: 7 });
    expect(streamed.text).toBe(whole.choices[0]!.text);
    expect(streamed.finishReason).toBe('length');
    expect(streamed.usage).toEqual({ prompt_tokens: byteLength(prompt), completion_tokens: 40, total_tokens: byteLength(prompt) + 40 });
  });

  it('sends no usage chunk when the stream does not ask for one', async () => {
    const stream = await client.completions.create({ model, prompt: 'no usage please', max_tokens: 5, temperature: 0, stream: true });
    const chunks: OpenAI.Completion[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(0);
    expect(chunks.every((chunk) => chunk.usage == null)).toBe(true);
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe('length');
  });

  it('answers a chat completion and streams the same message, role first and usage last', async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Say something about disaggregated serving.' },
    ];
    // The prompt the sim engine sees is its chat template applied to the messages.
    const reference = new SimEngine({ clock: realClock, speedup: Infinity });
    const promptTokens = reference.tokenize(reference.applyChatTemplate(messages.map((m) => ({ role: m.role, content: String(m.content) })))).length;

    const whole = await client.chat.completions.create({ model, messages, max_tokens: 30, temperature: 0 });
    expect(whole.object).toBe('chat.completion');
    expect(whole.choices[0]!.message.role).toBe('assistant');
    expect(whole.choices[0]!.finish_reason).toBe('length');
    expect(whole.choices[0]!.message.content).toHaveLength(30);
    expect(whole.usage).toEqual({ prompt_tokens: promptTokens, completion_tokens: 30, total_tokens: promptTokens + 30 });

    const stream = await client.chat.completions.create({ model, messages, max_tokens: 30, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks[0]!.object).toBe('chat.completion.chunk');
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const text = chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe(whole.choices[0]!.message.content);
    expect(chunks.find((chunk) => chunk.choices[0]?.finish_reason)?.choices[0]!.finish_reason).toBe('length');
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(whole.usage);
  });

  it('uses max_completion_tokens for chat', async () => {
    const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 9, temperature: 0 });
    expect(chat.usage!.completion_tokens).toBe(9);
    expect(chat.choices[0]!.finish_reason).toBe('length');
  });

  it('gives the same output for the same seed at temperature > 0, and another for another seed', async () => {
    const ask = (seed: number) => client.completions.create({ model, prompt: 'Sample me', max_tokens: 32, temperature: 0.8, seed });
    const [a, b, c] = await Promise.all([ask(11), ask(11), ask(12)]);
    expect(a.choices[0]!.text).toBe(b.choices[0]!.text);
    expect(c.choices[0]!.text).not.toBe(a.choices[0]!.text);
  });

  it('cuts the text at a stop sequence and finishes with stop, streamed or not', async () => {
    const prompt = 'Stop sequences, please';
    const full = (await client.completions.create({ model, prompt, max_tokens: 60, temperature: 0 })).choices[0]!.text;
    const stop = full.slice(20, 23);
    const cut = full.slice(0, full.indexOf(stop));

    const whole = await client.completions.create({ model, prompt, max_tokens: 60, temperature: 0, stop });
    expect(whole.choices[0]!.text).toBe(cut);
    expect(whole.choices[0]!.finish_reason).toBe('stop');
    // Tokens generated up to and including the stop sequence are counted; nothing past it.
    expect(whole.usage!.completion_tokens).toBeGreaterThanOrEqual(cut.length + stop.length);
    expect(whole.usage!.completion_tokens).toBeLessThan(60);

    const streamed = await streamCompletion(client, { prompt, max_tokens: 60, temperature: 0, stop: [stop, '\u0000never'] });
    expect(streamed.text).toBe(cut);
    expect(streamed.finishReason).toBe('stop');
    expect(streamed.usage!.completion_tokens).toBe(whole.usage!.completion_tokens);
  });

  it('stops at whichever of several stop sequences comes first', async () => {
    const prompt = 'Two stops';
    const full = (await client.completions.create({ model, prompt, max_tokens: 60, temperature: 0 })).choices[0]!.text;
    const early = full.slice(10, 12);
    const late = full.slice(40, 43);
    const completion = await client.completions.create({ model, prompt, max_tokens: 60, temperature: 0, stop: [late, early] });
    const firstAt = Math.min(full.indexOf(early), full.indexOf(late));
    expect(completion.choices[0]!.text).toBe(full.slice(0, firstAt));
    expect(completion.choices[0]!.finish_reason).toBe('stop');
  });

  it('lists the served model', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([model]);
    expect(models.data[0]!.object).toBe('model');
  });

  it('reports health with the workers it sees', async () => {
    const response = await fetch(`${cluster.url}/health`);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'ok', model, workers: { prefill: 2, decode: 2 } });
  });

  it('completes many concurrent requests, each with the text it gets alone', async () => {
    const prompts = Array.from({ length: 24 }, (_, i) => `concurrent request number ${i}: ${'ab'.repeat(i)}`);
    const alone = [];
    for (const prompt of prompts.slice(0, 6)) alone.push((await client.completions.create({ model, prompt, max_tokens: 20, temperature: 0 })).choices[0]!.text);
    const together = await Promise.all(
      prompts.map(async (prompt, i) =>
        i % 2 === 0
          ? (await client.completions.create({ model, prompt, max_tokens: 20, temperature: 0 })).choices[0]!.text
          : (await streamCompletion(client, { prompt, max_tokens: 20, temperature: 0 })).text,
      ),
    );
    expect(together).toHaveLength(prompts.length);
    for (const text of together) expect(text).toHaveLength(20);
    // Continuous batching must not change a sequence's tokens.
    expect(together.slice(0, 6)).toEqual(alone);
  });

  it('spreads requests over every worker and gives every page and room back', async () => {
    await waitForIdle(cluster);
    const stats = cluster.stats();
    for (const prefill of stats.prefill) expect(prefill.retired.released).toBeGreaterThan(0);
    for (const decode of stats.decode) {
      expect(decode.finished.done).toBeGreaterThan(0);
      expect(decode.finished.failed).toBe(0);
      expect(decode.pool.free).toBe(decode.pool.capacity);
      expect(decode.pool.quarantined).toBe(0);
      expect(decode.fencedRooms).toBe(0);
      expect(decode.strayEvents).toBe(0);
    }
    for (const prefill of stats.prefill) expect(prefill.rooms).toBe(0);
    expect(leftovers(cluster)).toEqual([]);
  });
});

describe('disaggregated serving (sim engine)', () => {
  // EOS comes now and then, so some requests finish with 'stop' on EOS and some on 'length'.
  const engine: SimEngineConfig = { speedup: Infinity, eosEvery: 24 };
  let disaggregated: Cluster;
  let aggregated: Cluster;

  beforeAll(async () => {
    [disaggregated, aggregated] = await Promise.all([
      createCluster({ port: 0, log: silentLogger, seed: 99, engine, prefillWorkers: 2, decodeWorkers: 2 }),
      createCluster({ port: 0, log: silentLogger, seed: 99, engine, mode: 'aggregated', decodeWorkers: 1 }),
    ]);
  });

  afterAll(async () => {
    await disaggregated?.close();
    await aggregated?.close();
  });

  const prompts = fc.oneof(
    fc.string({ minLength: 1, maxLength: 200 }),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 200 }),
    fc.string({ unit: 'grapheme', minLength: 1, maxLength: 200 }),
    // Lone surrogates reach the server through JSON escapes and become U+FFFD when tokenized.
    fc.string({ unit: fc.oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c))), minLength: 1, maxLength: 50 }),
  );
  const samplings = fc.record({
    temperature: fc.oneof(fc.constant(0), fc.double({ min: 0.05, max: 2, noNaN: true })),
    topP: fc.oneof(fc.constant(1), fc.double({ min: 0.05, max: 1, noNaN: true })),
    seed: fc.nat({ max: 0xffff_ffff }),
    maxTokens: fc.integer({ min: 1, max: 48 }),
  });

  it('streams exactly what the same engine generates aggregated, for any prompt and sampling', async () => {
    const client = clientOf(disaggregated);
    const reference = new SimEngine({ clock: realClock, ...engine });
    const detokenize = (tokens: readonly number[]): string => {
      const detokenizer = reference.createDetokenizer();
      return detokenizer.push(tokens) + detokenizer.flush();
    };
    // fast-check prints the seed and counterexample when this fails; paste them into a regression test below.
    await fc.assert(
      fc.asyncProperty(prompts, samplings, async (prompt, sampling) => {
        const params: SamplingParams = { ...sampling, ignoreEos: false };
        const tokens = await runAggregated(reference, reference.tokenize(prompt), params);
        const endsOnEos = tokens.at(-1) === reference.model.eosToken;
        const streamed = await streamCompletion(client, { prompt, max_tokens: sampling.maxTokens, temperature: sampling.temperature, top_p: sampling.topP, seed: sampling.seed });
        expect(streamed.text).toBe(detokenize(endsOnEos ? tokens.slice(0, -1) : tokens));
        expect(streamed.finishReason).toBe(endsOnEos ? 'stop' : 'length');
        const promptTokens = byteLength(prompt);
        expect(streamed.usage).toEqual({ prompt_tokens: promptTokens, completion_tokens: tokens.length, total_tokens: promptTokens + tokens.length });
      }),
      { numRuns: 40 },
    );
    await waitForIdle(disaggregated);
  });

  it('answers like an aggregated cluster, completions and chat', async () => {
    const [split, whole] = [clientOf(disaggregated), clientOf(aggregated)];
    const cases = ['a', 'Hello, world', 'ünïcödé ✓ 🚀', 'x'.repeat(300), 'The KV cache travels over the fabric.'];
    for (const [i, prompt] of cases.entries()) {
      const params = { model, prompt, max_tokens: 40, temperature: i % 2 === 0 ? 0 : 0.7, seed: 1000 + i };
      const [a, b] = await Promise.all([split.completions.create(params), whole.completions.create(params)]);
      expect(a.choices[0]!.text).toBe(b.choices[0]!.text);
      expect(a.choices[0]!.finish_reason).toBe(b.choices[0]!.finish_reason);
      expect(a.usage).toEqual(b.usage);

      const chat = { model, messages: [{ role: 'user' as const, content: prompt }], max_tokens: 40, temperature: 0 };
      const [c, d] = await Promise.all([split.chat.completions.create(chat), whole.chat.completions.create(chat)]);
      expect(c.choices[0]!.message.content).toBe(d.choices[0]!.message.content);
      expect(c.usage).toEqual(d.usage);
    }
    await waitForIdle(disaggregated);
    await waitForIdle(aggregated);
    expect(aggregated.stats().prefill).toEqual([]);
    expect(aggregated.stats().decode[0]!.finished.done).toBe(cases.length * 2);
  });
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { runAggregated } from '../src/engine/aggregated.js';
import type { DecodeSequence, SamplingParams } from '../src/engine/engine.js';
import { createSimEngine, type SimEngine, type SimEngineOptions } from '../src/engine/sim/sim-engine.js';
import { decodeStepMs, defaultSimTiming, prefillMs } from '../src/engine/sim/timing.js';
import { ErrorCode, TandemError } from '../src/errors.js';
import { VirtualClock } from '../src/time/virtual-clock.js';

const greedy: SamplingParams = { temperature: 0, topP: 1, seed: 0, maxTokens: 16, ignoreEos: false };

function engineWith(options: Partial<SimEngineOptions> = {}): { engine: SimEngine; clock: VirtualClock } {
  const clock = new VirtualClock();
  return { engine: createSimEngine({ clock, speedup: Infinity, ...options }), clock };
}

/** Lets pending promise callbacks run; the test may use real timers, src/ may not. */
function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Settles `promise` by firing the virtual clock's timers one at a time, as the simulator would. */
async function drive<T>(clock: VirtualClock, promise: Promise<T>): Promise<T> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  await flush();
  while (!settled) {
    if (!clock.step()) throw new Error('no timer pending and the promise has not settled');
    await flush();
  }
  return promise;
}

/** Virtual milliseconds `work` takes. */
async function elapsedMs(clock: VirtualClock, work: Promise<unknown>): Promise<number> {
  const startMs = clock.now();
  await drive(clock, work);
  return clock.now() - startMs;
}

async function decodeTokens(clock: VirtualClock, engine: SimEngine, sequence: DecodeSequence, steps: number): Promise<number[]> {
  const tokens: number[] = [];
  for (let i = 0; i < steps; i++) tokens.push(...(await drive(clock, engine.decodeStep([sequence]))));
  return tokens;
}

const tokenArray = (minLength = 1, maxLength = 80): fc.Arbitrary<number[]> =>
  fc.array(fc.integer({ min: 0, max: 255 }), { minLength, maxLength });

describe('sim-engine tokenizer', () => {
  const { engine } = engineWith();

  it('tokenizes text as UTF-8 bytes with no BOS', () => {
    expect(engine.tokenize('hé')).toEqual([0x68, 0xc3, 0xa9]);
    expect(engine.model.eosToken).toBe(256);
  });

  it('round-trips any string however its bytes are split across pushes', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary' }), fc.array(fc.nat(), { maxLength: 8 }), (text, cuts) => {
        const tokens = engine.tokenize(text);
        const points = [...new Set(cuts.map((cut) => cut % (tokens.length + 1)))].sort((a, b) => a - b);
        const detokenizer = engine.createDetokenizer();
        let out = '';
        let from = 0;
        for (const point of [...points, tokens.length]) {
          out += detokenizer.push(tokens.slice(from, point));
          from = point;
        }
        expect(out + detokenizer.flush()).toBe(text);
      }),
    );
  });

  it('holds back an incomplete multi-byte character and never emits EOS', () => {
    const detokenizer = engine.createDetokenizer();
    const euro = engine.tokenize('€');
    expect(detokenizer.push([0x61, euro[0]!, engine.model.eosToken])).toBe('a');
    expect(detokenizer.push(euro.slice(1))).toBe('€');
    expect(detokenizer.push([engine.model.eosToken])).toBe('');
    expect(detokenizer.flush()).toBe('');
  });

  it('applies the documented chat template', () => {
    const text = engine.applyChatTemplate([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
    ]);
    expect(text).toBe('<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n');
  });
});

describe('sim-engine KV', () => {
  it('is deterministic, kvBytes long, and causal: equal prefixes give equal KV prefixes', async () => {
    const { engine, clock } = engineWith({ kvBytesPerToken: 24 });
    await fc.assert(
      fc.asyncProperty(tokenArray(0, 40), tokenArray(), tokenArray(), async (prefix, tailA, tailB) => {
        const a = await drive(clock, engine.prefill([...prefix, ...tailA], greedy));
        const again = await drive(clock, engine.prefill([...prefix, ...tailA], greedy));
        const b = await drive(clock, engine.prefill([...prefix, ...tailB], greedy));
        expect(a.kv.length).toBe(engine.kvBytes(prefix.length + tailA.length));
        expect(again).toEqual(a);
        const prefixBytes = engine.kvBytes(prefix.length);
        expect(b.kv.subarray(0, prefixBytes)).toEqual(a.kv.subarray(0, prefixBytes));
        if (tailA[0] !== tailB[0]) {
          const next = engine.kvBytes(prefix.length + 1);
          expect(b.kv.subarray(prefixBytes, next)).not.toEqual(a.kv.subarray(prefixBytes, next));
        }
      }),
    );
  });

  it('gives different weights seeds different identities and different KV', async () => {
    const one = engineWith({ weightsSeed: 1 });
    const two = engineWith({ weightsSeed: 2 });
    expect(one.engine.model.identity).not.toBe(two.engine.model.identity);
    expect(one.engine.model.identity).toBe(engineWith({ weightsSeed: 1 }).engine.model.identity);
    expect(engineWith({ kvBytesPerToken: 32 }).engine.model.identity).not.toBe(engineWith().engine.model.identity);
    expect(engineWith({ modelName: 'other' }).engine.model.identity).not.toBe(engineWith().engine.model.identity);
    expect(one.engine.model.kvLayout).toBe('sim-v2');
    const prompt = one.engine.tokenize('the same prompt');
    const kvOne = (await drive(one.clock, one.engine.prefill(prompt, greedy))).kv;
    const kvTwo = (await drive(two.clock, two.engine.prefill(prompt, greedy))).kv;
    expect(kvOne).not.toEqual(kvTwo);
    expect(kvOne.subarray(0, 64)).not.toEqual(kvTwo.subarray(0, 64));
  });

  it('decodes different tokens when one KV byte is corrupted', async () => {
    const { engine, clock } = engineWith({ kvBytesPerToken: 16 });
    await fc.assert(
      fc.asyncProperty(tokenArray(), fc.nat(), fc.integer({ min: 1, max: 255 }), async (prompt, at, flip) => {
        const { firstToken, kv } = await drive(clock, engine.prefill(prompt, greedy));
        const corrupted = kv.slice();
        const index = at % kv.length;
        corrupted[index] = kv[index]! ^ flip;
        const good = engine.loadSequence(kv, prompt.length, firstToken, greedy);
        const bad = engine.loadSequence(corrupted, prompt.length, firstToken, greedy);
        expect(await decodeTokens(clock, engine, bad, 16)).not.toEqual(await decodeTokens(clock, engine, good, 16));
        engine.releaseSequence(good);
        engine.releaseSequence(bad);
      }),
    );
  });

  it('decodes different tokens from misplaced KV pages', async () => {
    const { engine, clock } = engineWith();
    const prompt = engine.tokenize('a prompt long enough to span two pages of KV');
    const { firstToken, kv } = await drive(clock, engine.prefill(prompt, greedy));
    const pageBytes = engine.kvBytes(8);
    const swapped = kv.slice();
    swapped.set(kv.subarray(0, pageBytes), pageBytes);
    swapped.set(kv.subarray(pageBytes, 2 * pageBytes), 0);
    const good = engine.loadSequence(kv, prompt.length, firstToken, greedy);
    const bad = engine.loadSequence(swapped, prompt.length, firstToken, greedy);
    expect(await decodeTokens(clock, engine, bad, 16)).not.toEqual(await decodeTokens(clock, engine, good, 16));
  });

  it('refuses KV whose length does not match the prompt', async () => {
    const { engine, clock } = engineWith();
    const { firstToken, kv } = await drive(clock, engine.prefill([1, 2, 3], greedy));
    const load = (): DecodeSequence => engine.loadSequence(kv.subarray(1), 3, firstToken, greedy);
    expect(load).toThrow(TandemError);
    expect(load).toThrow(expect.objectContaining({ code: ErrorCode.KvMismatch }));
  });
});

describe('sim-engine decoding', () => {
  const samplingArb = fc.record({
    temperature: fc.constantFrom(0, 0.7, 1.3),
    topP: fc.constantFrom(1, 0.9),
    seed: fc.nat(),
    maxTokens: fc.integer({ min: 1, max: 12 }),
    ignoreEos: fc.boolean(),
  });

  it('gives a sequence the same tokens alone as in any batch, and equal to a disaggregated run', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(tokenArray(), samplingArb), { minLength: 1, maxLength: 5 }), async (requests) => {
        const { engine, clock } = engineWith({ eosEvery: 8 });
        const alone: number[][] = [];
        for (const [prompt, sampling] of requests) alone.push(await drive(clock, runAggregated(engine, prompt, sampling)));
        // Disaggregated: prefill on one engine, decode on another, all sequences in one batch.
        const decode = engineWith({ eosEvery: 8 });
        const outputs: number[][] = [];
        const running: { sequence: DecodeSequence; output: number[]; sampling: SamplingParams }[] = [];
        for (const [prompt, sampling] of requests) {
          const { firstToken, kv } = await drive(clock, engine.prefill(prompt, sampling));
          const output = [firstToken];
          outputs.push(output);
          const ended = firstToken === 256 && !sampling.ignoreEos;
          if (ended || output.length >= sampling.maxTokens) continue;
          running.push({ sequence: decode.engine.loadSequence(kv, prompt.length, firstToken, sampling), output, sampling });
        }
        while (running.length > 0) {
          const tokens = await drive(decode.clock, decode.engine.decodeStep(running.map((entry) => entry.sequence)));
          for (let i = running.length - 1; i >= 0; i--) {
            const entry = running[i]!;
            entry.output.push(tokens[i]!);
            if ((tokens[i] === 256 && !entry.sampling.ignoreEos) || entry.output.length >= entry.sampling.maxTokens) {
              decode.engine.releaseSequence(entry.sequence);
              running.splice(i, 1);
            }
          }
        }
        expect(outputs).toEqual(alone);
        expect(decode.engine.stats().activeSequences).toBe(0);
      }),
    );
  });

  it('generates printable ASCII, and EOS only as the last token and never when ignored', async () => {
    const { engine, clock } = engineWith({ eosEvery: 5 });
    let endedOnEos = 0;
    for (let seed = 0; seed < 40; seed++) {
      const sampling = { ...greedy, temperature: 1, seed, maxTokens: 30 };
      const tokens = await drive(clock, runAggregated(engine, [1, 2, 3], sampling));
      const body = tokens.at(-1) === 256 ? tokens.slice(0, -1) : tokens;
      if (body.length < tokens.length) endedOnEos++;
      for (const token of body) expect(token >= 32 && token <= 126).toBe(true);
      const ignoring = await drive(clock, runAggregated(engine, [1, 2, 3], { ...sampling, ignoreEos: true }));
      expect(ignoring).toHaveLength(30);
      expect(ignoring).not.toContain(256);
    }
    expect(endedOnEos).toBeGreaterThan(30);
  });

  it('never ends on EOS by default, only at maxTokens', async () => {
    const { engine, clock } = engineWith();
    const tokens = await drive(clock, runAggregated(engine, engine.tokenize('hello'), { ...greedy, maxTokens: 200 }));
    expect(tokens).toHaveLength(200);
    expect(tokens).not.toContain(256);
  });

  it('continues a run exactly when prompt + the tokens generated so far are prefilled again (migration)', async () => {
    const { engine, clock } = engineWith({ eosEvery: 50 });
    await fc.assert(
      fc.asyncProperty(tokenArray(), samplingArb, fc.nat(), async (prompt, sampling, cut) => {
        const full = await drive(clock, runAggregated(engine, prompt, { ...sampling, maxTokens: 24 }));
        const k = cut % full.length;
        const resumed = await drive(clock, runAggregated(engine, [...prompt, ...full.slice(0, k)], { ...sampling, maxTokens: 24 - k }));
        expect([...full.slice(0, k), ...resumed]).toEqual(full);
      }),
    );
  });

  it('ignores the seed at temperature 0 and depends on it above', async () => {
    const { engine, clock } = engineWith();
    const prompt = engine.tokenize('Tell me a story');
    const run = (sampling: Partial<SamplingParams>): Promise<number[]> =>
      drive(clock, runAggregated(engine, prompt, { ...greedy, maxTokens: 32, ...sampling }));
    expect(await run({ temperature: 0, seed: 1 })).toEqual(await run({ temperature: 0, seed: 2, topP: 0.5 }));
    expect(await run({ temperature: 0.8, seed: 1 })).toEqual(await run({ temperature: 0.8, seed: 1 }));
    expect(await run({ temperature: 0.8, seed: 1 })).not.toEqual(await run({ temperature: 0.8, seed: 2 }));
    expect(await run({ temperature: 0.8, seed: 1 })).not.toEqual(await run({ temperature: 0, seed: 1 }));
  });
});

describe('sim-engine timing', () => {
  it('takes exactly the polynomial time for a prefill of n tokens', async () => {
    for (const n of [1, 100, 4000]) {
      const { engine, clock } = engineWith({ speedup: 1 });
      const prompt = Array.from({ length: n }, (_, i) => (i * 7 + n) % 256);
      const ms = await elapsedMs(clock, engine.prefill(prompt, greedy));
      expect(ms).toBe(prefillMs(defaultSimTiming, n));
      expect(ms).toBeCloseTo(5 + 0.05 * n + 1e-6 * n * n, 9);
    }
  });

  it('costs less for a cached prefix and computes the same KV', async () => {
    const { engine, clock } = engineWith({ speedup: 1 });
    const shared = Array.from({ length: 70 }, (_, i) => i);
    await drive(clock, engine.prefill([...shared, 1, 2, 3], greedy));
    const second = [...shared, 9, 9];
    let result: unknown;
    const ms = await elapsedMs(clock, engine.prefill(second, greedy).then((r) => (result = r)));
    expect(engine.stats().lastCachedTokens).toBe(64);
    expect(ms).toBeCloseTo(prefillMs(defaultSimTiming, second.length - 64), 9);
    const fresh = engineWith();
    expect(result).toEqual(await drive(fresh.clock, fresh.engine.prefill(second, greedy)));
    // A fully cached prompt still computes its last token.
    const full = Array.from({ length: 32 }, (_, i) => i);
    await drive(clock, engine.prefill(full, greedy));
    expect(await elapsedMs(clock, engine.prefill(full, greedy))).toBeCloseTo(prefillMs(defaultSimTiming, 16), 9);
  });

  it('times a decode step by the KV the whole batch holds', async () => {
    const { engine, clock } = engineWith({ speedup: 1 });
    const load = async (n: number): Promise<DecodeSequence> => {
      const prompt = Array.from({ length: n }, (_, i) => i % 256);
      const { firstToken, kv } = await drive(clock, engine.prefill(prompt, greedy));
      return engine.loadSequence(kv, n, firstToken, greedy);
    };
    const a = await load(100);
    const b = await load(3000);
    expect(a.contextTokens).toBe(101);
    expect(await elapsedMs(clock, engine.decodeStep([a, b]))).toBeCloseTo(decodeStepMs(defaultSimTiming, 101 + 3001), 9);
    expect(b.contextTokens).toBe(3002);
    expect(await elapsedMs(clock, engine.decodeStep([a]))).toBeCloseTo(decodeStepMs(defaultSimTiming, 102), 9);
  });

  it('divides every duration by the speedup', async () => {
    const { engine, clock } = engineWith({ speedup: 4 });
    const prompt = Array.from({ length: 500 }, (_, i) => i % 256);
    const { firstToken, kv } = await drive(clock, engine.prefill(prompt, greedy));
    expect(clock.now()).toBe(prefillMs(defaultSimTiming, 500) / 4);
    const sequence = engine.loadSequence(kv, 500, firstToken, greedy);
    expect(await elapsedMs(clock, engine.prefill([7, ...prompt], greedy))).toBeCloseTo(prefillMs(defaultSimTiming, 501) / 4, 9);
    expect(await elapsedMs(clock, engine.decodeStep([sequence]))).toBeCloseTo(decodeStepMs(defaultSimTiming, 501) / 4, 9);
  });

  it('takes zero virtual time at infinite speedup but still yields through the clock', async () => {
    const { engine, clock } = engineWith({ speedup: Infinity });
    let done = false;
    const pending = engine.prefill([1, 2, 3], greedy).then(() => (done = true));
    await flush();
    expect(done).toBe(false);
    expect(clock.pendingCount).toBe(1);
    expect(clock.nextAtMs()).toBe(0);
    expect(await elapsedMs(clock, pending)).toBe(0);
    expect(done).toBe(true);
  });

  it('rejects a prefill with the signal reason when aborted, before or while it runs or waits', async () => {
    const { engine, clock } = engineWith({ speedup: 1 });
    const reason = new Error('client went away');
    const before = new AbortController();
    before.abort(reason);
    await expect(engine.prefill([1, 2], greedy, before.signal)).rejects.toBe(reason);

    const running = new AbortController();
    const first = engine.prefill([1, 2, 3], greedy, running.signal);
    const queued = new AbortController();
    const second = engine.prefill([4, 5, 6], greedy, queued.signal);
    const third = engine.prefill([7, 8, 9], greedy);
    await flush();
    running.abort(reason);
    queued.abort(reason);
    await expect(first).rejects.toBe(reason);
    await expect(second).rejects.toBe(reason);
    expect(await elapsedMs(clock, third)).toBeCloseTo(prefillMs(defaultSimTiming, 3), 9);
    expect(engine.stats().prefills).toBe(1);
  });

  it('leaves a sequence untouched when its decode step is aborted', async () => {
    const { engine, clock } = engineWith({ speedup: 1 });
    const { firstToken, kv } = await drive(clock, engine.prefill([1, 2, 3], greedy));
    const sequence = engine.loadSequence(kv, 3, firstToken, greedy);
    const twin = engine.loadSequence(kv, 3, firstToken, greedy);
    const controller = new AbortController();
    const step = engine.decodeStep([sequence], controller.signal);
    await flush();
    controller.abort(new Error('cancel'));
    await expect(step).rejects.toThrow('cancel');
    expect(sequence.contextTokens).toBe(4);
    expect(await decodeTokens(clock, engine, sequence, 4)).toEqual(await decodeTokens(clock, engine, twin, 4));
  });
});

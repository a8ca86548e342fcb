import { describe, expect, it } from 'vitest';
import { DecodeBatcher } from '../src/actors/decode-batcher.js';
import { ErrorCode, TandemError } from '../src/errors.js';
import { silentLogger } from '../src/log.js';
import { SimEngine } from '../src/engine/sim/sim-engine.js';
import { realClock } from '../src/time/real-clock.js';
import type { SamplingParams } from '../src/engine/engine.js';

const sampling: SamplingParams = { temperature: 0, topP: 1, seed: 0, maxTokens: 1000, ignoreEos: true };

async function loaded(engine: SimEngine, prompt: string) {
  const tokens = engine.tokenize(prompt);
  const { firstToken, kv } = await engine.prefill(tokens, sampling);
  return engine.loadSequence(kv, tokens.length, firstToken, sampling);
}

describe('decode batcher', () => {
  it('decodes joined sequences together and gives each the tokens it would get alone', async () => {
    const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const alone = new DecodeBatcher(engine, 8, silentLogger);
    const solo: number[] = [];
    await alone.run(await loaded(engine, 'first prompt'), (t) => solo.push(t) >= 10);

    const batched = new DecodeBatcher(engine, 8, silentLogger);
    const a: number[] = [];
    const b: number[] = [];
    await Promise.all([
      batched.run(await loaded(engine, 'first prompt'), (t) => a.push(t) >= 10),
      batched.run(await loaded(engine, 'second prompt'), (t) => b.push(t) >= 5),
    ]);
    expect(a).toEqual(solo);
    expect(b).toHaveLength(5);
    expect(engine.stats().decodeSteps).toBe(10 + 10);
  });

  it('keeps at most batchMax sequences active and admits waiting ones in order', async () => {
    const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const batcher = new DecodeBatcher(engine, 2, silentLogger);
    const order: string[] = [];
    let maxActive = 0;
    const runs = ['a', 'b', 'c', 'd'].map(async (name) =>
      batcher.run(await loaded(engine, name), () => {
        maxActive = Math.max(maxActive, batcher.size.active);
        order.push(name);
        return order.filter((n) => n === name).length >= 3;
      }),
    );
    await Promise.all(runs);
    expect(maxActive).toBe(2);
    expect(order.indexOf('c')).toBeGreaterThan(order.lastIndexOf('a'));
    expect(order.indexOf('d')).toBeGreaterThan(order.lastIndexOf('b'));
    expect(batcher.size).toEqual({ active: 0, waiting: 0 });
  });

  it('drops an aborted sequence before the next step and rejects with the reason', async () => {
    const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const batcher = new DecodeBatcher(engine, 8, silentLogger);
    const controller = new AbortController();
    const tokens: number[] = [];
    const reason = new TandemError(ErrorCode.Cancelled, 'client left');
    const run = batcher.run(
      await loaded(engine, 'abort me'),
      (t) => {
        tokens.push(t);
        if (tokens.length === 3) controller.abort(reason);
        return false;
      },
      controller.signal,
    );
    await expect(run).rejects.toBe(reason);
    expect(tokens).toHaveLength(3);
  });

  it('fails members and refuses new ones once stopped', async () => {
    const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
    const batcher = new DecodeBatcher(engine, 8, silentLogger);
    const sequence = await loaded(engine, 'never ends');
    const run = batcher.run(sequence, () => false);
    batcher.stop();
    await expect(run).rejects.toMatchObject({ code: ErrorCode.ShuttingDown });
    await expect(batcher.run(sequence, () => true)).rejects.toMatchObject({ code: ErrorCode.ShuttingDown });
  });
});

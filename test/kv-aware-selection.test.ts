import { describe, expect, it } from 'vitest';
import { seededRandom } from '../src/random/random.js';
import { selectKvAwareWorker, workerCosts } from '../src/routing/kv-aware-selection.js';

const candidates = [
  { worker: 'a', activeBlocks: 0 },
  { worker: 'b', activeBlocks: 3 },
  { worker: 'c', activeBlocks: 10 },
];

describe('kv-aware-selection', () => {
  it('prices a worker as overlapWeight × uncached prefill blocks + active decode blocks', () => {
    const matched = new Map([['b', 6], ['c', 99]]);
    expect(workerCosts(candidates, 8, matched, 2)).toEqual([
      { worker: 'a', cost: 16 },
      { worker: 'b', cost: 4 + 3 },
      { worker: 'c', cost: 0 + 10 },
    ]);
  });

  it('picks the lowest cost, and no worker when there are none', () => {
    const random = seededRandom(1);
    expect(selectKvAwareWorker(candidates, 8, new Map([['b', 6]]), random, { overlapWeight: 2 })).toBe('b');
    expect(selectKvAwareWorker(candidates, 8, new Map(), random)).toBe('a');
    expect(selectKvAwareWorker([], 8, new Map(), random)).toBeUndefined();
  });

  it('breaks ties with the seeded random, reproducibly and across all tied workers', () => {
    const tied = ['x', 'y', 'z'].map((worker) => ({ worker, activeBlocks: 1 }));
    const pick = (seed: number) => {
      const random = seededRandom(seed);
      return Array.from({ length: 60 }, () => selectKvAwareWorker(tied, 4, new Map(), random));
    };
    expect(pick(7)).toEqual(pick(7));
    expect(new Set(pick(7))).toEqual(new Set(['x', 'y', 'z']));
  });

  it('with a temperature, favours cheap workers but sometimes picks dearer ones', () => {
    const random = seededRandom(3);
    const counts = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const worker = selectKvAwareWorker(candidates, 8, new Map(), random, { temperature: 0.5 })!;
      counts.set(worker, (counts.get(worker) ?? 0) + 1);
    }
    // Costs 8, 11, 18 normalise to 0, 0.3, 1: weights 1, e^-0.6, e^-2.
    expect(counts.get('a')!).toBeGreaterThan(counts.get('b')!);
    expect(counts.get('b')!).toBeGreaterThan(counts.get('c')!);
    expect(counts.get('c')!).toBeGreaterThan(0);
  });
});

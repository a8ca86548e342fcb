import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { blockHashes, type BlockHash } from '../src/kv/prefix-hash.js';
import { KvIndexer, type KvEvent, type KvEventOutcome } from '../src/routing/kv-indexer.js';

const blockTokens = 4;
/** Three prompts sharing prefixes to different depths, so matches stop at different blocks. */
const prompts = [
  [...Array(16).keys()],
  [...Array(8).keys(), 90, 91, 92, 93, 94, 95, 96, 97],
  [50, 51, 52, 53, ...Array(12).keys()],
].map((tokens) => blockHashes(tokens, blockTokens));
const pool: BlockHash[] = [...new Set(prompts.flat())];

function stored(worker: string, seq: number, hashes: readonly BlockHash[]): KvEvent {
  return { worker, seq, kind: 'stored', blocks: hashes.map((hash) => ({ hash })) };
}

describe('KvIndexer', () => {
  it('matches the longest prefix each worker holds in a row', () => {
    const index = new KvIndexer();
    const [p0] = prompts;
    expect(index.apply(stored('a', 0, p0!))).toBe('applied');
    expect(index.apply(stored('b', 0, p0!.slice(0, 2)))).toBe('applied');
    expect(index.apply(stored('c', 0, p0!.slice(1)))).toBe('applied');
    expect(index.match(p0!)).toEqual(new Map([['a', 4], ['b', 2]]));
    expect(index.match(prompts[1]!)).toEqual(new Map([['a', 2], ['b', 2]]));
    expect(index.match(prompts[2]!)).toEqual(new Map());
    expect(index.match([])).toEqual(new Map());
  });

  it('forgets removed blocks and everything on clear', () => {
    const index = new KvIndexer();
    const [p0] = prompts;
    index.apply(stored('a', 0, p0!));
    index.apply({ worker: 'a', seq: 1, kind: 'removed', blocks: [{ hash: p0![2]! }] });
    expect(index.match(p0!)).toEqual(new Map([['a', 2]]));
    index.apply({ worker: 'a', seq: 2, kind: 'cleared', blocks: [] });
    expect(index.match(p0!)).toEqual(new Map());
    expect(index.stats()).toMatchObject({ workers: 1, entries: 0, uniqueBlocks: 0 });
  });

  it('reports a sequence gap, ignores stale events, and is repaired by resync', () => {
    const gaps: [string, number, number][] = [];
    const index = new KvIndexer({ onResyncNeeded: (worker, expected, received) => gaps.push([worker, expected, received]) });
    const [p0] = prompts;
    index.apply(stored('a', 0, p0!.slice(0, 1)));
    expect(index.apply(stored('a', 3, p0!.slice(1, 2)))).toBe('gap');
    expect(gaps).toEqual([['a', 1, 3]]);
    expect(index.needsResync('a')).toBe(true);
    expect(index.apply(stored('a', 2, p0!.slice(2, 3)))).toBe('stale');
    expect(index.resync('a', p0!, 7)).toBe(true);
    expect(index.needsResync('a')).toBe(false);
    expect(index.match(p0!)).toEqual(new Map([['a', 4]]));
    expect(index.apply(stored('a', 8, []))).toBe('applied');
    // A worker first heard of mid-sequence (the router started late) needs a resync too.
    expect(index.apply(stored('b', 5, []))).toBe('gap');
    expect(index.stats().gaps).toBe(2);
  });

  it('drops a dead worker, and a restarted one starts again at seq 0', () => {
    const index = new KvIndexer();
    const [p0] = prompts;
    index.apply(stored('a', 0, p0!));
    index.apply(stored('a', 1, []));
    index.removeWorker('a');
    expect(index.match(p0!)).toEqual(new Map());
    expect(index.workerIds()).toEqual([]);
    expect(index.apply(stored('a', 0, p0!.slice(0, 1)))).toBe('applied');
  });

  it('starts a worker afresh when a higher incarnation reports, and ignores the old one’s late news', () => {
    const indexer = new KvIndexer();
    const [a, b] = [prompts[0]!, prompts[2]!];
    expect(indexer.apply({ ...stored('w', 0, a), epoch: 1 })).toBe('applied');
    expect(indexer.apply({ ...stored('w', 1, b), epoch: 1 })).toBe('applied');
    // The worker restarted with an empty cache: epoch 2 begins at seq 0 and replaces everything.
    expect(indexer.apply({ ...stored('w', 0, b.slice(0, 1)), epoch: 2 })).toBe('applied');
    expect(indexer.blocksOf('w')).toEqual(b.slice(0, 1));
    expect(indexer.match(a).get('w') ?? 0).toBe(0);
    // A late event and a late snapshot of epoch 1 change nothing.
    expect(indexer.apply({ ...stored('w', 2, a), epoch: 1 })).toBe('stale');
    expect(indexer.resync('w', a, 5, 1)).toBe(true);
    expect(indexer.blocksOf('w')).toEqual(b.slice(0, 1));
    // Epoch 2 goes on from seq 1; a first event lost after a restart shows up as a gap.
    expect(indexer.apply({ ...stored('w', 1, b.slice(1)), epoch: 2 })).toBe('applied');
    expect(indexer.apply({ ...stored('w', 1, a), epoch: 3 })).toBe('gap');
    expect(indexer.needsResync('w')).toBe(true);
    expect(indexer.resync('w', a, 1, 3)).toBe(true);
    expect(indexer.needsResync('w')).toBe(false);
    expect(new Set(indexer.blocksOf('w'))).toEqual(new Set(a));
  });

  it('forgets a worker’s oldest-stored block at blocksPerWorkerMax and refuses workers past workersMax', () => {
    const index = new KvIndexer({ blocksPerWorkerMax: 2, workersMax: 1 });
    const [p0] = prompts;
    index.apply(stored('a', 0, p0!.slice(0, 3)));
    expect(index.blocksOf('a')).toEqual(p0!.slice(1, 3));
    expect(index.stats()).toMatchObject({ entries: 2, evictedBlocks: 1 });
    // Re-storing a block makes it the newest, so the other one goes next.
    index.apply(stored('a', 1, [p0![1]!, p0![3]!]));
    expect(index.blocksOf('a')).toEqual([p0![1], p0![3]]);
    expect(index.apply(stored('b', 0, p0!))).toBe('refused');
    expect(index.resync('b', p0!, 0)).toBe(false);
    expect(index.stats()).toMatchObject({ workers: 1, refusedEvents: 2 });
  });
});

// ---- Property: the indexer against a Map<worker, Set<hash>> model under random events. ----

type Op =
  | { kind: 'event'; worker: number; seqStep: number; event: 'stored' | 'removed' | 'cleared'; blocks: number[] }
  | { kind: 'resync'; worker: number; seqStep: number; blocks: number[] }
  | { kind: 'removeWorker'; worker: number };

const workerCount = 4;
const blockIndexes = fc.array(fc.integer({ min: 0, max: pool.length - 1 }), { maxLength: 8 });
// Mostly the next seq; sometimes a duplicate (0), a late one (-1) or a gap (2, 3).
const seqStep = fc.oneof({ weight: 8, arbitrary: fc.constant(1) }, { weight: 2, arbitrary: fc.integer({ min: -1, max: 3 }) });
const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('event' as const), worker: fc.nat(workerCount - 1), seqStep, event: fc.constantFrom('stored' as const, 'stored' as const, 'removed' as const, 'cleared' as const), blocks: blockIndexes }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('resync' as const), worker: fc.nat(workerCount - 1), seqStep: fc.nat(2), blocks: blockIndexes }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('removeWorker' as const), worker: fc.nat(workerCount - 1) }) },
);

interface ModelWorker {
  blocks: Set<BlockHash>;
  lastSeq: number;
  needsResync: boolean;
}

/** The obvious implementation: per-worker sets in insertion order, scanned on every match. */
class ModelIndex {
  readonly workers = new Map<string, ModelWorker>();
  constructor(readonly blocksMax: number, readonly workersMax: number) {}

  private entry(worker: string): ModelWorker | undefined {
    let entry = this.workers.get(worker);
    if (entry === undefined && this.workers.size < this.workersMax) {
      entry = { blocks: new Set(), lastSeq: -1, needsResync: false };
      this.workers.set(worker, entry);
    }
    return entry;
  }

  private store(entry: ModelWorker, hash: BlockHash): void {
    entry.blocks.delete(hash);
    if (entry.blocks.size >= this.blocksMax) entry.blocks.delete(entry.blocks.values().next().value!);
    entry.blocks.add(hash);
  }

  apply(event: KvEvent): KvEventOutcome {
    const entry = this.entry(event.worker);
    if (entry === undefined) return 'refused';
    if (event.seq <= entry.lastSeq) return 'stale';
    const gap = event.seq !== entry.lastSeq + 1;
    entry.lastSeq = event.seq;
    if (event.kind === 'cleared') entry.blocks.clear();
    for (const block of event.kind === 'cleared' ? [] : event.blocks) {
      if (event.kind === 'stored') this.store(entry, block.hash);
      else entry.blocks.delete(block.hash);
    }
    if (gap) entry.needsResync = true;
    return gap ? 'gap' : 'applied';
  }

  resync(worker: string, blocks: readonly BlockHash[], seq: number): boolean {
    const entry = this.entry(worker);
    if (entry === undefined) return false;
    entry.blocks.clear();
    for (const hash of blocks) this.store(entry, hash);
    entry.lastSeq = seq;
    entry.needsResync = false;
    return true;
  }

  match(hashes: readonly BlockHash[]): Map<string, number> {
    const matched = new Map<string, number>();
    for (const [worker, entry] of this.workers) {
      let count = 0;
      while (count < hashes.length && entry.blocks.has(hashes[count]!)) count++;
      if (count > 0) matched.set(worker, count);
    }
    return matched;
  }
}

function runOps(ops: readonly Op[], blocksMax: number, workersMax: number): void {
  let reportedGaps = 0;
  const index = new KvIndexer({ blocksPerWorkerMax: blocksMax, workersMax, onResyncNeeded: () => reportedGaps++ });
  const model = new ModelIndex(blocksMax, workersMax);
  let modelGaps = 0;
  for (const op of ops) {
    const worker = `w${op.worker}`;
    const lastSeq = model.workers.get(worker)?.lastSeq ?? -1;
    if (op.kind === 'event') {
      const event: KvEvent = { worker, seq: Math.max(0, lastSeq + op.seqStep), kind: op.event, blocks: op.blocks.map((i) => ({ hash: pool[i]! })) };
      const outcome = model.apply(event);
      if (outcome === 'gap') modelGaps++;
      expect(index.apply(event)).toBe(outcome);
    } else if (op.kind === 'resync') {
      const blocks = op.blocks.map((i) => pool[i]!);
      const seq = lastSeq + op.seqStep;
      expect(index.resync(worker, blocks, seq)).toBe(model.resync(worker, blocks, seq));
    } else {
      model.workers.delete(worker);
      index.removeWorker(worker);
    }
    for (const prompt of prompts) expect(index.match(prompt)).toEqual(model.match(prompt));
    expect(index.workerIds().sort()).toEqual([...model.workers.keys()].sort());
    let entries = 0;
    for (const [id, entry] of model.workers) {
      expect(index.blocksOf(id)).toEqual([...entry.blocks]);
      expect(index.needsResync(id)).toBe(entry.needsResync);
      entries += entry.blocks.size;
    }
    expect(index.stats().entries).toBe(entries);
    expect(index.stats().uniqueBlocks).toBe(new Set([...model.workers.values()].flatMap((e) => [...e.blocks])).size);
  }
  expect(reportedGaps).toBe(modelGaps);
  expect(index.stats().gaps).toBe(modelGaps);
}

describe('KvIndexer property', () => {
  // fast-check prints the seed and counterexample path when this fails; paste them into a regression test below.
  it('agrees with a per-worker-set model under random events, gaps, removals, clears, resyncs and deaths', () => {
    fc.assert(
      fc.property(
        fc.array(opArbitrary, { maxLength: 60 }),
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: workerCount }),
        (ops, blocksMax, workersMax) => runOps(ops, blocksMax, workersMax),
      ),
      { numRuns: 300 },
    );
  });

  it('holds for a hand-picked sequence: gap, death mid-gap, restart, resync', () => {
    runOps(
      [
        { kind: 'event', worker: 0, seqStep: 1, event: 'stored', blocks: [0, 1, 2, 3] },
        { kind: 'event', worker: 1, seqStep: 1, event: 'stored', blocks: [0, 1, 4] },
        { kind: 'event', worker: 0, seqStep: 3, event: 'removed', blocks: [1] },
        { kind: 'removeWorker', worker: 0 },
        { kind: 'event', worker: 0, seqStep: 1, event: 'stored', blocks: [0] },
        { kind: 'resync', worker: 1, seqStep: 2, blocks: [0, 1, 2] },
        { kind: 'event', worker: 1, seqStep: 1, event: 'cleared', blocks: [] },
      ],
      3,
      2,
    );
  });
});

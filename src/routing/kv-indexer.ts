import type { BlockHash } from '../kv/prefix-hash.js';
import { defaultLimits } from '../limits.js';
import { assert } from '../util/assert.js';

/** One block named in a KV event. */
export interface KvEventBlock {
  /** The block's chained hash (see `blockHashes`). */
  hash: BlockHash;
  /** The block's parent; informational, since a chained hash already names its whole prefix. */
  parent?: BlockHash;
}

/** What a worker publishes when its prefix cache changes. */
export interface KvEvent {
  /** The publishing worker's id. */
  worker: string;
  /** Per-worker sequence number: 0 for a worker's first event, then +1 per event. */
  seq: number;
  /**
   * The worker's incarnation. A restarted worker (same id, higher epoch) starts with an empty
   * cache and seq 0: its first event replaces what the index held, and late events of the old
   * incarnation are stale. Absent: incarnations are not told apart.
   */
  epoch?: number;
  /** `stored`: the blocks are now cached; `removed`: they were evicted; `cleared`: the whole cache was dropped. */
  kind: 'stored' | 'removed' | 'cleared';
  /** The blocks concerned; ignored for `cleared`. */
  blocks: readonly KvEventBlock[];
}

/**
 * What `apply` did with an event. `gap`: the event was applied but an earlier one was missed, so
 * the worker's entries may be wrong until `resync`; `stale`: a duplicate or late event at or below
 * the last seen sequence number, ignored; `refused`: a new worker past `workersMax`, ignored.
 */
export type KvEventOutcome = 'applied' | 'gap' | 'stale' | 'refused';

/** Options of a KvIndexer. */
export interface KvIndexerOptions {
  /** Blocks tracked per worker; storing past it forgets that worker's oldest-stored block. */
  blocksPerWorkerMax?: number;
  /** Workers tracked; events and resyncs for further workers are refused and counted. */
  workersMax?: number;
  /** Called when a worker's sequence has a gap: ask it for its blocks and call `resync`. */
  onResyncNeeded?: (worker: string, expectedSeq: number, receivedSeq: number) => void;
}

/** Counters of a KvIndexer, for metrics and tests. */
export interface KvIndexerStats {
  /** Workers tracked. */
  workers: number;
  /** (worker, block) entries tracked. */
  entries: number;
  /** Distinct block hashes tracked. */
  uniqueBlocks: number;
  /** Sequence gaps seen since creation. */
  gaps: number;
  /** Entries forgotten because a worker hit `blocksPerWorkerMax`. */
  evictedBlocks: number;
  /** Events and resyncs refused because of `workersMax`. */
  refusedEvents: number;
}

interface WorkerEntry {
  /** Held blocks, oldest-stored first (Map keeps insertion order; re-storing moves a block last). */
  blocks: Map<BlockHash, true>;
  lastSeq: number;
  needsResync: boolean;
  /** The incarnation the entries belong to, when events carry one. */
  epoch: number | undefined;
}

/**
 * The router's index of which workers hold which prefix blocks, fed by their KV events.
 *
 * Block hashes are chained, so a hash already names its whole prefix: the radix tree over hash
 * chains collapses to a map from hash to holding workers, with a node's edge to its parent implied
 * by the chaining. A worker matches a prompt for as many leading blocks as it holds in a row; a
 * worker whose oldest block was evicted while it keeps the children simply matches less, which
 * only costs a cache hit, never correctness.
 */
export class KvIndexer {
  private readonly holders = new Map<BlockHash, Set<string>>();
  private readonly workers = new Map<string, WorkerEntry>();
  private readonly blocksPerWorkerMax: number;
  private readonly workersMax: number;
  private readonly onResyncNeeded: KvIndexerOptions['onResyncNeeded'];
  private entryCount = 0;
  private gaps = 0;
  private evictedBlocks = 0;
  private refusedEvents = 0;

  constructor(options: KvIndexerOptions = {}) {
    this.blocksPerWorkerMax = options.blocksPerWorkerMax ?? defaultLimits.kvIndexBlocksPerWorkerMax;
    this.workersMax = options.workersMax ?? defaultLimits.kvIndexWorkersMax;
    this.onResyncNeeded = options.onResyncNeeded;
    assert(this.blocksPerWorkerMax >= 1, 'blocksPerWorkerMax must be at least 1');
    assert(this.workersMax >= 1, 'workersMax must be at least 1');
  }

  /**
   * Applies one event. A worker's first event must have seq 0 (so a restarted worker, after
   * `removeWorker`, starts clean); any other jump is a gap, reported to `onResyncNeeded`. The
   * event is still applied after a gap, since most of it is probably right.
   */
  apply(event: KvEvent): KvEventOutcome {
    assert(Number.isInteger(event.seq) && event.seq >= 0, `bad KV event seq ${event.seq}`);
    const entry = this.entryOf(event.worker, event.epoch);
    if (entry === undefined) return 'refused';
    if (!this.sameIncarnation(event.worker, entry, event.epoch)) return 'stale';
    if (event.seq <= entry.lastSeq) return 'stale';
    const expectedSeq = entry.lastSeq + 1;
    const gap = event.seq !== expectedSeq;
    entry.lastSeq = event.seq;
    switch (event.kind) {
      case 'stored':
        for (const block of event.blocks) this.store(event.worker, entry, block.hash);
        break;
      case 'removed':
        for (const block of event.blocks) this.forget(event.worker, entry, block.hash);
        break;
      case 'cleared':
        this.forgetAll(event.worker, entry);
        break;
    }
    if (!gap) return 'applied';
    this.gaps++;
    entry.needsResync = true;
    this.onResyncNeeded?.(event.worker, expectedSeq, event.seq);
    return 'gap';
  }

  /**
   * Replaces a worker's entries with `blocks`, its full cache as of event `seq` (the last event
   * the snapshot includes); later events continue from `seq + 1`. Returns false when refused
   * because of `workersMax`.
   */
  resync(worker: string, blocks: readonly BlockHash[], seq: number, epoch?: number): boolean {
    assert(Number.isInteger(seq) && seq >= -1, `bad resync seq ${seq}`);
    const entry = this.entryOf(worker, epoch);
    if (entry === undefined) return false;
    // A snapshot from an incarnation older than the one indexed says nothing about today's cache.
    if (!this.sameIncarnation(worker, entry, epoch)) return true;
    this.forgetAll(worker, entry);
    for (const hash of blocks) this.store(worker, entry, hash);
    entry.lastSeq = seq;
    entry.needsResync = false;
    return true;
  }

  /** The worker's entry, made on first sight; undefined (and counted) past `workersMax`. */
  private entryOf(worker: string, epoch: number | undefined): WorkerEntry | undefined {
    let entry = this.workers.get(worker);
    if (entry === undefined) {
      if (this.workers.size >= this.workersMax) {
        this.refusedEvents++;
        return undefined;
      }
      entry = { blocks: new Map(), lastSeq: -1, needsResync: false, epoch };
      this.workers.set(worker, entry);
    }
    return entry;
  }

  /**
   * Whether news of incarnation `epoch` applies to `entry`: an older one does not; a newer one
   * does, after the entry is reset (the restarted worker's cache starts empty at seq -1).
   */
  private sameIncarnation(worker: string, entry: WorkerEntry, epoch: number | undefined): boolean {
    if (epoch === undefined || entry.epoch === undefined || epoch === entry.epoch) {
      entry.epoch ??= epoch;
      return true;
    }
    if (epoch < entry.epoch) return false;
    this.forgetAll(worker, entry);
    entry.lastSeq = -1;
    entry.needsResync = false;
    entry.epoch = epoch;
    return true;
  }

  /** Drops a dead worker's entries and sequence state. */
  removeWorker(worker: string): void {
    const entry = this.workers.get(worker);
    if (entry === undefined) return;
    this.forgetAll(worker, entry);
    this.workers.delete(worker);
  }

  /** For each worker holding `hashes[0]`, how many leading blocks of `hashes` it holds in a row. */
  match(hashes: readonly BlockHash[]): Map<string, number> {
    const matched = new Map<string, number>();
    const first = hashes[0];
    if (first === undefined) return matched;
    const active = new Set(this.holders.get(first));
    for (let i = 1; i < hashes.length && active.size > 0; i++) {
      const holding = this.holders.get(hashes[i]!);
      for (const worker of active) {
        if (holding?.has(worker) !== true) {
          matched.set(worker, i);
          active.delete(worker);
        }
      }
    }
    for (const worker of active) matched.set(worker, hashes.length);
    return matched;
  }

  /** Whether `worker` missed an event and has not been resynced since. */
  needsResync(worker: string): boolean {
    return this.workers.get(worker)?.needsResync ?? false;
  }

  /** The blocks `worker` holds, oldest-stored first. */
  blocksOf(worker: string): BlockHash[] {
    return [...(this.workers.get(worker)?.blocks.keys() ?? [])];
  }

  /** The workers tracked. */
  workerIds(): string[] {
    return [...this.workers.keys()];
  }

  stats(): KvIndexerStats {
    return {
      workers: this.workers.size,
      entries: this.entryCount,
      uniqueBlocks: this.holders.size,
      gaps: this.gaps,
      evictedBlocks: this.evictedBlocks,
      refusedEvents: this.refusedEvents,
    };
  }

  private store(worker: string, entry: WorkerEntry, hash: BlockHash): void {
    if (entry.blocks.delete(hash)) {
      // Already held: move it to the newest position, since it was just used again.
      entry.blocks.set(hash, true);
      return;
    }
    if (entry.blocks.size >= this.blocksPerWorkerMax) {
      const oldest = entry.blocks.keys().next().value as BlockHash;
      this.forget(worker, entry, oldest);
      this.evictedBlocks++;
    }
    entry.blocks.set(hash, true);
    let holding = this.holders.get(hash);
    if (holding === undefined) {
      holding = new Set();
      this.holders.set(hash, holding);
    }
    holding.add(worker);
    this.entryCount++;
  }

  private forget(worker: string, entry: WorkerEntry, hash: BlockHash): void {
    if (!entry.blocks.delete(hash)) return;
    const holding = this.holders.get(hash);
    assert(holding?.has(worker) === true, `index lost track of ${worker} holding ${hash}`);
    holding.delete(worker);
    if (holding.size === 0) this.holders.delete(hash);
    this.entryCount--;
  }

  private forgetAll(worker: string, entry: WorkerEntry): void {
    for (const hash of [...entry.blocks.keys()]) this.forget(worker, entry, hash);
    assert(entry.blocks.size === 0, 'forgetAll left blocks behind');
  }
}

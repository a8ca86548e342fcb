// The local view of the discovery bucket that NatsKvDiscovery serves `list()` from. It holds no
// I/O: the discovery feeds it what the watcher, the snapshot reads and its own writes saw, and it
// decides what is new, what is a repeat, what is stale and what to tell watchers.
import type { Clock } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import type { DiscoveryEvent, WorkerRecord, WorkerRole } from '../discovery.js';
import { sameRecord } from './worker-entry.js';

/** Options of a WorkerCache. */
export interface WorkerCacheOptions {
  /** Judges staleness by the time values arrive here, never by the writer's clock. */
  clock: Clock;
  /** A record not heard from for longer than this is left out of `list()` and reported removed by `sweep()`. */
  staleAfterMs: number;
  /** A stale record not heard from for longer than this is forgotten (the bucket TTL has removed its key by then). */
  forgetAfterMs: number;
  /** Most keys held at once; further keys are refused until some go away. */
  recordsMax: number;
  /** Receives every change watchers must hear of, in order. */
  emit(event: DiscoveryEvent): void;
}

/** Where an observation came from: another process's write seen remotely, or this process's own write. */
export type Origin = 'remote' | 'local';

/** What `put` did with a value, so the caller can log refusals. */
export type PutOutcome = 'added' | 'updated' | 'refreshed' | 'ignored' | 'full';

interface Entry {
  record: WorkerRecord;
  /** The bucket revision of the value held; lower revisions of the key are older news. */
  revision: number;
  /** Local clock time the current revision arrived. */
  seenAtMs: number;
  /** False once the sweep declared the record stale; it is then hidden until a newer revision arrives. */
  live: boolean;
  /** The rebuild during which the key was last seen, to find keys that vanished meanwhile. */
  generation: number;
}

/**
 * Keys, their latest revision and when they were last heard from.
 *
 * Ordering rules: a value older than (or the same as) the one held is ignored, so a re-read
 * after a reconnect or the echo of this process's own write never counts as a fresh heartbeat.
 * A rebuild's reads are authoritative: a key's first value in a rebuild replaces what was held
 * whatever its revision, since revisions restart when the server loses the bucket.
 * A key this process deleted ignores remote puts until the watcher shows the delete, so a put
 * that was already in flight cannot resurrect it. During a rebuild, deletes are remembered so a
 * snapshot read that raced with a delete cannot bring the key back either.
 */
export class WorkerCache {
  private readonly options: WorkerCacheOptions;
  private readonly entries = new Map<string, Entry>();
  /** Keys this process deleted whose delete the watcher has not shown yet → whether the delete has completed. */
  private readonly pendingDeletes = new Map<string, boolean>();
  /** Deletes seen during the current rebuild: key → revision of the delete. */
  private readonly rebuildDeletes = new Map<string, number>();
  private generation = 0;
  private rebuilding = false;

  constructor(options: WorkerCacheOptions) {
    assert(options.staleAfterMs > 0, 'staleAfterMs must be positive');
    assert(options.forgetAfterMs >= options.staleAfterMs, 'forgetAfterMs must not be shorter than staleAfterMs');
    assert(options.recordsMax > 0, 'recordsMax must be positive');
    this.options = options;
  }

  /** Keys held, live or stale. */
  get size(): number {
    return this.entries.size;
  }

  /** Live records, optionally of one role, in the order their keys were first seen. */
  list(role?: WorkerRole): WorkerRecord[] {
    const nowMs = this.options.clock.now();
    const records: WorkerRecord[] = [];
    for (const entry of this.entries.values()) {
      if (!this.isLive(entry, nowMs)) continue;
      if (role !== undefined && entry.record.role !== role) continue;
      records.push(structuredClone(entry.record));
    }
    return records;
  }

  /** A value written under `key` at `revision`. */
  put(key: string, revision: number, record: WorkerRecord, origin: Origin): PutOutcome {
    if (origin === 'remote' && this.pendingDeletes.has(key)) return 'ignored';
    const deletedAt = this.rebuildDeletes.get(key);
    if (deletedAt !== undefined && revision <= deletedAt) return 'ignored';
    const nowMs = this.options.clock.now();
    const entry = this.entries.get(key);
    if (!entry) {
      if (this.entries.size >= this.options.recordsMax) return 'full';
      const stored = structuredClone(record);
      this.entries.set(key, { record: stored, revision, seenAtMs: nowMs, live: true, generation: this.generation });
      this.emit('added', stored);
      return 'added';
    }
    if (this.isOlder(entry, revision)) return 'ignored';
    entry.generation = this.generation;
    if (revision === entry.revision) return 'ignored';
    const changed = !sameRecord(entry.record, record);
    const wasLive = entry.live;
    if (changed) entry.record = structuredClone(record);
    entry.revision = revision;
    entry.seenAtMs = nowMs;
    entry.live = true;
    if (changed || !wasLive) {
      this.emit('added', entry.record);
      return 'updated';
    }
    return 'refreshed';
  }

  /**
   * `key` was deleted or purged at `revision`, or now holds a value nobody can read (which
   * removes the worker all the same).
   */
  remove(key: string, revision: number, operation: 'delete' | 'unreadable'): void {
    if (operation === 'delete') this.pendingDeletes.delete(key);
    const entry = this.entries.get(key);
    if (entry && (revision === entry.revision || this.isOlder(entry, revision))) return;
    if (this.rebuilding) this.rebuildDeletes.set(key, Math.max(revision, this.rebuildDeletes.get(key) ?? 0));
    if (!entry) return;
    this.entries.delete(key);
    if (entry.live) this.emit('removed', entry.record);
  }

  /** This process deleted `key`; the record goes at once and remote puts wait for the delete to show. */
  removeLocal(key: string): void {
    this.pendingDeletes.set(key, false);
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    if (entry.live) this.emit('removed', entry.record);
  }

  /** This process's delete of `key` reached the bucket; the next rebuild's snapshot will reflect it. */
  completeLocalRemove(key: string): void {
    if (this.pendingDeletes.has(key)) this.pendingDeletes.set(key, true);
  }

  /** This process's delete of `key` failed; remote puts count again. */
  cancelLocalRemove(key: string): void {
    this.pendingDeletes.delete(key);
  }

  /** True when `key` is held, live or stale. */
  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** Starts a rebuild: from now on, keys seen are marked with the returned generation. */
  beginRebuild(): number {
    this.generation += 1;
    this.rebuilding = true;
    this.rebuildDeletes.clear();
    return this.generation;
  }

  /**
   * Ends the rebuild of `generation` (unless a newer one superseded it): every key neither read
   * nor written since it began has left the bucket and is removed.
   */
  endRebuild(generation: number): void {
    if (generation !== this.generation) return;
    for (const [key, entry] of this.entries) {
      if (entry.generation >= generation) continue;
      this.entries.delete(key);
      if (entry.live) this.emit('removed', entry.record);
    }
    this.rebuilding = false;
    this.rebuildDeletes.clear();
    // The snapshot was read after every delete that had completed by now, so the watcher may
    // never show those deletes (it may have started after them); stop waiting for it.
    for (const [key, completed] of this.pendingDeletes) if (completed) this.pendingDeletes.delete(key);
  }

  /** Reports records not heard from within staleAfterMs as removed, and forgets long-dead ones. */
  sweep(): void {
    const nowMs = this.options.clock.now();
    for (const [key, entry] of this.entries) {
      const silentMs = nowMs - entry.seenAtMs;
      if (entry.live && silentMs > this.options.staleAfterMs) {
        entry.live = false;
        this.emit('removed', entry.record);
      }
      if (!entry.live && silentMs > this.options.forgetAfterMs) this.entries.delete(key);
    }
  }

  /** Forgets everything without telling anyone (close). */
  clear(): void {
    this.entries.clear();
    this.pendingDeletes.clear();
    this.rebuildDeletes.clear();
    this.rebuilding = false;
  }

  /**
   * True when `revision` is older news than what `entry` holds. Until a key is seen in the
   * current rebuild its revision is not compared: the server may have lost the bucket (memory
   * storage, a wiped store) and started counting revisions again from 1.
   */
  private isOlder(entry: Entry, revision: number): boolean {
    return entry.generation === this.generation && revision < entry.revision;
  }

  private isLive(entry: Entry, nowMs: number): boolean {
    return entry.live && nowMs - entry.seenAtMs <= this.options.staleAfterMs;
  }

  private emit(type: DiscoveryEvent['type'], record: WorkerRecord): void {
    this.options.emit({ type, record: structuredClone(record) });
  }
}

import { ErrorCode, TandemError } from '../../errors.js';
import type { Clock } from '../../time/clock.js';
import type { Discovery, DiscoveryEvent, WorkerRecord, WorkerRole } from '../discovery.js';
import { DiscoveryWatchers } from '../discovery-watchers.js';

/** Options of a MemoryDiscovery. */
export interface MemoryDiscoveryOptions {
  /** Schedules watcher notifications, so a VirtualClock orders them with every other event. */
  clock: Clock;
  /** Sees watcher exceptions, which are otherwise dropped so one bad watcher cannot starve the others. */
  onWatcherError?: (error: unknown) => void;
}

/** What a MemoryDiscovery holds right now, for leak checks. */
export interface MemoryDiscoveryStats {
  recordCount: number;
  watcherCount: number;
  /** Changes not yet delivered to watchers. */
  pendingNotificationCount: number;
}

/**
 * Discovery for one process and the simulator: records live in a map, nothing expires.
 *
 * Watchers are notified asynchronously, one clock turn (`clock.setTimeout(fn, 0)`) after the
 * change, in the order changes happened, so a watcher never re-enters the caller of `register`.
 * A watcher sees only changes made after it started watching. Re-registering an instance keeps
 * its place in `list()` order and notifies 'added' with the new record. Records are copied in and
 * out, so nobody can change the registry by mutating an object. After `close()`, `register` and
 * `deregister` reject with a TandemError('closed'), `list()` is empty and `watch` is a no-op.
 */
export class MemoryDiscovery implements Discovery {
  private readonly clock: Clock;
  private readonly records = new Map<string, WorkerRecord>();
  private readonly watchers: DiscoveryWatchers;
  private closed = false;

  constructor(options: MemoryDiscoveryOptions) {
    this.clock = options.clock;
    this.watchers = new DiscoveryWatchers(options.clock, (error) => {
      try {
        options.onWatcherError?.(error);
      } catch {
        // The error sink itself failed; the remaining watchers are still told.
      }
    });
  }

  /** Counts for leak checks. */
  stats(): MemoryDiscoveryStats {
    return {
      recordCount: this.records.size,
      watcherCount: this.watchers.size,
      pendingNotificationCount: this.watchers.pendingCount,
    };
  }

  async register(record: WorkerRecord): Promise<void> {
    if (this.closed) throw closedError();
    const stored = structuredClone(record);
    this.records.set(stored.instanceId, stored);
    this.watchers.notify({ type: 'added', record: stored });
  }

  async deregister(instanceId: string): Promise<void> {
    if (this.closed) throw closedError();
    const record = this.records.get(instanceId);
    if (!record) return;
    this.records.delete(instanceId);
    this.watchers.notify({ type: 'removed', record });
  }

  list(role?: WorkerRole): WorkerRecord[] {
    const records = [...this.records.values()];
    return (role === undefined ? records : records.filter((record) => record.role === role)).map((record) => structuredClone(record));
  }

  watch(fn: (event: DiscoveryEvent) => void): () => void {
    if (this.closed) return () => undefined;
    return this.watchers.add(fn);
  }


  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watchers.close();
    this.records.clear();
  }

}

function closedError(): TandemError {
  return new TandemError(ErrorCode.Closed, 'discovery is closed');
}

import type { Clock, TimerId } from '../time/clock.js';
import type { DiscoveryEvent } from './discovery.js';

interface Watcher {
  readonly fn: (event: DiscoveryEvent) => void;
  active: boolean;
}

/**
 * The watchers of a discovery. A change reaches the watchers of its moment one clock turn later
 * (`clock.setTimeout(fn, 0)`), in the order changes happened, each with its own copy of the
 * record, so a watcher never re-enters the caller and cannot change the registry. A watcher that
 * throws is reported to `onError` and the others are still told; one that stopped watching is
 * told nothing more.
 */
export class DiscoveryWatchers {
  private readonly watchers = new Set<Watcher>();
  private pending: { event: DiscoveryEvent; audience: Watcher[] }[] = [];
  private flushTimer: TimerId | undefined;

  constructor(
    private readonly clock: Clock,
    private readonly onError: (error: unknown) => void,
  ) {}

  /** Watchers now. */
  get size(): number {
    return this.watchers.size;
  }

  /** Changes not yet delivered. */
  get pendingCount(): number {
    return this.pending.length;
  }

  /** Starts telling `fn` of changes; returns the function that stops it. */
  add(fn: (event: DiscoveryEvent) => void): () => void {
    const watcher: Watcher = { fn, active: true };
    this.watchers.add(watcher);
    return () => {
      watcher.active = false;
      this.watchers.delete(watcher);
    };
  }

  /** Queues a change for the watchers of this moment. */
  notify(event: DiscoveryEvent): void {
    if (this.watchers.size === 0) return;
    this.pending.push({ event, audience: [...this.watchers] });
    this.flushTimer ??= this.clock.setTimeout(() => this.flush(), 0);
  }

  /** Stops every watcher and drops what was not delivered. */
  close(): void {
    for (const watcher of this.watchers) watcher.active = false;
    this.watchers.clear();
    this.pending = [];
    if (this.flushTimer !== undefined) this.clock.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
  }

  private flush(): void {
    this.flushTimer = undefined;
    const pending = this.pending;
    this.pending = [];
    for (const { event, audience } of pending) {
      for (const watcher of audience) {
        if (!watcher.active) continue;
        try {
          watcher.fn({ type: event.type, record: structuredClone(event.record) });
        } catch (error) {
          this.onError(error);
        }
      }
    }
  }
}

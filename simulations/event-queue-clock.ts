import type { Clock } from '../src/index.js';
import type { TimerId } from '../src/time/clock.js';

/** What the scheduler needs from a clock: the Clock every actor sees, plus a way to fire its next timer. */
export interface SteppableClock extends Clock {
  /** Fires the earliest pending timer, moving time to it; returns false when none is pending. */
  step(): boolean;
  /** Time of the earliest pending timer, or undefined when none is pending. */
  nextAtMs(): number | undefined;
  /** Timers armed and not yet fired or cleared. */
  readonly pendingCount: number;
}

interface Entry {
  readonly seq: number;
  readonly atMs: number;
  readonly fn: () => void;
  /** Position in the heap array, kept up to date so a timer can be cleared in O(log n). */
  index: number;
}

/**
 * The simulator's event queue: a virtual clock whose timers sit in a binary heap ordered by
 * (time, creation sequence). It fires timers in exactly the order `VirtualClock` does (the
 * simulation test checks both give the same trace), but a step costs O(log n) instead of a scan
 * of every pending timer, which matters with tens of thousands of deadlines armed at once.
 */
export class EventQueueClock implements SteppableClock {
  private nowMs: number;
  private seq = 0;
  private readonly heap: Entry[] = [];
  private readonly bySeq = new Map<number, Entry>();

  constructor(startMs = 0) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: () => void, ms: number): TimerId {
    const seq = ++this.seq;
    // NaN and negative delays mean "next turn", as on the virtual and the real clock.
    const entry: Entry = { seq, atMs: this.nowMs + (ms > 0 ? ms : 0), fn, index: this.heap.length };
    this.heap.push(entry);
    this.bySeq.set(seq, entry);
    this.siftUp(entry.index);
    return seq;
  }

  clearTimeout(id: TimerId): void {
    if (typeof id !== 'number') return;
    const entry = this.bySeq.get(id);
    if (!entry) return;
    this.bySeq.delete(id);
    this.removeAt(entry.index);
  }

  get pendingCount(): number {
    return this.heap.length;
  }

  nextAtMs(): number | undefined {
    return this.heap[0]?.atMs;
  }

  step(): boolean {
    const next = this.heap[0];
    if (!next) return false;
    this.bySeq.delete(next.seq);
    this.removeAt(0);
    if (next.atMs < this.nowMs) throw new Error(`virtual time would move backwards from ${this.nowMs} to ${next.atMs}`);
    this.nowMs = next.atMs;
    next.fn();
    return true;
  }

  private removeAt(index: number): void {
    const last = this.heap.pop()!;
    if (index === this.heap.length) return;
    this.heap[index] = last;
    last.index = index;
    this.siftDown(index);
    this.siftUp(last.index);
  }

  private less(a: Entry, b: Entry): boolean {
    return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
  }

  private siftUp(index: number): void {
    const { heap } = this;
    const entry = heap[index]!;
    while (index > 0) {
      const parentIndex = (index - 1) >> 1;
      const parent = heap[parentIndex]!;
      if (!this.less(entry, parent)) break;
      heap[index] = parent;
      parent.index = index;
      index = parentIndex;
    }
    heap[index] = entry;
    entry.index = index;
  }

  private siftDown(index: number): void {
    const { heap } = this;
    const entry = heap[index]!;
    const length = heap.length;
    for (;;) {
      const left = 2 * index + 1;
      if (left >= length) break;
      const right = left + 1;
      const child = right < length && this.less(heap[right]!, heap[left]!) ? right : left;
      const smaller = heap[child]!;
      if (!this.less(smaller, entry)) break;
      heap[index] = smaller;
      smaller.index = index;
      index = child;
    }
    heap[index] = entry;
    entry.index = index;
  }
}

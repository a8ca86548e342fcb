import { assert } from '../util/assert.js';
import type { Clock, TimerId } from './clock.js';

interface VirtualTimer {
  readonly id: number;
  readonly atMs: number;
  readonly seq: number;
  readonly fn: () => void;
}

/**
 * A clock whose time moves only when told to. Timers fire in (time, creation order); a timer
 * created while time advances fires in the same advance if it falls due, which is where xstate's
 * SimulatedClock.increment falls short.
 */
export class VirtualClock implements Clock {
  private nowMs: number;
  private seq = 0;
  private readonly timers = new Map<number, VirtualTimer>();

  constructor(startMs = 0) {
    this.nowMs = startMs;
  }

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: () => void, ms: number): TimerId {
    const seq = ++this.seq;
    const timer: VirtualTimer = { id: seq, atMs: this.nowMs + Math.max(0, ms), seq, fn };
    this.timers.set(seq, timer);
    return seq;
  }

  clearTimeout(id: TimerId): void {
    if (typeof id === 'number') this.timers.delete(id);
  }

  /** Number of timers not yet fired. */
  get pendingCount(): number {
    return this.timers.size;
  }

  /** Time of the earliest pending timer, or undefined when none is pending. */
  nextAtMs(): number | undefined {
    return this.earliest()?.atMs;
  }

  /** Fires the earliest pending timer, moving time to it; returns false when none is pending. */
  step(): boolean {
    const next = this.earliest();
    if (!next) return false;
    this.timers.delete(next.id);
    assert(next.atMs >= this.nowMs, 'virtual time never moves backwards');
    this.nowMs = next.atMs;
    next.fn();
    return true;
  }

  /** Moves time forward by `ms`, firing every timer that falls due on the way, in order. */
  advance(ms: number): void {
    assert(ms >= 0, 'advance takes a non-negative duration');
    const targetMs = this.nowMs + ms;
    for (;;) {
      const next = this.earliest();
      if (!next || next.atMs > targetMs) break;
      this.step();
    }
    this.nowMs = targetMs;
  }

  private earliest(): VirtualTimer | undefined {
    let best: VirtualTimer | undefined;
    for (const timer of this.timers.values()) {
      if (!best || timer.atMs < best.atMs || (timer.atMs === best.atMs && timer.seq < best.seq)) best = timer;
    }
    return best;
  }
}

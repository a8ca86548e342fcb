import type { Clock, TimerId } from '../../time/clock.js';

/**
 * A deadline that is cheap to push back: `extend` only records the new time, and the one armed
 * timer re-arms itself for the remainder when it fires early. A stream extends its deadlines on
 * every frame, so this keeps it to one clock timer per deadline instead of one per frame.
 */
export class Deadline {
  private readonly clock: Clock;
  private readonly onExpired: () => void;
  private atMs: number | undefined;
  private timer: TimerId | undefined;
  private timerAtMs = Number.POSITIVE_INFINITY;

  constructor(clock: Clock, onExpired: () => void) {
    this.clock = clock;
    this.onExpired = onExpired;
  }

  /** True while the deadline is set and has not fired. */
  get armed(): boolean {
    return this.atMs !== undefined;
  }

  /** Sets the deadline to `ms` from now, replacing any earlier or later one. */
  extend(ms: number): void {
    const nowMs = this.clock.now();
    this.atMs = nowMs + ms;
    // A later deadline rides on the armed timer; an earlier one needs a timer of its own.
    if (this.timer !== undefined && this.timerAtMs <= this.atMs) return;
    this.arm(ms, nowMs);
  }

  /** Disarms the deadline; idempotent. */
  cancel(): void {
    this.atMs = undefined;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAtMs = Number.POSITIVE_INFINITY;
  }

  private arm(ms: number, nowMs: number): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timerAtMs = nowMs + ms;
    this.timer = this.clock.setTimeout(() => this.fire(), ms);
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAtMs = Number.POSITIVE_INFINITY;
    if (this.atMs === undefined) return;
    const nowMs = this.clock.now();
    const remainingMs = this.atMs - nowMs;
    if (remainingMs > 0) {
      this.arm(remainingMs, nowMs);
      return;
    }
    this.atMs = undefined;
    this.onExpired();
  }
}

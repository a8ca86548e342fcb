import type { Clock, TimerId } from '../../time/clock.js';

/**
 * The timers one transport has armed on its clock. Keeping them in one place lets `close()`
 * disarm everything at once and lets leak checks count what is still scheduled.
 */
export class TimerSet {
  private readonly clock: Clock;
  private readonly ids = new Set<TimerId>();

  constructor(clock: Clock) {
    this.clock = clock;
  }

  /** Timers armed and not yet fired or cancelled. */
  get size(): number {
    return this.ids.size;
  }

  /** Runs `fn` after `ms` on the clock; forgets the timer once it fires. */
  schedule(fn: () => void, ms: number): TimerId {
    const id = this.clock.setTimeout(() => {
      this.ids.delete(id);
      fn();
    }, ms);
    this.ids.add(id);
    return id;
  }

  /** Disarms one timer; unknown or fired ids are ignored so callers need not track which. */
  cancel(id: TimerId | undefined): void {
    if (id === undefined || !this.ids.delete(id)) return;
    this.clock.clearTimeout(id);
  }

  /** Disarms every timer, for shutdown. */
  cancelAll(): void {
    for (const id of this.ids) this.clock.clearTimeout(id);
    this.ids.clear();
  }
}

import type { SteppableClock } from './event-queue-clock.js';

/** Why a scheduler run returned. */
export type RunOutcome = 'condition' | 'idle' | 'time-bound' | 'event-bound' | 'stopped';

/** Bounds of one scheduler run. */
export interface RunBounds {
  /** Returns once this holds (checked after every event, once its reactions have run). */
  until?: () => boolean;
  /** Fires no timer due after this virtual time. */
  untilMs?: number;
}

/** Options of a scheduler. */
export interface SchedulerOptions {
  /** Most timers fired over the scheduler's life; a run that reaches it returns 'event-bound'. */
  eventsMax: number;
  /** Called after every `checkEvery` events (once their reactions ran); invariant checks go here. */
  onCheck?: () => void;
  /** Events between two onCheck calls; default 1000. */
  checkEvery?: number;
}

/**
 * Lets the host run every callback already queued: promise reactions, `process.nextTick` and
 * the microtasks they queue in turn. A macrotask boundary is the only point where Node
 * guarantees the microtask queue is empty; it involves no time, so it costs determinism nothing.
 */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The discrete-event loop of the simulator. Actors react to a timer (a message arriving, a
 * deadline, an engine step) through promise callbacks, so after each timer the scheduler lets
 * every pending callback run before it fires the next timer, as Node's event loop does between
 * two real timers. When nothing is runnable it jumps straight to the next deadline: virtual time
 * costs nothing to skip.
 */
export class Scheduler {
  private eventCount = 0;
  private stopReason: string | undefined;
  private readonly checkEvery: number;

  constructor(
    readonly clock: SteppableClock,
    private readonly options: SchedulerOptions,
  ) {
    this.checkEvery = options.checkEvery ?? 1000;
  }

  /** Timers fired so far. */
  get events(): number {
    return this.eventCount;
  }

  /** Set once `stop` was called: the first reason given. */
  get stopped(): string | undefined {
    return this.stopReason;
  }

  /** Makes the current and every later run return 'stopped' after the event in progress. */
  stop(reason: string): void {
    this.stopReason ??= reason;
  }

  /** Fires timers in (time, sequence) order until a bound, the condition, or an empty queue. */
  async run(bounds: RunBounds = {}): Promise<RunOutcome> {
    const { clock } = this;
    const untilMs = bounds.untilMs ?? Number.POSITIVE_INFINITY;
    for (;;) {
      await settle();
      if (this.stopReason !== undefined) return 'stopped';
      if (bounds.until?.()) return 'condition';
      const nextAtMs = clock.nextAtMs();
      if (nextAtMs === undefined) return 'idle';
      if (nextAtMs > untilMs) return 'time-bound';
      if (this.eventCount >= this.options.eventsMax) return 'event-bound';
      clock.step();
      this.eventCount++;
      if (this.eventCount % this.checkEvery === 0) {
        await settle();
        this.options.onCheck?.();
      }
    }
  }
}

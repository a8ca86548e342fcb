/** An opaque handle returned by `Clock.setTimeout`. */
export type TimerId = unknown;

/**
 * The only source of time in src/. It has the shape of xstate's `clock` option, so machines
 * schedule their deadlines through it too. The real clock lives in real-clock.ts; the virtual
 * clock in virtual-clock.ts is driven by tests and the simulator.
 */
export interface Clock {
  /** Milliseconds since an arbitrary origin; monotonic. */
  now(): number;
  /** Runs `fn` after `ms` milliseconds; `ms <= 0` runs it on the next turn of the loop. */
  setTimeout(fn: () => void, ms: number): TimerId;
  /** Cancels a timer; unknown or already-fired ids are ignored. */
  clearTimeout(id: TimerId): void;
}

/** Resolves after `ms` on `clock`; rejects with the signal's reason when aborted first. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clock.clearTimeout(id);
      reject(signal?.reason);
    };
    const id = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Polls `done` every `intervalMs` on `clock` until it holds or `timeoutMs` passes; resolves with its last value. */
export async function waitUntil(clock: Clock, done: () => boolean, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const deadlineAtMs = clock.now() + timeoutMs;
  while (!done() && clock.now() < deadlineAtMs) await sleep(clock, intervalMs);
  return done();
}

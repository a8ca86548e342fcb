// The one module of src/ allowed to read real time, real randomness and the host's timers
// (eslint.config.js exempts it). Everything else receives a Clock or a seed.
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Clock, TimerId } from './clock.js';

interface RealTimer {
  kind: 'timeout' | 'immediate';
  handle: NodeJS.Timeout | NodeJS.Immediate;
}

/** The host's clock; zero-delay timers use `setImmediate` so zero-time engines do not pay Node's 1 ms floor. */
export const realClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
  setTimeout(fn: () => void, ms: number): TimerId {
    if (ms <= 0) return { kind: 'immediate', handle: setImmediate(fn) } satisfies RealTimer;
    return { kind: 'timeout', handle: setTimeout(fn, ms) } satisfies RealTimer;
  },
  clearTimeout(id: TimerId): void {
    const timer = id as RealTimer | undefined;
    if (!timer) return;
    if (timer.kind === 'immediate') clearImmediate(timer.handle as NodeJS.Immediate);
    else clearTimeout(timer.handle as NodeJS.Timeout);
  },
};

/** A fresh 32-bit seed from the operating system, for production runs that are not replayed. */
export function realSeed(): number {
  return randomBytes(4).readUInt32LE(0);
}

import { seededRandom } from '../src/internal.js';
import type { Random } from '../src/index.js';

/** The subsystems that draw random numbers, each from its own stream. */
export const streamNames = ['workload', 'clients', 'network', 'fabric', 'process', 'ids', 'routing'] as const;
export type StreamName = (typeof streamNames)[number];

/** One independent random stream per subsystem. */
export type RandomStreams = Record<StreamName, Random>;

/**
 * Splits a run's seed into one stream per subsystem. Each stream depends only on the seed and
 * its name, never on how many numbers another stream drew, so turning a fault on (more draws
 * from `network`) leaves the workload, its arrivals and its prompts exactly as they were.
 */
export function randomStreams(seed: number): RandomStreams {
  const streams = {} as RandomStreams;
  for (const name of streamNames) streams[name] = seededRandom(seed >>> 0).split(`tandem-simulation/${name}`);
  return streams;
}

/** An exponentially distributed draw with the given mean. */
export function exponential(random: Random, mean: number): number {
  return -Math.log(1 - random.next()) * mean;
}

/** A uniform integer in [min, max]. */
export function uniformInt(random: Random, min: number, max: number): number {
  return min + random.int(max - min + 1);
}

/** True with probability `p`; draws nothing when `p` is 0, so an unused fault costs no draw. */
export function chance(random: Random, p: number | undefined): boolean {
  if (!p || p <= 0) return false;
  return random.next() < p;
}

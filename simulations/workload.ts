import type { Random } from '../src/index.js';
import { exponential, uniformInt } from './random-streams.js';
import type { LengthDistribution, WorkloadSpec } from './scenario.js';

/** One request of a run, as its client sends it. */
export interface RequestSpec {
  /** 0-based position in arrival order; probes continue the numbering. */
  index: number;
  requestId: string;
  /** Virtual time the client sends it. */
  arrivalMs: number;
  /** Prompt tokens (bytes of lowercase text), kept compact for runs of many requests. */
  promptTokens: Uint8Array;
  temperature: number;
  seed: number;
  maxTokens: number;
  ignoreEos: boolean;
  /** Which shared prefix the prompt starts with, if any. */
  prefix: number | undefined;
  /** 'workload' in the faulty phase, 'probe' after healing. */
  kind: 'workload' | 'probe';
}

/** A draw from a length distribution. */
export function drawLength(random: Random, dist: LengthDistribution): number {
  if (dist.kind === 'uniform') return uniformInt(random, dist.min, dist.max);
  // Box-Muller: one normal draw from two uniforms.
  const u = 1 - random.next();
  const v = random.next();
  const normal = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  const median = dist.median ?? Math.sqrt(dist.min * dist.max);
  const value = Math.round(median * Math.exp((dist.sigma ?? 0.6) * normal));
  return Math.min(dist.max, Math.max(dist.min, value));
}

function letters(random: Random, count: number): number[] {
  return Array.from({ length: count }, () => 97 + random.int(26));
}

/**
 * The workload's requests in arrival order, drawn one at a time from the workload stream, so a
 * run of a million requests never holds them all and the same seed always gives the same ones.
 */
export class WorkloadSource {
  /** Arrival times of every request, drawn up front (from their own stream) so the run knows when the last one comes. */
  readonly arrivalsMs: Float64Array;
  private readonly prefixes: number[][];
  private readonly random: Random;
  private produced = 0;

  constructor(
    private readonly spec: WorkloadSpec,
    workload: Random,
  ) {
    const arrivals = workload.split('arrivals');
    this.random = workload.split('requests');
    this.arrivalsMs = new Float64Array(spec.requests);
    let clockMs = 0;
    for (let index = 0; index < spec.requests; index++) {
      if (spec.arrival.kind === 'poisson') {
        if (index > 0) clockMs += exponential(arrivals, 1000 / spec.arrival.ratePerSec);
      } else {
        clockMs = Math.floor(index / spec.arrival.burstSize) * spec.arrival.intervalMs;
      }
      // On a 1 µs grid, so reports and traces print them exactly.
      this.arrivalsMs[index] = Math.round(clockMs * 1000) / 1000;
    }
    this.prefixes = Array.from({ length: Math.max(0, spec.sharedPrefix.prefixes) }, () => letters(this.random, spec.sharedPrefix.prefixTokens));
  }

  /** When the last workload request arrives. */
  get lastArrivalMs(): number {
    return this.arrivalsMs.at(-1) ?? 0;
  }

  /** Requests produced so far. */
  get count(): number {
    return this.produced;
  }

  /** The next request, or undefined once the workload's requests are all out. */
  next(): RequestSpec | undefined {
    if (this.produced >= this.spec.requests) return undefined;
    const index = this.produced++;
    return this.draw(index, this.arrivalsMs[index]!, 'workload');
  }

  /** A fault-free request for the liveness phase, drawn from the same distributions. */
  probe(index: number, arrivalMs: number): RequestSpec {
    return this.draw(index, arrivalMs, 'probe');
  }

  private draw(index: number, arrivalMs: number, kind: RequestSpec['kind']): RequestSpec {
    const { spec, random } = this;
    const length = drawLength(random, spec.promptTokens);
    let prefix: number | undefined;
    let tokens: number[];
    if (this.prefixes.length > 0 && random.next() < spec.sharedPrefix.fraction) {
      prefix = random.int(this.prefixes.length);
      const shared = this.prefixes[prefix]!;
      tokens = [...shared.slice(0, length), ...letters(random, Math.max(1, length - shared.length))];
    } else {
      tokens = letters(random, length);
    }
    const greedy = random.next() < spec.greedyFraction;
    return {
      index,
      requestId: `${kind === 'probe' ? 'probe' : 'req'}-${index}`,
      arrivalMs,
      promptTokens: Uint8Array.from(tokens),
      temperature: greedy ? 0 : 0.8,
      seed: random.uint32(),
      maxTokens: drawLength(random, spec.outputTokens),
      ignoreEos: random.next() < spec.ignoreEosFraction,
      prefix,
      kind,
    };
  }
}

import type { Random } from '../src/index.js';
import { chance, exponential } from './random-streams.js';
import type { FaultPlan, ScheduledFault } from './scenario.js';

/**
 * Turns the plan's random partitions and crashes into concrete events in [0, healAtMs), drawn
 * from the process stream, and merges them with the plan's fixed schedule. The result is part
 * of the report, so a run can be replayed with exactly these events.
 */
export function expandFaultSchedule(
  plan: FaultPlan,
  actors: { all: readonly string[]; workers: ReadonlyArray<{ actor: string; role: 'prefill' | 'decode' }> },
  healAtMs: number,
  random: Random,
): ScheduledFault[] {
  const events: ScheduledFault[] = plan.schedule.filter((event) => event.atMs < healAtMs).map((event) => ({ ...event }));
  const round = (ms: number): number => Math.round(ms * 1000) / 1000;
  const { partitions, crashes } = plan;
  const parties = partitions.includeClient ? actors.all : actors.workers.map((worker) => worker.actor);
  if (partitions.perMinute > 0 && parties.length >= 2) {
    for (let atMs = exponential(random, 60_000 / partitions.perMinute); atMs < healAtMs; atMs += exponential(random, 60_000 / partitions.perMinute)) {
      const a = parties[random.int(parties.length)]!;
      const others = parties.filter((actor) => actor !== a);
      const b = others[random.int(others.length)]!;
      const durationMs = partitions.durationMsMin + random.next() * (partitions.durationMsMax - partitions.durationMsMin);
      events.push({ kind: 'partition', atMs: round(atMs), durationMs: round(durationMs), a, b, oneWay: chance(random, partitions.oneWayFraction) });
    }
  }
  const crashable = actors.workers.filter((worker) => crashes.roles.includes(worker.role));
  if (crashes.perMinute > 0 && crashable.length > 0) {
    for (let atMs = exponential(random, 60_000 / crashes.perMinute); atMs < healAtMs; atMs += exponential(random, 60_000 / crashes.perMinute)) {
      const actor = crashable[random.int(crashable.length)]!.actor;
      const downMs = crashes.downMsMin + random.next() * (crashes.downMsMax - crashes.downMsMin);
      events.push({ kind: 'crash', atMs: round(atMs), actor, downMs: round(downMs) });
    }
  }
  // Stable: equal times keep partitions before crashes and the fixed schedule first.
  return events.map((event, i) => ({ event, i })).sort((x, y) => x.event.atMs - y.event.atMs || x.i - y.i).map(({ event }) => event);
}

/** A one-line description of a scheduled fault. */
export function describeFault(event: ScheduledFault): string {
  if (event.kind === 'partition') {
    return `t=${event.atMs}ms partition ${event.a} ${event.oneWay ? '->' : '<->'} ${event.b} for ${event.durationMs} ms`;
  }
  return `t=${event.atMs}ms crash ${event.actor}, down ${event.downMs} ms`;
}

import { describe, expect, it } from 'vitest';
import { runSimulation } from '../simulations/run-simulation.js';
import { buildScenario, faultPlanFromPresets } from '../simulations/scenario.js';

// Every decode worker crashes once while streams are in flight. Without migration the requests on
// a crashed worker fail; with it they move to another decode worker and complete, and the
// simulator's invariants check that each completed request's tokens equal the aggregated
// reference in full: nothing repeated, nothing missing, nothing different after the move.
function crashingDecodeWorkers(migrationsMax: number) {
  return buildScenario({
    name: `migration-${migrationsMax}`,
    seed: 21,
    cluster: { prefillWorkers: 2, decodeWorkers: 3, migrationsMax },
    workload: { requests: 300, outputTokens: { kind: 'uniform', min: 20, max: 60 } },
    faults: {
      ...faultPlanFromPresets('none'),
      schedule: [
        { kind: 'crash', atMs: 3000, actor: 'decode-0', downMs: 2000 },
        { kind: 'crash', atMs: 6000, actor: 'decode-1', downMs: 2000 },
        { kind: 'crash', atMs: 9000, actor: 'decode-2', downMs: 2000 },
      ],
    },
    probes: 8,
  });
}

const statuses = (records: Array<{ outcome?: { status: string } | undefined }>) =>
  records.reduce<Record<string, number>>((counts, record) => {
    const status = record.outcome?.status ?? 'none';
    counts[status] = (counts[status] ?? 0) + 1;
    return counts;
  }, {});

describe('request migration in the simulator', () => {
  it('completes with exactly the uninterrupted tokens the requests whose decode worker crashed mid-stream', async () => {
    const without = await runSimulation(crashingDecodeWorkers(0));
    const withMigration = await runSimulation(crashingDecodeWorkers(2));
    console.log(`without migration: ${JSON.stringify(statuses(without.records))}; with: ${JSON.stringify(statuses(withMigration.records))}, ${withMigration.observed['client migrated a request']} migrations`);
    expect(without.passed).toBe(true);
    expect(without.faults['crash decode']).toBe(3);
    const failedWithout = statuses(without.records).failed ?? 0;
    expect(failedWithout).toBeGreaterThan(0);

    expect(withMigration.violations).toEqual([]);
    expect(withMigration.passed).toBe(true);
    expect(statuses(withMigration.records)).toEqual({ done: withMigration.records.length });
    expect(withMigration.observed['client migrated a request']).toBeGreaterThanOrEqual(failedWithout);
  });
});

describe('broken streams in the simulator', () => {
  it('recovers requests whose token chunks were lost or duplicated by migrating from the last good token', async () => {
    const run = (migrationsMax: number) =>
      runSimulation(
        buildScenario({
          name: `stream-faults-${migrationsMax}`,
          seed: 7,
          cluster: { migrationsMax },
          workload: { requests: 250 },
          faults: faultPlanFromPresets('network,stream'),
          probes: 8,
        }),
      );
    const without = await run(0);
    const withMigration = await run(2);
    const done = (result: typeof without) => statuses(result.records).done ?? 0;
    console.log(`lost and duplicated chunks: done ${done(without)} without migration, ${done(withMigration)} with (${withMigration.observed['client migrated a request']} migrations)`);
    expect(without.violations).toEqual([]);
    expect(withMigration.violations).toEqual([]);
    expect(withMigration.faults['chunk.dropped']).toBeGreaterThan(0);
    expect(withMigration.faults['chunk.duplicated']).toBeGreaterThan(0);
    expect(done(withMigration)).toBeGreaterThan(done(without));
  });
});

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import fc from 'fast-check';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { VirtualClock } from '../src/internal.js';
import { registerSimulateCommand } from '../src/cli/simulate-command.js';
import { EventQueueClock } from '../simulations/event-queue-clock.js';
import { MachineGraph } from '../simulations/machine-graph.js';
import { randomStreams } from '../simulations/random-streams.js';
import { buildReport, formatReport, percentiles, type SimulationReport } from '../simulations/report.js';
import { renderHtml } from '../simulations/report-html.js';
import { runSimulation } from '../simulations/run-simulation.js';
import { buildScenario, faultPlanFromPresets } from '../simulations/scenario.js';
import { Scheduler } from '../simulations/scheduler.js';
import { requestMachine, roomMachine } from '../src/index.js';

describe('EventQueueClock', () => {
  it('fires timers in the same (time, creation) order as the runtime VirtualClock, clears included', () => {
    // fast-check prints the seed and counterexample path when this fails.
    const op = fc.oneof(
      fc.record({ kind: fc.constant('set' as const), ms: fc.oneof(fc.integer({ min: -5, max: 50 }), fc.constant(0)), nested: fc.boolean() }),
      fc.record({ kind: fc.constant('clear' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('step' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
        const run = (clock: VirtualClock | EventQueueClock): string[] => {
          const fired: string[] = [];
          const ids: unknown[] = [];
          let label = 0;
          for (const o of ops) {
            if (o.kind === 'set') {
              const name = `t${label++}`;
              ids.push(
                clock.setTimeout(() => {
                  fired.push(`${name}@${clock.now()}`);
                  if (o.nested) clock.setTimeout(() => fired.push(`${name}.child@${clock.now()}`), 0);
                }, o.ms),
              );
            } else if (o.kind === 'clear') {
              if (ids.length > 0) clock.clearTimeout(ids[o.pick % ids.length]);
            } else {
              clock.step();
            }
          }
          while (clock.step()) {
            // drain
          }
          return fired;
        };
        expect(run(new EventQueueClock())).toEqual(run(new VirtualClock()));
      }),
      { numRuns: 300 },
    );
  });
});

describe('Scheduler', () => {
  it('lets promise reactions run between timers and jumps over idle time', async () => {
    const clock = new EventQueueClock();
    const scheduler = new Scheduler(clock, { eventsMax: 100 });
    const seen: string[] = [];
    clock.setTimeout(() => {
      void Promise.resolve().then(() => {
        seen.push(`reaction@${clock.now()}`);
        clock.setTimeout(() => seen.push(`later@${clock.now()}`), 1_000_000);
      });
    }, 5);
    clock.setTimeout(() => seen.push(`second@${clock.now()}`), 5);
    expect(await scheduler.run()).toBe('idle');
    expect(seen).toEqual(['reaction@5', 'second@5', 'later@1000005']);
    expect(scheduler.events).toBe(3);
  });

  it('stops at its bounds', async () => {
    const clock = new EventQueueClock();
    const scheduler = new Scheduler(clock, { eventsMax: 3 });
    const tick = (): void => void clock.setTimeout(tick, 10);
    tick();
    expect(await scheduler.run({ untilMs: 15 })).toBe('time-bound');
    expect(clock.now()).toBe(10);
    expect(await scheduler.run()).toBe('event-bound');
    scheduler.stop('enough');
    expect(await scheduler.run()).toBe('stopped');
  });
});

describe('simulation building blocks', () => {
  it('splits the seed into independent streams per subsystem', () => {
    const a = randomStreams(9);
    const b = randomStreams(9);
    for (let i = 0; i < 100; i++) a.network.next();
    expect(a.workload.uint32()).toBe(b.workload.uint32());
    expect(randomStreams(10).workload.uint32()).not.toBe(randomStreams(9).workload.uint32());
  });

  it('reads the machine graphs from the machine definitions', () => {
    const request = new MachineGraph(requestMachine);
    expect(request.initial).toBe('bootstrap');
    expect(request.allows('polling', 'cleanup')).toBe(true);
    expect(request.allows('transfer', 'decode')).toBe(false);
    expect(request.allows('decode', 'cancelled')).toBe(true);
    expect(request.allows('done', 'cancelled')).toBe(false);
    expect(request.startStates.has('failed')).toBe(true);
    const room = new MachineGraph(roomMachine);
    expect(room.allows('transferring', 'draining')).toBe(true);
    expect(room.allows('reserved', 'transferring')).toBe(false);
  });

  it('refuses a scenario that cannot run, naming the field', () => {
    expect(() => buildScenario({ cluster: { decodeWorkers: 0 } })).toThrow(/cluster.decodeWorkers/);
    expect(() => buildScenario({ faults: { messages: { dropRate: 2 } } as never })).toThrow(/faults.messages.dropRate/);
    expect(() => faultPlanFromPresets('drop,nonsense')).toThrow(/unknown fault set 'nonsense'/);
  });

  it('refuses a fault schedule that names a worker the cluster does not have', async () => {
    const scenario = buildScenario({ workload: { requests: 1 }, healAtMs: 1000, faults: { schedule: [{ kind: 'crash', atMs: 10, actor: 'decode-9', downMs: 5 }] } });
    await expect(runSimulation(scenario)).rejects.toThrow(/names decode-9; the actors are client, prefill-0, prefill-1, decode-0, decode-1/);
  });

  it('computes nearest-rank percentiles', () => {
    const values = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentiles(values)).toMatchObject({ count: 100, p50: 50, p90: 90, p99: 99, max: 100, mean: 50.5 });
    expect(percentiles([])).toMatchObject({ count: 0 });
  });
});

describe('simulation report', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-simulate-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reports latencies, goodput, outcomes, faults and invariants, as JSON and as a self-contained page', async () => {
    const result = await runSimulation(buildScenario({ seed: 8, faults: faultPlanFromPresets('all'), workload: { requests: 60 }, probes: 2 }));
    const report = buildReport(result, { ttftMs: 500, itlMs: 40 });
    expect(report.passed).toBe(true);
    expect(report.requests).toEqual({ total: 62, workload: 60, probes: 2 });
    expect(report.latency.ttftMs.count).toBe(report.outcomes.byStatus.done);
    expect(report.latency.itlMs.p50).toBeGreaterThan(0);
    expect(report.goodput.requests).toBeLessThanOrEqual(60);
    expect(report.invariants.map((inv) => inv.id)).toContain('fencing');
    const roundTrip = JSON.parse(JSON.stringify(report)) as SimulationReport;
    expect(roundTrip.traceHash).toBe(report.traceHash);
    const html = renderHtml(report);
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).toContain('<svg');
    expect(html).toContain(report.traceHash);
    expect(html).not.toMatch(/<script|https?:\/\/(?!www\.w3\.org)/);
    const text = formatReport(report);
    expect(text).toMatch(/TTFT +n=\d+/);
    expect(text).toContain(`trace hash ${report.traceHash}`);
  });

  it('runs as `tandem simulate` and writes the JSON and HTML reports', async () => {
    const program = new Command('tandem').exitOverride();
    registerSimulateCommand(program);
    const out = join(dir, 'run');
    const printed: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
      printed.push(String(chunk));
      return true;
    });
    try {
      await program.parseAsync(['simulate', '--seed', '5', '--requests', '30', '--faults', 'drop,crash,cancel', '--decode-workers', '1', '--no-progress', '--out', out], { from: 'user' });
    } finally {
      write.mockRestore();
    }
    const report = JSON.parse(readFileSync(`${out}.json`, 'utf8')) as SimulationReport;
    expect(report.seed).toBe(5);
    expect(report.scenario.cluster.decodeWorkers).toBe(1);
    expect(report.requests.workload).toBe(30);
    expect(report.passed).toBe(true);
    expect(readFileSync(`${out}.html`, 'utf8')).toContain('tandem simulate');
    expect(printed.join('')).toContain(`trace hash ${report.traceHash}`);
    expect(process.exitCode ?? 0).toBe(0);
  });
});

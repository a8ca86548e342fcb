import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createActor, fromPromise } from 'xstate';
import { defaultDeadlines, requestMachine } from '../src/index.js';
import { InspectionRecorder, TraceFileWriter, VirtualClock, readTraceFiles, type TransitionRecord } from '../src/internal.js';

function record(i: number, overrides: Partial<TransitionRecord> = {}): TransitionRecord {
  return { ts_ms: i, worker: 'decode-0', machine: 'request', request_id: `r${i % 50}`, from: 'bootstrap', to: 'allocation', event: 'xstate.done.actor.bootstrap', ...overrides };
}

/** A request machine whose effects resolve at once, except bootstrap, which fails once with a retryable code. */
function quickRequestMachine() {
  let bootstraps = 0;
  return requestMachine.provide({
    actors: {
      bootstrap: fromPromise(async () => {
        if (bootstraps++ === 0) throw Object.assign(new Error('nobody answered'), { code: 'timeout' });
        return { prefillId: 'prefill-0', subjectPrefix: 'p', epoch: 1, room: 7 };
      }),
      allocate: fromPromise(async (): Promise<readonly number[]> => [0, 1]),
      startPrefill: fromPromise(async () => {}),
      awaitCompletion: fromPromise(async () => {}),
      awaitKv: fromPromise(async () => ({ firstToken: 65 })),
      confirmRelease: fromPromise(async () => {}),
      decode: fromPromise(async (): Promise<{ finishReason: 'stop' | 'length' }> => ({ finishReason: 'length' })),
    },
  });
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
  await new Promise((resolve) => setImmediate(resolve));
}

describe('InspectionRecorder', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  it('keeps at most ringMax records, the newest ones, while counting every record', () => {
    const recorder = new InspectionRecorder({ clock: new VirtualClock(), ringMax: 100, requestsMax: 10 });
    for (let i = 0; i < 10_000; i++) recorder.record(record(i, { request_id: `r${i}` }));
    expect(recorder.ring.size).toBe(100);
    expect(recorder.ring.pushed).toBe(10_000);
    expect(recorder.ring.toArray().map((r) => r.ts_ms)).toEqual(Array.from({ length: 100 }, (_, i) => 9_900 + i));
    expect(recorder.index.size).toBe(10);
    expect(recorder.index.list({ limit: 1000 }).items.map((item) => item.request_id)[0]).toBe('r9999');
  });

  it('keeps the first and the latest transitions of a request that moves too often', () => {
    const recorder = new InspectionRecorder({ clock: new VirtualClock(), transitionsPerRequestMax: 5 });
    for (let i = 0; i < 20; i++) recorder.record(record(i, { request_id: 'busy', to: `s${i}` }));
    const detail = recorder.index.detail('busy')!;
    expect(detail.transitions.map((r) => r.to)).toEqual(['s0', 's16', 's17', 's18', 's19']);
    expect(detail.transitions_dropped).toBe(15);
  });

  it('records every state a request machine enters, with the clock time, the worker and the event', async () => {
    const clock = new VirtualClock();
    const recorder = new InspectionRecorder({ clock });
    const actor = createActor(quickRequestMachine(), {
      clock,
      inspect: recorder.forWorker('decode-a'),
      input: { requestId: 'req-1', candidates: [{ instanceId: 'prefill-0', subjectPrefix: 'p' }, { instanceId: 'prefill-1', subjectPrefix: 'q' }], deadlines: defaultDeadlines, bootstrapAttemptsMax: 3 },
    });
    actor.start();
    for (let i = 0; i < 20 && actor.getSnapshot().status === 'active'; i++) await settle();
    expect(actor.getSnapshot().value).toBe('done');
    const records = recorder.ring.toArray();
    expect(records.map((r) => [r.from, r.to])).toEqual([
      [null, 'bootstrap'],
      ['bootstrap', 'bootstrap'],
      ['bootstrap', 'allocation'],
      ['allocation', 'prefill'],
      ['prefill', 'transfer'],
      ['transfer', 'polling'],
      ['polling', 'cleanup'],
      ['cleanup', 'decode'],
      ['decode', 'done'],
    ]);
    expect(records[1]!.event).toBe('xstate.error.actor.bootstrap');
    expect(records.every((r) => r.worker === 'decode-a' && r.machine === 'request' && r.request_id === 'req-1' && r.ts_ms === clock.now())).toBe(true);
    const detail = recorder.index.detail('req-1')!;
    expect(detail.state).toBe('done');
    expect(detail.terminal).toBe(true);
    expect(detail.timeline.map((s) => s.state)).toEqual(records.map((r) => r.to));
  });

  it('records the initial state before an eventless transition out of it', () => {
    const recorder = new InspectionRecorder({ clock: new VirtualClock() });
    createActor(requestMachine, { inspect: recorder.forWorker('d'), input: { requestId: 'lonely', candidates: [], deadlines: defaultDeadlines, bootstrapAttemptsMax: 3 } }).start();
    expect(recorder.ring.toArray().map((r) => [r.from, r.to, r.event])).toEqual([
      [null, 'bootstrap', 'xstate.init'],
      ['bootstrap', 'failed', 'always'],
    ]);
  });

  it('appends one JSON object per line to the trace file, which reads back as the same records', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tandem-trace-'));
    dirs.push(dir);
    const path = join(dir, 'trace.jsonl');
    const writer = new TraceFileWriter(path);
    const recorder = new InspectionRecorder({ clock: new VirtualClock(), sink: (r) => writer.write(r) });
    const written = [record(1), record(2, { machine: 'room', room: 42, from: null, to: 'reserved', event: 'xstate.init', worker: 'prefill-0' })];
    for (const r of written) recorder.record(r);
    await writer.close();
    const lines = readFileSync(path, 'utf8').split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe('');
    expect(JSON.parse(lines[1]!)).toEqual({ ts_ms: 2, worker: 'prefill-0', machine: 'room', request_id: 'r2', room: 42, from: null, to: 'reserved', event: 'xstate.init' });
    const read = await readTraceFiles([path]);
    expect(read.records).toEqual(written);
    expect(read.skipped).toBe(0);
  });

  it('filters the request list by text and state and pages through it', () => {
    const recorder = new InspectionRecorder({ clock: new VirtualClock() });
    for (let i = 0; i < 30; i++) {
      recorder.record(record(i, { request_id: `req-${i}`, from: null, to: 'bootstrap', event: 'xstate.init' }));
      if (i % 3 === 0) recorder.record(record(i + 0.5, { request_id: `req-${i}`, from: 'bootstrap', to: 'failed', event: 'always' }));
    }
    expect(recorder.index.list({ state: 'failed' }).total).toBe(10);
    expect(recorder.index.list({ state: 'live' }).total).toBe(20);
    expect(recorder.index.list({ text: 'req-2' }).total).toBe(11);
    const page = recorder.index.list({ offset: 5, limit: 5 });
    expect(page.items.map((item) => item.request_id)).toEqual(['req-24', 'req-23', 'req-22', 'req-21', 'req-20']);
    expect(page.states).toEqual({ bootstrap: 20, failed: 10 });
    // As of an earlier time, later requests do not exist yet and failures have not happened.
    expect(recorder.index.list({ atMs: 3.2 }).total).toBe(4);
    expect(recorder.index.detail('req-3', 3.2)?.state).toBe('bootstrap');
  });
});

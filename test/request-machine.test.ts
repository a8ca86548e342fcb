import { describe, expect, it } from 'vitest';
import { createActor, fromPromise } from 'xstate';
import { ErrorCode, TandemError } from '../src/errors.js';
import { defaultDeadlines } from '../src/limits.js';
import {
  requestMachine,
  type PrefillCandidate,
  type RequestContext,
  type RequestMachineInput,
  type RoomGrant,
} from '../src/machines/request-machine.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { deferred, flush, type Deferred } from './helpers/deferred.js';

type ActorName = 'bootstrap' | 'allocate' | 'startPrefill' | 'awaitCompletion' | 'awaitKv' | 'confirmRelease' | 'decode';

interface Call {
  input: Record<string, unknown>;
  signal: AbortSignal;
  result: Deferred<unknown>;
}

const candidates: PrefillCandidate[] = [
  { instanceId: 'p1', subjectPrefix: 'tandem.prefill.p1' },
  { instanceId: 'p2', subjectPrefix: 'tandem.prefill.p2' },
  { instanceId: 'p3', subjectPrefix: 'tandem.prefill.p3' },
];

const grant: RoomGrant = { prefillId: 'p1', subjectPrefix: 'tandem.prefill.p1', epoch: 1, room: 42 };

/** Runs the request machine on a virtual clock with every effect controlled by the test. */
function harness(overrides: Partial<RequestMachineInput> = {}) {
  const clock = new VirtualClock();
  const calls: Record<ActorName, Call[]> = { bootstrap: [], allocate: [], startPrefill: [], awaitCompletion: [], awaitKv: [], confirmRelease: [], decode: [] };
  const released: RequestContext[] = [];
  const firstTokens: number[] = [];
  const controlled = (name: ActorName) =>
    fromPromise(async ({ input, signal }: { input: unknown; signal: AbortSignal }) => {
      const result = deferred<unknown>();
      calls[name].push({ input: input as Record<string, unknown>, signal, result });
      return result.promise;
    });
  const machine = requestMachine.provide({
    actors: {
      bootstrap: controlled('bootstrap') as never,
      allocate: controlled('allocate') as never,
      startPrefill: controlled('startPrefill') as never,
      awaitCompletion: controlled('awaitCompletion') as never,
      awaitKv: controlled('awaitKv') as never,
      confirmRelease: controlled('confirmRelease') as never,
      decode: controlled('decode') as never,
    },
    actions: {
      releaseResources: (_, params) => released.push(params.context),
      emitFirstToken: (_, params) => firstTokens.push(params.firstToken),
    },
  });
  const path: string[] = [];
  const actor = createActor(machine, {
    clock,
    // Microsteps include states left in the same macrostep (eventless transitions).
    inspect: (inspection) => {
      if (inspection.type !== '@xstate.microstep' && inspection.type !== '@xstate.snapshot') return;
      if (inspection.actorRef.sessionId !== inspection.rootId) return;
      const value = String((inspection.snapshot as { value?: unknown }).value);
      if (path[path.length - 1] !== value) path.push(value);
    },
    input: { requestId: 'r1', candidates, deadlines: { ...defaultDeadlines }, bootstrapAttemptsMax: 3, ...overrides },
  });
  actor.start();
  const last = (name: ActorName): Call => {
    const call = calls[name][calls[name].length - 1];
    if (!call) throw new Error(`${name} was never invoked`);
    return call;
  };
  return {
    clock,
    actor,
    calls,
    path,
    released,
    firstTokens,
    last,
    state: () => String(actor.getSnapshot().value),
    /** Resolves the latest invocation of `name` and lets the machine react. */
    async succeed(name: ActorName, value: unknown): Promise<void> {
      last(name).result.resolve(value);
      await flush();
    },
    async fail(name: ActorName, error: unknown): Promise<void> {
      last(name).result.reject(error);
      await flush();
    },
    /** Drives the machine from bootstrap up to (not through) the given state. */
    async runTo(target: 'allocation' | 'prefill' | 'transfer' | 'polling' | 'cleanup' | 'decode'): Promise<void> {
      const steps: Array<[ActorName, unknown, string]> = [
        ['bootstrap', grant, 'allocation'],
        ['allocate', [0, 1, 2], 'prefill'],
        ['startPrefill', undefined, 'transfer'],
      ];
      for (const [name, value, reached] of steps) {
        if (this.state() === target) return;
        await this.succeed(name, value);
        expect(this.state()).toBe(reached);
      }
      if (this.state() === target) return;
      actor.send({ type: 'TRANSFER_POSTED' });
      await flush();
      expect(this.state()).toBe('polling');
      if (target === 'polling') return;
      await this.succeed('awaitKv', { firstToken: 7 });
      expect(this.state()).toBe('cleanup');
      if (target === 'cleanup') return;
      await this.succeed('confirmRelease', undefined);
      expect(this.state()).toBe('decode');
    },
  };
}

describe('request machine', () => {
  it('walks bootstrap → allocation → prefill → transfer → polling → cleanup → decode → done', async () => {
    const h = harness();
    await h.runTo('decode');
    expect(h.firstTokens).toEqual([7]);
    expect(h.last('decode').input).toMatchObject({ requestId: 'r1', firstToken: 7 });
    await h.succeed('decode', { finishReason: 'length' });
    expect(h.path).toEqual(['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode', 'done']);
    expect(h.actor.getSnapshot().output).toEqual({ status: 'done', finishReason: 'length', error: null });
    expect(h.released).toHaveLength(1);
    expect(h.released[0]).toMatchObject({ grant, pages: [0, 1, 2], roomReleased: true });
  });

  it('retries bootstrap on the next prefill worker after no_responders, then succeeds', async () => {
    const h = harness();
    await h.fail('bootstrap', new TandemError(ErrorCode.NoResponders, 'nobody home'));
    expect(h.state()).toBe('bootstrap');
    expect(h.calls.bootstrap.map((c) => (c.input.candidate as PrefillCandidate).instanceId)).toEqual(['p1', 'p2']);
    await h.succeed('bootstrap', grant);
    expect(h.state()).toBe('allocation');
  });

  it('fails with bootstrap_failed once the retry budget is spent', async () => {
    const h = harness({ bootstrapAttemptsMax: 2 });
    await h.fail('bootstrap', new TandemError(ErrorCode.Timeout, 'slow'));
    await h.fail('bootstrap', new TandemError(ErrorCode.Timeout, 'slow'));
    expect(h.state()).toBe('failed');
    expect(h.calls.bootstrap).toHaveLength(2);
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.BootstrapFailed);
  });

  it('does not retry bootstrap after an error that another worker would repeat', async () => {
    const h = harness();
    await h.fail('bootstrap', new TandemError(ErrorCode.ModelNotFound, 'no such model'));
    expect(h.state()).toBe('failed');
    expect(h.calls.bootstrap).toHaveLength(1);
    expect(h.actor.getSnapshot().output?.error?.message).toContain('model_not_found');
  });

  it('retries bootstrap when its deadline passes, aborting the slow attempt', async () => {
    const h = harness();
    const first = h.last('bootstrap');
    h.clock.advance(defaultDeadlines.bootstrapMs - 1);
    await flush();
    expect(h.calls.bootstrap).toHaveLength(1);
    h.clock.advance(1);
    await flush();
    expect(first.signal.aborted).toBe(true);
    expect(h.calls.bootstrap).toHaveLength(2);
    h.clock.advance(defaultDeadlines.bootstrapMs * 2);
    await flush();
    expect(h.state()).toBe('failed');
    expect(h.calls.bootstrap).toHaveLength(3);
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.BootstrapFailed);
  });

  it('wraps bootstrap attempts around a short candidate list and stops at the budget', async () => {
    const h = harness({ candidates: [candidates[0]!], bootstrapAttemptsMax: 3 });
    await h.fail('bootstrap', new TandemError(ErrorCode.NoResponders, 'gone'));
    expect(h.state()).toBe('failed');
    expect(h.calls.bootstrap).toHaveLength(1);
  });

  it('fails at once with no_workers when no prefill worker is known', async () => {
    const h = harness({ candidates: [] });
    await flush();
    expect(h.state()).toBe('failed');
    expect(h.calls.bootstrap).toHaveLength(0);
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.NoWorkers);
    expect(h.released).toHaveLength(1);
  });

  it('fails with kv_capacity when no pages free up before the allocation deadline', async () => {
    const h = harness();
    await h.runTo('allocation');
    const allocate = h.last('allocate');
    h.clock.advance(defaultDeadlines.allocationMs);
    await flush();
    expect(h.state()).toBe('failed');
    expect(allocate.signal.aborted).toBe(true);
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.KvCapacity);
    expect(h.released[0]).toMatchObject({ grant, pages: null });
  });

  it('fails with prefill_failed when the prefill request is refused', async () => {
    const h = harness();
    await h.runTo('prefill');
    await h.fail('startPrefill', new TandemError(ErrorCode.UnknownRoom, 'no such room'));
    expect(h.state()).toBe('failed');
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.UnknownRoom);
  });

  it('fails with deadline_exceeded when prefill does not start in time', async () => {
    const h = harness();
    await h.runTo('prefill');
    h.clock.advance(defaultDeadlines.prefillMs);
    await flush();
    expect(h.state()).toBe('failed');
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.DeadlineExceeded);
  });

  for (const state of ['prefill', 'transfer', 'polling'] as const) {
    it(`fails fast in ${state} when prefill reports a failure, without waiting for a deadline`, async () => {
      const h = harness();
      await h.runTo(state);
      const before = h.clock.now();
      h.actor.send({ type: 'PREFILL_FAILED', error: { code: ErrorCode.PrefillFailed, message: 'engine crashed' } });
      await flush();
      expect(h.state()).toBe('failed');
      expect(h.clock.now()).toBe(before);
      expect(h.actor.getSnapshot().output?.error).toEqual({ code: ErrorCode.PrefillFailed, message: 'engine crashed' });
      expect(h.released[0]).toMatchObject({ grant, pages: [0, 1, 2], roomReleased: false });
    });
  }

  it('fails fast in allocation when the prefill worker that granted the room is gone', async () => {
    const h = harness();
    await h.runTo('allocation');
    const allocate = h.last('allocate');
    h.actor.send({ type: 'PREFILL_FAILED', error: { code: ErrorCode.PrefillFailed, message: 'prefill worker p1 left discovery' } });
    await flush();
    expect(h.state()).toBe('failed');
    expect(allocate.signal.aborted).toBe(true);
    expect(h.actor.getSnapshot().output?.error?.message).toContain('left discovery');
  });

  it('goes straight through transfer when prefill posted the KV before its start reply arrived', async () => {
    const h = harness();
    await h.runTo('prefill');
    h.actor.send({ type: 'TRANSFER_POSTED' });
    await flush();
    expect(h.state()).toBe('prefill');
    await h.succeed('startPrefill', undefined);
    expect(h.state()).toBe('polling');
    expect(h.path).toEqual(['bootstrap', 'allocation', 'prefill', 'transfer', 'polling']);
  });

  it('moves on to polling when the final write lands although the transfer notice was lost', async () => {
    const h = harness();
    await h.runTo('transfer');
    await h.succeed('awaitCompletion', undefined);
    expect(h.state()).toBe('polling');
    await h.succeed('awaitKv', { firstToken: 3 });
    expect(h.state()).toBe('cleanup');
  });

  it('keeps waiting for the notice when watching for the completion fails', async () => {
    const h = harness();
    await h.runTo('transfer');
    await h.fail('awaitCompletion', new Error('region closed'));
    expect(h.state()).toBe('transfer');
    h.actor.send({ type: 'TRANSFER_POSTED' });
    await flush();
    expect(h.state()).toBe('polling');
  });

  it('fails with deadline_exceeded when the transfer is never posted', async () => {
    const h = harness();
    await h.runTo('transfer');
    h.clock.advance(defaultDeadlines.transferMs);
    await flush();
    expect(h.state()).toBe('failed');
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.DeadlineExceeded);
  });

  it('fails with transfer_failed when the completion never arrives', async () => {
    const h = harness();
    await h.runTo('polling');
    h.clock.advance(defaultDeadlines.pollingMs - 1);
    await flush();
    expect(h.state()).toBe('polling');
    h.clock.advance(1);
    await flush();
    expect(h.state()).toBe('failed');
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.TransferFailed);
  });

  it('fails with kv_mismatch when the received payload does not match the model', async () => {
    const h = harness();
    await h.runTo('polling');
    await h.fail('awaitKv', new TandemError(ErrorCode.KvMismatch, 'wrong model'));
    expect(h.state()).toBe('failed');
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.KvMismatch);
  });

  it('decodes anyway when the cleanup acknowledgement fails or times out', async () => {
    const failed = harness();
    await failed.runTo('cleanup');
    await failed.fail('confirmRelease', new TandemError(ErrorCode.Timeout, 'lost'));
    expect(failed.state()).toBe('decode');
    expect(failed.actor.getSnapshot().context.roomReleased).toBe(false);

    const slow = harness();
    await slow.runTo('cleanup');
    slow.clock.advance(defaultDeadlines.cleanupMs);
    await flush();
    expect(slow.state()).toBe('decode');
  });

  it('fails with deadline_exceeded when decode outlives its deadline', async () => {
    const h = harness();
    await h.runTo('decode');
    const decode = h.last('decode');
    h.clock.advance(defaultDeadlines.decodeMs);
    await flush();
    expect(h.state()).toBe('failed');
    expect(decode.signal.aborted).toBe(true);
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.DeadlineExceeded);
  });

  for (const state of ['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode'] as const) {
    it(`cancels from ${state}, aborting the running effect and releasing what it holds`, async () => {
      const h = harness();
      if (state !== 'bootstrap') await h.runTo(state);
      const running = state === 'transfer' ? undefined : h.last(
        ({ bootstrap: 'bootstrap', allocation: 'allocate', prefill: 'startPrefill', polling: 'awaitKv', cleanup: 'confirmRelease', decode: 'decode' } as const)[state],
      );
      h.actor.send({ type: 'CANCEL' });
      await flush();
      expect(h.state()).toBe('cancelled');
      if (running) expect(running.signal.aborted).toBe(true);
      expect(h.actor.getSnapshot().output).toMatchObject({ status: 'cancelled', error: { code: ErrorCode.Cancelled } });
      expect(h.released).toHaveLength(1);
      const heldGrant = state === 'bootstrap' ? null : grant;
      const heldPages = ['bootstrap', 'allocation'].includes(state) ? null : [0, 1, 2];
      expect(h.released[0]).toMatchObject({ grant: heldGrant, pages: heldPages });
    });
  }

  it('ignores events after reaching a terminal state', async () => {
    const h = harness();
    await h.runTo('decode');
    await h.succeed('decode', { finishReason: 'stop' });
    h.actor.send({ type: 'CANCEL' });
    h.actor.send({ type: 'PREFILL_FAILED', error: { code: ErrorCode.PrefillFailed, message: 'late' } });
    await flush();
    expect(h.state()).toBe('done');
    expect(h.released).toHaveLength(1);
  });
});

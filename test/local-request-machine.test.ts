import { describe, expect, it } from 'vitest';
import { createActor, fromPromise } from 'xstate';
import { ErrorCode, TandemError } from '../src/errors.js';
import { defaultDeadlines } from '../src/limits.js';
import { localRequestMachine } from '../src/machines/local-request-machine.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { deferred, flush, type Deferred } from './helpers/deferred.js';

function harness() {
  const clock = new VirtualClock();
  const prefill: Array<{ signal: AbortSignal; result: Deferred<unknown> }> = [];
  const decode: Array<{ signal: AbortSignal; result: Deferred<unknown> }> = [];
  const released: string[] = [];
  const first: number[] = [];
  const controlled = (calls: typeof prefill) =>
    fromPromise(async ({ signal }: { signal: AbortSignal }) => {
      const result = deferred<unknown>();
      calls.push({ signal, result });
      return result.promise;
    });
  const actor = createActor(
    localRequestMachine.provide({
      actors: { localPrefill: controlled(prefill) as never, decode: controlled(decode) as never },
      actions: {
        emitFirstToken: (_, params) => first.push(params.firstToken),
        releaseResources: (_, { context }) => released.push(context.status),
      },
    }),
    { clock, input: { requestId: 'r1', deadlines: { ...defaultDeadlines } } },
  ).start();
  return { clock, actor, prefill, decode, released, first, state: () => String(actor.getSnapshot().value) };
}

describe('local request machine', () => {
  it('prefills locally, emits the first token, decodes and releases once', async () => {
    const h = harness();
    h.prefill[0]!.result.resolve({ firstToken: 9, pages: [0] });
    await flush();
    expect(h.state()).toBe('decode');
    expect(h.first).toEqual([9]);
    h.decode[0]!.result.resolve({ finishReason: 'stop' });
    await flush();
    expect(h.actor.getSnapshot().output).toEqual({ status: 'done', finishReason: 'stop', error: null });
    expect(h.released).toEqual(['done']);
  });

  it('fails with prefill_failed or the engine code when local prefill fails', async () => {
    const h = harness();
    h.prefill[0]!.result.reject(new TandemError(ErrorCode.KvCapacity, 'pool too small'));
    await flush();
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.KvCapacity);
    expect(h.released).toEqual(['failed']);
  });

  it('fails with deadline_exceeded when local prefill outlives allocation plus prefill deadlines', async () => {
    const h = harness();
    h.clock.advance(defaultDeadlines.allocationMs + defaultDeadlines.prefillMs - 1);
    await flush();
    expect(h.state()).toBe('prefill');
    h.clock.advance(1);
    await flush();
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.DeadlineExceeded);
    expect(h.prefill[0]!.signal.aborted).toBe(true);
  });

  it('fails with deadline_exceeded when decode outlives its deadline', async () => {
    const h = harness();
    h.prefill[0]!.result.resolve({ firstToken: 1, pages: [0] });
    await flush();
    h.clock.advance(defaultDeadlines.decodeMs);
    await flush();
    expect(h.actor.getSnapshot().output?.error?.code).toBe(ErrorCode.DeadlineExceeded);
    expect(h.decode[0]!.signal.aborted).toBe(true);
  });

  it('cancels from prefill and from decode, aborting the running effect', async () => {
    for (const at of ['prefill', 'decode'] as const) {
      const h = harness();
      if (at === 'decode') {
        h.prefill[0]!.result.resolve({ firstToken: 1, pages: [0] });
        await flush();
      }
      h.actor.send({ type: 'CANCEL' });
      await flush();
      expect(h.actor.getSnapshot().output?.status).toBe('cancelled');
      expect((at === 'prefill' ? h.prefill : h.decode)[0]!.signal.aborted).toBe(true);
      expect(h.released).toEqual(['cancelled']);
    }
  });
});

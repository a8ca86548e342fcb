import { describe, expect, it } from 'vitest';
import { createActor, fromPromise } from 'xstate';
import { ErrorCode, TandemError } from '../src/errors.js';
import { roomMachine, type RoomContext, type RoomDeadlines } from '../src/machines/room-machine.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { deferred, flush, type Deferred } from './helpers/deferred.js';

type ActorName = 'compute' | 'transfer' | 'drain';

const deadlines: RoomDeadlines = { reservedMs: 1000, computeMs: 2000, transferMs: 3000, drainMs: 4000, releaseMs: 5000 };

/** Runs the room machine on a virtual clock with its effects controlled by the test. */
function harness() {
  const clock = new VirtualClock();
  const calls: Record<ActorName, Array<{ signal: AbortSignal; result: Deferred<unknown> }>> = { compute: [], transfer: [], drain: [] };
  const notified: string[] = [];
  const retired: Array<{ status: string; context: RoomContext }> = [];
  const controlled = (name: ActorName) =>
    fromPromise(async ({ signal }: { signal: AbortSignal }) => {
      const result = deferred<unknown>();
      calls[name].push({ signal, result });
      return result.promise;
    });
  const path: string[] = [];
  const actor = createActor(
    roomMachine.provide({
      actors: { compute: controlled('compute') as never, transfer: controlled('transfer') as never, drain: controlled('drain') as never },
      actions: {
        notifyPosted: () => notified.push('posted'),
        notifyFailed: (_, { context }) => notified.push(`failed:${context.error?.code}`),
        retire: (_, params) => retired.push(params),
      },
    }),
    {
      clock,
      input: { requestId: 'r1', prefillId: 'p1', epoch: 3, room: 9, deadlines },
      inspect: (inspection) => {
        if (inspection.type !== '@xstate.microstep' && inspection.type !== '@xstate.snapshot') return;
        if (inspection.actorRef.sessionId !== inspection.rootId) return;
        const value = String((inspection.snapshot as { value?: unknown }).value);
        if (path[path.length - 1] !== value) path.push(value);
      },
    },
  ).start();
  const last = (name: ActorName) => {
    const call = calls[name][calls[name].length - 1];
    if (!call) throw new Error(`${name} was never invoked`);
    return call;
  };
  return {
    clock,
    actor,
    calls,
    notified,
    retired,
    path,
    last,
    state: () => String(actor.getSnapshot().value),
    async settle(name: ActorName, outcome: 'ok' | Error, value: unknown = undefined) {
      if (outcome === 'ok') last(name).result.resolve(value);
      else last(name).result.reject(outcome);
      await flush();
    },
    async send(event: Parameters<typeof actor.send>[0]) {
      actor.send(event);
      await flush();
    },
  };
}

describe('room machine', () => {
  it('serves a room: reserved → computing → transferring → awaitingRelease → released', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.settle('compute', 'ok', { kvBytes: 4096 });
    expect(h.state()).toBe('transferring');
    await h.settle('transfer', 'ok');
    expect(h.notified).toEqual(['posted']);
    await h.send({ type: 'RELEASE', outcome: 'confirmed' });
    expect(h.path).toEqual(['reserved', 'computing', 'transferring', 'awaitingRelease', 'released']);
    expect(h.retired).toHaveLength(1);
    expect(h.retired[0]).toMatchObject({ status: 'released', context: { kvBytes: 4096 } });
  });

  it('expires a reserved room that never receives its prefill request', async () => {
    const h = harness();
    h.clock.advance(deadlines.reservedMs - 1);
    await flush();
    expect(h.state()).toBe('reserved');
    h.clock.advance(1);
    await flush();
    expect(h.state()).toBe('expired');
    expect(h.retired[0]?.status).toBe('expired');
  });

  it('releases a reserved room at once when decode aborts before starting it', async () => {
    const h = harness();
    await h.send({ type: 'RELEASE', outcome: 'aborted' });
    expect(h.state()).toBe('released');
    expect(h.calls.compute).toHaveLength(0);
  });

  it('aborts the computation when decode aborts during compute; nothing was written', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    const compute = h.last('compute');
    await h.send({ type: 'RELEASE', outcome: 'aborted' });
    expect(h.state()).toBe('released');
    expect(compute.signal.aborted).toBe(true);
    expect(h.calls.drain).toHaveLength(0);
  });

  it('reports a failed computation to decode and retires the room', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.settle('compute', new TandemError(ErrorCode.PrefillFailed, 'out of memory'));
    expect(h.state()).toBe('failed');
    expect(h.notified).toEqual(['failed:prefill_failed']);
    expect(h.retired[0]?.context.error).toEqual({ code: ErrorCode.PrefillFailed, message: 'out of memory' });
  });

  it('fails the room when compute outlives its deadline', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    h.clock.advance(deadlines.computeMs);
    await flush();
    expect(h.state()).toBe('failed');
    expect(h.last('compute').signal.aborted).toBe(true);
    expect(h.notified).toEqual(['failed:prefill_failed']);
  });

  it('drains in-flight writes before acknowledging an abort during transfer', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.settle('compute', 'ok', { kvBytes: 10 });
    await h.send({ type: 'RELEASE', outcome: 'aborted' });
    expect(h.state()).toBe('draining');
    expect(h.retired).toHaveLength(0);
    await h.settle('drain', 'ok');
    expect(h.state()).toBe('released');
    expect(h.retired).toHaveLength(1);
  });

  it('drains and fails when a write fails, telling decode first', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.settle('compute', 'ok', { kvBytes: 10 });
    await h.settle('transfer', new TandemError(ErrorCode.TransferFailed, 'link down'));
    expect(h.state()).toBe('draining');
    expect(h.notified).toEqual(['failed:transfer_failed']);
    await h.settle('drain', 'ok');
    expect(h.state()).toBe('failed');
  });

  it('drains and fails when the transfer outlives its deadline', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.settle('compute', 'ok', { kvBytes: 10 });
    h.clock.advance(deadlines.transferMs);
    await flush();
    expect(h.state()).toBe('draining');
    expect(h.last('transfer').signal.aborted).toBe(true);
    h.clock.advance(deadlines.drainMs);
    await flush();
    expect(h.state()).toBe('failed');
  });

  it('expires a room whose decode worker never confirms', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.settle('compute', 'ok', { kvBytes: 10 });
    await h.settle('transfer', 'ok');
    h.clock.advance(deadlines.releaseMs);
    await flush();
    expect(h.state()).toBe('expired');
  });

  it('ignores a second START (a duplicate prefill request) once computing', async () => {
    const h = harness();
    await h.send({ type: 'START' });
    await h.send({ type: 'START' });
    expect(h.calls.compute).toHaveLength(1);
    expect(h.state()).toBe('computing');
  });
});

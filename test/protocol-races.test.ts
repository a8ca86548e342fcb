import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TandemError } from '../src/errors.js';
import { generate, type GenerationPlan } from '../src/actors/frontend/generation.js';
import { SimEngine } from '../src/engine/sim/sim-engine.js';
import { kvPayloadBytes, pagesFor, realClock, runAggregated } from '../src/internal.js';
import type { Cluster } from '../src/index.js';
import type { Transport } from '../src/transport/transport.js';
import { leftovers } from './helpers/cluster-idle.js';
import { drive, Gate, scheduledCluster, type DuplicableKind } from './helpers/scheduled-cluster.js';

// fast-check's scheduler decides the order of every message delivery, every reply and every
// fabric write application between one real prefill worker and one real decode worker, so these
// properties explore the protocol's races: a client cancel against the KV completion, a decode
// deadline against a write still in flight, and duplicated bootstrap, prefill and release
// messages. After each run the cluster must be quiescent and have given everything back.

const pageBytes = 1024;
const engine = new SimEngine({ clock: realClock, speedup: Number.POSITIVE_INFINITY });
const quiescenceMs = 5_000;

/** fast-check prints the seed and path of a failure; the seed is fixed so every run explores the same cases. */
const runParams = (numRuns: number, seed: number): fc.Parameters<unknown> => ({ numRuns, seed, endOnFailure: true });

type Outcome = { kind: 'done'; text: string } | { kind: 'failed'; code: string } | { kind: 'cancelled' };

function pagesNeeded(promptTokens: number): number {
  return pagesFor(kvPayloadBytes(engine.kvBytes(promptTokens), engine.model.identity, engine.model.kvLayout), pageBytes);
}

async function reference(prompt: string, maxTokens: number): Promise<string> {
  const tokens = await runAggregated(engine, engine.tokenize(prompt), { temperature: 0, topP: 1, seed: 0, maxTokens, ignoreEos: true });
  const detokenizer = engine.createDetokenizer();
  return detokenizer.push(tokens) + detokenizer.flush();
}

function plan(cluster: Cluster, requestId: string, prompt: string, maxTokens: number, deadlines?: GenerationPlan['deadlines']): GenerationPlan {
  const record = (worker: { instanceId: string; subjectPrefix: string }, role: 'prefill' | 'decode') => ({
    instanceId: worker.instanceId,
    role,
    model: engine.model.name,
    epoch: 1,
    subjectPrefix: worker.subjectPrefix,
  });
  return {
    requestId,
    model: engine.model.name,
    promptTokens: engine.tokenize(prompt),
    sampling: { temperature: 0, top_p: 1, seed: 0, max_tokens: maxTokens, ignore_eos: true },
    stops: [],
    decode: [record(cluster.decode[0]!, 'decode')],
    prefill: [record(cluster.prefill[0]!, 'prefill')],
    ...(deadlines ? { deadlines } : {}),
  };
}

/** Runs one request to its end; never throws. */
async function consume(transport: Transport, generation: GenerationPlan, signal?: AbortSignal): Promise<Outcome> {
  let text = '';
  try {
    for await (const event of generate({ transport, engine, idleTimeoutMs: 10_000 }, generation, signal)) {
      if (event.type === 'text') text += event.text;
      else return { kind: 'done', text };
    }
    return { kind: 'failed', code: 'no finish event' };
  } catch (error) {
    if (signal?.aborted) return { kind: 'cancelled' };
    return { kind: 'failed', code: TandemError.from(error).code };
  }
}

/** Tracks a promise so the driver can tell when it has settled. */
function track<T>(promise: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let settled = false;
  void promise.finally(() => (settled = true));
  return { promise, settled: () => settled };
}

/** What every run must hold once quiescent. */
function expectQuiescentAndClean(cluster: Cluster, gate: Gate): void {
  expect(gate.errors).toEqual([]);
  expect(leftovers(cluster)).toEqual([]);
  const decode = cluster.stats().decode[0]!;
  expect(decode.pool.quarantined).toBe(0);
  expect(decode.pool.free).toBe(decode.pool.capacity);
  expect(decode.region.rejectedWrites).toBe(0);
  expect(cluster.stats().prefill[0]!.rooms).toBe(0);
  cluster.decode[0]!.checkConservation();
}

const idle = (cluster: Cluster) => () => leftovers(cluster).length === 0;
const describeState = (cluster: Cluster) => () => JSON.stringify({ leftovers: leftovers(cluster), stats: cluster.stats() });

describe('protocol races under fc.scheduler', () => {
  it('a client cancel racing the KV completion and the first token ends the request once and leaks nothing', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.integer({ min: 100, max: 2500 }),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 0, max: 80 }),
        async (s, promptChars, maxTokens, abortAtStep) => {
          const gate = new Gate(s);
          const { cluster, transport } = await scheduledCluster(gate, { seed: 7, pageBytes, pageCount: 256 });
          try {
            const prompt = 'the quick brown fox '.repeat(Math.ceil(promptChars / 20)).slice(0, promptChars);
            const controller = new AbortController();
            const outcome = track(consume(transport, plan(cluster, 'req-cancel', prompt, maxTokens), controller.signal));
            let abortScheduled = false;
            await drive(
              s,
              () => outcome.settled() && idle(cluster)(),
              quiescenceMs,
              describeState(cluster),
              () => {
                // The abort itself is a scheduled task, so it can land between any two deliveries after this step.
                if (!abortScheduled && gate.steps >= abortAtStep) {
                  abortScheduled = true;
                  gate.run('client abort', () => controller.abort());
                }
              },
            );
            const result = await outcome.promise;
            expectQuiescentAndClean(cluster, gate);
            const { finished } = cluster.stats().decode[0]!;
            expect(finished.done + finished.failed + finished.cancelled).toBeLessThanOrEqual(1);
            if (result.kind === 'done') {
              expect(finished.done).toBe(1);
              expect(result.text).toBe(await reference(prompt, maxTokens));
            }
            if (result.kind === 'failed') throw new Error(`the request failed with ${result.code} though only the client acted`);
          } finally {
            await cluster.close();
          }
        },
      ),
      runParams(40, 0x5eed01),
    );
  }, 60_000);

  it('a write still in flight when decode gives up lands only in the quarantined pages of its own room, never in a later request', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.integer({ min: 800, max: 2500 }),
        fc.integer({ min: 100, max: 2500 }),
        fc.boolean(),
        fc.integer({ min: 0, max: 30 }),
        async (s, firstChars, secondChars, tightPool, openAfterSteps) => {
          const gate = new Gate(s);
          const first = 'a'.repeat(firstChars);
          const second = 'the quick brown fox '.repeat(Math.ceil(secondChars / 20)).slice(0, secondChars);
          const firstPages = pagesNeeded(engine.tokenize(first).length);
          const secondPages = pagesNeeded(engine.tokenize(second).length);
          // A tight pool makes the second request wait for the first one's quarantined pages.
          const pageCount = tightPool ? Math.max(firstPages, secondPages) : firstPages + secondPages;
          const { cluster, transport } = await scheduledCluster(gate, { seed: 9, pageBytes, pageCount });
          try {
            gate.holdWrites = true;
            // Decode gives up on the transfer quickly; the held writes cannot land before it does.
            const late = track(consume(transport, plan(cluster, 'req-late', first, 3, { transfer_ms: 20, polling_ms: 20 })));
            await drive(s, late.settled, quiescenceMs, describeState(cluster));
            const lateResult = await late.promise;
            expect(lateResult).toMatchObject({ kind: 'failed' });

            const next = track(consume(transport, plan(cluster, 'req-next', second, 4)));
            const openAt = gate.steps + openAfterSteps;
            await drive(
              s,
              () => next.settled() && idle(cluster)(),
              quiescenceMs,
              describeState(cluster),
              () => {
                // Open at the chosen step, or as soon as nothing else could make progress.
                if (gate.holdWrites && (gate.steps >= openAt || s.count() === 0)) gate.openWrites();
              },
            );
            const nextResult = await next.promise;
            expectQuiescentAndClean(cluster, gate);
            expect(nextResult).toEqual({ kind: 'done', text: await reference(second, 4) });
            const stats = cluster.stats();
            expect(stats.decode[0]!.finished).toEqual({ done: 1, failed: 1, cancelled: 0 });
            expect(stats.prefill[0]!.retired.released + stats.prefill[0]!.retired.failed).toBe(2);
          } finally {
            await cluster.close();
          }
        },
      ),
      runParams(30, 0x5eed02),
    );
  }, 60_000);

  it('duplicated bootstrap, prefill and release messages are refused or acknowledged cleanly and leak no room', async () => {
    const kinds: DuplicableKind[] = ['bootstrap', 'prefill', 'release'];
    await fc.assert(
      fc.asyncProperty(
        fc.scheduler(),
        fc.subarray(kinds, { minLength: 1 }),
        fc.integer({ min: 100, max: 2000 }),
        fc.integer({ min: 1, max: 4 }),
        async (s, duplicated, promptChars, maxTokens) => {
          const gate = new Gate(s, new Set(duplicated));
          // A room granted to a duplicate nobody hears of expires after allocation + prefill deadlines.
          const { cluster, transport } = await scheduledCluster(gate, { seed: 13, pageBytes, pageCount: 256, deadlines: { allocationMs: 100, prefillMs: 200 } });
          try {
            const prompt = 'jumps over the lazy dog '.repeat(Math.ceil(promptChars / 24)).slice(0, promptChars);
            const outcome = track(consume(transport, plan(cluster, 'req-dup', prompt, maxTokens)));
            await drive(s, () => outcome.settled() && idle(cluster)(), quiescenceMs, describeState(cluster));
            expect(await outcome.promise).toEqual({ kind: 'done', text: await reference(prompt, maxTokens) });
            expectQuiescentAndClean(cluster, gate);
            const prefill = cluster.stats().prefill[0]!;
            expect(prefill.retired.released).toBe(1);
            expect(prefill.retired.failed).toBe(0);
            // The duplicate bootstrap got a room of its own; nobody claimed it, so it expired.
            expect(prefill.retired.expired).toBe(gate.duplicated.bootstrap);
            // A second prefill_request is refused (duplicate_room, or unknown_room once retired); a second release is acknowledged.
            expect(prefill.refused).toBe(gate.duplicated.prefill);
            expect(cluster.stats().decode[0]!.finished).toEqual({ done: 1, failed: 0, cancelled: 0 });
          } finally {
            await cluster.close();
          }
        },
      ),
      runParams(30, 0x5eed03),
    );
  }, 60_000);
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, defaultDeadlines, defaultLimits, SimEngine, silentLogger, type Cluster, type Transport } from '../src/index.js';
import { DecodeWorker, encode, MemoryDiscovery, MemoryTransport, PrefillWorker, realClock, seededRandom, SimFabricNetwork, subjects } from '../src/internal.js';
import { leftovers, waitForIdle } from './helpers/cluster-idle.js';
import { deferred, waitFor } from './helpers/deferred.js';
import { sseData } from './helpers/sse.js';

const model = 'tandem-sim';

// Decoding takes 5 ms a token and prefill 20 ms a prompt token, so a request left alone would run
// for tens of seconds: only a cancellation gives its pages and room back within the waits below.
const decodeBaseMs = 5;
const prefillPerTokenMs = 20;
const longDecodeTokens = 8000;

function post(cluster: Cluster, body: Record<string, unknown>, signal: AbortSignal): Promise<Response> {
  return fetch(`${cluster.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, ...body }),
    signal,
  });
}

/** Finished-request counters summed over the decode workers. */
function finished(cluster: Cluster): { done: number; failed: number; cancelled: number } {
  const total = { done: 0, failed: 0, cancelled: 0 };
  for (const worker of cluster.stats().decode) {
    total.done += worker.finished.done;
    total.failed += worker.finished.failed;
    total.cancelled += worker.finished.cancelled;
  }
  return total;
}

describe('cancellation', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({
      port: 0,
      log: silentLogger,
      seed: 77,
      engine: { speedup: 1, timing: { decodeBaseMs, prefillBaseMs: 0, prefillPerTokenMs, prefillPerTokenSquaredMs: 0 } },
    });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('cancels a streamed request when the client disconnects mid-stream, giving back every page and room', async () => {
    const before = finished(cluster);
    const controller = new AbortController();
    const response = await post(cluster, { prompt: 'stream me', max_tokens: longDecodeTokens, stream: true }, controller.signal);
    expect(response.status).toBe(200);
    const chunks: string[] = [];
    for await (const data of sseData(response.body!)) {
      chunks.push(data);
      if (chunks.length === 3) break;
    }
    expect(chunks.map((data) => (JSON.parse(data) as { object: string }).object)).toEqual(['text_completion', 'text_completion', 'text_completion']);
    expect(cluster.stats().decode[0]!.activeRequests).toBe(1);

    controller.abort();
    await waitForIdle(cluster);
    expect(finished(cluster)).toEqual({ ...before, cancelled: before.cancelled + 1 });
    expect(cluster.stats().decode[0]!.pool.quarantined).toBe(0);
  });

  it('cancels a request still in prefill when the client disconnects before the first token', async () => {
    const before = finished(cluster);
    const prefillBefore = cluster.stats().prefill[0]!.retired;
    const controller = new AbortController();
    // 1000 prompt tokens take 20 s to prefill; the client leaves long before.
    const pending = post(cluster, { prompt: 'p'.repeat(1000), max_tokens: 16, stream: true }, controller.signal);
    await waitFor(() => {
      const { prefill, decode } = cluster.stats();
      return prefill[0]!.rooms === 1 && decode[0]!.pool.held > 0;
    }, 10_000, 'the request to reach prefill with pages held');

    controller.abort();
    // Headers go out with the first token, so the client had nothing yet.
    await expect(pending).rejects.toThrow();
    await waitForIdle(cluster);
    expect(finished(cluster)).toEqual({ ...before, cancelled: before.cancelled + 1 });
    const stats = cluster.stats();
    expect(stats.decode[0]!.pool.quarantined).toBe(0);
    expect(stats.decode[0]!.fencedRooms).toBe(0);
    const retired = stats.prefill[0]!.retired;
    expect(retired.released + retired.expired + retired.failed).toBe(prefillBefore.released + prefillBefore.expired + prefillBefore.failed + 1);
  });

  it('cancels a non-streamed request when the client disconnects while it decodes', async () => {
    const before = finished(cluster);
    const controller = new AbortController();
    const pending = post(cluster, { prompt: 'wait for all of it', max_tokens: longDecodeTokens }, controller.signal);
    await waitFor(() => cluster.stats().decode[0]!.batch.active === 1, 10_000, 'the request to start decoding');

    controller.abort();
    await expect(pending).rejects.toThrow();
    await waitForIdle(cluster);
    expect(finished(cluster)).toEqual({ ...before, cancelled: before.cancelled + 1 });
  });

  it('gives everything back when clients disconnect at every point of a request', async () => {
    const before = finished(cluster);
    // Aborts land from before the request reaches decode, through bootstrap, allocation, prefill
    // and transfer, to decoding; each is one event-loop turn later than the one before.
    const outcomes = await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        const controller = new AbortController();
        const pending = post(cluster, { prompt: `spray ${i}`, max_tokens: 3, stream: i % 2 === 0 }, controller.signal).then((response) => response.text());
        for (let turn = 0; turn < i; turn++) await new Promise<void>((resolve) => setImmediate(resolve));
        controller.abort();
        return pending.then(
          () => 'completed',
          () => 'aborted',
        );
      }),
    );
    expect(outcomes).toContain('aborted');
    await waitForIdle(cluster);
    const after = finished(cluster);
    expect(after.failed).toBe(before.failed);
  });

  it('still serves requests after the cancellations', async () => {
    const response = await post(cluster, { prompt: 'after', max_tokens: 4 }, new AbortController().signal);
    expect(response.status).toBe(200);
    const body = (await response.json()) as { choices: Array<{ text: string; finish_reason: string }> };
    expect(body.choices[0]!.text).toHaveLength(4);
    await waitForIdle(cluster);
    expect(leftovers(cluster)).toEqual([]);
  });
});

describe('DecodeWorker cancelled during bootstrap', () => {
  it('hands back a room the prefill worker granted after the request was cancelled', async () => {
    const clock = realClock;
    const inner = new MemoryTransport({ clock });
    const grantHeld = deferred<void>();
    let grantsIssued = 0;
    // The grant is held back like a slow network: the prefill worker has issued the room, decode
    // has not heard of it yet. An aborted request rejects at once and drops a later reply, as the
    // memory and NATS transports do.
    const transport: Transport = {
      request(subject, data, options) {
        if (!subject.endsWith('.bootstrap')) return inner.request(subject, data, options);
        const { signal } = options;
        return new Promise<Uint8Array>((resolve, reject) => {
          const onAbort = (): void => reject(signal?.reason);
          signal?.addEventListener('abort', onAbort, { once: true });
          inner.request(subject, data, { timeoutMs: options.timeoutMs, headers: options.headers }).then(async (reply) => {
            grantsIssued++;
            await grantHeld.promise;
            signal?.removeEventListener('abort', onAbort);
            resolve(reply);
          }, reject);
        });
      },
      publish: (subject, data, publishOptions) => inner.publish(subject, data, publishOptions),
      subscribe: (subject, handler, options) => inner.subscribe(subject, handler, options),
      stream: (subject, data, options) => inner.stream(subject, data, options),
      close: () => inner.close(),
    };
    const discovery = new MemoryDiscovery({ clock });
    const network = new SimFabricNetwork({ clock });
    const limits = { ...defaultLimits };
    const deadlines = { ...defaultDeadlines };
    const engine = (): SimEngine => new SimEngine({ clock, speedup: Infinity });
    const prefill = new PrefillWorker({
      instanceId: 'prefill-a',
      epoch: 1,
      transport,
      discovery,
      fabric: network.attach('prefill-a'),
      engine: engine(),
      clock,
      random: seededRandom(1),
      log: silentLogger,
      limits,
      deadlines,
    });
    const decode = new DecodeWorker({
      instanceId: 'decode-a',
      epoch: 1,
      transport,
      discovery,
      fabric: network.attach('decode-a'),
      engine: engine(),
      clock,
      log: silentLogger,
      pageBytes: 16 * 1024,
      pageCount: 64,
      limits,
      deadlines,
      prefillLocally: false,
    });
    await prefill.start();
    await decode.start();
    try {
      const stream = transport.stream(
        subjects.generate(decode.subjectPrefix),
        encode('generate', {
          request_id: 'cmpl-cancelled-in-bootstrap',
          model: 'tandem-sim',
          prompt_tokens: [104, 105],
          sampling: { temperature: 0, top_p: 1, seed: 0, max_tokens: 4, ignore_eos: false },
          prefill_candidates: [{ instance_id: prefill.instanceId, subject_prefix: prefill.subjectPrefix }],
        }),
        { idleTimeoutMs: 10_000 },
      );
      const consumed = (async () => {
        for await (const _chunk of stream);
      })().catch(() => {});
      await waitFor(() => grantsIssued === 1, 5000, 'the prefill worker to grant a room');
      expect(prefill.stats().rooms).toBe(1);

      stream.cancel();
      await consumed;
      await waitFor(() => decode.stats().activeRequests === 0, 5000, 'the decode worker to end the request');
      grantHeld.resolve();

      await waitFor(() => prefill.stats().rooms === 0, 5000, 'the late grant to be handed back');
      expect(prefill.stats().retired).toEqual({ released: 1, expired: 0, failed: 0 });
      expect(decode.stats().finished).toEqual({ done: 0, failed: 0, cancelled: 1 });
      expect(decode.stats().pool.free).toBe(64);
    } finally {
      grantHeld.resolve();
      await decode.stop();
      await prefill.stop();
      await network.close();
      await transport.close();
      await discovery.close();
    }
  });
});

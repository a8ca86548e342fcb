import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { waitForIdle } from './helpers/cluster-idle.js';

const model = 'tandem-sim';
const clientTraceId = '4bf92f3577b34da6a3ce929d0e0e4736';
const clientTrace = `00-${clientTraceId}-00f067aa0ba902b7-01`;

describe('OpenTelemetry request spans', () => {
  let cluster: Cluster;
  const exporter = new InMemorySpanExporter();

  beforeAll(async () => {
    cluster = await createCluster({ port: 0, log: silentLogger, seed: 7, engine: { speedup: Infinity }, otel: { exporter } });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it("makes a request span in the client's trace with one child span per machine state, in order", async () => {
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: clientTrace },
      body: JSON.stringify({ model, prompt: 'Span me', max_tokens: 4, ignore_eos: true }),
    });
    expect(response.status).toBe(200);
    const { id } = (await response.json()) as { id: string };
    await waitForIdle(cluster);

    const spans = exporter.getFinishedSpans();
    const requests = spans.filter((span) => span.name === 'request' && span.attributes['tandem.request_id'] === id);
    expect(requests).toHaveLength(1);
    const request = requests[0]!;
    expect(request.spanContext().traceId).toBe(clientTraceId);
    expect(request.attributes['tandem.outcome']).toBe('done');
    // Its parent is the frontend's hop, which has a span id of its own in the client's trace.
    expect(request.parentSpanContext?.traceId).toBe(clientTraceId);
    expect(request.parentSpanContext?.spanId).not.toBe('00f067aa0ba902b7');

    const children = spans
      .filter((span: ReadableSpan) => span.parentSpanContext?.spanId === request.spanContext().spanId)
      .sort((a, b) => hrMs(a.startTime) - hrMs(b.startTime));
    expect(children.map((span) => span.name)).toEqual(['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode']);
    for (const child of children) {
      expect(child.spanContext().traceId).toBe(clientTraceId);
      expect(hrMs(child.startTime)).toBeGreaterThanOrEqual(hrMs(request.startTime));
      expect(hrMs(child.endTime)).toBeLessThanOrEqual(hrMs(request.endTime));
    }
  });

  it('makes no spans when no exporter is configured', async () => {
    const plain = await createCluster({ port: 0, log: silentLogger, seed: 8, engine: { speedup: Infinity } });
    try {
      const before = exporter.getFinishedSpans().length;
      const response = await fetch(`${plain.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', traceparent: clientTrace },
        body: JSON.stringify({ model, prompt: 'No spans', max_tokens: 2, ignore_eos: true }),
      });
      expect(response.status).toBe(200);
      await waitForIdle(plain);
      expect(exporter.getFinishedSpans()).toHaveLength(before);
    } finally {
      await plain.close();
    }
  });
});

function hrMs([seconds, nanos]: [number, number]): number {
  return seconds * 1000 + nanos / 1e6;
}

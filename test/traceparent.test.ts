import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, type Cluster } from '../src/index.js';
import { realClock, seededRandom } from '../src/internal.js';
import { pinoLogger } from '../src/log-pino.js';
import { memoryBackends, type BackendsFactory } from '../src/runtime/backends.js';
import { traceHeaders, withHeaderTraceparent } from '../src/trace/trace-headers.js';
import { continueTrace, formatTraceparent, parseTraceparent } from '../src/trace/traceparent.js';
import { waitForIdle } from './helpers/cluster-idle.js';

const model = 'tandem-sim';
const clientTrace = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

interface LogLine {
  level: string;
  time: number;
  msg: string;
  [field: string]: unknown;
}

describe('parseTraceparent', () => {
  it('accepts a valid version-00 header and rejects malformed ones', () => {
    expect(parseTraceparent(clientTrace)).toEqual({ traceId: '4bf92f3577b34da6a3ce929d0e0e4736', parentId: '00f067aa0ba902b7', flags: '01' });
    for (const bad of [
      undefined,
      '',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7',
      '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01',
      '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
      'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra',
    ]) {
      expect(parseTraceparent(bad), String(bad)).toBeUndefined();
    }
    // A later version may append fields; its first four are read.
    expect(parseTraceparent('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more')?.traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
  });

  it("continues the client's trace with a new span, or starts a sampled one from the seeded Random", () => {
    const continued = continueTrace(clientTrace, seededRandom(1));
    expect(continued.traceId).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
    expect(continued.parentId).not.toBe('00f067aa0ba902b7');
    const fresh = formatTraceparent(continueTrace('garbage', seededRandom(1)));
    expect(parseTraceparent(fresh)?.flags).toBe('01');
    expect(fresh).toBe(formatTraceparent(continueTrace(undefined, seededRandom(1))));
  });
});

describe('withHeaderTraceparent', () => {
  const message = (headers: Record<string, string>) => ({
    subject: 'x',
    data: new Uint8Array(),
    expectsReply: false,
    isStream: false,
    headers,
    respond: () => {},
    openStream: () => {
      throw new Error('not a stream');
    },
  });

  it('prefers the transport header over the body field, and falls back to the field without one', () => {
    const other = '00-11111111111111111111111111111111-2222222222222222-01';
    const bare: { request_id: string; traceparent?: string } = { request_id: 'r' };
    expect(withHeaderTraceparent({ request_id: 'r', traceparent: other }, message({ traceparent: clientTrace })).traceparent).toBe(clientTrace);
    expect(withHeaderTraceparent(bare, message({ traceparent: clientTrace })).traceparent).toBe(clientTrace);
    expect(withHeaderTraceparent({ request_id: 'r', traceparent: other }, message({})).traceparent).toBe(other);
    expect(withHeaderTraceparent(bare, message({})).traceparent).toBeUndefined();
    expect(traceHeaders(undefined)).toBeUndefined();
    expect(traceHeaders(clientTrace)).toEqual({ traceparent: clientTrace });
  });
});

describe('traceparent through the cluster', () => {
  let cluster: Cluster;
  const lines: LogLine[] = [];

  beforeAll(async () => {
    const destination = { write: (chunk: string) => void lines.push(JSON.parse(chunk) as LogLine) };
    cluster = await createCluster({
      port: 0,
      seed: 5,
      engine: { speedup: Infinity },
      log: pinoLogger({ level: 'debug', clock: realClock, destination }),
    });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  async function complete(headers: Record<string, string>): Promise<string> {
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model, prompt: 'Follow me', max_tokens: 4, ignore_eos: true }),
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { id: string };
    await waitForIdle(cluster);
    return body.id;
  }

  it("follows one request's traceparent from the HTTP call through the decode and prefill workers' JSON logs", async () => {
    const requestId = await complete({ traceparent: clientTrace });
    const traced = lines.filter((line) => typeof line.traceparent === 'string' && parseTraceparent(line.traceparent)?.traceId === '4bf92f3577b34da6a3ce929d0e0e4736');
    // Every line of the trace is about this request, and every line about this request is traced.
    expect(traced.every((line) => line.request === requestId)).toBe(true);
    expect(lines.filter((line) => line.request === requestId).every((line) => traced.includes(line))).toBe(true);

    const frontend = traced.filter((line) => line.actor === 'frontend');
    const decode = traced.filter((line) => String(line.worker).startsWith('decode-'));
    const prefill = traced.filter((line) => String(line.worker).startsWith('prefill-'));
    expect(frontend.map((line) => line.msg)).toContain('request accepted');
    expect(decode.map((line) => line.msg)).toEqual(expect.arrayContaining(['request started', 'room granted', 'request finished']));
    expect(prefill.map((line) => line.msg)).toEqual(expect.arrayContaining(['room granted', 'prefill started', 'kv transferred', 'room retired']));

    // The frontend's hop has its own span id; decode and prefill log the context it propagated.
    const propagated = frontend[0]!.traceparent as string;
    expect(propagated).not.toBe(clientTrace);
    expect([...decode, ...prefill].every((line) => line.traceparent === propagated)).toBe(true);

    // Decode and prefill agree on the room, and every worker line of the request after the grant carries it.
    const room = decode.find((line) => line.msg === 'room granted')!.room;
    expect(typeof room).toBe('number');
    expect(prefill.every((line) => line.room === room)).toBe(true);
    expect(decode.find((line) => line.msg === 'request finished')!.room).toBe(room);
    for (const line of traced) {
      expect(typeof line.time).toBe('number');
      expect(line.level).toBe('debug');
    }
  });

  it('starts a new trace for a request without a valid traceparent', async () => {
    const cases: Array<Record<string, string>> = [{}, { traceparent: 'not-a-trace' }];
    for (const headers of cases) {
      const requestId = await complete(headers);
      const about = lines.filter((line) => line.request === requestId);
      expect(about.length).toBeGreaterThan(3);
      const values = new Set(about.map((line) => line.traceparent));
      expect(values.size).toBe(1);
      const [value] = [...values];
      expect(parseTraceparent(value as string)).toBeDefined();
    }
  });
});

describe('traceparent through transport headers', () => {
  let cluster: Cluster;
  const lines: LogLine[] = [];
  /** Message types that went out with a `traceparent` header. */
  const headed = new Set<string>();
  const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

  /** Drops the body's `traceparent` field wherever the header carries it, so only the header path is left. */
  const stripField = (data: Uint8Array, headers: Readonly<Record<string, string>> | undefined): Uint8Array => {
    if (!headers?.traceparent) return data;
    const { traceparent, ...body } = packr.unpack(data) as Record<string, unknown>;
    expect(traceparent).toBe(headers.traceparent);
    headed.add(String(body.t));
    return packr.pack(body);
  };

  const headerOnly: BackendsFactory = async (context) => {
    const backends = await memoryBackends(context);
    const inner = backends.transport;
    return {
      name: backends.name,
      discovery: backends.discovery,
      fabric: (instanceId) => backends.fabric(instanceId),
      close: () => backends.close(),
      transport: {
        request: (subject, data, options) => inner.request(subject, stripField(data, options.headers), options),
        publish: (subject, data, options) => inner.publish(subject, stripField(data, options?.headers), options),
        stream: (subject, data, options) => inner.stream(subject, stripField(data, options.headers), options),
        subscribe: (subject, handler, options) => inner.subscribe(subject, handler, options),
        close: () => inner.close(),
      },
    };
  };

  beforeAll(async () => {
    const destination = { write: (chunk: string) => void lines.push(JSON.parse(chunk) as LogLine) };
    cluster = await createCluster({
      port: 0,
      seed: 6,
      engine: { speedup: Infinity },
      backends: headerOnly,
      log: pinoLogger({ level: 'debug', clock: realClock, destination }),
    });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('propagates the trace to decode and prefill when only the header carries it', async () => {
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: clientTrace },
      body: JSON.stringify({ model, prompt: 'Follow me', max_tokens: 4, ignore_eos: true }),
    });
    expect(response.status).toBe(200);
    const { id } = (await response.json()) as { id: string };
    await waitForIdle(cluster);
    expect([...headed].sort()).toEqual(['bootstrap_request', 'generate', 'prefill_request', 'release_request']);
    const about = lines.filter((line) => line.request === id);
    const decode = about.filter((line) => String(line.worker).startsWith('decode-'));
    const prefill = about.filter((line) => String(line.worker).startsWith('prefill-'));
    expect(decode.length).toBeGreaterThan(0);
    expect(prefill.length).toBeGreaterThan(0);
    for (const line of [...decode, ...prefill]) {
      expect(parseTraceparent(line.traceparent as string)?.traceId, line.msg).toBe('4bf92f3577b34da6a3ce929d0e0e4736');
    }
  });
});

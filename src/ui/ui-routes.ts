import type { FastifyInstance, FastifyReply } from 'fastify';
import { readFileSync } from 'node:fs';
import type { InspectionRecorder } from '../inspect/inspection-recorder.js';
import { diagramMachines, machineDiagram, type MachineDiagram } from '../inspect/machine-diagram.js';
import type { TransitionRecord } from '../inspect/transition-record.js';
import type { Clock, TimerId } from '../time/clock.js';

/** What the UI shows: the live feed of this process, or a recorded trace. */
export interface UiSource {
  /** 'live' follows the recorder as it records; 'trace' shows a recording with a time slider. */
  mode: 'live' | 'trace';
  recorder: InspectionRecorder;
  clock: Clock;
  /** Every worker with its counters (live only). */
  cluster?: () => Promise<unknown>;
  /** Shown in the header, e.g. the trace's file names. */
  title?: string;
}

/** How often the event stream sends the transitions recorded since its last batch. */
const eventBatchMs = 250;
/** Transitions buffered per event-stream client between batches; more are counted, not sent. */
const eventBatchRecordsMax = 500;
/** A comment on an idle event stream, so proxies keep it open. */
const eventHeartbeatMs = 15_000;

const staticFiles: Record<string, { file: string; type: string }> = {
  '/ui': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/ui/diagram.js': { file: 'diagram.js', type: 'text/javascript; charset=utf-8' },
  '/ui/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
};

function optionalNumber(value: unknown): number | undefined {
  if (typeof value !== 'string' || value === '') return undefined;
  const parsed = Number(value);
  return Number.isFinite(parsed) ? parsed : undefined;
}

/**
 * Serves the web UI at /ui and its JSON API under /ui/api: the cluster, the request list (paged,
 * filtered), one request's transitions and timeline, the machines' diagrams and, live, an SSE
 * stream of transitions as they happen. Everything is served from this process: no CDN.
 */
export function registerUi(app: FastifyInstance, source: UiSource): void {
  const { recorder } = source;
  const dir = new URL('./static/', import.meta.url);
  const bodies = new Map<string, string>();
  for (const { file } of Object.values(staticFiles)) if (!bodies.has(file)) bodies.set(file, readFileSync(new URL(file, dir), 'utf8'));
  for (const [path, { file, type }] of Object.entries(staticFiles)) {
    app.get(path, async (_request, reply) => reply.header('content-type', type).header('cache-control', 'no-cache').send(bodies.get(file)));
  }
  const diagrams: Record<string, MachineDiagram> = Object.fromEntries(Object.entries(diagramMachines).map(([name, machine]) => [name, machineDiagram(machine)]));

  app.get('/ui/api/info', async () => ({
    mode: source.mode,
    title: source.title ?? null,
    now_ms: source.clock.now(),
    time_range: recorder.index.timeRange(),
    ring: { size: recorder.ring.size, capacity: recorder.ring.capacityMax, recorded: recorder.ring.pushed },
    requests: recorder.index.size,
  }));
  app.get('/ui/api/machines', async () => diagrams);
  app.get('/ui/api/cluster', async () => (source.cluster ? await source.cluster() : { workers: [] }));
  app.get('/ui/api/requests', async (request) => {
    const query = request.query as Record<string, unknown>;
    return recorder.index.list({
      text: typeof query.q === 'string' ? query.q : undefined,
      state: typeof query.state === 'string' && query.state !== '' ? query.state : undefined,
      offset: optionalNumber(query.offset),
      limit: optionalNumber(query.limit),
      atMs: optionalNumber(query.at),
    });
  });
  app.get('/ui/api/requests/:id', async (request, reply) => {
    const { id } = request.params as { id: string };
    const detail = recorder.index.detail(id, optionalNumber((request.query as Record<string, unknown>).at));
    if (!detail) return reply.status(404).send({ error: { message: `request '${id}' is not in the index`, type: 'not_found', param: null, code: 'not_found' } });
    return detail;
  });
  app.get('/ui/api/events', (_request, reply) => streamEvents(source, reply));
}

/** Sends transitions as SSE batches every `eventBatchMs`, until the client goes away. */
function streamEvents(source: UiSource, reply: FastifyReply): void {
  const res = reply.raw;
  let pending: TransitionRecord[] = [];
  let overflow = 0;
  const unsubscribe = source.recorder.subscribe((record) => {
    if (pending.length < eventBatchRecordsMax) pending.push(record);
    else overflow++;
  });
  if (unsubscribe === false) {
    void reply.status(429).send({ error: { message: 'too many event streams are open', type: 'overloaded', param: null, code: 'overloaded' } });
    return;
  }
  reply.hijack();
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
  res.write(': tandem transitions\n\n');
  let timer: TimerId | undefined;
  let idleMs = 0;
  const tick = (): void => {
    if (res.destroyed || res.writableEnded) return;
    if (pending.length > 0 || overflow > 0) {
      res.write(`event: transitions\ndata: ${JSON.stringify({ records: pending, overflow })}\n\n`);
      pending = [];
      overflow = 0;
      idleMs = 0;
    } else if ((idleMs += eventBatchMs) >= eventHeartbeatMs) {
      res.write(': idle\n\n');
      idleMs = 0;
    }
    timer = source.clock.setTimeout(tick, eventBatchMs);
  };
  timer = source.clock.setTimeout(tick, eventBatchMs);
  res.on('close', () => {
    unsubscribe();
    source.clock.clearTimeout(timer);
  });
}

import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Discovery } from '../../discovery/discovery.js';
import type { Engine } from '../../engine/engine.js';
import type { InspectionRecorder } from '../../inspect/inspection-recorder.js';
import { registerUi } from '../../ui/ui-routes.js';
import { ErrorCode, TandemError } from '../../errors.js';
import type { Limits } from '../../limits.js';
import type { Logger } from '../../log.js';
import { meteredGeneration } from '../../metrics/metered-generation.js';
import type { TandemMetrics } from '../../metrics/tandem-metrics.js';
import type { Random } from '../../random/random.js';
import { sleep, waitUntil, type Clock } from '../../time/clock.js';
import type { KvPrefillRanker } from '../../routing/kv-router-feed.js';
import type { LoadTicket } from '../../routing/worker-load.js';
import type { ConditionalDisaggregation } from '../../routing/prefill-placement.js';
import type { Transport } from '../../transport/transport.js';
import { decode, encode } from '../../protocol/codec.js';
import { subjects } from '../../protocol/subjects.js';
import { continueTrace, formatTraceparent } from '../../trace/traceparent.js';
import type { RoutingMode } from '../router.js';
import { RequestRouting, type DecodeLoadTicket } from './request-routing.js';
import { collectResponse, streamResponse } from './http-response.js';
import { generate, type GenerationPlan } from './generation.js';
import { httpError, httpFailure } from './http-error.js';
import { chatSchema, completionSchema, type ChatBody, type CompletionBody } from './openai-schemas.js';
import { responseShape, type ResponseKind } from './openai-responses.js';

export interface FrontendOptions {
  transport: Transport;
  discovery: Discovery;
  /** Tokenizer and chat template of the served model (a vocabulary is enough). */
  engine: Engine;
  clock: Clock;
  random: Random;
  log: Logger;
  limits: Limits;
  /** Interface to listen on. */
  host: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** A stream from a decode worker that is silent this long fails with a timeout. */
  streamIdleTimeoutMs: number;
  /** KV-aware prefill ranking; needed by (and implying) routing 'kv-aware'. */
  kvFeed?: KvPrefillRanker;
  /** How prefill workers are picked; default 'kv-aware' with a `kvFeed`, else 'round-robin'. */
  routing?: RoutingMode;
  /** Tokens per prefix block (the engines' prefix-cache blocks); default 16. */
  blockTokens?: number;
  /** When decode workers prefill prompts themselves; absent (the default) never. */
  conditionalDisaggregation?: ConditionalDisaggregation;
  /** Transitions of this process's machines; the web UI at /ui shows them. */
  inspection?: InspectionRecorder;
  /** Metrics to record requests in and to serve on GET /metrics; without them there is no /metrics route. */
  metrics?: TandemMetrics;
  /** Source of trace and span ids for requests without a valid `traceparent`; default a stream split from `random`. */
  traceRandom?: Random;
  /** How many times a request whose decode worker dies mid-stream moves to another one; 0 disables; default 2. */
  migrationsMax?: number;
}

/** How long stop() lets cancelled requests send their error before it closes every connection. */
const stopGraceMs = 1000;

/** How long GET /cluster waits for each worker's counters. */
const clusterStatsTimeoutMs = 1000;

/** Default of FrontendOptions.migrationsMax. */
const migrationsMaxDefault = 2;

/** Default `max_tokens` of /v1/completions when the client gives none, as OpenAI's API does. */
const completionMaxTokensDefault = 16;

/**
 * The OpenAI-compatible HTTP frontend: validates and tokenizes requests, routes them to a decode
 * worker (which bootstraps a prefill worker), and streams the text back as SSE or one JSON body.
 */
export class Frontend {
  private readonly app: FastifyInstance;
  private readonly routing: RequestRouting;
  private readonly inFlight = new Set<AbortController>();
  /** Resolved when the last request in flight has answered (stop() waits on them). */
  private readonly drained: Array<() => void> = [];
  private address = '';
  private traceRandom: Random | undefined;
  private migrationCount = 0;

  constructor(private readonly options: FrontendOptions) {
this.routing = new RequestRouting({
      discovery: options.discovery,
      model: options.engine.model.name,
      random: options.random,
      ...(options.kvFeed ? { kvFeed: options.kvFeed } : {}),
      ...(options.routing ? { routing: options.routing } : {}),
      ...(options.blockTokens !== undefined ? { blockTokens: options.blockTokens } : {}),
      ...(options.conditionalDisaggregation ? { conditionalDisaggregation: options.conditionalDisaggregation } : {}),
      ...(options.metrics ? { metrics: options.metrics } : {}),
    });
    this.app = Fastify({ bodyLimit: options.limits.httpBodyBytesMax, logger: false, return503OnClosing: true });
    this.routes();
  }

  /** The base URL the frontend listens on, e.g. http://127.0.0.1:8080. */
  get url(): string {
    return this.address;
  }

  get inFlightRequests(): number {
    return this.inFlight.size;
  }

  /** How many times a request moved to another decode worker because its worker died mid-stream. */
  get migrations(): number {
    return this.migrationCount;
  }

  /** The routing mode and the KV blocks this frontend has in flight on each worker. */
  routingLoad(): { mode: RoutingMode; prefill: Record<string, number>; decode: Record<string, number> } {
    return this.routing.load();
  }

  /** How many prompts went to a prefill worker ('remote') and how many a decode worker prefilled ('local'). */
  get prefillPlacements(): { remote: number; local: number } {
    return this.routing.prefillPlacements;
  }

  async start(): Promise<void> {
    this.address = await this.app.listen({ host: this.options.host, port: this.options.port });
    this.options.log.info('frontend listening', { url: this.address, model: this.options.engine.model.name, routes: this.routeList() });
  }

  private routeList(): string {
    const routes = ['/v1/completions', '/v1/chat/completions', '/v1/models', '/health', '/cluster'];
    if (this.options.metrics) routes.push('/metrics');
    if (this.options.inspection) routes.push('/ui');
    return routes.join(' ');
  }

  /** Graceful shutdown: lets requests in flight finish for up to `timeoutMs`, then stops. */
  async drain(timeoutMs: number): Promise<void> {
    await waitUntil(this.options.clock, () => this.inFlight.size === 0, timeoutMs);
    await this.stop();
  }

  /** Stops listening and cancels requests in flight. */
  async stop(): Promise<void> {
    for (const controller of this.inFlight) controller.abort(new TandemError(ErrorCode.ShuttingDown, 'the frontend is stopping'));
    const closing = this.app.close();
    // Node counts a connection that never sent a request (a client's spare keep-alive socket) as
    // busy, so close() would wait until the client drops it. Once the cancelled requests have
    // answered, or the grace period is over, every connection is closed.
    if (this.inFlight.size > 0) {
      const grace = new AbortController();
      await Promise.race([new Promise<void>((resolve) => this.drained.push(resolve)), sleep(this.options.clock, stopGraceMs, grace.signal).catch(() => {})]);
      grace.abort();
    }
    this.app.server.closeAllConnections();
    await closing;
  }

  private routes(): void {
    const { app } = this;
    app.setErrorHandler((error: { statusCode?: number; message: string }, _request, reply) => {
      const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
      if (status === 500) this.options.log.error('unhandled error in a route', { error: error.message });
      const message = status === 500 ? 'internal error' : status === 415 ? `${error.message}: send the body as application/json` : error.message;
      const { body } = httpFailure(status, message);
      void reply.status(status).send(body);
    });
    // The API takes JSON only; without this, Fastify's default text/plain parser hands zod a string.
    app.removeContentTypeParser('text/plain');
    app.setNotFoundHandler((request, reply) => {
      const path = request.url.split('?')[0] ?? request.url;
      const allowed = ['GET', 'POST'].filter((method) => app.hasRoute({ url: path, method }));
      if (allowed.length > 0) {
        const { status, body } = httpFailure(405, `${request.method} is not allowed on ${path}; use ${allowed.join(' or ')}`);
        void reply.status(status).header('allow', allowed.join(', ')).send(body);
        return;
      }
      const { status, body } = httpFailure(404, `no route ${request.method} ${request.url}`);
      void reply.status(status).send(body);
    });
    app.get('/health', async () => ({
      status: 'ok',
      model: this.options.engine.model.name,
      workers: { prefill: this.routing.workers('prefill').length, decode: this.routing.workers('decode').length },
      in_flight: this.inFlight.size,
    }));
    const { metrics } = this.options;
    if (metrics) app.get('/metrics', async (_request, reply) => reply.header('content-type', metrics.contentType).send(await metrics.exposition()));
    const clusterView = async (): Promise<unknown> => {
      const load = this.routingLoad();
      return {
        model: this.options.engine.model.name,
        in_flight: this.inFlight.size,
        routing: { mode: load.mode, prefill_blocks_in_flight: load.prefill, decode_blocks_in_flight: load.decode, prefill_placements: this.prefillPlacements },
        workers: await this.clusterView(),
      };
    };
    app.get('/cluster', clusterView);
    if (this.options.inspection) registerUi(app, { mode: 'live', recorder: this.options.inspection, clock: this.options.clock, cluster: clusterView });
    app.get('/v1/models', async () => ({
      object: 'list',
      data: [{ id: this.options.engine.model.name, object: 'model', created: 0, owned_by: 'tandem' }],
    }));
    const completion = completionSchema(this.options.limits);
    const chat = chatSchema(this.options.limits);
    app.post('/v1/completions', (request, reply) => this.serve('completion', request, reply, () => this.parse(completion, request.body)));
    app.post('/v1/chat/completions', (request, reply) => this.serve('chat', request, reply, () => this.parse(chat, request.body)));
  }

  /** Every registered worker with its counters, asked over the transport (a silent worker shows its error). */
  private async clusterView(): Promise<unknown[]> {
    const records = [...this.routing.workers('prefill'), ...this.routing.workers('decode')];
    return Promise.all(
      records.map(async (record) => {
        const base = { instance_id: record.instanceId, role: record.role, model: record.model, epoch: record.epoch };
        try {
          const reply = decode(
            await this.options.transport.request(subjects.stats(record.subjectPrefix), encode('stats_request', {}), { timeoutMs: clusterStatsTimeoutMs }),
            'stats_reply',
          );
          return { ...base, stats: reply.stats };
        } catch (error) {
          return { ...base, error: TandemError.from(error).toWire() };
        }
      }),
    );
  }

  private parse<T>(schema: { safeParse(value: unknown): { success: true; data: T } | { success: false; error: { issues: Array<{ path: PropertyKey[]; message: string }> } } }, body: unknown): T {
    const parsed = schema.safeParse(body);
    if (parsed.success) return parsed.data;
    const issue = parsed.error.issues[0];
    const param = issue?.path.map(String).join('.') || null;
    throw Object.assign(new TandemError(ErrorCode.BadRequest, param ? `${param}: ${issue?.message}` : `request body: ${issue?.message ?? 'invalid'}`), { param });
  }

  private async serve(kind: ResponseKind, request: FastifyRequest, reply: FastifyReply, parse: () => CompletionBody | ChatBody): Promise<void> {
    let plan: GenerationPlan;
    let body: CompletionBody | ChatBody;
    let prefillTicket: LoadTicket | undefined;
    let decodeTicket: DecodeLoadTicket | undefined;
    try {
      body = parse();
      ({ plan, prefillTicket, decodeTicket } = this.plan(kind, body));
    } catch (error) {
      const failure = TandemError.from(error);
      const { status, body: errorBody } = httpError(failure, (error as { param?: string | null }).param ?? null);
      if (status >= 500) this.options.log.warn('refused a request', { code: failure.code, error: failure.message });
      this.options.metrics?.recordRequest('failed', failure.code, undefined);
      await reply.status(status).send(errorBody);
      return;
    }
    const startedAtMs = this.options.clock.now();
    this.traceRandom ??= this.options.traceRandom ?? this.options.random.split('traceparent');
    const header = request.headers.traceparent;
    plan.traceparent = formatTraceparent(continueTrace(typeof header === 'string' ? header : undefined, this.traceRandom));
    this.options.log.debug('request accepted', { request: plan.requestId, traceparent: plan.traceparent, prompt_tokens: plan.promptTokens.length });
    const controller = new AbortController();
    this.inFlight.add(controller);
    const shape = responseShape(kind, plan.requestId, plan.model, Math.floor(this.options.clock.now() / 1000));
    const generation = generate(
      {
        ...this.options,
        idleTimeoutMs: this.options.streamIdleTimeoutMs,
        migrationsMax: this.options.migrationsMax ?? migrationsMaxDefault,
        // The stream's load goes to the worker that actually serves it (a fallback, or after a migration).
        onDecodeWorker: (worker) => decodeTicket?.moveTo(worker),
        onMigration: (migration) => {
          this.migrationCount++;
          this.options.metrics?.recordMigration();
          this.options.log.info('request migrated', { request: migration.requestId, from: migration.from, completion_tokens: migration.completionTokens, code: migration.cause.code, error: migration.cause.message });
        },
      },
      plan,
      controller.signal,
    );
    const routed = prefillTicket ? endingLoadOnFirstEvent(generation, prefillTicket) : generation;
    const events = this.options.metrics ? meteredGeneration(routed, this.options.metrics, this.options.clock, startedAtMs) : routed;
    // A client that goes away cancels its request, streamed or not.
    const onClose = (): void => {
      if (!reply.raw.writableFinished) controller.abort(new TandemError(ErrorCode.Cancelled, 'the client went away'));
    };
    reply.raw.on('close', onClose);
    try {
      if (body.stream) await streamResponse(reply, events, shape, Boolean(body.stream_options?.include_usage));
      else await reply.send(await collectResponse(events, shape));
    } catch (error) {
      const failure = TandemError.from(error);
      this.options.log.info('request failed', { request: plan.requestId, traceparent: plan.traceparent, code: failure.code, error: failure.message });
      if (!reply.sent && !reply.raw.headersSent) {
        const { status, body: errorBody } = httpError(failure);
        await reply.status(status).send(errorBody);
      }
    } finally {
      prefillTicket?.end();
      decodeTicket.end();
      reply.raw.off('close', onClose);
      this.inFlight.delete(controller);
      if (this.inFlight.size === 0) for (const resolve of this.drained.splice(0)) resolve();
    }
  }

  /**
   * Validates limits, tokenizes and picks workers: the decode worker in turn, the prefill
   * candidates by the routing mode, and whether the decode worker prefills locally. A remote
   * prefill counts against its worker's load until the first tokens arrive, the stream against
   * its decode worker's until it ends. Throws TandemError for the client.
   */
  private plan(kind: ResponseKind, body: CompletionBody | ChatBody): { plan: GenerationPlan; prefillTicket?: LoadTicket; decodeTicket: DecodeLoadTicket } {
    const { engine, limits, random } = this.options;
    if (body.model !== engine.model.name) {
      throw new TandemError(ErrorCode.ModelNotFound, `model '${body.model}' is not served here; try '${engine.model.name}'`);
    }
    const text =
      kind === 'chat'
        ? engine.applyChatTemplate(
            (body as ChatBody).messages.map((m) => ({ role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('') })),
          )
        : [(body as CompletionBody).prompt].flat()[0]!;
    const promptTokens = engine.tokenize(text);
    if (promptTokens.length === 0) throw new TandemError(ErrorCode.BadRequest, 'the prompt is empty');
    const contextRoom = engine.model.contextTokensMax - promptTokens.length;
    if (promptTokens.length > limits.promptTokensMax || contextRoom < 1) {
      throw new TandemError(ErrorCode.PromptTooLong, `the prompt has ${promptTokens.length} tokens; at most ${Math.min(limits.promptTokensMax, engine.model.contextTokensMax - 1)} are allowed`);
    }
    const asked = kind === 'chat' ? ((body as ChatBody).max_completion_tokens ?? body.max_tokens) : body.max_tokens;
    const maxTokens = asked ?? (kind === 'chat' ? Math.min(limits.maxTokensMax, contextRoom) : completionMaxTokensDefault);
    if (maxTokens > contextRoom) {
      throw new TandemError(ErrorCode.PromptTooLong, `prompt (${promptTokens.length} tokens) plus max_tokens (${maxTokens}) exceeds the model's context of ${engine.model.contextTokensMax}`);
    }
    if (this.inFlight.size >= limits.inFlightRequestsMax) {
      throw new TandemError(ErrorCode.Overloaded, `${limits.inFlightRequestsMax} requests are in flight; retry later`);
    }
    const weights = body.routing;
    const selection = weights ? { ...(weights.overlap_weight != null ? { overlapWeight: weights.overlap_weight } : {}), ...(weights.temperature != null ? { temperature: weights.temperature } : {}) } : undefined;
    const routed = this.routing.route(promptTokens, maxTokens, selection);
    const plan: GenerationPlan = {
      requestId: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${random.id(24)}`,
      model: engine.model.name,
      promptTokens,
      sampling: {
        temperature: body.temperature ?? 1,
        top_p: body.top_p ?? 1,
        seed: body.seed ?? random.uint32(),
        max_tokens: maxTokens,
        ignore_eos: body.ignore_eos ?? false,
      },
      stops: body.stop == null ? [] : [body.stop].flat(),
      deadlines: body.deadlines ?? undefined,
      decode: routed.decode,
      prefill: routed.prefill,
      ...(routed.prefillLocally ? { prefillLocally: true } : {}),
    };
    return { plan, decodeTicket: routed.decodeTicket, ...(routed.prefillTicket ? { prefillTicket: routed.prefillTicket } : {}) };
  }
}

/** Passes `events` on, ending the prefill's load ticket at the first one (the prompt is prefilled by then). */
async function* endingLoadOnFirstEvent<T>(events: AsyncGenerator<T>, ticket: LoadTicket): AsyncGenerator<T> {
  let first = true;
  for await (const event of events) {
    if (first) ticket.end();
    first = false;
    yield event;
  }
}

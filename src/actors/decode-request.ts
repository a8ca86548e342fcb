import { createActor, fromPromise, type AnyActorRef } from 'xstate';
import type { DecodeSequence, SamplingParams } from '../engine/engine.js';
import { ErrorCode, TandemError } from '../errors.js';
import { ownerKey, type Region } from '../fabric/fabric.js';
import { decodeKvPayload, kvPayloadBytes } from '../kv/kv-payload.js';
import { pagesFor, type PagePool } from '../kv/page-pool.js';
import type { Deadlines } from '../limits.js';
import type { Logger } from '../log.js';
import { localRequestMachine } from '../machines/local-request-machine.js';
import { requestMachine, type FinishReason, type RequestContext, type RequestEvent, type RequestOutput, type RoomGrant } from '../machines/request-machine.js';
import { composeInspectors, type Inspector } from '../metrics/request-state-inspector.js';
import { decode, encode } from '../protocol/codec.js';
import type { MessageOf } from '../protocol/messages.js';
import { subjects } from '../protocol/subjects.js';
import { traceHeaders } from '../trace/trace-headers.js';
import { TransportError, type StreamWriter } from '../transport/transport.js';
import type { DecodeBatcher } from './decode-batcher.js';
import { samplingFromWire } from './wire-sampling.js';
import type { DecodeWorkerOptions } from './decode-worker.js';
import type { RoomFence } from './room-fence.js';

/** The request machines with the decode worker's effects, built once per worker. */
export interface RequestLogic {
  disaggregated: ReturnType<typeof disaggregatedLogic>;
  local: ReturnType<typeof localLogic>;
}

/** What a request needs from its decode worker. */
export interface DecodeRequestDeps extends DecodeWorkerOptions {
  machines: RequestLogic;
  subjectPrefix: string;
  region: Region;
  pool: PagePool;
  batcher: DecodeBatcher;
  fence: RoomFence;
  bindRoom(owner: string, request: DecodeRequest): void;
  unbindRoom(owner: string): void;
  finished(request: DecodeRequest, status: RequestOutput['status']): void;
}

function deadlinesFrom(defaults: Deadlines, wire: MessageOf<'generate'>['deadlines']): Deadlines {
  return {
    bootstrapMs: wire?.bootstrap_ms ?? defaults.bootstrapMs,
    allocationMs: wire?.allocation_ms ?? defaults.allocationMs,
    prefillMs: wire?.prefill_ms ?? defaults.prefillMs,
    transferMs: wire?.transfer_ms ?? defaults.transferMs,
    pollingMs: wire?.polling_ms ?? defaults.pollingMs,
    cleanupMs: wire?.cleanup_ms ?? defaults.cleanupMs,
    decodeMs: wire?.decode_ms ?? defaults.decodeMs,
  };
}

/**
 * One request on the decode worker: its machine, the effects the machine invokes, and the
 * stream of tokens back to the frontend.
 */
export class DecodeRequest {
  readonly requestId: string;
  private readonly sampling: SamplingParams;
  private readonly deadlines: Deadlines;
  private readonly actor: AnyActorRef;
  /** Whether this request's prompt is prefilled here rather than on a prefill worker. */
  readonly prefillsLocally: boolean;
  private sequence: DecodeSequence | undefined;
  /** Tokens written to the stream so far (the first token counts). */
  private emitted = 0;
  /** The prefill request (naming the destination pages) may have reached the prefill worker. */
  private prefillRequested = false;
  /** The room this request is bound to for prefill events. */
  private boundOwner: string | undefined;
  private settled = false;
  /** When the last token was emitted, for inter-token latency. */
  private lastEmitAtMs = 0;
  /** The room granted, for log lines. */
  private room: number | undefined;
  /** Logs with the request id and trace context on every line. */
  private readonly log: Logger;
  /** The worker's inspector and this request's span maker, when either is configured. */
  private readonly inspect: Inspector | undefined;

  constructor(
    private readonly deps: DecodeRequestDeps,
    private readonly body: MessageOf<'generate'>,
    private readonly writer: StreamWriter,
  ) {
    this.requestId = body.request_id;
    this.sampling = samplingFromWire(body.sampling);
    this.deadlines = deadlinesFrom(deps.deadlines, body.deadlines);
    this.log = deps.log.child({ request: body.request_id, ...(body.traceparent ? { traceparent: body.traceparent } : {}) });
    this.inspect = composeInspectors(deps.inspect, deps.requestTracer?.forRequest(body.request_id, body.traceparent, deps.instanceId));
    // The frontend may ask for a local prefill (conditional disaggregation); an aggregated worker always does one.
    this.prefillsLocally = deps.prefillLocally || body.prefill_locally === true;
    this.actor = this.prefillsLocally ? this.createLocalActor() : this.createDisaggregatedActor();
  }

  start(): void {
    this.writer.onCancel(() => this.cancel());
    this.actor.subscribe({ complete: () => this.finish(), error: (error: unknown) => this.crash(error) });
    this.log.debug('request started', { prompt_tokens: this.body.prompt_tokens.length, prefill: this.prefillsLocally ? 'local' : 'remote' });
    this.actor.start();
  }

  /** Delivers a prefill event to the machine while it runs. */
  send(event: RequestEvent): void {
    if (this.actor.getSnapshot().status === 'active') this.actor.send(event);
  }

  cancel(): void {
    this.send({ type: 'CANCEL' });
  }

  private createDisaggregatedActor(): AnyActorRef {
    return createActor(this.deps.machines.disaggregated, {
      clock: this.deps.clock,
      inspect: this.inspect,
      input: {
        requestId: this.body.request_id,
        candidates: this.body.prefill_candidates.map((c) => ({ instanceId: c.instance_id, subjectPrefix: c.subject_prefix })),
        deadlines: this.deadlines,
        bootstrapAttemptsMax: this.deps.limits.bootstrapAttemptsMax,
      },
    });
  }

  private createLocalActor(): AnyActorRef {
    return createActor(this.deps.machines.local, { clock: this.deps.clock, inspect: this.inspect, input: { requestId: this.requestId, deadlines: this.deadlines } });
  }

  /** Returns every page and room the request holds, fencing pages whose transfer may still write. */
  releaseResources(context: Pick<RequestContext, 'grant' | 'firstToken' | 'roomReleased'>): void {
    const { deps } = this;
    this.releaseSequence();
    if (this.boundOwner) deps.unbindRoom(this.boundOwner);
    if (!context.grant) return;
    const owner = this.ownerOf(context.grant);
    const holdsPages = deps.pool.pagesOf(owner) !== undefined;
    // Once the room's final write has landed no write of it can follow, and a prefill worker
    // that never received the destination pages cannot write to them: either way they are safe.
    const pagesSafe = context.firstToken !== null || !this.prefillRequested;
    if (holdsPages && pagesSafe) deps.pool.release(owner);
    if (!context.roomReleased) deps.fence.abort(owner, context.grant, this.requestId, holdsPages && !pagesSafe, this.body.traceparent);
  }

  /** Aggregated serving: prefill into this worker's own pages, then decode. */
  async localPrefill(signal: AbortSignal): Promise<{ firstToken: number; pages: readonly number[] }> {
    const { deps } = this;
    const pages = await deps.pool.acquire(this.localOwner, this.pagesNeeded(), signal);
    const { firstToken, kv } = await deps.engine.prefill(this.body.prompt_tokens, this.sampling, signal);
    this.adopt(await deps.engine.loadSequence(kv, this.body.prompt_tokens.length, firstToken, this.sampling), signal);
    return { firstToken, pages };
  }

  releaseLocal(): void {
    this.releaseSequence();
    if (this.deps.pool.pagesOf(this.localOwner) !== undefined) this.deps.pool.release(this.localOwner);
  }

  allocate(grant: RoomGrant, signal: AbortSignal): Promise<number[]> {
    const owner = this.ownerOf(grant);
    this.bind(owner);
    return this.deps.pool.acquire(owner, this.pagesNeeded(), signal);
  }

  confirmRelease(grant: RoomGrant, signal: AbortSignal): Promise<void> {
    return this.deps.fence.confirm(grant, this.requestId, signal, this.body.traceparent);
  }

  private get localOwner(): string {
    return `local/${this.requestId}`;
  }

  private ownerOf(grant: RoomGrant): string {
    return ownerKey({ instanceId: grant.prefillId, epoch: grant.epoch }, grant.room);
  }

  private bind(owner: string): void {
    if (this.boundOwner) this.deps.unbindRoom(this.boundOwner);
    this.boundOwner = owner;
    this.deps.bindRoom(owner, this);
  }

  /** Bytes of the stamped KV payload of this request's prompt. */
  private payloadBytes(): number {
    const { engine } = this.deps;
    return kvPayloadBytes(engine.kvBytes(this.body.prompt_tokens.length), engine.model.identity, engine.model.kvLayout);
  }

  private pagesNeeded(): number {
    return pagesFor(this.payloadBytes(), this.deps.pageBytes);
  }

  async bootstrap(candidate: { instanceId: string; subjectPrefix: string }, timeoutMs: number, signal: AbortSignal): Promise<RoomGrant> {
    const request = encode('bootstrap_request', { request_id: this.requestId, decode_id: this.deps.instanceId, model: this.body.model, ...this.traceFields() });
    // The request is not aborted with the machine: prefill may already be granting the room, and a
    // grant nobody receives would stay reserved until it expires. A late grant is handed back below.
    const reply = decode(await this.deps.transport.request(subjects.bootstrap(candidate.subjectPrefix), request, { timeoutMs, headers: traceHeaders(this.body.traceparent) }), 'bootstrap_grant', 'error');
    if (reply.t === 'error') throw TandemError.fromWire(reply.error);
    if (reply.prefill_id !== candidate.instanceId || reply.request_id !== this.requestId) {
      throw new TandemError(ErrorCode.InvalidMessage, `bootstrap grant from ${reply.prefill_id} for ${reply.request_id} does not match the request`);
    }
    const grant = { prefillId: reply.prefill_id, subjectPrefix: candidate.subjectPrefix, epoch: reply.epoch, room: reply.room };
    if (signal.aborted) {
      // Cancelled, or this attempt timed out and another began: no page was allocated for the room.
      this.deps.fence.abort(this.ownerOf(grant), grant, this.requestId, false, this.body.traceparent);
      throw signal.reason;
    }
    this.room = grant.room;
    this.log.debug('room granted', { room: grant.room, prefill: grant.prefillId, epoch: grant.epoch });
    return grant;
  }

  async startPrefill(grant: RoomGrant, pages: readonly number[], signal: AbortSignal): Promise<void> {
    const { deps, body } = this;
    const region = deps.region.descriptor;
    const request = encode('prefill_request', {
      request_id: this.requestId,
      prefill_id: grant.prefillId,
      epoch: grant.epoch,
      room: grant.room,
      decode_id: deps.instanceId,
      events_subject: subjects.events(deps.subjectPrefix),
      prompt_tokens: body.prompt_tokens,
      sampling: body.sampling,
      region: { fabric: region.fabric, endpoint: region.endpoint, region_id: region.regionId, page_bytes: region.pageBytes, page_count: region.pageCount },
      pages: [...pages],
      ...this.traceFields(),
    });
    this.prefillRequested = true;
    let answer: Uint8Array;
    try {
      answer = await deps.transport.request(subjects.prefill(grant.subjectPrefix), request, { timeoutMs: this.deadlines.prefillMs, signal, headers: traceHeaders(this.body.traceparent) });
    } catch (error) {
      // Nobody was subscribed: the request, and the page list in it, reached no prefill worker.
      if (error instanceof TransportError && error.kind === 'no_responders') this.prefillRequested = false;
      throw error;
    }
    const reply = decode(answer, 'prefill_started', 'error');
    if (reply.t === 'error') throw TandemError.fromWire(reply.error);
  }

  /** Resolves when the room's final write has landed in this worker's region. */
  awaitCompletion(grant: RoomGrant, signal: AbortSignal): Promise<void> {
    const owner = this.ownerOf(grant);
    return new Promise((resolve, reject) => {
      const onAbort = (): void => {
        unsubscribe();
        reject(signal.reason);
      };
      const unsubscribe = this.deps.region.onCompletion(owner, () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Waits for the room's completion, then checks the payload's stamp and loads the KV for decoding. */
  async awaitKv(grant: RoomGrant, pages: readonly number[], signal: AbortSignal): Promise<{ firstToken: number }> {
    const { deps, body } = this;
    await this.awaitCompletion(grant, signal);
    signal.throwIfAborted();
    deps.region.forget(this.ownerOf(grant));
    const { identity, kvLayout } = deps.engine.model;
    try {
      const payload = decodeKvPayload(deps.region.read(pages, this.payloadBytes()), { modelIdentity: identity, kvLayout, tokenCount: body.prompt_tokens.length });
      this.adopt(await deps.engine.loadSequence(payload.kv, payload.tokenCount, payload.firstToken, this.sampling), signal);
      return { firstToken: payload.firstToken };
    } catch (error) {
      throw TandemError.from(error, ErrorCode.KvMismatch);
    }
  }

  /** Keeps a loaded sequence, unless the request was aborted while it loaded (its resources are already released). */
  private adopt(sequence: DecodeSequence, signal: AbortSignal): void {
    if (signal.aborted) {
      this.deps.engine.releaseSequence(sequence);
      throw signal.reason;
    }
    this.sequence = sequence;
  }

  /** The trace context to put on messages to prefill, when the request has one. */
  private traceFields(): { traceparent?: string } {
    return this.body.traceparent ? { traceparent: this.body.traceparent } : {};
  }

  emit(token: number): void {
    if (this.writer.closed) return;
    const nowMs = this.deps.clock.now();
    if (this.emitted > 0) this.deps.metrics?.observeInterTokenLatency((nowMs - this.lastEmitAtMs) / 1000);
    this.lastEmitAtMs = nowMs;
    this.writer.write(encode('tokens', { request_id: this.requestId, index: this.emitted, tokens: [token] }));
    this.emitted++;
  }

  /** Whether `token` (already emitted) ends the request, and why. */
  private finishReasonAfter(token: number): FinishReason | undefined {
    const { engine } = this.deps;
    if (token === engine.model.eosToken && !this.sampling.ignoreEos) return 'stop';
    if (this.emitted >= this.sampling.maxTokens) return 'length';
    if (this.body.prompt_tokens.length + this.emitted >= engine.model.contextTokensMax) return 'length';
    return undefined;
  }

  async decode(firstToken: number, signal: AbortSignal): Promise<{ finishReason: FinishReason }> {
    const early = this.finishReasonAfter(firstToken);
    if (early) return { finishReason: early };
    if (!this.sequence) throw new TandemError(ErrorCode.Internal, 'decode started without a loaded sequence');
    let finishReason: FinishReason = 'length';
    await this.deps.batcher.run(
      this.sequence,
      (token) => {
        this.emit(token);
        const reason = this.finishReasonAfter(token);
        if (reason) finishReason = reason;
        return reason !== undefined;
      },
      signal,
    );
    return { finishReason };
  }

  private releaseSequence(): void {
    if (!this.sequence) return;
    this.deps.engine.releaseSequence(this.sequence);
    this.sequence = undefined;
  }

  /** Writes the terminal chunk and ends the stream once the machine is final. */
  private finish(): void {
    if (this.settled) return;
    this.settled = true;
    const output = this.actor.getSnapshot().output as RequestOutput;
    this.log.debug('request finished', { room: this.room, status: output.status, code: output.error?.code, completion_tokens: this.emitted });
    this.deps.finished(this, output.status);
    if (this.writer.closed) return;
    if (output.status === 'done') {
      this.writer.write(
        encode('finish', {
          request_id: this.requestId,
          finish_reason: output.finishReason ?? 'length',
          prompt_tokens: this.body.prompt_tokens.length,
          completion_tokens: this.emitted,
        }),
      );
    } else {
      const error = output.error ?? { code: ErrorCode.Internal, message: 'the request ended without a reason' };
      this.writer.write(encode('error', { request_id: this.requestId, error }));
    }
    this.writer.end();
  }

  /** A bug in an effect crashed the machine: report it and give everything back. */
  private crash(error: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.log.error('request machine crashed', { room: this.room, error: String(error) });
    this.releaseSequence();
    this.deps.finished(this, 'failed');
    if (!this.writer.closed) {
      this.writer.write(encode('error', { request_id: this.requestId, error: { code: ErrorCode.Internal, message: 'internal error' } }));
      this.writer.end();
    }
  }
}

/**
 * The request machine with effects that find their request by id. Providing implementations
 * builds a new machine, so it is done once per worker rather than once per request.
 */
export function disaggregatedLogic(requestOf: (requestId: string) => DecodeRequest) {
  return requestMachine.provide({
    actors: {
      bootstrap: fromPromise(async ({ input, signal }) => requestOf(input.requestId).bootstrap(input.candidate, input.timeoutMs, signal)),
      allocate: fromPromise(async ({ input, signal }) => requestOf(input.requestId).allocate(input.grant, signal)),
      startPrefill: fromPromise(async ({ input, signal }) => requestOf(input.requestId).startPrefill(input.grant, input.pages, signal)),
      awaitCompletion: fromPromise(async ({ input, signal }) => requestOf(input.requestId).awaitCompletion(input.grant, signal)),
      awaitKv: fromPromise(async ({ input, signal }) => requestOf(input.requestId).awaitKv(input.grant, input.pages, signal)),
      confirmRelease: fromPromise(async ({ input, signal }) => requestOf(input.requestId).confirmRelease(input.grant, signal)),
      decode: fromPromise(async ({ input, signal }) => requestOf(input.requestId).decode(input.firstToken, signal)),
    },
    actions: {
      emitFirstToken: (_, params) => requestOf(params.requestId).emit(params.firstToken),
      releaseResources: (_, { context }) => requestOf(context.requestId).releaseResources(context),
    },
  });
}

/** The aggregated request machine with effects that find their request by id. */
export function localLogic(requestOf: (requestId: string) => DecodeRequest) {
  return localRequestMachine.provide({
    actors: {
      localPrefill: fromPromise(async ({ input, signal }) => requestOf(input.requestId).localPrefill(signal)),
      decode: fromPromise(async ({ input, signal }) => requestOf(input.requestId).decode(input.firstToken, signal)),
    },
    actions: {
      emitFirstToken: (_, params) => requestOf(params.requestId).emit(params.firstToken),
      releaseResources: (_, { context }) => requestOf(context.requestId).releaseLocal(),
    },
  });
}


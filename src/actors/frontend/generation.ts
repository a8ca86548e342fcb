import type { WorkerRecord } from '../../discovery/discovery.js';
import type { Engine } from '../../engine/engine.js';
import { ErrorCode, TandemError } from '../../errors.js';
import { decode, encode } from '../../protocol/codec.js';
import type { MessageOf, WireSampling } from '../../protocol/messages.js';
import { subjects } from '../../protocol/subjects.js';
import { traceHeaders } from '../../trace/trace-headers.js';
import { TransportError, type Transport } from '../../transport/transport.js';
import { StopMatcher } from './stop-matcher.js';

/** Everything the frontend decided about a request before sending it to a decode worker. */
export interface GenerationPlan {
  requestId: string;
  model: string;
  promptTokens: number[];
  sampling: WireSampling;
  stops: string[];
  /** Per-state deadline overrides, in wire form. */
  deadlines?: MessageOf<'generate'>['deadlines'];
  /** Decode workers in order of preference; the next is tried when one has no responder. */
  decode: WorkerRecord[];
  prefill: WorkerRecord[];
  /** W3C trace context carried to every actor that touches the request. */
  traceparent?: string;
  /** Ask the decode worker to prefill the prompt itself (conditional disaggregation). */
  prefillLocally?: boolean;
}

export type GenerationEvent =
  | { type: 'text'; text: string }
  | { type: 'finish'; finishReason: 'stop' | 'length'; promptTokens: number; completionTokens: number };

/** What generate() needs besides the plan. */
export interface GenerationDeps {
  transport: Transport;
  engine: Engine;
  idleTimeoutMs: number;
  /** How many times a request whose decode worker died mid-stream is re-sent to another one; 0 (the default) disables migration. */
  migrationsMax?: number;
  /** Told each time a request moves to another decode worker. */
  onMigration?: (migration: { requestId: string; from: string; completionTokens: number; cause: TandemError }) => void;
  /** Told which decode worker took the request, each time a stream opens (first, and after each migration). */
  onDecodeWorker?: (worker: WorkerRecord) => void;
}

/**
 * Sends a request to its decode worker and yields its text as it streams back, then how it
 * finished. Stopping the iteration early cancels the request on the decode worker.
 *
 * When the decode worker dies mid-stream (the stream closes, goes silent, loses a chunk, or the
 * worker reports that it is stopping), the request is re-sent to another decode worker with the tokens received
 * so far appended to the prompt and `max_tokens` reduced by as many, up to `migrationsMax` times.
 * The detokenizer and stop matcher carry on across workers, so the caller sees one stream.
 */
export async function* generate(deps: GenerationDeps, plan: GenerationPlan, signal?: AbortSignal): AsyncGenerator<GenerationEvent> {
  const detokenizer = deps.engine.createDetokenizer();
  const stop = new StopMatcher(plan.stops);
  const generated: number[] = [];
  const failedWorkers = new Set<string>();
  const migrationsMax = deps.migrationsMax ?? 0;
  for (let migrations = 0; ; migrations++) {
    // Tokens the earlier workers produced; the current worker counts its own from 0.
    const offset = generated.length;
    const remaining = plan.sampling.max_tokens - offset;
    if (remaining <= 0) {
      // The worker died between its last token and its finish message.
      const text = stop.push(detokenizer.flush()) + stop.flush();
      if (text) yield { type: 'text', text };
      yield { type: 'finish', finishReason: 'length', promptTokens: plan.promptTokens.length, completionTokens: offset };
      return;
    }
    const attempt: GenerationPlan = {
      ...plan,
      requestId: migrations === 0 ? plan.requestId : `${plan.requestId}-m${migrations}`,
      promptTokens: [...plan.promptTokens, ...generated],
      sampling: { ...plan.sampling, max_tokens: remaining },
      decode: plan.decode.filter((worker) => !failedWorkers.has(worker.instanceId)),
    };
    const { worker, stream, chunks, first } = await openFirstResponding(deps, attempt, encodeGenerate(attempt), signal);
    deps.onDecodeWorker?.(worker);
    // Set when chunks went missing on the way: the worker is fine, only this stream is broken.
    let lostChunks = false;
    try {
      for (let next = first; !next.done; next = await chunks.next()) {
        const message = decode(next.value, 'tokens', 'finish', 'error');
        if (message.t === 'error') throw TandemError.fromWire(message.error);
        const received = generated.length - offset;
        if (message.t === 'finish') {
          // A chunk lost on the way (a transport that dropped a message) must not pass as a shorter success.
          if (message.completion_tokens !== received) {
            lostChunks = true;
            throw new TandemError(ErrorCode.Closed, `the decode worker sent ${message.completion_tokens} tokens but ${received} arrived`);
          }
          const text = stop.push(detokenizer.flush()) + stop.flush();
          if (text) yield { type: 'text', text };
          yield { type: 'finish', finishReason: message.finish_reason, promptTokens: plan.promptTokens.length, completionTokens: generated.length };
          return;
        }
        if (message.index > received) {
          // A chunk went missing on the way: this stream cannot go on, but every token so far is
          // good, so it counts as a broken stream and the request can migrate from there.
          lostChunks = true;
          throw new TandemError(ErrorCode.Closed, `the stream lost tokens: a chunk at ${message.index} arrived when ${received} was expected`);
        }
        // A chunk delivered twice (or overlapping what arrived) adds only the tokens not seen yet.
        const fresh = message.tokens.slice(received - message.index);
        if (fresh.length === 0) continue;
        generated.push(...fresh);
        const text = stop.push(detokenizer.push(fresh));
        if (text) yield { type: 'text', text };
        if (stop.done) {
          yield { type: 'finish', finishReason: 'stop', promptTokens: plan.promptTokens.length, completionTokens: generated.length };
          return;
        }
      }
      throw new TandemError(ErrorCode.Closed, 'the decode worker ended the stream without finishing the request');
    } catch (error) {
      const cause = TandemError.from(error);
      if (signal?.aborted || !workerDied(cause)) throw error;
      // A dead worker is not tried again; one whose stream merely lost chunks may be.
      if (!lostChunks) failedWorkers.add(worker.instanceId);
      const others = plan.decode.some((w) => !failedWorkers.has(w.instanceId));
      if (migrations >= migrationsMax || !others) {
        const why = migrationsMax === 0 ? 'migration is disabled (migrationsMax 0)' : others ? `it was already migrated ${migrations} times (migrationsMax ${migrationsMax})` : 'no other decode worker is left';
        throw new TandemError(cause.code, `the decode worker failed after ${generated.length} tokens (${cause.message}) and ${why}`, { cause });
      }
      deps.onMigration?.({ requestId: plan.requestId, from: worker.instanceId, completionTokens: generated.length, cause });
    } finally {
      stream.cancel();
    }
  }
}

/**
 * A failure that says the decode worker is gone, not that the request itself is wrong. A stopping
 * worker cancels its requests, so `cancelled` counts too; the caller checks first that it did not
 * cancel the request itself.
 */
function workerDied(error: TandemError): boolean {
  return error.code === ErrorCode.Closed || error.code === ErrorCode.Timeout || error.code === ErrorCode.ShuttingDown || error.code === ErrorCode.Cancelled;
}

function encodeGenerate(plan: GenerationPlan): Uint8Array {
  return encode('generate', {
    request_id: plan.requestId,
    model: plan.model,
    prompt_tokens: plan.promptTokens,
    sampling: plan.sampling,
    prefill_candidates: plan.prefill.map((worker) => ({ instance_id: worker.instanceId, subject_prefix: worker.subjectPrefix })),
    ...(plan.deadlines ? { deadlines: plan.deadlines } : {}),
    ...(plan.traceparent ? { traceparent: plan.traceparent } : {}),
    ...(plan.prefillLocally ? { prefill_locally: true } : {}),
  });
}

/**
 * Opens the generate stream on the first decode worker that has a responder. A worker that died
 * but is still in discovery answers no_responders before anything started, so trying the next
 * one is safe.
 */
async function openFirstResponding(deps: { transport: Transport; idleTimeoutMs: number }, plan: GenerationPlan, request: Uint8Array, signal: AbortSignal | undefined) {
  for (let i = 0; ; i++) {
    const worker = plan.decode[i];
    if (!worker) throw new TandemError(ErrorCode.NoWorkers, 'no decode worker is registered');
    const stream = deps.transport.stream(subjects.generate(worker.subjectPrefix), request, { idleTimeoutMs: deps.idleTimeoutMs, signal, headers: traceHeaders(plan.traceparent) });
    const chunks = stream[Symbol.asyncIterator]();
    try {
      return { worker, stream, chunks, first: await chunks.next() };
    } catch (error) {
      stream.cancel();
      const lastChance = i + 1 >= plan.decode.length;
      if (lastChance || !(error instanceof TransportError) || error.kind !== 'no_responders') throw error;
    }
  }
}

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
}

export type GenerationEvent =
  | { type: 'text'; text: string }
  | { type: 'finish'; finishReason: 'stop' | 'length'; promptTokens: number; completionTokens: number };

/**
 * Sends a request to its decode worker and yields its text as it streams back, then how it
 * finished. Stopping the iteration early cancels the request on the decode worker.
 */
export async function* generate(
  deps: { transport: Transport; engine: Engine; idleTimeoutMs: number },
  plan: GenerationPlan,
  signal?: AbortSignal,
): AsyncGenerator<GenerationEvent> {
  const request = encode('generate', {
    request_id: plan.requestId,
    model: plan.model,
    prompt_tokens: plan.promptTokens,
    sampling: plan.sampling,
    prefill_candidates: plan.prefill.map((worker) => ({ instance_id: worker.instanceId, subject_prefix: worker.subjectPrefix })),
    ...(plan.deadlines ? { deadlines: plan.deadlines } : {}),
    ...(plan.traceparent ? { traceparent: plan.traceparent } : {}),
  });
  const detokenizer = deps.engine.createDetokenizer();
  const stop = new StopMatcher(plan.stops);
  let received = 0;
  const { stream, chunks, first } = await openFirstResponding(deps, plan, request, signal);
  try {
    for (let next = first; !next.done; next = await chunks.next()) {
      const message = decode(next.value, 'tokens', 'finish', 'error');
      if (message.t === 'error') throw TandemError.fromWire({ code: message.error.code as ErrorCode, message: message.error.message });
      if (message.t === 'finish') {
        // A chunk lost on the way (a transport that dropped a message) must not pass as a shorter success.
        if (message.completion_tokens !== received) {
          throw new TandemError(ErrorCode.Closed, `the decode worker sent ${message.completion_tokens} tokens but ${received} arrived`);
        }
        const text = stop.push(detokenizer.flush()) + stop.flush();
        if (text) yield { type: 'text', text };
        yield { type: 'finish', finishReason: message.finish_reason, promptTokens: message.prompt_tokens, completionTokens: message.completion_tokens };
        return;
      }
      if (message.index !== received) {
        throw new TandemError(ErrorCode.Internal, `token ${message.index} arrived when ${received} was expected`);
      }
      received += message.tokens.length;
      const text = stop.push(detokenizer.push(message.tokens));
      if (text) yield { type: 'text', text };
      if (stop.done) {
        yield { type: 'finish', finishReason: 'stop', promptTokens: plan.promptTokens.length, completionTokens: received };
        return;
      }
    }
    throw new TandemError(ErrorCode.Closed, 'the decode worker ended the stream without finishing the request');
  } finally {
    stream.cancel();
  }
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
      return { stream, chunks, first: await chunks.next() };
    } catch (error) {
      stream.cancel();
      const lastChance = i + 1 >= plan.decode.length;
      if (lastChance || !(error instanceof TransportError) || error.kind !== 'no_responders') throw error;
    }
  }
}

// OpenTelemetry spans for request machines, off unless an exporter is configured. The spans are
// timed from the same xstate inspection the Prometheus state metrics use, so a span's duration
// and the `tandem_request_state_seconds` observation of that state agree.
import { ROOT_CONTEXT, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';
import { BasicTracerProvider, SimpleSpanProcessor, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { InspectionEvent } from 'xstate';
import type { Clock } from '../time/clock.js';
import { parseTraceparent } from './traceparent.js';
import { isTerminal, topState } from '../inspect/transition-record.js';

/** Where spans go; tests pass an InMemorySpanExporter, the CLI a ConsoleSpanExporter. */
export interface OtelOptions {
  /** Receives every finished span. */
  exporter: SpanExporter;
}

/** The instrumentation scope named on every span. */
const scopeName = 'tandem';


/**
 * Makes one span per request on a decode worker, with a child span per machine state, parented
 * to the `traceparent` the request arrived with so the client's trace id is kept.
 */
export class RequestTracer {
  private readonly provider: BasicTracerProvider;
  private readonly tracer: Tracer;
  private readonly clock: Clock;

  constructor(options: OtelOptions & { clock: Clock }) {
    // A simple (unbatched) processor: no timers of its own, and spans leave when they end.
    this.provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(options.exporter)] });
    this.tracer = this.provider.getTracer(scopeName);
    this.clock = options.clock;
  }

  /** An inspector for one request's machine: it opens the request span at the first snapshot and ends it when the machine stops. */
  forRequest(requestId: string, traceparent: string | undefined, workerId: string): (event: InspectionEvent) => void {
    const parent = parseTraceparent(traceparent);
    const parentContext = parent
      ? trace.setSpanContext(ROOT_CONTEXT, { traceId: parent.traceId, spanId: parent.parentId, traceFlags: Number.parseInt(parent.flags, 16), isRemote: true })
      : ROOT_CONTEXT;
    let request: Span | undefined;
    let state: { name: string; span: Span | undefined } | undefined;
    let ended = false;
    return (event) => {
      if (ended || event.type !== '@xstate.snapshot' || event.actorRef.sessionId !== event.rootId) return;
      const snapshot = event.snapshot as { status?: string; value?: unknown; output?: { status?: string; error?: { code?: string } | null } };
      const nowMs = this.clock.now();
      request ??= this.tracer.startSpan('request', { startTime: nowMs, attributes: { 'tandem.request_id': requestId, 'tandem.worker': workerId } }, parentContext);
      const name = topState(snapshot.value);
      if (state?.name !== name) {
        state?.span?.end(nowMs);
        // A state that ends the machine gets no span of its own.
        const span = isTerminal('request', name) ? undefined : this.tracer.startSpan(name, { startTime: nowMs }, trace.setSpan(ROOT_CONTEXT, request));
        state = { name, span };
      }
      if (snapshot.status === 'active') return;
      ended = true;
      state.span?.end(nowMs);
      const outcome = snapshot.status === 'done' ? (snapshot.output?.status ?? 'done') : 'failed';
      request.setAttribute('tandem.outcome', outcome);
      if (outcome === 'failed') request.setStatus({ code: SpanStatusCode.ERROR, message: snapshot.output?.error?.code ?? 'internal' });
      request.end(nowMs);
    };
  }

  /** Flushes and stops the exporter. */
  async shutdown(): Promise<void> {
    await this.provider.shutdown();
  }
}

import type { InspectionEvent } from 'xstate';
import type { Clock } from '../time/clock.js';
import type { RequestOutcome, TandemMetrics } from './tandem-metrics.js';
import { isTerminal, topState } from '../inspect/transition-record.js';

/** An xstate inspection callback, as workers take it in their `inspect` option. */
export type Inspector = (event: InspectionEvent) => void;

/** Calls every given inspector in turn; undefined ones are skipped, so options compose freely. */
export function composeInspectors(...inspectors: Array<Inspector | undefined>): Inspector | undefined {
  const present = inspectors.filter((inspector): inspector is Inspector => inspector !== undefined);
  if (present.length <= 1) return present[0];
  return (event) => {
    for (const inspector of present) inspector(event);
  };
}

interface Tracked {
  state: string;
  enteredAtMs: number;
  attempts: number;
}


/**
 * Times the request machines of a decode worker from xstate inspection: how long each request
 * spends in every state, bootstrap retries, and how requests end. Only root actors (the request
 * machines, not the promise actors they invoke) are looked at.
 */
export function requestStateInspector(metrics: TandemMetrics, clock: Clock): Inspector {
  // Keyed by the actor itself: every root actor has its own system, so session ids repeat across requests.
  const tracked = new Map<object, Tracked>();
  return (event) => {
    if (event.type !== '@xstate.snapshot' || event.actorRef.sessionId !== event.rootId) return;
    const snapshot = event.snapshot as { status?: string; value?: unknown; context?: { attempts?: unknown }; output?: { status?: RequestOutcome; error?: { code?: string } | null } };
    const id = event.actorRef;
    const state = topState(snapshot.value);
    const attempts = typeof snapshot.context?.attempts === 'number' ? snapshot.context.attempts : 0;
    const nowMs = clock.now();
    let entry = tracked.get(id);
    if (!entry) {
      entry = { state, enteredAtMs: nowMs, attempts };
      tracked.set(id, entry);
    }
    for (let extra = Math.max(entry.attempts, 1); extra < attempts; extra++) metrics.recordBootstrapRetry();
    entry.attempts = Math.max(entry.attempts, attempts);
    if (state !== entry.state) {
      if (!isTerminal('request', entry.state)) metrics.observeStateTime(entry.state, (nowMs - entry.enteredAtMs) / 1000);
      entry.state = state;
      entry.enteredAtMs = nowMs;
    }
    if (snapshot.status !== 'active') {
      tracked.delete(id);
      const output = snapshot.output;
      if (snapshot.status === 'done' && output?.status) metrics.recordDecodeRequest(output.status, output.error?.code);
      else if (snapshot.status === 'error') metrics.recordDecodeRequest('failed', 'internal');
    }
  };
}

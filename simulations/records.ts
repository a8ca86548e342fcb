import type { RequestSpec } from './workload.js';

/** How a request ended, as its client saw it. */
export interface ClientOutcome {
  status: 'done' | 'failed' | 'cancelled';
  /** The error code a failed or cancelled request carried. */
  code?: string;
  message?: string;
  atMs: number;
  finishReason?: 'stop' | 'length';
  completionTokens?: number;
}

/** One machine instance: a request machine on a decode worker or a room machine on a prefill worker. */
export interface SessionRecord {
  machine: 'request' | 'room';
  actor: string;
  epoch: number;
  /** States entered, in order, with the virtual time and the event that led there. */
  states: string[];
  timesMs: number[];
  events: string[];
  /** The final state, once reached. */
  final: string | undefined;
  /** Set when the session's worker crashed before the session ended. */
  lostAtMs: number | undefined;
  /** The room's ownerKey, once granted. */
  owner: string | undefined;
}

/** Everything observed of one request. */
export interface RequestRecord {
  spec: RequestSpec;
  /** The decode worker the router picked. */
  decodeActor: string | undefined;
  /** Tokens the client accepted, in order, and when each arrived. */
  tokens: number[];
  tokenTimesMs: number[];
  /** The first chunk the client refused (a gap, a duplicate or an inversion), described. */
  refusedChunk: string | undefined;
  /** The stream (0 for the first, +1 per migration) whose chunk was refused; later chunks of it are ignored. */
  refusedStream: number | undefined;
  /** Text the frontend's generate() yielded. */
  text: string;
  outcome: ClientOutcome | undefined;
  sessions: SessionRecord[];
  /** Faults that hit the request and other notable events, with virtual times. */
  history: string[];
  /** A chunk of its token stream was dropped, duplicated or reordered by the network. */
  streamFaulted: boolean;
  /** When its client gives up, if it does. */
  cancelAtMs: number | undefined;
}

/** Notes kept per request; a request hit by more faults than this keeps the first ones. */
export const historyMax = 64;

export function newRequestRecord(spec: RequestSpec): RequestRecord {
  return {
    spec,
    decodeActor: undefined,
    tokens: [],
    tokenTimesMs: [],
    refusedChunk: undefined,
    refusedStream: undefined,
    text: '',
    outcome: undefined,
    sessions: [],
    history: [],
    streamFaulted: false,
    cancelAtMs: undefined,
  };
}

export function note(record: RequestRecord, atMs: number, text: string): void {
  if (record.history.length < historyMax) record.history.push(`${formatMs(atMs)} ${text}`);
  else if (record.history.length === historyMax) record.history.push('... (more notes dropped)');
}

export function formatMs(ms: number): string {
  return `t=${Number.isInteger(ms) ? ms : ms.toFixed(3)}ms`;
}

/** A request's story for a violation report: what it asked, where it went, what hit it, how it ended. */
export function describeRequest(record: RequestRecord): string[] {
  const { spec } = record;
  const lines = [
    `request ${spec.requestId} (${spec.kind}): arrived ${formatMs(spec.arrivalMs)}, ${spec.promptTokens.length} prompt tokens, max_tokens ${spec.maxTokens}, temperature ${spec.temperature}, seed ${spec.seed}, ignore_eos ${spec.ignoreEos}`,
    `  routed to ${record.decodeActor ?? '(no decode worker)'}${record.cancelAtMs !== undefined ? `; client cancels at ${formatMs(record.cancelAtMs)}` : ''}`,
  ];
  for (const session of record.sessions) {
    const path = session.states.map((state, i) => `${state}@${session.timesMs[i]!.toFixed(2)}`).join(' -> ');
    const lost = session.lostAtMs !== undefined ? ` (worker crashed at ${formatMs(session.lostAtMs)})` : '';
    lines.push(`  ${session.machine} machine on ${session.actor} epoch ${session.epoch}${session.owner ? ` room ${session.owner}` : ''}: ${path}${lost}`);
  }
  for (const entry of record.history) lines.push(`  ${entry}`);
  lines.push(`  client received ${record.tokens.length} tokens${record.refusedChunk ? `, refused ${record.refusedChunk}` : ''}`);
  const outcome = record.outcome;
  lines.push(
    outcome
      ? `  outcome: ${outcome.status}${outcome.code ? ` ${outcome.code}` : ''}${outcome.message ? ` (${outcome.message})` : ''} at ${formatMs(outcome.atMs)}`
      : '  outcome: none yet',
  );
  return lines;
}

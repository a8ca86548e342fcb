import { isTerminal, type MachineKind, type TransitionRecord } from './transition-record.js';

/** Limits of a request index. */
export interface RequestIndexLimits {
  /** Requests tracked at once; the oldest is forgotten first. */
  requestsMax: number;
  /** Transitions kept per request (a request retrying bootstrap forever stays bounded). */
  transitionsPerRequestMax: number;
}

/** One request as the UI lists it, as of a point in time. */
export interface RequestSummary {
  request_id: string;
  /** The decode side's machine, or 'room' when only the prefill side was seen. */
  machine: MachineKind;
  state: string;
  terminal: boolean;
  /** The worker of the request (decode) machine. */
  worker: string | null;
  /** The prefill worker and room, once a room machine was seen. */
  prefill_worker: string | null;
  room: number | null;
  room_state: string | null;
  started_ms: number;
  updated_ms: number;
}

/** A stretch of time one machine spent in one state on one worker. */
export interface TimelineSegment {
  machine: MachineKind;
  worker: string;
  state: string;
  start_ms: number;
  /** Null while the machine is still in the state. */
  end_ms: number | null;
}

export interface RequestDetail extends RequestSummary {
  transitions: TransitionRecord[];
  timeline: TimelineSegment[];
  /** Transitions of this request that were dropped to stay within the per-request limit. */
  transitions_dropped: number;
}

/** A query of the request list. */
export interface RequestQuery {
  /** Substring of the request id, a worker id or the state. */
  text?: string;
  /** 'live', 'terminal', or one state name. */
  state?: string;
  offset?: number;
  limit?: number;
  /** Show the requests as they were at this time (trace replay); default: as recorded so far. */
  atMs?: number;
}

export interface RequestPage {
  total: number;
  offset: number;
  items: RequestSummary[];
  /** Requests per current state over the whole index (before the filters). */
  states: Record<string, number>;
}

interface Entry {
  requestId: string;
  records: TransitionRecord[];
  dropped: number;
}

const requestMachines = new Set<MachineKind>(['request', 'localRequest']);

/** Groups transition records by request and answers the UI's questions about them. */
export class RequestIndex {
  // Map iteration follows insertion order, so the first entry is the oldest request.
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly limits: RequestIndexLimits) {}

  get size(): number {
    return this.entries.size;
  }

  add(record: TransitionRecord): void {
    let entry = this.entries.get(record.request_id);
    if (!entry) {
      entry = { requestId: record.request_id, records: [], dropped: 0 };
      this.entries.set(record.request_id, entry);
      while (this.entries.size > this.limits.requestsMax) {
        const oldest = this.entries.keys().next().value as string;
        this.entries.delete(oldest);
      }
    }
    if (entry.records.length >= this.limits.transitionsPerRequestMax) {
      // Keep the first transitions (where it started) and the latest ones (where it is now).
      entry.records.splice(1, 1);
      entry.dropped++;
    }
    entry.records.push(record);
  }

  /** Earliest and latest timestamps recorded, or null when empty. */
  timeRange(): { start_ms: number; end_ms: number } | null {
    let start = Number.POSITIVE_INFINITY;
    let end = Number.NEGATIVE_INFINITY;
    for (const entry of this.entries.values()) {
      for (const record of entry.records) {
        if (record.ts_ms < start) start = record.ts_ms;
        if (record.ts_ms > end) end = record.ts_ms;
      }
    }
    return start === Number.POSITIVE_INFINITY ? null : { start_ms: start, end_ms: end };
  }

  /** A page of requests, newest first, filtered by text and state. */
  list(query: RequestQuery = {}): RequestPage {
    const text = query.text?.trim().toLowerCase() ?? '';
    const states: Record<string, number> = {};
    const matched: RequestSummary[] = [];
    for (const entry of this.entries.values()) {
      const summary = summarize(entry, query.atMs);
      if (!summary) continue;
      states[summary.state] = (states[summary.state] ?? 0) + 1;
      if (query.state && !matchesState(summary, query.state)) continue;
      if (text && !matchesText(summary, text)) continue;
      matched.push(summary);
    }
    matched.sort((a, b) => b.started_ms - a.started_ms || (a.request_id < b.request_id ? -1 : a.request_id > b.request_id ? 1 : 0));
    const offset = Math.max(0, Math.floor(query.offset ?? 0));
    const limit = Math.max(0, Math.min(Math.floor(query.limit ?? 100), 1000));
    return { total: matched.length, offset, items: matched.slice(offset, offset + limit), states };
  }

  /** One request's transitions and timeline, or undefined when it is not (or no longer) known. */
  detail(requestId: string, atMs?: number): RequestDetail | undefined {
    const entry = this.entries.get(requestId);
    if (!entry) return undefined;
    const summary = summarize(entry, atMs);
    if (!summary) return undefined;
    const records = visible(entry, atMs);
    return { ...summary, transitions: records, timeline: timeline(records), transitions_dropped: entry.dropped };
  }
}

function visible(entry: Entry, atMs: number | undefined): TransitionRecord[] {
  return atMs === undefined ? entry.records.slice() : entry.records.filter((record) => record.ts_ms <= atMs);
}

function summarize(entry: Entry, atMs: number | undefined): RequestSummary | undefined {
  let main: TransitionRecord | undefined;
  let room: TransitionRecord | undefined;
  let first: TransitionRecord | undefined;
  let last: TransitionRecord | undefined;
  for (const record of entry.records) {
    if (atMs !== undefined && record.ts_ms > atMs) continue;
    first ??= record;
    last = record;
    if (requestMachines.has(record.machine)) main = record;
    else room = record;
  }
  if (!first || !last) return undefined;
  const lead = main ?? room!;
  return {
    request_id: entry.requestId,
    machine: lead.machine,
    state: lead.to,
    terminal: isTerminal(lead.machine, lead.to),
    worker: main?.worker ?? null,
    prefill_worker: room?.worker ?? null,
    room: room?.room ?? null,
    room_state: room?.to ?? null,
    started_ms: first.ts_ms,
    updated_ms: last.ts_ms,
  };
}

function matchesState(summary: RequestSummary, state: string): boolean {
  if (state === 'live') return !summary.terminal;
  if (state === 'terminal') return summary.terminal;
  return summary.state === state;
}

function matchesText(summary: RequestSummary, text: string): boolean {
  return [summary.request_id, summary.worker, summary.prefill_worker, summary.state, summary.room_state, summary.room === null ? null : String(summary.room)].some(
    (field) => field !== null && field.toLowerCase().includes(text),
  );
}

/** Time spent in each state, per machine, in the order the states were entered. */
export function timeline(records: readonly TransitionRecord[]): TimelineSegment[] {
  const segments: TimelineSegment[] = [];
  const open = new Map<string, TimelineSegment>();
  for (const record of records) {
    const key = `${record.machine}/${record.worker}/${record.room ?? ''}`;
    const current = open.get(key);
    if (current) current.end_ms = record.ts_ms;
    const segment: TimelineSegment = { machine: record.machine, worker: record.worker, state: record.to, start_ms: record.ts_ms, end_ms: null };
    if (isTerminal(record.machine, record.to)) segment.end_ms = record.ts_ms;
    segments.push(segment);
    open.set(key, segment);
  }
  return segments;
}

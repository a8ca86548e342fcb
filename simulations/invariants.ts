import { unpack } from 'msgpackr';
import type { InspectionEvent } from 'xstate';
import { requestMachine, roomMachine, type Clock } from '../src/index.js';
import { ownerKey } from '../src/internal.js';
import { isErrorCode } from '../src/errors.js';
import type { SimRegion } from '../src/fabric/sim/sim-region.js';
import type { DecodeWorker } from '../src/actors/decode-worker.js';
import type { PrefillWorker } from '../src/actors/prefill-worker.js';
import { MachineGraph } from './machine-graph.js';
import { describeRequest, newRequestRecord, note, type ClientOutcome, type RequestRecord, type SessionRecord } from './records.js';
import type { TraceHash } from './trace.js';
import type { WorkerSlot } from './sim-cluster.js';
import type { RequestSpec } from './workload.js';
import type { TrafficObserver } from './faulty-transport.js';

/** The invariants of DESIGN.md, plus two the simulator adds (runtime errors, liveness of fresh requests). */
export const invariants = [
  { id: 'terminal', title: 'Every request ends in exactly one terminal state, within a bounded virtual time after healing' },
  { id: 'machine-path', title: "Each request's (and room's) state sequence is a path of its machine's graph" },
  { id: 'page-conservation', title: 'Pages are conserved: free + held + quarantined = capacity; no double allocation or free' },
  { id: 'fencing', title: "No write lands on a page not held for the writing room's current epoch" },
  { id: 'read-after-transfer', title: 'No decode starts before its transfer completed; nothing reads pages not held' },
  { id: 'token-stream', title: 'Tokens reach the client in order, exactly once; a failed request carries an error code' },
  { id: 'output', title: 'Completed requests produce exactly what aggregated serving produces' },
  { id: 'quiescence', title: 'After quiescence no room, page, request, stream, subscription or timer is left' },
  { id: 'runtime-errors', title: 'The runtime reports no internal error (crashed machines, throwing handlers, internal codes)' },
  { id: 'liveness', title: 'After healing, fresh requests complete' },
] as const;

export type InvariantId = (typeof invariants)[number]['id'];

/** One broken invariant, with the stories of the requests involved. */
export interface Violation {
  invariant: InvariantId;
  message: string;
  atMs: number;
  requestIds: string[];
  /** describeRequest() of each request involved. */
  histories: string[][];
}

/** Result of one invariant over a run. */
export interface InvariantResult {
  id: InvariantId;
  title: string;
  /** Individual checks made (writes inspected, transitions followed, requests compared...). */
  checks: number;
  violations: number;
  status: 'pass' | 'fail' | 'not-exercised';
}

interface SessionEntry {
  session: SessionRecord;
  record: RequestRecord | undefined;
  graph: MachineGraph;
  key: string;
}

const requestGraph = new MachineGraph(requestMachine);
const roomGraph = new MachineGraph(roomMachine);

/** Violations kept in full; more are counted. */
const violationsKeptMax = 20;

/**
 * Watches a run and checks DESIGN.md's invariants as it goes: every machine transition against
 * its graph, every fabric write and read against page ownership, every token and outcome the
 * client sees. End-of-run checks (outputs, leftovers, liveness) are called by the run. The first
 * violation asks the run to stop (`onViolation`).
 */
export class InvariantChecker {
  readonly checks = Object.fromEntries(invariants.map((inv) => [inv.id, 0])) as Record<InvariantId, number>;
  readonly violationCounts = Object.fromEntries(invariants.map((inv) => [inv.id, 0])) as Record<InvariantId, number>;
  readonly violations: Violation[] = [];
  /** Things the run exercised that are worth counting (completions after the request ended...). */
  readonly observed: Record<string, number> = {};
  readonly records = new Map<string, RequestRecord>();
  private readonly sessions = new Map<string, SessionEntry>();
  private readonly liveSessions = new Map<string, Set<SessionEntry>>();
  private readonly owners = new Map<string, RequestRecord>();
  private readonly ownerSessions = new Map<string, SessionRecord>();
  private readonly regions = new Map<string, { region: SimRegion; completed: Set<string> }>();

  constructor(
    private readonly clock: Clock,
    private readonly trace: TraceHash,
    private readonly onViolation: (violation: Violation) => void,
  ) {}

  /** Reports a broken invariant about `requests`. */
  violate(invariant: InvariantId, message: string, requests: Array<RequestRecord | undefined> = []): void {
    this.violationCounts[invariant]++;
    const involved = requests.filter((r): r is RequestRecord => r !== undefined);
    const violation: Violation = {
      invariant,
      message,
      atMs: this.clock.now(),
      requestIds: involved.map((r) => r.spec.requestId),
      histories: involved.map(describeRequest),
    };
    if (this.violations.length < violationsKeptMax) this.violations.push(violation);
    this.onViolation(violation);
  }

  /** The client request behind a request id; a migrated attempt is named `<id>-m<n>`. */
  private recordOf(requestId: string): RequestRecord | undefined {
    return this.records.get(requestId) ?? this.records.get(requestId.replace(/-m\d+$/, ''));
  }

  count(what: string): void {
    this.observed[what] = (this.observed[what] ?? 0) + 1;
  }

  /** Starts following a request its client is about to send. */
  request(spec: RequestSpec): RequestRecord {
    const record = newRequestRecord(spec);
    this.records.set(spec.requestId, record);
    this.trace.add('arrive', this.clock.now(), spec.requestId, spec.promptTokens.length, spec.maxTokens);
    return record;
  }

  /** What the network did to a message; faults are noted on the request the message is about. */
  readonly traffic: TrafficObserver = ({ from, to, subject, kind, data, fate }) => {
    const nowMs = this.clock.now();
    const tail = subject.slice(subject.lastIndexOf('.') + 1);
    this.trace.add('msg', nowMs, kind, from, to, tail, data.byteLength, fate.fault);
    if (fate.fault === undefined && kind !== 'open') return;
    const requestId = requestIdOf(data);
    const record = requestId === undefined ? undefined : this.recordOf(requestId);
    if (!record) return;
    if (kind === 'open' && to !== undefined) record.decodeActor = to;
    if (fate.fault === undefined) return;
    note(record, nowMs, `${kind} ${tail} ${from} -> ${to ?? '?'}: ${fate.fault}`);
    if (kind === 'chunk') record.streamFaulted = true;
  };

  /** A chunk the client's generate() is about to read. */
  clientChunk(record: RequestRecord, chunk: Uint8Array, stream: { base: number; ordinal: number } = { base: 0, ordinal: 0 }): void {
    const message = safeUnpack(chunk) as { t?: string; index?: number; tokens?: number[] } | undefined;
    if (message?.t !== 'tokens' || record.refusedStream === stream.ordinal) return;
    // Indices restart at 0 on a migrated request's new stream, which began after `base` tokens.
    const expected = record.tokens.length - stream.base;
    const index = message.index ?? 0;
    if (index > expected) {
      // generate() gives up on that stream (tokens were lost) and may migrate; what it accepted stays a clean prefix.
      record.refusedChunk = `a chunk at index ${index} when ${expected} was expected`;
      record.refusedStream = stream.ordinal;
      note(record, this.clock.now(), `client refused ${record.refusedChunk}`);
      return;
    }
    // A duplicated chunk adds only what was not received yet, as generate() does.
    const fresh = (message.tokens ?? []).slice(expected - index);
    for (const token of fresh) {
      record.tokens.push(token);
      record.tokenTimesMs.push(this.clock.now());
    }
    this.trace.add('tok', this.clock.now(), record.spec.requestId, index, ...(message.tokens ?? []));
  }


  /** The client's generate() finished or threw. */
  clientOutcome(record: RequestRecord, outcome: ClientOutcome): void {
    this.checks.terminal++;
    this.checks['token-stream']++;
    this.checks['runtime-errors']++;
    if (record.outcome) {
      this.violate('terminal', `request ${record.spec.requestId} ended twice (${record.outcome.status}, then ${outcome.status})`, [record]);
      return;
    }
    record.outcome = outcome;
    this.trace.add('end', outcome.atMs, record.spec.requestId, outcome.status, outcome.code, outcome.completionTokens);
    if (outcome.status !== 'done') {
      if (!outcome.code || !isErrorCode(outcome.code)) {
        this.violate('token-stream', `request ${record.spec.requestId} ${outcome.status} without a known error code (${String(outcome.code)}: ${outcome.message})`, [record]);
      } else if (outcome.code === 'internal' && !record.streamFaulted) {
        this.violate('runtime-errors', `request ${record.spec.requestId} failed with an internal error: ${outcome.message}`, [record]);
      }
    } else if (outcome.completionTokens !== record.tokens.length) {
      this.violate('token-stream', `request ${record.spec.requestId} finished with ${outcome.completionTokens} completion tokens but the client received ${record.tokens.length}`, [record]);
    }
  }

  /** An error-level log line or a throwing handler in the runtime. */
  runtimeError(actor: string, message: string, fields: Record<string, unknown>): void {
    const requestId = typeof fields.request === 'string' ? fields.request : undefined;
    this.violate('runtime-errors', `${actor}: ${message} ${JSON.stringify(fields)}`, [requestId ? this.recordOf(requestId) : undefined]);
  }

  /** A fabric fault hit a write of the room `owner`. */
  fabricFault(owner: string, fault: string): void {
    const record = this.owners.get(owner);
    if (record) note(record, this.clock.now(), `${fault} (room ${owner})`);
  }

  /** A worker incarnation crashed: its machines that had not ended are lost with it. */
  crashed(actor: string, epoch: number): void {
    const key = `${actor}/${epoch}`;
    const nowMs = this.clock.now();
    this.trace.add('crash', nowMs, key);
    for (const entry of this.liveSessions.get(key) ?? []) {
      entry.session.lostAtMs = nowMs;
      if (entry.record) note(entry.record, nowMs, `${actor} crashed while its ${entry.session.machine} machine was in ${entry.session.states.at(-1)}`);
    }
    this.liveSessions.delete(key);
  }

  /** The inspection callback of one worker incarnation's machines. */
  inspect(slot: WorkerSlot, epoch: number): (event: InspectionEvent) => void {
    const graph = slot.role === 'decode' ? requestGraph : roomGraph;
    const machine = slot.role === 'decode' ? 'request' : 'room';
    const key = `${slot.actor}/${epoch}`;
    return (event) => {
      if (event.actorRef.sessionId !== event.rootId) return;
      if (event.type === '@xstate.snapshot') {
        if (event.event.type === 'xstate.init') this.begin(event, machine, slot.actor, epoch, key, graph);
      } else if (event.type === '@xstate.microstep') {
        // A transition without a target (actions only) or the actor being stopped is not a step.
        if (!event._transitions.some((transition) => (transition.target?.length ?? 0) > 0)) return;
        const ended = this.step(event, key);
        // Pages move when a request ends: check the pool of a live incarnation right then.
        if (ended && slot.role === 'decode' && slot.up && slot.epoch === epoch) this.checkPools([slot]);
      }
    };
  }

  private begin(event: InspectionEvent & { snapshot: unknown }, machine: SessionRecord['machine'], actor: string, epoch: number, key: string, graph: MachineGraph): void {
    const snapshot = event.snapshot as { value: string; context: MachineContext };
    const nowMs = this.clock.now();
    const record = this.recordOf(snapshot.context.requestId);
    const session: SessionRecord = {
      machine,
      actor,
      epoch,
      states: [snapshot.value],
      timesMs: [nowMs],
      events: ['xstate.init'],
      final: undefined,
      lostAtMs: undefined,
      owner: machine === 'room' ? ownerKey({ instanceId: snapshot.context.prefillId!, epoch: snapshot.context.epoch! }, snapshot.context.room!) : undefined,
    };
    const entry: SessionEntry = { session, record, graph, key };
    this.sessions.set(event.actorRef.sessionId, entry);
    record?.sessions.push(session);
    this.trace.add('state', nowMs, actor, epoch, snapshot.context.requestId, snapshot.value);
    this.checks['machine-path']++;
    if (!graph.startStates.has(snapshot.value)) {
      this.violate('machine-path', `${machine} machine of ${snapshot.context.requestId} on ${actor} started in '${snapshot.value}'`, [record]);
    }
    if (graph.isFinal(snapshot.value)) {
      session.final = snapshot.value;
    } else {
      let live = this.liveSessions.get(key);
      if (!live) this.liveSessions.set(key, (live = new Set()));
      live.add(entry);
    }
    if (!record) this.violate('machine-path', `${machine} machine on ${actor} runs for ${snapshot.context.requestId}, which no client sent`);
  }

  /** Follows one transition; returns true when it ended the machine. */
  private step(event: InspectionEvent & { snapshot: unknown; event: { type: string } }, key: string): boolean {
    const entry = this.sessions.get(event.actorRef.sessionId);
    if (!entry) return false;
    const { session, record, graph } = entry;
    const snapshot = event.snapshot as { value: string; context: MachineContext };
    const to = snapshot.value;
    const from = session.states.at(-1)!;
    const nowMs = this.clock.now();
    session.states.push(to);
    session.timesMs.push(nowMs);
    session.events.push(event.event.type);
    this.trace.add('state', nowMs, session.actor, session.epoch, snapshot.context.requestId, to);
    this.checks['machine-path']++;
    if (session.final !== undefined) {
      this.violate('machine-path', `${session.machine} machine of ${snapshot.context.requestId} moved ${from} -> ${to} after its final state`, [record]);
    } else if (!graph.allows(from, to)) {
      this.violate('machine-path', `${session.machine} machine of ${snapshot.context.requestId} moved ${from} -> ${to} on ${event.event.type}, which its graph has no edge for`, [record]);
    }
    const grant = snapshot.context.grant;
    if (session.machine === 'request' && grant && session.owner === undefined) {
      session.owner = ownerKey({ instanceId: grant.prefillId, epoch: grant.epoch }, grant.room);
      if (record) this.owners.set(session.owner, record);
      this.ownerSessions.set(session.owner, session);
    }
    if (session.machine === 'request' && to === 'cleanup') this.checkTransferCompleted(entry);
    if (graph.isFinal(to) && session.final === undefined) {
      session.final = to;
      this.liveSessions.get(key)?.delete(entry);
      return true;
    }
    return false;
  }

  /** Invariant 5: the request leaves polling only after its room's completion landed in its region. */
  private checkTransferCompleted(entry: SessionEntry): void {
    this.checks['read-after-transfer']++;
    const { session, record } = entry;
    const watched = this.regions.get(entry.key);
    if (!session.owner || !watched?.completed.has(session.owner)) {
      this.violate('read-after-transfer', `request ${record?.spec.requestId} on ${session.actor} left polling without a completion for room ${session.owner}`, [record]);
    }
  }

  /**
   * Watches a decode incarnation's KV region: every write is checked against page ownership
   * before the region applies (or refuses) it, every read against the reader's hold and its
   * completion. The sim region refuses a misdirected write, but RDMA hardware would not: a write
   * reaching a page it does not own is a fencing bug even when the sim catches it.
   */
  regionRegistered(slot: WorkerSlot, epoch: number, region: SimRegion): void {
    const completed = new Set<string>();
    const key = `${slot.actor}/${epoch}`;
    this.regions.set(key, { region, completed });
    const { pageCount, pageBytes } = region.descriptor;
    const apply = region.apply.bind(region);
    region.apply = (owner, pages, data) => {
      this.checks.fencing++;
      for (const page of pages) {
        if (!Number.isInteger(page) || page < 0 || page >= pageCount) continue;
        const holder = region.ownerOf(page);
        if (holder !== owner) {
          this.violate(
            'fencing',
            `a write of room ${owner} reached page ${page} of ${slot.actor} epoch ${epoch}, which is ${holder ? `held for room ${holder}` : 'free'}`,
            [this.owners.get(owner), holder ? this.owners.get(holder) : undefined],
          );
          break;
        }
      }
      apply(owner, pages, data);
    };
    const read = region.read.bind(region);
    region.read = (pages, byteLength) => {
      this.checks['read-after-transfer']++;
      const used = pages.slice(0, Math.ceil(byteLength / pageBytes));
      const holders = new Set(used.map((page) => (Number.isInteger(page) && page >= 0 && page < pageCount ? region.ownerOf(page) : undefined)));
      const [holder] = holders;
      if (holders.size !== 1 || holder === undefined) {
        this.violate('read-after-transfer', `a read on ${slot.actor} covers pages held by ${[...holders].map((h) => h ?? 'nobody').join(', ')}`, [...holders].map((h) => (h ? this.owners.get(h) : undefined)));
      } else if (!completed.has(holder)) {
        this.violate('read-after-transfer', `pages of room ${holder} on ${slot.actor} were read before its completion landed`, [this.owners.get(holder)]);
      }
      return read(pages, byteLength);
    };
    const complete = region.complete.bind(region);
    region.complete = (completion) => {
      completed.add(completion.owner);
      const session = this.ownerSessions.get(completion.owner);
      if (session?.final !== undefined) {
        this.count('completions after the request ended');
        const record = this.owners.get(completion.owner);
        if (record) note(record, this.clock.now(), `completion of room ${completion.owner} landed after the request ended (${session.final})`);
      }
      return complete(completion);
    };
  }

  /** Invariant 3 on every live decode worker. */
  checkPools(slots: readonly WorkerSlot[]): void {
    for (const slot of slots) {
      if (!slot.up || slot.role !== 'decode') continue;
      const worker = slot.worker as DecodeWorker;
      this.checks['page-conservation']++;
      try {
        // Asserts free + held + quarantined = capacity, each page in one place, and the counters.
        worker.checkConservation();
      } catch (error) {
        this.violate('page-conservation', `${slot.actor} epoch ${slot.epoch}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }

  /** Invariant 1: every request has its outcome by `deadlineMs`, and no live machine is left running. */
  checkTerminal(records: Iterable<RequestRecord>, deadlineMs: (record: RequestRecord) => number, requireMachinesEnded: boolean): void {
    for (const record of records) {
      this.checks.terminal++;
      const bound = deadlineMs(record);
      if (!record.outcome) {
        this.violate('terminal', `request ${record.spec.requestId} has no terminal state at ${this.clock.now().toFixed(1)} ms (bound ${bound.toFixed(1)} ms)`, [record]);
        return;
      }
      if (record.outcome.atMs > bound) {
        this.violate('terminal', `request ${record.spec.requestId} ended at ${record.outcome.atMs.toFixed(1)} ms, after its bound ${bound.toFixed(1)} ms`, [record]);
        return;
      }
      if (!requireMachinesEnded) continue;
      for (const session of record.sessions) {
        if (session.final === undefined && session.lostAtMs === undefined) {
          this.violate('terminal', `the ${session.machine} machine of ${record.spec.requestId} on ${session.actor} never reached a final state (last: ${session.states.at(-1)})`, [record]);
          return;
        }
      }
    }
  }

  /** Invariant 8, once nothing is scheduled any more: every live worker holds nothing. */
  checkLeftovers(slots: readonly WorkerSlot[], extra: string[]): void {
    const found = [...extra];
    for (const slot of slots) {
      if (!slot.up) continue;
      this.checks.quiescence++;
      const engine = slot.engine.stats();
      if (engine.activeSequences !== 0) found.push(`${slot.actor}: ${engine.activeSequences} engine sequences loaded`);
      if (slot.role === 'decode') {
        const stats = (slot.worker as DecodeWorker).stats();
        const { pool } = stats;
        if (pool.free !== pool.capacity) found.push(`${slot.actor}: ${pool.free} of ${pool.capacity} pages free (${pool.held} held, ${pool.quarantined} quarantined, ${pool.waiters} waiting)`);
        if (stats.activeRequests !== 0) found.push(`${slot.actor}: ${stats.activeRequests} requests active`);
        if (stats.fencedRooms !== 0) found.push(`${slot.actor}: ${stats.fencedRooms} rooms fenced`);
        if (stats.batch.active + stats.batch.waiting !== 0) found.push(`${slot.actor}: ${stats.batch.active + stats.batch.waiting} sequences in the batcher`);
      } else {
        const stats = (slot.worker as PrefillWorker).stats();
        if (stats.rooms !== 0) found.push(`${slot.actor}: ${stats.rooms} rooms held`);
      }
    }
    for (const [key, live] of this.liveSessions) {
      for (const entry of live) found.push(`${key}: ${entry.session.machine} machine of ${entry.record?.spec.requestId} still in ${entry.session.states.at(-1)}`);
    }
    if (found.length > 0) {
      const requests = [...this.liveSessions.values()].flatMap((live) => [...live].map((entry) => entry.record)).slice(0, 3);
      const quarantinedOwners = this.quarantinedOwners(slots).slice(0, 3);
      this.violate('quiescence', `after quiescence: ${found.join('; ')}`, [...requests, ...quarantinedOwners]);
    }
  }

  /** Requests whose rooms still hold or quarantine pages, to explain a leak. */
  private quarantinedOwners(slots: readonly WorkerSlot[]): Array<RequestRecord | undefined> {
    const out: Array<RequestRecord | undefined> = [];
    for (const slot of slots) {
      if (!slot.up || slot.role !== 'decode' || !slot.region) continue;
      const seen = new Set<string>();
      for (let page = 0; page < slot.region.descriptor.pageCount; page++) {
        const holder = slot.region.ownerOf(page);
        if (holder && !seen.has(holder)) {
          seen.add(holder);
          out.push(this.owners.get(holder));
        }
      }
    }
    return out;
  }

  /** Invariants 6 and 7: what each client received is the aggregated reference (in full when done, a prefix otherwise). */
  checkOutput(record: RequestRecord, reference: readonly number[], referenceText: string): void {
    const { outcome } = record;
    this.checks.output++;
    this.checks['token-stream']++;
    const received = record.tokens;
    const prefixOk = received.length <= reference.length && received.every((token, i) => token === reference[i]);
    if (!prefixOk) {
      const at = received.findIndex((token, i) => token !== reference[i]);
      this.violate(
        'output',
        `request ${record.spec.requestId}: the client received ${received.length} tokens that are not a prefix of the aggregated output (${reference.length} tokens; first difference at ${at})`,
        [record],
      );
      return;
    }
    if (outcome?.status !== 'done') return;
    if (received.length !== reference.length) {
      this.violate('output', `request ${record.spec.requestId} completed with ${received.length} tokens; aggregated serving gives ${reference.length}`, [record]);
      return;
    }
    if (record.text !== referenceText) {
      this.violate('output', `request ${record.spec.requestId}: the text the frontend yielded differs from the aggregated output's`, [record]);
      return;
    }
    const eos = reference.at(-1) === 256 && !record.spec.ignoreEos;
    const expected = eos ? 'stop' : 'length';
    if (outcome.finishReason !== expected) {
      this.violate('output', `request ${record.spec.requestId} finished with '${outcome.finishReason}', aggregated serving with '${expected}'`, [record]);
    }
  }

  /** The per-invariant summary of the run. */
  results(): InvariantResult[] {
    return invariants.map(({ id, title }) => ({
      id,
      title,
      checks: this.checks[id],
      violations: this.violationCounts[id],
      status: this.violationCounts[id] > 0 ? 'fail' : this.checks[id] > 0 ? 'pass' : 'not-exercised',
    }));
  }
}

interface MachineContext {
  requestId: string;
  grant?: { prefillId: string; epoch: number; room: number } | null;
  prefillId?: string;
  epoch?: number;
  room?: number;
}

function safeUnpack(data: Uint8Array): unknown {
  try {
    return unpack(data);
  } catch {
    return undefined;
  }
}

function requestIdOf(data: Uint8Array): string | undefined {
  const message = safeUnpack(data) as { request_id?: unknown } | undefined;
  return typeof message?.request_id === 'string' ? message.request_id : undefined;
}

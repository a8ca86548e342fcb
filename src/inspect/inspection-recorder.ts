import type { InspectionEvent } from 'xstate';
import type { Clock } from '../time/clock.js';
import { inspectLimits } from './inspect-limits.js';
import { RequestIndex } from './request-index.js';
import { RingBuffer } from './ring-buffer.js';
import { machineKinds, type MachineKind, type TransitionRecord } from './transition-record.js';

export interface InspectionRecorderOptions {
  /** Source of the records' timestamps (real or virtual). */
  clock: Clock;
  /** Records the ring keeps; default `inspectLimits.ringMax`. */
  ringMax?: number;
  /** Requests the index tracks; default `inspectLimits.requestsMax`. */
  requestsMax?: number;
  /** Transitions kept per request in the index; default `inspectLimits.transitionsPerRequestMax`. */
  transitionsPerRequestMax?: number;
  /** Also receives every record, e.g. a JSONL trace file. */
  sink?: (record: TransitionRecord) => void;
}

/** What the recorder needs from a machine actor's inspection events. */
interface MachineLogic {
  id: string;
  root: { initial?: { target?: ReadonlyArray<{ key: string }> } };
}

interface MicrostepTransition {
  eventType: string;
  target?: readonly unknown[];
  reenter?: boolean;
}

/**
 * Turns the xstate inspection events of request, room and local request actors into transition
 * records: one per state entered, including re-entries (a bootstrap retry) and the state an
 * actor starts in. Records go into a bounded ring, a bounded per-request index and subscribers.
 */
export class InspectionRecorder {
  readonly ring: RingBuffer<TransitionRecord>;
  readonly index: RequestIndex;
  private readonly previous = new WeakMap<object, string>();
  private readonly subscribers = new Set<(record: TransitionRecord) => void>();

  constructor(private readonly options: InspectionRecorderOptions) {
    this.ring = new RingBuffer(options.ringMax ?? inspectLimits.ringMax);
    this.index = new RequestIndex({
      requestsMax: options.requestsMax ?? inspectLimits.requestsMax,
      transitionsPerRequestMax: options.transitionsPerRequestMax ?? inspectLimits.transitionsPerRequestMax,
    });
  }

  /** An `inspect` callback for the actors of worker `worker`. */
  forWorker(worker: string): (event: InspectionEvent) => void {
    return (event) => this.inspect(worker, event);
  }

  /** Adds a record directly (trace replay, tests). */
  record(record: TransitionRecord): void {
    this.ring.push(record);
    this.index.add(record);
    this.options.sink?.(record);
    for (const subscriber of this.subscribers) subscriber(record);
  }

  /** Calls `listener` with every new record until the returned function is called; false when too many listen. */
  subscribe(listener: (record: TransitionRecord) => void): (() => void) | false {
    if (this.subscribers.size >= inspectLimits.subscribersMax) return false;
    this.subscribers.add(listener);
    return () => this.subscribers.delete(listener);
  }

  private inspect(worker: string, event: InspectionEvent): void {
    if (event.type !== '@xstate.microstep' && event.type !== '@xstate.snapshot') return;
    const logic = (event.actorRef as { logic?: Partial<MachineLogic> }).logic;
    if (!logic?.root || !machineKinds.includes(logic.id as MachineKind)) return;
    const snapshot = event.snapshot as { value?: unknown; context?: { requestId?: unknown; room?: unknown } };
    if (typeof snapshot.value !== 'string' || typeof snapshot.context?.requestId !== 'string') return;
    const base = {
      worker,
      machine: logic.id as MachineKind,
      request_id: snapshot.context.requestId,
      ...(typeof snapshot.context.room === 'number' ? { room: snapshot.context.room } : {}),
    };
    let from = this.previous.get(event.actorRef);
    if (from === undefined) {
      // The first event may already be past the initial state (an eventless transition out of it).
      from = logic.root.initial?.target?.[0]?.key ?? snapshot.value;
      this.previous.set(event.actorRef, from);
      this.record({ ts_ms: this.options.clock.now(), ...base, from: null, to: from, event: 'xstate.init' });
    }
    if (event.type !== '@xstate.microstep') return;
    const transitions = (event as unknown as { _transitions?: readonly MicrostepTransition[] })._transitions ?? [];
    const reentered = transitions.some((transition) => transition.reenter && (transition.target?.length ?? 0) > 0);
    if (snapshot.value === from && !reentered) return;
    const eventless = transitions.length > 0 && transitions.every((transition) => transition.eventType === '');
    this.previous.set(event.actorRef, snapshot.value);
    this.record({ ts_ms: this.options.clock.now(), ...base, from, to: snapshot.value, event: eventless ? 'always' : event.event.type });
  }
}

/** Which machine a transition belongs to. */
export type MachineKind = 'request' | 'room' | 'localRequest';

export const machineKinds: readonly MachineKind[] = ['request', 'room', 'localRequest'];

/**
 * One state change of one actor, as the inspection feed records it and as a JSONL trace stores
 * it (one record per line). `from` is null for the state an actor starts in.
 */
export interface TransitionRecord {
  /** Clock time of the transition in milliseconds (real or virtual). */
  ts_ms: number;
  /** Instance id of the worker whose actor moved. */
  worker: string;
  machine: MachineKind;
  request_id: string;
  /** The prefill worker's room number (room machines only). */
  room?: number;
  from: string | null;
  to: string;
  /** Type of the event that caused the transition, e.g. `xstate.done.actor.bootstrap` or `CANCEL`. */
  event: string;
}

/** The top-level state name of an xstate snapshot value ('unknown' when it has none). */
export function topState(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') return Object.keys(value)[0] ?? 'unknown';
  return 'unknown';
}

/** Whether `state` ends its machine. */
export function isTerminal(machine: MachineKind, state: string): boolean {
  return machine === 'room' ? state === 'released' || state === 'expired' || state === 'failed' : state === 'done' || state === 'failed' || state === 'cancelled';
}

/** Parses one JSONL line into a record; returns an error message for a malformed one. */
export function parseTransitionRecord(line: string): TransitionRecord | string {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return 'not JSON';
  }
  if (typeof value !== 'object' || value === null) return 'not an object';
  const record = value as Record<string, unknown>;
  if (typeof record.ts_ms !== 'number' || !Number.isFinite(record.ts_ms)) return 'ts_ms is not a number';
  if (typeof record.worker !== 'string') return 'worker is not a string';
  if (!machineKinds.includes(record.machine as MachineKind)) return `unknown machine '${String(record.machine)}'`;
  if (typeof record.request_id !== 'string') return 'request_id is not a string';
  if (record.room !== undefined && typeof record.room !== 'number') return 'room is not a number';
  if (record.from !== null && typeof record.from !== 'string') return 'from is not a string or null';
  if (typeof record.to !== 'string') return 'to is not a string';
  if (typeof record.event !== 'string') return 'event is not a string';
  return {
    ts_ms: record.ts_ms,
    worker: record.worker,
    machine: record.machine as MachineKind,
    request_id: record.request_id,
    ...(record.room === undefined ? {} : { room: record.room as number }),
    from: record.from as string | null,
    to: record.to,
    event: record.event,
  };
}

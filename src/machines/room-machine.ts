import { assign, fromPromise, setup } from 'xstate';
import { ErrorCode, type WireError } from '../errors.js';
import { toWireError } from './wire-error.js';

// The prefill worker's view of one room: reserved by bootstrap, then computing the prompt's
// KV, transferring it into the decode worker's pages, and waiting for decode to confirm. A room
// whose writes may still be in flight never ends before they settle (draining), so its
// acknowledgement of an abort tells decode that no late write can follow.

/** Deadlines of the room's states, in milliseconds. */
export interface RoomDeadlines {
  /** Bootstrap granted the room but no prefill request came. */
  reservedMs: number;
  /** Computing the KV and the first token. */
  computeMs: number;
  /** Writing the KV into decode's pages. */
  transferMs: number;
  /** Waiting for in-flight writes to settle after an abort or failure. */
  drainMs: number;
  /** Waiting for decode to confirm the transfer. */
  releaseMs: number;
}

export interface RoomMachineInput {
  requestId: string;
  prefillId: string;
  epoch: number;
  room: number;
  deadlines: RoomDeadlines;
}

export interface RoomContext extends RoomMachineInput {
  /** Why the room failed, reported to decode. */
  error: WireError | null;
  /** Bytes of the KV payload, once computed. */
  kvBytes: number;
  /** 'active' until a terminal state is entered. */
  status: 'active' | RoomOutput['status'];
}

export type RoomEvent = { type: 'START' } | { type: 'RELEASE'; outcome: 'confirmed' | 'aborted' };

export interface RoomOutput {
  status: 'released' | 'expired' | 'failed';
  error: WireError | null;
}

export const roomStates = ['reserved', 'computing', 'transferring', 'draining', 'awaitingRelease', 'released', 'expired', 'failed'] as const;
export type RoomState = (typeof roomStates)[number];

/** The room machine with placeholder effects; the prefill worker provides real ones. */
export const roomMachine = setup({
  types: {
    context: {} as RoomContext,
    events: {} as RoomEvent,
    input: {} as RoomMachineInput,
    output: {} as RoomOutput,
  },
  actors: {
    compute: fromPromise<{ kvBytes: number }, { room: number }>(async () => {
      throw new Error('compute is provided by the prefill worker');
    }),
    transfer: fromPromise<void, { room: number }>(async () => {
      throw new Error('transfer is provided by the prefill worker');
    }),
    drain: fromPromise<void, { room: number }>(async () => {
      throw new Error('drain is provided by the prefill worker');
    }),
  },
  actions: {
    /** Tells decode that every write of the room has landed. */
    notifyPosted: (_, _params: { context: RoomContext }) => {},
    /** Tells decode that the room failed, so it fails fast instead of waiting for its deadline. */
    notifyFailed: (_, _params: { context: RoomContext }) => {},
    /** Frees the room's state in the worker (KV buffer, table entry) and answers pending releases. */
    retire: (_, _params: { context: RoomContext; status: RoomOutput['status'] }) => {},
  },
  guards: {
    hasError: ({ context }) => context.error !== null,
  },
  delays: {
    reservedDeadline: ({ context }) => context.deadlines.reservedMs,
    computeDeadline: ({ context }) => context.deadlines.computeMs,
    transferDeadline: ({ context }) => context.deadlines.transferMs,
    drainDeadline: ({ context }) => context.deadlines.drainMs,
    releaseDeadline: ({ context }) => context.deadlines.releaseMs,
  },
}).createMachine({
  id: 'room',
  context: ({ input }) => ({ ...input, error: null, kvBytes: 0, status: 'active' }),
  initial: 'reserved',
  output: ({ context }) => ({ status: context.status as RoomOutput['status'], error: context.error }),
  states: {
    reserved: {
      on: {
        START: { target: 'computing' },
        RELEASE: { target: 'released' },
      },
      after: { reservedDeadline: { target: 'expired' } },
    },
    computing: {
      invoke: {
        id: 'compute',
        src: 'compute',
        input: ({ context }) => ({ room: context.room }),
        onDone: { target: 'transferring', actions: assign({ kvBytes: ({ event }) => event.output.kvBytes }) },
        onError: {
          target: 'failed',
          actions: [
            assign({ error: ({ event }) => toWireError(event.error, ErrorCode.PrefillFailed) }),
            { type: 'notifyFailed', params: ({ context }) => ({ context }) },
          ],
        },
      },
      on: {
        // Nothing was written yet: leaving the state aborts the computation.
        RELEASE: { target: 'released' },
      },
      after: {
        computeDeadline: {
          target: 'failed',
          actions: [
            assign({
              error: ({ context }) => ({ code: ErrorCode.PrefillFailed, message: `prefill did not finish within ${context.deadlines.computeMs} ms` }),
            }),
            { type: 'notifyFailed', params: ({ context }) => ({ context }) },
          ],
        },
      },
    },
    transferring: {
      invoke: {
        id: 'transfer',
        src: 'transfer',
        input: ({ context }) => ({ room: context.room }),
        onDone: { target: 'awaitingRelease', actions: { type: 'notifyPosted', params: ({ context }) => ({ context }) } },
        onError: {
          target: 'draining',
          actions: [
            assign({ error: ({ event }) => toWireError(event.error, ErrorCode.TransferFailed) }),
            { type: 'notifyFailed', params: ({ context }) => ({ context }) },
          ],
        },
      },
      on: {
        RELEASE: { target: 'draining' },
      },
      after: {
        transferDeadline: {
          target: 'draining',
          actions: [
            assign({
              error: ({ context }) => ({ code: ErrorCode.TransferFailed, message: `the KV transfer did not finish within ${context.deadlines.transferMs} ms` }),
            }),
            { type: 'notifyFailed', params: ({ context }) => ({ context }) },
          ],
        },
      },
    },
    draining: {
      invoke: {
        id: 'drain',
        src: 'drain',
        input: ({ context }) => ({ room: context.room }),
        onDone: [{ guard: 'hasError', target: 'failed' }, { target: 'released' }],
        onError: { target: 'failed' },
      },
      // The drain actor tears the connection down at its own deadline; this one is a backstop.
      after: { drainDeadline: { target: 'failed' } },
    },
    awaitingRelease: {
      on: {
        RELEASE: { target: 'released' },
      },
      after: { releaseDeadline: { target: 'expired' } },
    },
    released: {
      type: 'final',
      entry: [assign({ status: 'released' }), { type: 'retire', params: ({ context }) => ({ context, status: 'released' as const }) }],
    },
    expired: {
      type: 'final',
      entry: [assign({ status: 'expired' }), { type: 'retire', params: ({ context }) => ({ context, status: 'expired' as const }) }],
    },
    failed: {
      type: 'final',
      entry: [assign({ status: 'failed' }), { type: 'retire', params: ({ context }) => ({ context, status: 'failed' as const }) }],
    },
  },
});

export type RoomMachine = typeof roomMachine;

import { assign, fromPromise, setup } from 'xstate';
import { ErrorCode, type WireError } from '../errors.js';
import type { Deadlines } from '../limits.js';
import { toWireError } from './wire-error.js';

// The decode worker's view of one request: bootstrap → allocation → prefill → transfer →
// polling → cleanup → decode → done, or failed / cancelled from any state. The machine is pure:
// every effect (transport, pages, fabric, engine) is an actor or action the decode worker
// provides with `requestMachine.provide(...)`.

/** A prefill worker the request may bootstrap on, in the router's order of preference. */
export interface PrefillCandidate {
  instanceId: string;
  subjectPrefix: string;
}

/** The room a prefill worker granted. */
export interface RoomGrant {
  prefillId: string;
  subjectPrefix: string;
  epoch: number;
  room: number;
}

export interface RequestMachineInput {
  requestId: string;
  /** Prefill workers to try in bootstrap, in order; attempts wrap around the list. */
  candidates: readonly PrefillCandidate[];
  /** Per-state deadlines. */
  deadlines: Deadlines;
  /** Most bootstrap attempts before the request fails with `bootstrap_failed`. */
  bootstrapAttemptsMax: number;
}

export type FinishReason = 'stop' | 'length';

export interface RequestContext extends RequestMachineInput {
  /** Bootstrap attempts started so far. */
  attempts: number;
  grant: RoomGrant | null;
  pages: readonly number[] | null;
  /** Prefill reported every write posted (may arrive before its `prefill_started` reply). */
  transferPosted: boolean;
  /** The token prefill sampled, read from the KV payload. */
  firstToken: number | null;
  /** The prefill worker acknowledged that the room is released after a confirmed transfer. */
  roomReleased: boolean;
  finishReason: FinishReason | null;
  error: WireError | null;
  /** 'running' until a terminal state is entered. */
  status: 'running' | RequestOutput['status'];
}

export type RequestEvent =
  | { type: 'CANCEL' }
  | { type: 'TRANSFER_POSTED' }
  | { type: 'PREFILL_FAILED'; error: WireError };

export interface RequestOutput {
  status: 'done' | 'failed' | 'cancelled';
  finishReason: FinishReason | null;
  error: WireError | null;
}

/** Codes after which bootstrap is worth trying on another prefill worker. */
const retryableBootstrapCodes = new Set<string>([
  ErrorCode.NoResponders,
  ErrorCode.Timeout,
  ErrorCode.Closed,
  ErrorCode.ShuttingDown,
  ErrorCode.Overloaded,
]);

function canAttemptAgain(context: RequestContext): boolean {
  return context.attempts < Math.min(context.bootstrapAttemptsMax, Math.max(context.candidates.length, 1));
}

/** The states, in the order a successful request visits them. */
export const requestStates = [
  'bootstrap',
  'allocation',
  'prefill',
  'transfer',
  'polling',
  'cleanup',
  'decode',
  'done',
  'failed',
  'cancelled',
] as const;
export type RequestState = (typeof requestStates)[number];

/** The request machine with placeholder effects; the decode worker provides real ones. */
export const requestMachine = setup({
  types: {
    context: {} as RequestContext,
    events: {} as RequestEvent,
    input: {} as RequestMachineInput,
    output: {} as RequestOutput,
  },
  actors: {
    bootstrap: fromPromise<RoomGrant, { requestId: string; candidate: PrefillCandidate; timeoutMs: number }>(async () => {
      throw new Error('bootstrap is provided by the decode worker');
    }),
    allocate: fromPromise<readonly number[], { requestId: string; grant: RoomGrant }>(async () => {
      throw new Error('allocate is provided by the decode worker');
    }),
    startPrefill: fromPromise<void, { requestId: string; grant: RoomGrant; pages: readonly number[] }>(async () => {
      throw new Error('startPrefill is provided by the decode worker');
    }),
    awaitCompletion: fromPromise<void, { requestId: string; grant: RoomGrant }>(async () => {
      throw new Error('awaitCompletion is provided by the decode worker');
    }),
    awaitKv: fromPromise<{ firstToken: number }, { requestId: string; grant: RoomGrant; pages: readonly number[] }>(async () => {
      throw new Error('awaitKv is provided by the decode worker');
    }),
    confirmRelease: fromPromise<void, { requestId: string; grant: RoomGrant }>(async () => {
      throw new Error('confirmRelease is provided by the decode worker');
    }),
    decode: fromPromise<{ finishReason: FinishReason }, { requestId: string; firstToken: number }>(async () => {
      throw new Error('decode is provided by the decode worker');
    }),
  },
  actions: {
    /** Streams the first token to the client as soon as the KV (which carries it) has landed. */
    emitFirstToken: (_, _params: { requestId: string; firstToken: number }) => {},
    /** Returns every page and room the request holds; fences pages whose transfer may still write. */
    releaseResources: (_, _params: { context: RequestContext }) => {},
  },
  guards: {
    hasNoCandidates: ({ context }) => context.candidates.length === 0,
    bootstrapRetryable: ({ context, event }) =>
      canAttemptAgain(context) && retryableBootstrapCodes.has(toWireError((event as { error?: unknown }).error, ErrorCode.BootstrapFailed).code),
    canAttemptAgain: ({ context }) => canAttemptAgain(context),
    transferPosted: ({ context }) => context.transferPosted,
  },
  delays: {
    bootstrapDeadline: ({ context }) => context.deadlines.bootstrapMs,
    allocationDeadline: ({ context }) => context.deadlines.allocationMs,
    prefillDeadline: ({ context }) => context.deadlines.prefillMs,
    transferDeadline: ({ context }) => context.deadlines.transferMs,
    pollingDeadline: ({ context }) => context.deadlines.pollingMs,
    cleanupDeadline: ({ context }) => context.deadlines.cleanupMs,
    decodeDeadline: ({ context }) => context.deadlines.decodeMs,
  },
}).createMachine({
  id: 'request',
  context: ({ input }) => ({
    ...input,
    attempts: 0,
    grant: null,
    pages: null,
    transferPosted: false,
    firstToken: null,
    roomReleased: false,
    finishReason: null,
    error: null,
    status: 'running',
  }),
  initial: 'bootstrap',
  on: {
    CANCEL: { target: '.cancelled' },
  },
  output: ({ context }) => ({ status: context.status as RequestOutput['status'], finishReason: context.finishReason, error: context.error }),
  states: {
    bootstrap: {
      entry: assign({ attempts: ({ context }) => context.attempts + 1 }),
      always: {
        guard: 'hasNoCandidates',
        target: 'failed',
        actions: assign({ error: { code: ErrorCode.NoWorkers, message: 'no prefill worker is registered' } }),
      },
      invoke: {
        id: 'bootstrap',
        src: 'bootstrap',
        input: ({ context }) => ({
          requestId: context.requestId,
          candidate: context.candidates[(context.attempts - 1) % context.candidates.length]!,
          timeoutMs: context.deadlines.bootstrapMs,
        }),
        onDone: { target: 'allocation', actions: assign({ grant: ({ event }) => event.output }) },
        onError: [
          { guard: 'bootstrapRetryable', target: 'bootstrap', reenter: true },
          {
            target: 'failed',
            actions: assign({
              error: ({ event, context }) => {
                const cause = toWireError(event.error, ErrorCode.BootstrapFailed);
                return { code: ErrorCode.BootstrapFailed, message: `bootstrap failed after ${context.attempts} attempt(s): ${cause.code}: ${cause.message}` };
              },
            }),
          },
        ],
      },
      after: {
        bootstrapDeadline: [
          { guard: 'canAttemptAgain', target: 'bootstrap', reenter: true },
          {
            target: 'failed',
            actions: assign({
              error: ({ context }) => ({
                code: ErrorCode.BootstrapFailed,
                message: `no prefill worker granted a room within ${context.deadlines.bootstrapMs} ms, ${context.attempts} attempt(s)`,
              }),
            }),
          },
        ],
      },
    },
    allocation: {
      invoke: {
        id: 'allocate',
        src: 'allocate',
        input: ({ context }) => ({ requestId: context.requestId, grant: context.grant! }),
        onDone: { target: 'prefill', actions: assign({ pages: ({ event }) => event.output }) },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => toWireError(event.error, ErrorCode.KvCapacity) }) },
      },
      on: {
        // The prefill worker that granted the room died while this request waited for pages.
        PREFILL_FAILED: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
      after: {
        allocationDeadline: {
          target: 'failed',
          actions: assign({
            error: ({ context }) => ({ code: ErrorCode.KvCapacity, message: `no KV pages became free within ${context.deadlines.allocationMs} ms` }),
          }),
        },
      },
    },
    prefill: {
      invoke: {
        id: 'startPrefill',
        src: 'startPrefill',
        input: ({ context }) => ({ requestId: context.requestId, grant: context.grant!, pages: context.pages! }),
        onDone: { target: 'transfer' },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => toWireError(event.error, ErrorCode.PrefillFailed) }) },
      },
      on: {
        TRANSFER_POSTED: { actions: assign({ transferPosted: true }) },
        PREFILL_FAILED: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
      after: {
        prefillDeadline: {
          target: 'failed',
          actions: assign({
            error: ({ context }) => ({ code: ErrorCode.DeadlineExceeded, message: `prefill did not start within ${context.deadlines.prefillMs} ms` }),
          }),
        },
      },
    },
    transfer: {
      always: { guard: 'transferPosted', target: 'polling' },
      // The final write's completion also proves every write landed, should the notice be lost.
      invoke: {
        id: 'awaitCompletion',
        src: 'awaitCompletion',
        input: ({ context }) => ({ requestId: context.requestId, grant: context.grant! }),
        onDone: { target: 'polling', actions: assign({ transferPosted: true }) },
        // Watching is best effort: the notice and the state deadline still apply.
        onError: { actions: [] },
      },
      on: {
        TRANSFER_POSTED: { target: 'polling', actions: assign({ transferPosted: true }) },
        PREFILL_FAILED: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
      after: {
        transferDeadline: {
          target: 'failed',
          actions: assign({
            error: ({ context }) => ({ code: ErrorCode.DeadlineExceeded, message: `prefill did not post the KV within ${context.deadlines.transferMs} ms` }),
          }),
        },
      },
    },
    polling: {
      invoke: {
        id: 'awaitKv',
        src: 'awaitKv',
        input: ({ context }) => ({ requestId: context.requestId, grant: context.grant!, pages: context.pages! }),
        onDone: {
          target: 'cleanup',
          actions: [
            assign({ firstToken: ({ event }) => event.output.firstToken }),
            { type: 'emitFirstToken', params: ({ context, event }) => ({ requestId: context.requestId, firstToken: event.output.firstToken }) },
          ],
        },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => toWireError(event.error, ErrorCode.TransferFailed) }) },
      },
      on: {
        PREFILL_FAILED: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
      after: {
        pollingDeadline: {
          target: 'failed',
          actions: assign({
            error: ({ context }) => ({ code: ErrorCode.TransferFailed, message: `the KV transfer did not complete within ${context.deadlines.pollingMs} ms` }),
          }),
        },
      },
    },
    cleanup: {
      // The KV is in our pages; a lost acknowledgement costs the prefill worker a room until its
      // own deadline frees it, so decode goes on either way.
      invoke: {
        id: 'confirmRelease',
        src: 'confirmRelease',
        input: ({ context }) => ({ requestId: context.requestId, grant: context.grant! }),
        onDone: { target: 'decode', actions: assign({ roomReleased: true }) },
        onError: { target: 'decode' },
      },
      after: { cleanupDeadline: { target: 'decode' } },
    },
    decode: {
      invoke: {
        id: 'decode',
        src: 'decode',
        input: ({ context }) => ({ requestId: context.requestId, firstToken: context.firstToken! }),
        onDone: { target: 'done', actions: assign({ finishReason: ({ event }) => event.output.finishReason }) },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => toWireError(event.error, ErrorCode.Internal) }) },
      },
      after: {
        decodeDeadline: {
          target: 'failed',
          actions: assign({
            error: ({ context }) => ({ code: ErrorCode.DeadlineExceeded, message: `decode did not finish within ${context.deadlines.decodeMs} ms` }),
          }),
        },
      },
    },
    done: {
      type: 'final',
      entry: [assign({ status: 'done' }), { type: 'releaseResources', params: ({ context }) => ({ context }) }],
    },
    failed: {
      type: 'final',
      entry: [assign({ status: 'failed' }), { type: 'releaseResources', params: ({ context }) => ({ context }) }],
    },
    cancelled: {
      type: 'final',
      entry: [
        assign({ status: 'cancelled', error: { code: ErrorCode.Cancelled, message: 'the request was cancelled' } }),
        { type: 'releaseResources', params: ({ context }) => ({ context }) },
      ],
    },
  },
});

export type RequestMachine = typeof requestMachine;

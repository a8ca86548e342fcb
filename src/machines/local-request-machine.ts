import { assign, fromPromise, setup } from 'xstate';
import { ErrorCode } from '../errors.js';
import type { Deadlines } from '../limits.js';
import type { FinishReason, RequestContext, RequestOutput } from './request-machine.js';
import { toWireError } from './wire-error.js';

// Aggregated serving: the decode worker prefills the prompt itself, into its own pages, and
// decodes. The same decode effects and terminal handling as the disaggregated request machine,
// without bootstrap, transfer or cleanup. It is the baseline the cost of disaggregation is
// measured against.

export interface LocalRequestInput {
  requestId: string;
  deadlines: Deadlines;
}

export type LocalRequestContext = Pick<RequestContext, 'requestId' | 'deadlines' | 'pages' | 'firstToken' | 'finishReason' | 'error' | 'status'>;

export const localRequestStates = ['prefill', 'decode', 'done', 'failed', 'cancelled'] as const;

export const localRequestMachine = setup({
  types: {
    context: {} as LocalRequestContext,
    events: {} as { type: 'CANCEL' },
    input: {} as LocalRequestInput,
    output: {} as RequestOutput,
  },
  actors: {
    localPrefill: fromPromise<{ firstToken: number; pages: readonly number[] }, { requestId: string }>(async () => {
      throw new Error('localPrefill is provided by the decode worker');
    }),
    decode: fromPromise<{ finishReason: FinishReason }, { requestId: string; firstToken: number }>(async () => {
      throw new Error('decode is provided by the decode worker');
    }),
  },
  actions: {
    emitFirstToken: (_, _params: { requestId: string; firstToken: number }) => {},
    releaseResources: (_, _params: { context: LocalRequestContext }) => {},
  },
  delays: {
    prefillDeadline: ({ context }) => context.deadlines.allocationMs + context.deadlines.prefillMs,
    decodeDeadline: ({ context }) => context.deadlines.decodeMs,
  },
}).createMachine({
  id: 'localRequest',
  context: ({ input }) => ({ ...input, pages: null, firstToken: null, finishReason: null, error: null, status: 'running' }),
  initial: 'prefill',
  on: { CANCEL: { target: '.cancelled' } },
  output: ({ context }) => ({ status: context.status as RequestOutput['status'], finishReason: context.finishReason, error: context.error }),
  states: {
    prefill: {
      invoke: {
        id: 'localPrefill',
        src: 'localPrefill',
        input: ({ context }) => ({ requestId: context.requestId }),
        onDone: {
          target: 'decode',
          actions: [
            assign({ firstToken: ({ event }) => event.output.firstToken, pages: ({ event }) => event.output.pages }),
            { type: 'emitFirstToken', params: ({ context, event }) => ({ requestId: context.requestId, firstToken: event.output.firstToken }) },
          ],
        },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => toWireError(event.error, ErrorCode.PrefillFailed) }) },
      },
      after: {
        prefillDeadline: {
          target: 'failed',
          actions: assign({ error: { code: ErrorCode.DeadlineExceeded, message: 'local prefill did not finish in time' } }),
        },
      },
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
    done: { type: 'final', entry: [assign({ status: 'done' }), { type: 'releaseResources', params: ({ context }) => ({ context }) }] },
    failed: { type: 'final', entry: [assign({ status: 'failed' }), { type: 'releaseResources', params: ({ context }) => ({ context }) }] },
    cancelled: {
      type: 'final',
      entry: [
        assign({ status: 'cancelled', error: { code: ErrorCode.Cancelled, message: 'the request was cancelled' } }),
        { type: 'releaseResources', params: ({ context }) => ({ context }) },
      ],
    },
  },
});

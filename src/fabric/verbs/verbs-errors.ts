import { ErrorCode, TandemError } from '../../errors.js';
import type { VerbsAsyncEvent, VerbsCompletion } from './verbs-addon.js';

/** ibv_wc_status values the fabric tells apart. */
export const WcStatus = {
  Success: 0,
  LocalLengthError: 1,
  LocalProtectionError: 4,
  WrFlushError: 5,
  RemoteAccessError: 10,
  RemoteOperationError: 11,
  RetryExceeded: 12,
  RnrRetryExceeded: 13,
} as const;

/** ibv_event_type values the fabric reacts to. */
export const AsyncEventType = {
  CqError: 0,
  QpFatal: 1,
  QpRequestError: 2,
  QpAccessError: 3,
  DeviceFatal: 8,
  PortActive: 9,
  PortError: 10,
} as const;

/** Async events after which a queue pair can carry nothing more. */
export const fatalQueuePairEvents: ReadonlySet<number> = new Set([AsyncEventType.QpFatal, AsyncEventType.QpRequestError, AsyncEventType.QpAccessError]);

/** What went wrong at the verbs level; the `cause` of the TandemError a caller receives. */
export class VerbsError extends Error {
  override readonly name = 'VerbsError';
  /** 'completion': a work completion failed; 'flushed': flushed after an earlier error; 'async_event': the device reported one. */
  readonly kind: 'completion' | 'flushed' | 'async_event';
  /** ibv_wc_status or ibv_event_type. */
  readonly status: number;
  readonly statusName: string;

  constructor(kind: VerbsError['kind'], status: number, statusName: string, message: string) {
    super(message);
    this.kind = kind;
    this.status = status;
    this.statusName = statusName;
  }

  /** The error of a failed work completion. */
  static fromCompletion(completion: VerbsCompletion): VerbsError {
    const flushed = completion.status === WcStatus.WrFlushError;
    return new VerbsError(
      flushed ? 'flushed' : 'completion',
      completion.status,
      completion.statusName,
      `work completion on queue pair ${completion.qpn} failed: ${completion.statusName} (status ${completion.status}, vendor error ${completion.vendorError})`,
    );
  }

  /** The error of an async event. */
  static fromEvent(event: VerbsAsyncEvent): VerbsError {
    const where = event.qpn !== undefined ? `queue pair ${event.qpn}` : event.port !== undefined ? `port ${event.port}` : 'the device';
    return new VerbsError('async_event', event.type, event.typeName, `async event on ${where}: ${event.typeName} (event ${event.type})`);
  }
}

/** The transfer_failed error a write's caller receives, with the verbs error as its cause. */
export function transferFailed(what: string, cause?: VerbsError): TandemError {
  return new TandemError(ErrorCode.TransferFailed, cause ? `${what}: ${cause.message}` : what, cause ? { cause } : undefined);
}

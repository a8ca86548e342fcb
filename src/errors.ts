/**
 * Operating errors: every failure a caller may need to react to has a stable code here. Retry,
 * fail-fast and migration decisions switch on `code`, never on message text.
 */
export const ErrorCode = {
  /** The client's request is malformed or violates a limit. */
  BadRequest: 'bad_request',
  /** The requested model is not served by this cluster. */
  ModelNotFound: 'model_not_found',
  /** The prompt has more tokens than the deployment accepts. */
  PromptTooLong: 'prompt_too_long',
  /** A wire message could not be decoded or failed validation. */
  InvalidMessage: 'invalid_message',
  /** A wire message carried a schema version this build does not speak. */
  UnsupportedVersion: 'unsupported_version',
  /** Nobody is subscribed to the subject a request was sent to. */
  NoResponders: 'no_responders',
  /** A request or stream did not answer within its deadline. */
  Timeout: 'timeout',
  /** The transport or the stream was closed underneath the caller. */
  Closed: 'closed',
  /** No worker of a needed role is registered. */
  NoWorkers: 'no_workers',
  /** Too many requests are in flight; retry later. */
  Overloaded: 'overloaded',
  /** No prefill worker granted a bootstrap room within the retry budget. */
  BootstrapFailed: 'bootstrap_failed',
  /** The decode worker could not allocate KV pages before the allocation deadline. */
  KvCapacity: 'kv_capacity',
  /** The prefill worker failed to compute or send the KV. */
  PrefillFailed: 'prefill_failed',
  /** A fabric write failed or its connection dropped. */
  TransferFailed: 'transfer_failed',
  /** A request state outlived its deadline. */
  DeadlineExceeded: 'deadline_exceeded',
  /** The KV payload does not belong to this model, layout or request. */
  KvMismatch: 'kv_mismatch',
  /** A message named a room its receiver does not hold. */
  UnknownRoom: 'unknown_room',
  /** A message tried to start a room that was already started. */
  DuplicateRoom: 'duplicate_room',
  /** A message carried a room epoch from an earlier incarnation. */
  StaleEpoch: 'stale_epoch',
  /** The request was cancelled by its client. */
  Cancelled: 'cancelled',
  /** The worker is shutting down and takes no new work. */
  ShuttingDown: 'shutting_down',
  /** A bug; the message says where. */
  Internal: 'internal',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const knownCodes = new Set<string>(Object.values(ErrorCode));

/** The serialisable form of a TandemError, as it crosses the transport. */
export interface WireError {
  code: ErrorCode;
  message: string;
}

/** An operating error with a stable code; crosses actor and process boundaries intact. */
export class TandemError extends Error {
  override readonly name = 'TandemError';
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  toWire(): WireError {
    return { code: this.code, message: this.message };
  }

  static fromWire(wire: { code: string; message: string }): TandemError {
    const code = isErrorCode(wire.code) ? wire.code : ErrorCode.Internal;
    return new TandemError(code, wire.message);
  }

  /** Wraps anything thrown into a TandemError, keeping the original as `cause`. */
  static from(error: unknown, fallback: ErrorCode = ErrorCode.Internal): TandemError {
    if (error instanceof TandemError) return error;
    const message = error instanceof Error ? error.message : String(error);
    return new TandemError(fallback, message, { cause: error });
  }
}

/** True when `value` is a known error code. */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && knownCodes.has(value);
}

import { ErrorCode, TandemError } from '../../errors.js';

/** The HTTP status a client sees for each error code. */
const statusOf: Partial<Record<ErrorCode, number>> = {
  [ErrorCode.BadRequest]: 400,
  [ErrorCode.PromptTooLong]: 400,
  [ErrorCode.InvalidMessage]: 400,
  [ErrorCode.ModelNotFound]: 404,
  [ErrorCode.Overloaded]: 429,
  [ErrorCode.Cancelled]: 499,
  [ErrorCode.NoWorkers]: 503,
  [ErrorCode.NoResponders]: 503,
  [ErrorCode.KvCapacity]: 503,
  [ErrorCode.ShuttingDown]: 503,
  [ErrorCode.BootstrapFailed]: 503,
  [ErrorCode.Timeout]: 504,
  [ErrorCode.DeadlineExceeded]: 504,
};

/** An OpenAI-shaped error body. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string };
}

/** Status and body for an operating error. */
export function httpError(error: TandemError, param: string | null = null): { status: number; body: OpenAiErrorBody } {
  const status = statusOf[error.code] ?? 500;
  const type = status === 429 ? 'rate_limit_error' : status < 500 ? 'invalid_request_error' : 'server_error';
  return { status, body: { error: { message: error.message, type, param, code: error.code } } };
}

/** Status and body for a failure the HTTP layer itself reports (bad JSON, body too large...). */
export function httpFailure(status: number, message: string): { status: number; body: OpenAiErrorBody } {
  const code =
    status === 413 ? 'body_too_large' : status === 415 ? 'unsupported_media_type' : status === 404 ? 'not_found' : status === 405 ? 'method_not_allowed' : ErrorCode.BadRequest;
  return { status, body: { error: { message, type: status < 500 ? 'invalid_request_error' : 'server_error', param: null, code } } };
}

export { TandemError };

import { isErrorCode, type ErrorCode, type WireError } from '../errors.js';

/**
 * Turns whatever an invoked actor rejected with into a WireError for the machine's context:
 * errors that carry a known code keep it, anything else gets `fallback`.
 */
export function toWireError(error: unknown, fallback: ErrorCode): WireError {
  if (typeof error === 'object' && error !== null) {
    const { code, message } = error as { code?: unknown; message?: unknown };
    const text = typeof message === 'string' ? message : String(error);
    return { code: isErrorCode(code) ? code : fallback, message: text };
  }
  return { code: fallback, message: String(error) };
}

import { expect } from 'vitest';
import { ErrorCode, TandemError } from '../../src/errors.js';
import type { LogFields, Logger } from '../../src/log.js';

/** A logger that keeps its warnings and errors, to see why a connection was closed. */
export function recordingLogger(): Logger & { warnings: string[]; errors: string[] } {
  const warnings: string[] = [];
  const errors: string[] = [];
  const line = (message: string, fields?: LogFields): string => `${message} ${JSON.stringify(fields ?? {})}`;
  const logger: Logger & { warnings: string[]; errors: string[] } = {
    warnings,
    errors,
    debug: () => {},
    info: () => {},
    warn: (message, fields) => void warnings.push(line(message, fields)),
    error: (message, fields) => {
      warnings.push(line(message, fields));
      errors.push(line(message, fields));
    },
    child: () => logger,
  };
  return logger;
}

/** The TandemError `promise` rejects with, checked to be transfer_failed. */
export async function transferFailed(promise: Promise<unknown>): Promise<TandemError> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(TandemError);
  expect((error as TandemError).code).toBe(ErrorCode.TransferFailed);
  return error as TandemError;
}

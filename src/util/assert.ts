/** Thrown by `assert` when the program's own logic is wrong; never an operating error. */
export class AssertionError extends Error {
  override readonly name = 'AssertionError';
}

/** Crashes the calling actor when `condition` is false: a bug, not a runtime condition. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

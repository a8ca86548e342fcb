import { Packr } from 'msgpackr';
import { ErrorCode, TandemError } from '../errors.js';
import { messageSchemas, type MessageOf, type MessageType } from './messages.js';

/** A decoded message of one of the types `T`, discriminated by `t`. */
export type OneOf<T extends MessageType> = { [K in T]: MessageOf<K> }[T];

/** The schema version this build speaks; a message with another version is refused. */
export const schemaVersion = 1;

// Plain maps (no msgpackr records) so any msgpack implementation can read tandem's messages.
const packr = new Packr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

/** Encodes a message with its schema version. */
export function encode<T extends MessageType>(type: T, body: Omit<MessageOf<T>, 't'>): Uint8Array {
  return packr.pack({ v: schemaVersion, t: type, ...body });
}

/**
 * Decodes and validates a message. Throws TandemError with code `invalid_message` (bytes that are
 * not msgpack, not a map, an unknown type, a failed schema, or a type the caller does not expect)
 * or `unsupported_version`.
 */
export function decode<T extends MessageType>(data: Uint8Array, ...expected: T[]): OneOf<T> {
  let raw: unknown;
  try {
    raw = packr.unpack(data);
  } catch (error) {
    throw new TandemError(ErrorCode.InvalidMessage, `message is not valid msgpack (${data.byteLength} bytes)`, { cause: error });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new TandemError(ErrorCode.InvalidMessage, 'message is not a map');
  }
  const { v, t, ...body } = raw as Record<string, unknown>;
  if (v !== schemaVersion) {
    throw new TandemError(ErrorCode.UnsupportedVersion, `message schema version ${String(v)} is not ${schemaVersion}`);
  }
  if (typeof t !== 'string' || !Object.hasOwn(messageSchemas, t)) {
    throw new TandemError(ErrorCode.InvalidMessage, `unknown message type ${JSON.stringify(t)}`);
  }
  if (expected.length > 0 && !expected.includes(t as T)) {
    throw new TandemError(ErrorCode.InvalidMessage, `unexpected message type '${t}', expected ${expected.join(' or ')}`);
  }
  const parsed = messageSchemas[t as MessageType].safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? issue.path.join('.') : '(message)';
    throw new TandemError(ErrorCode.InvalidMessage, `invalid '${t}' message at ${where}: ${issue?.message ?? 'invalid'}`);
  }
  return { ...parsed.data, t } as unknown as OneOf<T>;
}


// What one worker's key in the discovery bucket holds, and how an instance id becomes a key.
// Values are JSON (readable with `nats kv get`), snake_case like every other wire format of
// tandem, and carry a schema version so a reader can refuse what it does not speak.
import { z } from 'zod';
import { ErrorCode, TandemError } from '../../errors.js';
import { wireRegion } from '../../protocol/messages.js';
import type { WorkerRecord } from '../discovery.js';

/** The schema version of bucket values this build writes and reads. */
export const entrySchemaVersion = 1;

const uint = z.number().int().nonnegative();

// Unknown fields are dropped rather than refused, so a newer writer of the same version can add
// optional fields without older routers skipping its workers.
const wireRecord = z.object({
  instance_id: z.string().min(1).max(128),
  role: z.enum(['prefill', 'decode']),
  model: z.string().min(1).max(256),
  epoch: uint,
  subject_prefix: z.string().min(1).max(256),
  region: wireRegion.optional(),
  page_count: uint.optional(),
});

const wireEntry = z.object({
  v: z.literal(entrySchemaVersion),
  /** The writer's clock when it wrote the value: informational only, readers judge age by their own clock. */
  heartbeat_at_ms: z.number().finite(),
  record: wireRecord,
});

type WireRecord = z.infer<typeof wireRecord>;

/** A decoded bucket value. */
export interface WorkerEntry {
  record: WorkerRecord;
  /** The writer's clock at the time of the write; never compared with the reader's clock. */
  heartbeatAtMs: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Instance ids made only of these characters are their own key; others are encoded. */
const plainKey = /^[-\w]+$/;

/**
 * The bucket key of an instance id: the id itself when it is made of letters, digits, `_` and
 * `-`, otherwise `=` followed by the id's UTF-8 bytes in base64url, so any id maps to a valid,
 * single-token KV key and no two ids share one.
 */
export function keyFor(instanceId: string): string {
  return plainKey.test(instanceId) ? instanceId : `=${Buffer.from(instanceId, 'utf8').toString('base64url')}`;
}

/** Encodes a record and its heartbeat time; throws TandemError('bad_request') for a record that readers would skip. */
export function encodeEntry(record: WorkerRecord, heartbeatAtMs: number): Uint8Array {
  const wire = { v: entrySchemaVersion, heartbeat_at_ms: heartbeatAtMs, record: toWire(record) };
  const parsed = wireEntry.safeParse(wire);
  if (!parsed.success) {
    throw new TandemError(ErrorCode.BadRequest, `worker record ${JSON.stringify(record.instanceId)} is invalid: ${describe(parsed.error)}`);
  }
  return encoder.encode(JSON.stringify(wire));
}

/**
 * Decodes a bucket value. Throws TandemError('invalid_message') for bytes that are not UTF-8
 * JSON of the expected shape, and TandemError('unsupported_version') for another schema version.
 */
export function decodeEntry(bytes: Uint8Array): WorkerEntry {
  let raw: unknown;
  try {
    raw = JSON.parse(decoder.decode(bytes));
  } catch (error) {
    throw new TandemError(ErrorCode.InvalidMessage, `value is not UTF-8 JSON (${bytes.byteLength} bytes)`, { cause: error });
  }
  if (typeof raw === 'object' && raw !== null && 'v' in raw && raw.v !== entrySchemaVersion) {
    throw new TandemError(ErrorCode.UnsupportedVersion, `value schema version ${JSON.stringify(raw.v)} is not ${entrySchemaVersion}`);
  }
  const parsed = wireEntry.safeParse(raw);
  if (!parsed.success) throw new TandemError(ErrorCode.InvalidMessage, `value is not a worker entry: ${describe(parsed.error)}`);
  return { record: fromWire(parsed.data.record), heartbeatAtMs: parsed.data.heartbeat_at_ms };
}

/** True when two records would be written as the same value. */
export function sameRecord(a: WorkerRecord, b: WorkerRecord): boolean {
  return JSON.stringify(toWire(a)) === JSON.stringify(toWire(b));
}

function toWire(record: WorkerRecord): WireRecord {
  const { region } = record;
  return {
    instance_id: record.instanceId,
    role: record.role,
    model: record.model,
    epoch: record.epoch,
    subject_prefix: record.subjectPrefix,
    ...(region && {
      region: {
        fabric: region.fabric,
        endpoint: region.endpoint,
        region_id: region.regionId,
        page_bytes: region.pageBytes,
        page_count: region.pageCount,
      },
    }),
    ...(record.pageCount !== undefined && { page_count: record.pageCount }),
  };
}

function fromWire(wire: WireRecord): WorkerRecord {
  const { region } = wire;
  return {
    instanceId: wire.instance_id,
    role: wire.role,
    model: wire.model,
    epoch: wire.epoch,
    subjectPrefix: wire.subject_prefix,
    ...(region && {
      region: {
        fabric: region.fabric,
        endpoint: region.endpoint,
        regionId: region.region_id,
        pageBytes: region.page_bytes,
        pageCount: region.page_count,
      },
    }),
    ...(wire.page_count !== undefined && { pageCount: wire.page_count }),
  };
}

function describe(error: z.ZodError): string {
  const issue = error.issues[0];
  const where = issue?.path.length ? issue.path.join('.') : '(value)';
  return `${where}: ${issue?.message ?? 'invalid'}`;
}

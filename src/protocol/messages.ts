import { z } from 'zod';

// Wire messages of every step of the flow. Each message is a msgpack map with the schema
// version `v` and a type tag `t`; the codec (codec.ts) checks both and the schema below.
// Keys are snake_case on the wire, like the HTTP API.

const uint = z.number().int().nonnegative();
const id = z.string().min(1).max(128);
/** A W3C `traceparent` value; its format is checked where it enters (the frontend), not on every hop. */
const traceparent = z.string().min(1).max(512);

/** Sampling parameters as they travel to prefill and decode. */
export const wireSampling = z.strictObject({
  temperature: z.number().min(0).max(2),
  top_p: z.number().gt(0).max(1),
  seed: uint,
  max_tokens: uint,
  ignore_eos: z.boolean(),
});

/** A fabric region descriptor, as published by a decode worker. */
export const wireRegion = z.strictObject({
  fabric: z.string().min(1).max(32),
  endpoint: z.string().min(1).max(256),
  region_id: id,
  page_bytes: uint.min(1),
  page_count: uint.min(1),
});

/** A prefill worker the decode worker may ask for a room, in the router's order of preference. */
export const wirePrefillCandidate = z.strictObject({
  instance_id: id,
  subject_prefix: z.string().min(1).max(256),
});

/** A chained prefix-block hash (see `blockHashes`). */
const blockHash = z.string().min(1).max(64);
/** Blocks one KV message may name; a cache snapshot larger than this is cut to its newest blocks. */
export const kvBlocksPerMessageMax = 65_536;

const wireError = z.strictObject({ code: z.string().min(1).max(64), message: z.string().max(4096) });

/** The identity of a room: issued by a prefill worker, never by a client. */
const roomFields = {
  request_id: id,
  prefill_id: id,
  epoch: uint,
  room: uint.max(0xffffffff),
};

/** Per-state deadline overrides, all optional. */
const wireDeadlines = z.strictObject({
  bootstrap_ms: uint.optional(),
  allocation_ms: uint.optional(),
  prefill_ms: uint.optional(),
  transfer_ms: uint.optional(),
  polling_ms: uint.optional(),
  cleanup_ms: uint.optional(),
  decode_ms: uint.optional(),
});

export const messageSchemas = {
  /** frontend → decode (stream): generate a completion for tokenized prompt. */
  generate: z.strictObject({
    request_id: id,
    model: z.string().min(1).max(256),
    prompt_tokens: z.array(uint),
    sampling: wireSampling,
    prefill_candidates: z.array(wirePrefillCandidate).max(64),
    deadlines: wireDeadlines.optional(),
    /** W3C trace context of the request, for logs on every actor (optional: older senders omit it). */
    traceparent: traceparent.optional(),
    /** Prefill on the decode worker instead of a prefill worker (conditional disaggregation). */
    prefill_locally: z.boolean().optional(),
  }),
  /** decode → frontend (stream chunk): tokens in order, `index` of the first one. */
  tokens: z.strictObject({ request_id: id, index: uint, tokens: z.array(uint).min(1) }),
  /** decode → frontend (last stream chunk): how the request ended. */
  finish: z.strictObject({
    request_id: id,
    finish_reason: z.enum(['stop', 'length']),
    prompt_tokens: uint,
    completion_tokens: uint,
  }),
  /** decode → frontend (last stream chunk) or any reply: an operating error. */
  error: z.strictObject({ request_id: z.string().max(128).optional(), error: wireError }),
  /** decode → prefill (request): ask for a room. */
  bootstrap_request: z.strictObject({ request_id: id, decode_id: id, model: z.string().min(1).max(256), traceparent: traceparent.optional() }),
  /** prefill → decode (reply): the room granted. */
  bootstrap_grant: z.strictObject({ ...roomFields }),
  /** decode → prefill (request): compute the prompt's KV and write it into these pages. */
  prefill_request: z.strictObject({
    ...roomFields,
    decode_id: id,
    events_subject: z.string().min(1).max(256),
    prompt_tokens: z.array(uint).min(1),
    sampling: wireSampling,
    region: wireRegion,
    pages: z.array(uint).min(1),
    traceparent: traceparent.optional(),
  }),
  /** prefill → decode (reply): the room's prefill has started. */
  prefill_started: z.strictObject({ ...roomFields }),
  /** prefill → decode (event): every write of the room has been posted. */
  transfer_posted: z.strictObject({ ...roomFields, kv_bytes: uint }),
  /** prefill → decode (event): the room's prefill or transfer failed. */
  prefill_failed: z.strictObject({ ...roomFields, error: wireError }),
  /** decode → prefill (request): the transfer is confirmed, or aborted; free the room. */
  release_request: z.strictObject({ ...roomFields, outcome: z.enum(['confirmed', 'aborted']), traceparent: traceparent.optional() }),
  /** prefill → decode (reply): the room is freed and no write of it is in flight. */
  release_ack: z.strictObject({ ...roomFields }),
  /** anyone → worker (request): report your counters. */
  stats_request: z.strictObject({}),
  /** worker → anyone (reply): a worker's counters, as its stats() returns them. */
  stats_reply: z.strictObject({ instance_id: id, role: z.enum(['prefill', 'decode']), stats: z.record(z.string(), z.unknown()) }),
  /** prefill worker → routers (event, on `subjects.kvEvents`): its prefix cache changed. */
  kv_events: z.strictObject({
    worker: id,
    /** The worker's incarnation; a higher one starts its cache and seq afresh. */
    epoch: uint.optional(),
    seq: uint,
    kind: z.enum(['stored', 'removed', 'cleared']),
    blocks: z.array(blockHash).max(kvBlocksPerMessageMax),
  }),
  /** router → prefill worker (request): send your current prefix-cache blocks (after a sequence gap). */
  kv_blocks_request: z.strictObject({}),
  /** prefill worker → router (reply): every block held, as of event `seq` (-1: before any event). */
  kv_blocks_reply: z.strictObject({
    worker: id,
    epoch: uint.optional(),
    seq: z.number().int().min(-1),
    blocks: z.array(blockHash).max(kvBlocksPerMessageMax),
  }),
} as const;

export type MessageType = keyof typeof messageSchemas;
export type MessageOf<T extends MessageType> = z.infer<(typeof messageSchemas)[T]> & { t: T };
export type Message = { [T in MessageType]: MessageOf<T> }[MessageType];
export type WireSampling = z.infer<typeof wireSampling>;
export type WireRegion = z.infer<typeof wireRegion>;
export type WirePrefillCandidate = z.infer<typeof wirePrefillCandidate>;

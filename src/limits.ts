/**
 * Every limit on something that grows, in one place. Deployments override them through the
 * cluster config; these are the defaults.
 */
export const defaultLimits = {
  /** Largest HTTP request body the frontend reads. */
  httpBodyBytesMax: 1024 * 1024,
  /** Most prompt tokens a request may carry. */
  promptTokensMax: 32_768,
  /** Largest `max_tokens` a request may ask for. */
  maxTokensMax: 8192,
  /** Requests the frontend serves at once before answering 429. */
  inFlightRequestsMax: 4096,
  /** Largest encoded wire message. */
  messageBytesMax: 8 * 1024 * 1024,
  /** Rooms a prefill worker holds at once. */
  roomsMax: 4096,
  /** Requests queued for KV pages on a decode worker. */
  allocationWaitersMax: 1024,
  /** Sequences a decode worker decodes at once. */
  decodeBatchMax: 256,
  /** Prefill workers a decode worker tries in bootstrap before failing. */
  bootstrapAttemptsMax: 3,
  /** Messages buffered on a stream whose consumer is slow before the stream is failed. */
  streamBufferMax: 16_384,
  /** Stop sequences a request may carry. */
  stopSequencesMax: 4,
  /** KV blocks the router's indexer tracks per worker; past it the worker's oldest-stored block is forgotten. */
  kvIndexBlocksPerWorkerMax: 65_536,
  /** Workers the router's KV indexer tracks; events from further workers are refused and counted. */
  kvIndexWorkersMax: 1024,
} as const;

export type Limits = { -readonly [K in keyof typeof defaultLimits]: number };

/** Per-state deadlines of the request machine, in milliseconds. */
export const defaultDeadlines = {
  bootstrapMs: 2_000,
  allocationMs: 5_000,
  prefillMs: 5_000,
  transferMs: 30_000,
  pollingMs: 30_000,
  cleanupMs: 2_000,
  decodeMs: 300_000,
} as const;

export type Deadlines = { -readonly [K in keyof typeof defaultDeadlines]: number };

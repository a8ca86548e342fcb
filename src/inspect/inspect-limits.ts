/** Limits of the inspection feed and the UI, in one place (the runtime's own limits are in src/limits.ts). */
export const inspectLimits = {
  /** Transition records the in-memory ring keeps. */
  ringMax: 10_000,
  /** Requests the UI's index tracks at once; the oldest is forgotten first. */
  requestsMax: 10_000,
  /** Transitions kept per request in the index. */
  transitionsPerRequestMax: 64,
  /** Live subscribers (SSE clients) of the feed at once. */
  subscribersMax: 64,
  /** Bytes a trace file may have waiting to be written before records are dropped. */
  traceBufferBytesMax: 32 * 1024 * 1024,
  /** Records a `tandem viz` trace may hold. */
  traceRecordsMax: 2_000_000,
} as const;

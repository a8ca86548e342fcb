// Subjects actors listen on. Every worker listens under its own prefix, so a message is
// addressed to one instance; the prefix travels in discovery records.

/** Subject prefix of a worker instance. */
export function workerPrefix(role: 'prefill' | 'decode', instanceId: string): string {
  return `tandem.${role}.${instanceId}`;
}

export const subjects = {
  /** decode worker: generate requests (streamed replies). */
  generate: (prefix: string) => `${prefix}.generate`,
  /** decode worker: events from prefill workers about its rooms. */
  events: (prefix: string) => `${prefix}.events`,
  /** prefill worker: bootstrap endpoint that grants rooms. */
  bootstrap: (prefix: string) => `${prefix}.bootstrap`,
  /** prefill worker: start the prefill of a granted room. */
  prefill: (prefix: string) => `${prefix}.prefill`,
  /** prefill worker: confirm or abort a room. */
  release: (prefix: string) => `${prefix}.release`,
  /** prefill worker: its current prefix-cache blocks, on request (a router's resync). */
  kvBlocks: (prefix: string) => `${prefix}.kv-blocks`,
  /** any worker: its counters, on request. */
  stats: (prefix: string) => `${prefix}.stats`,
} as const;

/** Where every prefill worker publishes its KV events; routers subscribe to it. */
export const kvEventsSubject = 'tandem.kv-events';

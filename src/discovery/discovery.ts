import type { RegionDescriptor } from '../fabric/fabric.js';

/** The role a worker plays. */
export type WorkerRole = 'prefill' | 'decode';

/** What a worker registers so routers and peers can find it. */
export interface WorkerRecord {
  /** Unique per process incarnation. */
  instanceId: string;
  role: WorkerRole;
  /** Model name the worker serves. */
  model: string;
  /** Incarnation number; bumps when a worker restarts under the same name. */
  epoch: number;
  /** Subject prefix the worker listens on, e.g. `tandem.prefill.<instanceId>`. */
  subjectPrefix: string;
  /** For decode workers: the region prefill workers write into. */
  region?: RegionDescriptor;
  /** For decode workers: pages in the pool. */
  pageCount?: number;
}

/** A change seen by a watcher. */
export type DiscoveryEvent = { type: 'added'; record: WorkerRecord } | { type: 'removed'; record: WorkerRecord };

/**
 * Where workers announce themselves. The memory implementation serves one process (and the
 * simulator); the NATS KV implementation adds heartbeats and staleness.
 */
export interface Discovery {
  /** Adds or replaces the record of `record.instanceId`. */
  register(record: WorkerRecord): Promise<void>;
  /** Removes a record; unknown ids are ignored. */
  deregister(instanceId: string): Promise<void>;
  /** The records currently registered, optionally of one role, in registration order. */
  list(role?: WorkerRole): WorkerRecord[];
  /** Calls `fn` for every later change; returns an unsubscribe. */
  watch(fn: (event: DiscoveryEvent) => void): () => void;
  close(): Promise<void>;
}

import type { Discovery, WorkerRecord } from '../discovery/discovery.js';
import { blockHashes, defaultBlockTokens } from '../kv/prefix-hash.js';
import type { Logger } from '../log.js';
import { decode, encode } from '../protocol/codec.js';
import { kvEventsSubject, subjects } from '../protocol/subjects.js';
import type { Random } from '../random/random.js';
import type { Subscription, Transport } from '../transport/transport.js';
import { pickByCost, workerCosts, type KvSelectionOptions } from './kv-aware-selection.js';
import { KvIndexer, type KvEvent, type KvIndexerOptions } from './kv-indexer.js';

/** How one ranking is priced: per-request weights and the workers' current load. */
export interface KvRankOptions {
  /** Weights for this request, over the deployment's. */
  selection?: KvSelectionOptions;
  /** KV blocks of work in flight on a worker (the cost's load term); 0 for all when absent. */
  activeBlocks?: (worker: string) => number;
}

/** Prefill workers best first, and how much of the prompt the first one has cached. */
export interface PrefillRanking {
  workers: WorkerRecord[];
  /** Prompt tokens the first worker holds in its prefix cache, as far as the index knows. */
  cachedTokens: number;
}

/** What a Router asks to order prefill workers by cached prefix; `KvRouterFeed` is the real one. */
export interface KvPrefillRanker {
  /** `workers` reordered best first for a prompt of `tokens`; the input order breaks equal costs after the first. */
  rank(workers: readonly WorkerRecord[], tokens: readonly number[], options?: KvRankOptions): PrefillRanking;
}

/** How to build a KvRouterFeed. */
export interface KvRouterFeedOptions {
  /** Where KV events arrive and resync requests go. */
  transport: Transport;
  /** Which workers are alive; a worker that leaves it is dropped from the index. */
  discovery: Discovery;
  /** Breaks cost ties (and draws softmax picks); seeded, so routing is reproducible. */
  random: Random;
  log: Logger;
  /** Tokens per block; must match the engines' prefix-cache blocks; default 16. */
  blockTokens?: number;
  /** Cost weights of `selectKvAwareWorker`. */
  selection?: KvSelectionOptions;
  /** Bounds of the index. */
  indexer?: Omit<KvIndexerOptions, 'onResyncNeeded'>;
  /** How long a resync request waits for the worker's blocks; default 2000 ms. */
  resyncTimeoutMs?: number;
}

/**
 * Feeds a KvIndexer from the prefill workers' KV events and ranks prefill workers by the cost of
 * `selectKvAwareWorker` over a prompt's block hashes. A sequence gap triggers one resync request
 * to that worker at a time; a worker removed from discovery is forgotten.
 */
export class KvRouterFeed implements KvPrefillRanker {
  /** The index, exposed for stats and tests. */
  readonly indexer: KvIndexer;
  private readonly blockTokens: number;
  private readonly resyncing = new Set<string>();
  private subscription: Subscription | undefined;
  /** KV events dropped because discovery does not list their worker in that incarnation. */
  ignoredEvents = 0;
  private unwatch: (() => void) | undefined;

  constructor(private readonly options: KvRouterFeedOptions) {
    this.blockTokens = options.blockTokens ?? defaultBlockTokens;
    this.indexer = new KvIndexer({ ...options.indexer, onResyncNeeded: (worker) => this.resync(worker) });
  }

  /** Starts listening to KV events and discovery. */
  start(): void {
    this.subscription = this.options.transport.subscribe(kvEventsSubject, (message) => {
      try {
        const body = decode(message.data, 'kv_events');
        // Only a prefill worker discovery lists, in the incarnation it lists, is indexed: events of
        // unknown workers (forged, or too early: a later gap resyncs them) would fill the index,
        // and an epoch that is not the listed one is a late or forged one.
        const record = this.listed(body.worker);
        if (record === undefined || (body.epoch !== undefined && body.epoch !== record.epoch)) {
          this.ignoredEvents++;
          return;
        }
        this.apply({ worker: body.worker, ...(body.epoch !== undefined ? { epoch: body.epoch } : {}), seq: body.seq, kind: body.kind, blocks: body.blocks.map((hash) => ({ hash })) });
      } catch (error) {
        this.options.log.warn('dropped a malformed KV event', { error: String(error) });
      }
    });
    this.unwatch = this.options.discovery.watch((event) => {
      if (event.type === 'removed') this.indexer.removeWorker(event.record.instanceId);
    });
  }

  /** Stops listening. */
  stop(): void {
    this.subscription?.unsubscribe();
    this.unwatch?.();
    this.subscription = undefined;
    this.unwatch = undefined;
  }

  /** Applies one KV event (what the subscription does; tests call it directly). */
  apply(event: KvEvent): void {
    this.indexer.apply(event);
  }

  rank(workers: readonly WorkerRecord[], tokens: readonly number[], options: KvRankOptions = {}): PrefillRanking {
    if (workers.length === 0) return { workers: [], cachedTokens: 0 };
    const hashes = blockHashes(tokens, this.blockTokens);
    const matched = this.indexer.match(hashes);
    const candidates = workers.map((record) => ({ worker: record.instanceId, activeBlocks: options.activeBlocks?.(record.instanceId) ?? 0 }));
    const selection = { ...this.options.selection, ...options.selection };
    const priced = workerCosts(candidates, hashes.length, matched, selection.overlapWeight ?? 1);
    const best = pickByCost(priced, this.options.random, selection.temperature ?? 0);
    const costs = new Map(priced.map((c) => [c.worker, c.cost]));
    const cost = (record: WorkerRecord): number => (record.instanceId === best ? -Infinity : costs.get(record.instanceId)!);
    // Array.prototype.sort is stable, so equal costs keep the caller's (round-robin) order.
    const ranked = [...workers].sort((a, b) => cost(a) - cost(b));
    const cachedBlocks = Math.min(matched.get(ranked[0]!.instanceId) ?? 0, hashes.length);
    return { workers: ranked, cachedTokens: cachedBlocks * this.blockTokens };
  }

  /** The discovery record of prefill worker `worker`, if it is listed. */
  private listed(worker: string): WorkerRecord | undefined {
    return this.options.discovery.list('prefill').find((record) => record.instanceId === worker);
  }

  private resync(worker: string): void {
    if (this.resyncing.has(worker)) return;
    const record = this.listed(worker);
    if (record === undefined) return;
    this.resyncing.add(worker);
    const timeoutMs = this.options.resyncTimeoutMs ?? 2000;
    this.options.transport
      .request(subjects.kvBlocks(record.subjectPrefix), encode('kv_blocks_request', {}), { timeoutMs })
      .then((data) => {
        const reply = decode(data, 'kv_blocks_reply');
        if (reply.worker !== record.instanceId || (reply.epoch !== undefined && reply.epoch !== record.epoch)) {
          throw new Error(`the reply is from ${reply.worker} epoch ${reply.epoch}, not ${record.instanceId} epoch ${record.epoch}`);
        }
        this.indexer.resync(reply.worker, reply.blocks, reply.seq, reply.epoch);
      })
      .catch((error: unknown) => {
        this.options.log.warn('KV resync failed', { worker, error: String(error) });
      })
      .finally(() => this.resyncing.delete(worker));
  }
}

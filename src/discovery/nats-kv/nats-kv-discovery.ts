import { jetstream, StorageType } from '@nats-io/jetstream';
import { KvWatchInclude, Kvm, type KV, type KvEntry, type KvOptions, type KvWatchEntry } from '@nats-io/kv';
import { connect, type NatsConnection, type NodeConnectionOptions, type QueuedIterator, type Status } from '@nats-io/transport-node';
import { ErrorCode, TandemError } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { Clock, TimerId } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import type { Discovery, DiscoveryEvent, WorkerRecord, WorkerRole } from '../discovery.js';
import { DiscoveryWatchers } from '../discovery-watchers.js';
import { WorkerCache } from './worker-cache.js';
import { decodeEntry, encodeEntry, keyFor } from './worker-entry.js';

/** Options of `NatsKvDiscovery.connect`; give exactly one of `nc` and `connection`. */
export interface NatsKvDiscoveryOptions {
  /** An open connection the caller owns; `close()` leaves it open. */
  nc?: NatsConnection;
  /** Options to open a connection this discovery owns and closes; reconnects forever unless they say otherwise. */
  connection?: NodeConnectionOptions;
  /** The KV bucket workers register in; created when missing. Default 'tandem_workers'. */
  bucket?: string;
  /** How often a registered record is re-put. Default 1000 ms. */
  heartbeatIntervalMs?: number;
  /** A record not re-put for this long (by this process's clock) is left out of `list()` and reported removed. Default 3 × heartbeatIntervalMs. */
  staleAfterMs?: number;
  /** How often stale records are looked for and reported; a dead worker is reported within staleAfterMs + sweepIntervalMs. Default heartbeatIntervalMs. */
  sweepIntervalMs?: number;
  /** The bucket's TTL when this discovery creates it: the server drops keys not re-put for this long. Default 5 × heartbeatIntervalMs. */
  bucketTtlMs?: number;
  /**
   * Where the server keeps the bucket when this discovery creates it. 'memory' loses every key
   * when the server restarts; workers then re-put theirs on reconnect. Default 'file'.
   */
  storage?: 'file' | 'memory';
  /** Timeout of each JetStream request (put, delete, get, bucket lookup). Default 2000 ms. */
  requestTimeoutMs?: number;
  /** Most workers held in the local view; further keys are skipped with a warning. Default 4096. */
  recordsMax?: number;
  /** Largest value read or written; larger values are skipped with a warning. Default 64 KiB. */
  valueBytesMax?: number;
  /** Drives heartbeats, staleness and the sweep. */
  clock: Clock;
  /** Where warnings about unreadable entries, failed heartbeats and reconnects go. Default silent. */
  log?: Logger;
  /** Sees watcher exceptions, which are otherwise logged and dropped so one bad watcher cannot starve the others. */
  onWatcherError?: (error: unknown) => void;
}

/** What a NatsKvDiscovery holds right now, for leak checks and dashboards. */
export interface NatsKvDiscoveryStats {
  /** Records `list()` returns now. */
  liveRecordCount: number;
  /** Keys in the local view, stale ones included. */
  cachedKeyCount: number;
  /** Records this instance registered and heartbeats. */
  registrationCount: number;
  watcherCount: number;
  /** Changes not yet delivered to watchers. */
  pendingNotificationCount: number;
}

/** Defaults, in one place. */
export const natsKvDiscoveryDefaults = {
  bucket: 'tandem_workers',
  heartbeatIntervalMs: 1000,
  staleAfterHeartbeats: 3,
  bucketTtlHeartbeats: 5,
  requestTimeoutMs: 2000,
  recordsMax: 4096,
  valueBytesMax: 64 * 1024,
  /** Parallel reads while rebuilding the local view. */
  snapshotReadsMax: 64,
  /** Heartbeat puts of one record awaiting their answer; further beats are skipped until one answers. */
  heartbeatPutsInFlightMax: 8,
} as const;

interface Registration {
  readonly key: string;
  readonly record: WorkerRecord;
  timer: TimerId | undefined;
  putsInFlight: number;
  failing: boolean;
}

type StatusIterable = AsyncIterable<Status> & { stop?: () => void };

/**
 * Discovery on a JetStream KV bucket, one key per worker.
 *
 * `register` puts `{ record, heartbeat_at_ms }` (JSON) under a key derived from the instance id
 * and re-puts it every heartbeatIntervalMs on the injected clock; `deregister` stops that and
 * deletes the key; `close` deletes the keys this instance registered (best effort) and nobody
 * else's. The bucket's TTL removes keys of workers that died, but nats-server 2.9 tells no
 * watcher when it does, so this discovery also judges liveness itself: a record not re-put
 * within staleAfterMs, measured by when puts arrive here (never by the writer's clock), is left
 * out of `list()` at once and reported 'removed' by the next sweep; its next heartbeat reports
 * it 'added' again.
 *
 * `list()` is served from a local view kept by a KV watcher, so it is synchronous and cheap. It
 * holds this instance's own writes as soon as they are acknowledged. After a reconnect the view
 * is rebuilt: own records are re-put, the watcher is re-created and every key re-read; keys that
 * vanished meanwhile are reported removed. A record read for the first time counts as heard from
 * at that moment (its age on the server is unknown here), so a worker that died just before this
 * instance started is listed for up to staleAfterMs. Values that cannot be read are skipped with
 * a warning (and remove the worker they replace); nothing in the bucket can crash this instance.
 * Watchers are called one clock turn after a change, in order, never inside the caller's stack.
 */
export class NatsKvDiscovery implements Discovery {
  private readonly nc: NatsConnection;
  private readonly ownsConnection: boolean;
  private readonly kvm: Kvm;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly onWatcherError: ((error: unknown) => void) | undefined;
  private readonly bucket: string;
  private readonly heartbeatIntervalMs: number;
  private readonly sweepIntervalMs: number;
  private readonly bucketTtlMs: number;
  private readonly valueBytesMax: number;
  private readonly recordsMax: number;
  private readonly storage: StorageType;
  private readonly cache: WorkerCache;
  private readonly registrations = new Map<string, Registration>();
  private readonly watchers: DiscoveryWatchers;
  private sweepTimer: TimerId | undefined;
  private retryTimer: TimerId | undefined;
  private kv: KV | undefined;
  private watchIterator: QueuedIterator<KvWatchEntry> | undefined;
  private statusIterator: StatusIterable | undefined;
  private rebuildRunning = false;
  private rebuildAgain = false;
  private closed = false;

  /** Opens (or adopts) a connection, binds the bucket (creating it when missing), and loads the current workers. */
  static async connect(options: NatsKvDiscoveryOptions): Promise<NatsKvDiscovery> {
    assert((options.nc === undefined) !== (options.connection === undefined), 'give exactly one of nc and connection');
    const requestTimeoutMs = options.requestTimeoutMs ?? natsKvDiscoveryDefaults.requestTimeoutMs;
    let nc = options.nc;
    if (!nc) {
      try {
        nc = await connect({
          name: 'tandem-discovery',
          timeout: requestTimeoutMs,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 500,
          waitOnFirstConnect: false,
          ...options.connection,
        });
      } catch (error) {
        throw TandemError.from(error, ErrorCode.Closed);
      }
    }
    const discovery = new NatsKvDiscovery(nc, options.nc === undefined, options, requestTimeoutMs);
    try {
      await discovery.start();
    } catch (error) {
      await discovery.close();
      throw TandemError.from(error, ErrorCode.Closed);
    }
    return discovery;
  }

  private constructor(nc: NatsConnection, ownsConnection: boolean, options: NatsKvDiscoveryOptions, requestTimeoutMs: number) {
    const defaults = natsKvDiscoveryDefaults;
    this.nc = nc;
    this.ownsConnection = ownsConnection;
    this.kvm = new Kvm(jetstream(nc, { timeout: requestTimeoutMs }));
    this.clock = options.clock;
    this.log = (options.log ?? silentLogger).child({ component: 'nats-kv-discovery' });
    this.onWatcherError = options.onWatcherError;
    this.watchers = new DiscoveryWatchers(options.clock, (error) => this.reportWatcherError(error));
    this.bucket = options.bucket ?? defaults.bucket;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? defaults.heartbeatIntervalMs;
    const staleAfterMs = options.staleAfterMs ?? defaults.staleAfterHeartbeats * this.heartbeatIntervalMs;
    this.sweepIntervalMs = options.sweepIntervalMs ?? this.heartbeatIntervalMs;
    this.bucketTtlMs = options.bucketTtlMs ?? defaults.bucketTtlHeartbeats * this.heartbeatIntervalMs;
    this.valueBytesMax = options.valueBytesMax ?? defaults.valueBytesMax;
    this.recordsMax = options.recordsMax ?? defaults.recordsMax;
    this.storage = options.storage === 'memory' ? StorageType.Memory : StorageType.File;
    assert(this.heartbeatIntervalMs > 0 && this.sweepIntervalMs > 0, 'heartbeat and sweep intervals must be positive');
    assert(staleAfterMs > this.heartbeatIntervalMs, 'staleAfterMs must exceed heartbeatIntervalMs, or live workers flap');
    assert(this.bucketTtlMs >= staleAfterMs, 'bucketTtlMs must not be shorter than staleAfterMs');
    this.cache = new WorkerCache({
      clock: this.clock,
      staleAfterMs,
      // After the TTL the server has dropped the key, so a stale record can be forgotten.
      forgetAfterMs: this.bucketTtlMs + staleAfterMs,
      recordsMax: this.recordsMax,
      emit: (event) => this.enqueue(event),
    });
  }

  /** Counts for leak checks. */
  stats(): NatsKvDiscoveryStats {
    return {
      liveRecordCount: this.closed ? 0 : this.cache.list().length,
      cachedKeyCount: this.cache.size,
      registrationCount: this.registrations.size,
      watcherCount: this.watchers.size,
      pendingNotificationCount: this.watchers.pendingCount,
    };
  }

  async register(record: WorkerRecord): Promise<void> {
    if (this.closed) throw closedError();
    const key = keyFor(record.instanceId);
    this.checkSize(encodeEntry(record, this.clock.now()), record.instanceId);
    const previous = this.registrations.get(key);
    if (previous) this.clock.clearTimeout(previous.timer);
    const registration: Registration = { key, record: structuredClone(record), timer: undefined, putsInFlight: 0, failing: false };
    this.registrations.set(key, registration);
    try {
      await this.put(registration);
    } catch (error) {
      if (this.registrations.get(key) === registration) this.registrations.delete(key);
      throw TandemError.from(error, this.nc.isClosed() ? ErrorCode.Closed : ErrorCode.Timeout);
    }
    if (this.registrations.get(key) === registration) this.scheduleHeartbeat(registration);
  }

  /**
   * Stops the heartbeat and deletes the key. A delete that fails (NATS unreachable) is logged,
   * not thrown: the record then goes stale everywhere within staleAfterMs.
   */
  async deregister(instanceId: string): Promise<void> {
    if (this.closed) throw closedError();
    const key = keyFor(instanceId);
    const registration = this.registrations.get(key);
    if (registration) {
      this.clock.clearTimeout(registration.timer);
      this.registrations.delete(key);
    } else if (!this.cache.has(key)) {
      return;
    }
    this.cache.removeLocal(key);
    await this.deleteKey(key, instanceId);
  }

  list(role?: WorkerRole): WorkerRecord[] {
    return this.closed ? [] : this.cache.list(role);
  }

  watch(fn: (event: DiscoveryEvent) => void): () => void {
    if (this.closed) return () => undefined;
    return this.watchers.add(fn);
  }


  /** Stops heartbeats, the watcher and the sweep; deletes this instance's own keys (best effort); closes the connection if it owns it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const id of [this.sweepTimer, this.retryTimer]) this.clock.clearTimeout(id);
    this.watchers.close();
    const own = [...this.registrations.values()];
    for (const registration of own) this.clock.clearTimeout(registration.timer);
    this.registrations.clear();
    this.watchIterator?.stop();
    this.watchIterator = undefined;
    this.statusIterator?.stop?.();
    this.statusIterator = undefined;
    this.cache.clear();
    if (!this.nc.isClosed()) {
      await Promise.all(own.map((registration) => this.deleteKey(registration.key, registration.record.instanceId)));
    }
    if (this.ownsConnection && !this.nc.isClosed()) await this.nc.close();
  }

  private async start(): Promise<void> {
    this.watchStatus();
    await this.rebuild();
    // A reconnect during the first load asked for another rebuild; run it now.
    if (this.rebuildAgain) this.requestRebuild();
    this.scheduleSweep();
    // An existing bucket keeps the TTL it was created with; say so, since staleness still works.
    const ttlMs = await this.kv?.status().then(
      (status) => status.ttl,
      () => undefined,
    );
    if (ttlMs !== undefined && ttlMs !== this.bucketTtlMs) {
      this.log.warn('discovery bucket exists with another TTL; keys of dead workers stay that long', {
        bucket: this.bucket,
        bucketTtlMs: ttlMs,
        wantedTtlMs: this.bucketTtlMs,
      });
    }
  }

  /** Rebuilds the local view after every reconnect. */
  private watchStatus(): void {
    const status: StatusIterable = this.nc.status();
    this.statusIterator = status;
    void (async () => {
      for await (const event of status) {
        if (this.closed) break;
        if (event.type === 'disconnect') this.log.warn('discovery lost its NATS connection', { server: event.server });
        if (event.type === 'reconnect') {
          this.log.info('discovery reconnected to NATS; rebuilding its view', { server: event.server });
          this.requestRebuild();
        }
      }
    })().catch((error: unknown) => this.log.warn('discovery stopped following the connection status', { error: String(error) }));
  }

  /** Rebuilds now, or once more after the rebuild under way; retries on failure. */
  private requestRebuild(): void {
    if (this.closed) return;
    if (this.rebuildRunning) {
      this.rebuildAgain = true;
      return;
    }
    this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    void this.rebuildUntilCurrent();
  }

  private async rebuildUntilCurrent(): Promise<void> {
    do {
      this.rebuildAgain = false;
      try {
        await this.rebuild();
      } catch (error) {
        if (this.closed || this.nc.isClosed()) return;
        this.log.warn('discovery could not rebuild its view; retrying', { error: String(error), retryInMs: this.heartbeatIntervalMs });
        this.retryTimer = this.clock.setTimeout(() => {
          this.retryTimer = undefined;
          this.requestRebuild();
        }, this.heartbeatIntervalMs);
        return;
      }
    } while (this.rebuildAgain && !this.closed);
  }

  /**
   * Binds the bucket (re-creating it if the server lost it), re-puts own records so the snapshot
   * holds them and nobody sees them flap, starts a watcher for changes from now on, then reads
   * every key; keys in the view that were neither read nor changed are gone.
   */
  private async rebuild(): Promise<void> {
    this.rebuildRunning = true;
    try {
      const generation = this.cache.beginRebuild();
      this.watchIterator?.stop();
      this.watchIterator = undefined;
      const kv = await this.kvm.create(this.bucket, this.bucketOptions());
      if (this.closed) return;
      this.kv = kv;
      await Promise.all([...this.registrations.values()].map((registration) => this.heartbeat(registration)));
      const iterator = await kv.watch({ key: '>', include: KvWatchInclude.UpdatesOnly });
      if (this.closed) {
        iterator.stop();
        return;
      }
      this.watchIterator = iterator;
      void this.follow(iterator);
      const keys: string[] = [];
      for await (const key of await kv.keys()) keys.push(key);
      const batch = natsKvDiscoveryDefaults.snapshotReadsMax;
      for (let start = 0; start < keys.length; start += batch) {
        const entries = await Promise.all(keys.slice(start, start + batch).map((key) => kv.get(key)));
        if (this.closed || this.watchIterator !== iterator) return;
        for (const entry of entries) if (entry) this.observe(entry);
      }
      this.cache.endRebuild(generation);
    } finally {
      this.rebuildRunning = false;
    }
  }

  /** Applies the watcher's changes until it is replaced or ends; an end nobody asked for triggers a rebuild. */
  private async follow(iterator: QueuedIterator<KvWatchEntry>): Promise<void> {
    try {
      for await (const entry of iterator) {
        if (this.closed || this.watchIterator !== iterator) break;
        this.observe(entry);
      }
    } catch (error) {
      this.log.warn('discovery watcher failed', { error: String(error) });
    }
    if (this.closed || this.watchIterator !== iterator || this.nc.isClosed()) return;
    this.log.warn('discovery watcher ended; re-creating it');
    this.watchIterator = undefined;
    this.requestRebuild();
  }

  /** Feeds one bucket entry to the view, skipping what cannot be read. */
  private observe(entry: KvEntry): void {
    const { key, revision } = entry;
    if (entry.operation !== 'PUT') {
      this.cache.remove(key, revision, 'delete');
      return;
    }
    let record: WorkerRecord;
    try {
      if (entry.value.byteLength > this.valueBytesMax) {
        throw new TandemError(ErrorCode.InvalidMessage, `value of ${entry.value.byteLength} bytes exceeds ${this.valueBytesMax}`);
      }
      record = decodeEntry(entry.value).record;
      if (keyFor(record.instanceId) !== key) {
        throw new TandemError(ErrorCode.InvalidMessage, `record of ${JSON.stringify(record.instanceId)} is stored under another key`);
      }
    } catch (error) {
      this.log.warn('skipping an unreadable discovery entry', { bucket: this.bucket, key, revision, error: String(error) });
      this.cache.remove(key, revision, 'unreadable');
      return;
    }
    if (this.cache.put(key, revision, record, 'remote') === 'full') {
      this.log.warn('skipping a worker: the discovery view is full', { key, recordsMax: this.recordsMax });
    }
  }

  private scheduleHeartbeat(registration: Registration): void {
    registration.timer = this.clock.setTimeout(() => {
      registration.timer = undefined;
      if (this.closed || this.registrations.get(registration.key) !== registration) return;
      this.scheduleHeartbeat(registration);
      void this.heartbeat(registration);
    }, this.heartbeatIntervalMs);
  }

  /**
   * Re-puts a record; failures are logged once per streak. Puts may overlap: one lost in a
   * reconnect only fails at its timeout, and waiting for it would let the record go stale.
   */
  private async heartbeat(registration: Registration): Promise<void> {
    if (registration.putsInFlight >= natsKvDiscoveryDefaults.heartbeatPutsInFlightMax) return;
    try {
      await this.put(registration);
      if (registration.failing) this.log.info('discovery heartbeats reach NATS again', { instanceId: registration.record.instanceId });
      registration.failing = false;
    } catch (error) {
      if (!registration.failing && !this.closed) {
        this.log.warn('discovery heartbeat failed; retrying every interval', {
          instanceId: registration.record.instanceId,
          error: String(error),
        });
      }
      registration.failing = true;
    }
  }

  /** Puts the registration's record and, while it is still current, shows the write in the local view. */
  private async put(registration: Registration): Promise<void> {
    const kv = this.kv;
    assert(kv, 'the bucket is bound before anything is registered');
    registration.putsInFlight += 1;
    try {
      const revision = await kv.put(registration.key, encodeEntry(registration.record, this.clock.now()));
      if (!this.closed && this.registrations.get(registration.key) === registration) {
        this.cache.put(registration.key, revision, registration.record, 'local');
      }
    } finally {
      registration.putsInFlight -= 1;
    }
  }

  private async deleteKey(key: string, instanceId: string): Promise<void> {
    const kv = this.kv;
    if (!kv) return;
    try {
      await kv.delete(key);
      this.cache.completeLocalRemove(key);
    } catch (error) {
      this.cache.cancelLocalRemove(key);
      this.log.warn('could not delete a worker from discovery; it goes stale instead', { instanceId, error: String(error) });
    }
  }

  private bucketOptions(): Partial<KvOptions> {
    return { history: 1, ttl: this.bucketTtlMs, storage: this.storage, maxValueSize: this.valueBytesMax };
  }

  private checkSize(value: Uint8Array, instanceId: string): void {
    if (value.byteLength <= this.valueBytesMax) return;
    throw new TandemError(ErrorCode.BadRequest, `record of ${JSON.stringify(instanceId)} takes ${value.byteLength} bytes, more than ${this.valueBytesMax}`);
  }

  private scheduleSweep(): void {
    if (this.closed) return;
    this.sweepTimer = this.clock.setTimeout(() => {
      this.sweepTimer = undefined;
      this.cache.sweep();
      this.scheduleSweep();
    }, this.sweepIntervalMs);
  }

  /** Queues a change for the watchers of this moment; one clock turn later they hear of it. */
  private enqueue(event: DiscoveryEvent): void {
    if (!this.closed) this.watchers.notify(event);
  }


  private reportWatcherError(error: unknown): void {
    if (!this.onWatcherError) {
      this.log.warn('a discovery watcher threw', { error: String(error) });
      return;
    }
    try {
      this.onWatcherError(error);
    } catch {
      // The error sink itself failed; the remaining watchers are still told.
    }
  }
}

function closedError(): TandemError {
  return new TandemError(ErrorCode.Closed, 'discovery is closed');
}

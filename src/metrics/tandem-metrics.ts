import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** Histogram buckets of request latencies, in seconds (1 ms .. 2 min). */
const latencyBucketsSeconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
/** Histogram buckets of inter-token latency, in seconds (0.1 ms .. 5 s). */
const tokenBucketsSeconds = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5];
/** Histogram buckets of one KV transfer's size, in bytes (1 KiB .. 1 GiB, by 4). */
const transferBucketsBytes = Array.from({ length: 11 }, (_, i) => 1024 * 4 ** i);

/** What the metrics read from a decode worker at scrape time (DecodeWorker satisfies it). */
export interface DecodeWorkerView {
  readonly instanceId: string;
  stats(): {
    pool: { capacity: number; held: number; quarantined: number; free: number; waiters: number };
    batch: { active: number; waiting: number };
    activeRequests: number;
    fencedRooms: number;
  };
}

/** What the metrics read from a prefill worker at scrape time (PrefillWorker satisfies it). */
export interface PrefillWorkerView {
  readonly instanceId: string;
  stats(): { rooms: number; connections: number };
}

/** What the metrics read from a frontend at scrape time (Frontend satisfies it). */
export interface FrontendView {
  readonly inFlightRequests: number;
}

/** How a request ended, as the `outcome` label says it. */
export type RequestOutcome = 'done' | 'failed' | 'cancelled';

/**
 * The Prometheus metrics of one process (or one embedded cluster). Each instance owns its own
 * registry, never prom-client's global one, so several clusters in one process do not collide.
 * Actors call the `record*`/`observe*` methods; gauges read the workers' stats() at scrape time.
 */
export class TandemMetrics {
  /** The registry to expose: `await registry.metrics()` is the text exposition. */
  readonly registry = new Registry();
  private readonly decodeWorkers: DecodeWorkerView[] = [];
  private readonly prefillWorkers: PrefillWorkerView[] = [];
  private readonly frontends: FrontendView[] = [];

  private readonly requests = new Counter({
    name: 'tandem_requests_total',
    help: 'HTTP generation requests by how they ended; code is the error code, or "none" for done.',
    labelNames: ['outcome', 'code'] as const,
    registers: [this.registry],
  });
  private readonly decodeRequests = new Counter({
    name: 'tandem_decode_requests_total',
    help: "Requests finished by this process's decode workers, by outcome and error code.",
    labelNames: ['outcome', 'code'] as const,
    registers: [this.registry],
  });
  private readonly timeToFirstToken = new Histogram({
    name: 'tandem_time_to_first_token_seconds',
    help: 'Time from accepting a request at the frontend to its first generated text.',
    buckets: latencyBucketsSeconds,
    registers: [this.registry],
  });
  private readonly interTokenLatency = new Histogram({
    name: 'tandem_inter_token_latency_seconds',
    help: 'Time between two consecutive tokens of a request, measured where the decode worker emits them.',
    buckets: tokenBucketsSeconds,
    registers: [this.registry],
  });
  private readonly requestDuration = new Histogram({
    name: 'tandem_request_duration_seconds',
    help: 'Time from accepting a request at the frontend to its end, by outcome.',
    labelNames: ['outcome'] as const,
    buckets: latencyBucketsSeconds,
    registers: [this.registry],
  });
  private readonly inputTokens = new Counter({
    name: 'tandem_input_tokens_total',
    help: 'Prompt tokens of requests that finished.',
    registers: [this.registry],
  });
  private readonly outputTokens = new Counter({
    name: 'tandem_output_tokens_total',
    help: 'Generated tokens of requests that finished.',
    registers: [this.registry],
  });
  private readonly stateSeconds = new Histogram({
    name: 'tandem_request_state_seconds',
    help: 'Time a request machine spent in each state (bootstrap, allocation, prefill, transfer, polling, cleanup, decode).',
    labelNames: ['state'] as const,
    buckets: latencyBucketsSeconds,
    registers: [this.registry],
  });
  private readonly bootstrapRetries = new Counter({
    name: 'tandem_bootstrap_retries_total',
    help: 'Bootstrap attempts after the first one (another prefill worker asked for a room).',
    registers: [this.registry],
  });
  private readonly migrations = new Counter({
    name: 'tandem_migrations_total',
    help: 'Requests moved to another decode worker because theirs died mid-stream.',
    registers: [this.registry],
  });
  private readonly prefillPlacements = new Counter({
    name: 'tandem_prefill_placements_total',
    help: "Where prompts were prefilled: 'remote' on a prefill worker, 'local' on the decode worker (with the reason).",
    labelNames: ['where', 'reason'] as const,
    registers: [this.registry],
  });
  private readonly workerDeaths = new Counter({
    name: 'tandem_worker_deaths_seen_total',
    help: 'Workers seen leaving discovery (deregistered, or their heartbeat went stale), by role.',
    labelNames: ['role'] as const,
    registers: [this.registry],
  });
  private readonly transferSeconds = new Histogram({
    name: 'tandem_kv_transfer_seconds',
    help: "Time to write one room's KV into the decode worker's pages, by fabric.",
    labelNames: ['fabric'] as const,
    buckets: latencyBucketsSeconds,
    registers: [this.registry],
  });
  private readonly transferBytes = new Histogram({
    name: 'tandem_kv_transfer_bytes',
    help: "Bytes of one room's KV payload written over the fabric, by fabric.",
    labelNames: ['fabric'] as const,
    buckets: transferBucketsBytes,
    registers: [this.registry],
  });

  constructor() {
    const { frontends, decodeWorkers } = this;
    new Gauge({
      name: 'tandem_requests_in_flight',
      help: 'Requests the frontend is serving now.',
      registers: [this.registry],
      collect() {
        this.set(frontends.reduce((sum, frontend) => sum + frontend.inFlightRequests, 0));
      },
    });
    new Gauge({
      name: 'tandem_requests_queued',
      help: 'Requests waiting on a decode worker: for KV pages (allocation) or for a batch slot (batch).',
      labelNames: ['queue'] as const,
      registers: [this.registry],
      collect() {
        const all = decodeWorkers.map((worker) => worker.stats());
        this.set({ queue: 'allocation' }, all.reduce((sum, s) => sum + s.pool.waiters, 0));
        this.set({ queue: 'batch' }, all.reduce((sum, s) => sum + s.batch.waiting, 0));
      },
    });
    this.perDecodeWorker('tandem_decode_requests_active', 'Requests a decode worker is running now.', (s) => s.activeRequests);
    this.perDecodeWorker('tandem_kv_pool_capacity_pages', "Pages in a decode worker's KV pool.", (s) => s.pool.capacity);
    this.perDecodeWorker('tandem_kv_pool_used_pages', 'KV pages held by requests (live or finished transfers).', (s) => s.pool.held);
    this.perDecodeWorker('tandem_kv_pool_quarantined_pages', 'KV pages of aborted transfers, fenced until their writer can no longer write.', (s) => s.pool.quarantined);
    this.perDecodeWorker('tandem_kv_pool_free_pages', 'KV pages nobody holds.', (s) => s.pool.free);
    this.perDecodeWorker('tandem_rooms_fenced', 'Rooms whose pages a decode worker keeps quarantined.', (s) => s.fencedRooms);
    this.perPrefillWorker('tandem_rooms_open', 'Bootstrap rooms a prefill worker holds now.', (s) => s.rooms);
    this.perPrefillWorker('tandem_fabric_connections', 'Fabric connections a prefill worker has open to decode workers.', (s) => s.connections);
  }

  /** Reads this decode worker's gauges at every scrape. */
  addDecodeWorker(worker: DecodeWorkerView): void {
    this.decodeWorkers.push(worker);
  }

  /** Reads this prefill worker's gauges at every scrape. */
  addPrefillWorker(worker: PrefillWorkerView): void {
    this.prefillWorkers.push(worker);
  }

  /** Reads this frontend's in-flight count at every scrape. */
  addFrontend(frontend: FrontendView): void {
    this.frontends.push(frontend);
  }

  /** The Prometheus text exposition of every metric. */
  exposition(): Promise<string> {
    return this.registry.metrics();
  }

  /** The content type of the exposition. */
  get contentType(): string {
    return this.registry.contentType;
  }

  recordRequest(outcome: RequestOutcome, code: string | undefined, durationSeconds: number | undefined): void {
    this.requests.inc({ outcome, code: code ?? 'none' });
    if (durationSeconds !== undefined) this.requestDuration.observe({ outcome }, durationSeconds);
  }

  recordDecodeRequest(outcome: RequestOutcome, code: string | undefined): void {
    this.decodeRequests.inc({ outcome, code: code ?? 'none' });
  }

  observeTimeToFirstToken(seconds: number): void {
    this.timeToFirstToken.observe(seconds);
  }

  observeInterTokenLatency(seconds: number): void {
    this.interTokenLatency.observe(seconds);
  }

  recordTokens(inputTokens: number, outputTokens: number): void {
    this.inputTokens.inc(inputTokens);
    this.outputTokens.inc(outputTokens);
  }

  observeStateTime(state: string, seconds: number): void {
    this.stateSeconds.observe({ state }, seconds);
  }

  recordBootstrapRetry(): void {
    this.bootstrapRetries.inc();
  }

  recordMigration(): void {
    this.migrations.inc();
  }

  recordPrefillPlacement(where: 'remote' | 'local', reason: string): void {
    this.prefillPlacements.inc({ where, reason });
  }

  recordWorkerDeath(role: string): void {
    this.workerDeaths.inc({ role });
  }

  observeKvTransfer(fabric: string, bytes: number, seconds: number): void {
    this.transferBytes.observe({ fabric }, bytes);
    this.transferSeconds.observe({ fabric }, seconds);
  }

  private perDecodeWorker(name: string, help: string, read: (stats: ReturnType<DecodeWorkerView['stats']>) => number): void {
    const workers = this.decodeWorkers;
    new Gauge({
      name,
      help,
      labelNames: ['worker'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const worker of workers) this.set({ worker: worker.instanceId }, read(worker.stats()));
      },
    });
  }

  private perPrefillWorker(name: string, help: string, read: (stats: ReturnType<PrefillWorkerView['stats']>) => number): void {
    const workers = this.prefillWorkers;
    new Gauge({
      name,
      help,
      labelNames: ['worker'] as const,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const worker of workers) this.set({ worker: worker.instanceId }, read(worker.stats()));
      },
    });
  }
}

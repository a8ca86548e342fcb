import type fc from 'fast-check';
import { createCluster, silentLogger, type Cluster } from '../../src/index.js';
import { realClock, type SimFabricNetwork } from '../../src/internal.js';
import { memoryBackendsWith } from '../../src/runtime/backends.js';
import type { Deadlines } from '../../src/limits.js';
import type { Clock } from '../../src/time/clock.js';
import type { InboundMessage, MessageHandler, PublishOptions, ReplyStream, RequestOptions, StreamOptions, SubscribeOptions, Subscription, Transport } from '../../src/transport/transport.js';

/** The protocol messages a gate may deliver twice. */
export type DuplicableKind = 'bootstrap' | 'prefill' | 'release';

/**
 * Hands every message delivery, reply and fabric write application to a fast-check scheduler, so
 * the scheduler decides their order. Fabric writes can also be held back entirely until `openWrites`.
 */
export class Gate {
  /** Deliveries released so far; drivers use it to place their own events in the run. */
  steps = 0;
  /** Exceptions thrown by a handler run from the gate; a correct worker throws none. */
  readonly errors: unknown[] = [];
  /** Whether fabric timers wait for `openWrites`. */
  holdWrites = false;
  /** Messages delivered a second time, by kind. */
  readonly duplicated: Record<DuplicableKind, number> = { bootstrap: 0, prefill: 0, release: 0 };
  private readonly held: Array<() => void> = [];
  private readonly replies: Array<() => void> = [];

  constructor(
    private readonly s: fc.Scheduler,
    /** Kinds of message delivered twice, each copy at its own scheduled point. */
    readonly duplicate: ReadonlySet<DuplicableKind> = new Set(),
  ) {}

  /** Runs `fn` when the scheduler releases the task named `label`. */
  run(label: string, fn: () => void): void {
    void this.s.schedule(Promise.resolve(label), label).then(() => {
      this.steps++;
      try {
        fn();
      } catch (error) {
        this.errors.push(error);
      }
    });
  }

  /**
   * Runs `fn` at a scheduled point, after every reply queued before it: replies of one responder
   * keep their order, as they do over NATS, where they leave on one connection.
   */
  reply(label: string, fn: () => void): void {
    this.replies.push(fn);
    this.run(label, () => this.replies.shift()?.());
  }

  /** Lets fabric writes held so far (and later ones) go to the scheduler. */
  openWrites(): void {
    this.holdWrites = false;
    for (const fn of this.held.splice(0)) this.run('fabric', fn);
  }

  /** Fabric timer callbacks go through here. */
  fabric(fn: () => void): void {
    if (this.holdWrites) this.held.push(fn);
    else this.run('fabric', fn);
  }
}

/** Which duplicable kind a subject is, if any. */
function kindOf(subject: string): DuplicableKind | undefined {
  if (subject.endsWith('.bootstrap')) return 'bootstrap';
  if (subject.endsWith('.prefill')) return 'prefill';
  if (subject.endsWith('.release')) return 'release';
  return undefined;
}

/** The memory transport with every handler invocation and every reply gated by the scheduler. */
export class ScheduledTransport implements Transport {
  constructor(
    private readonly inner: Transport,
    private readonly gate: Gate,
  ) {}

  request(subject: string, data: Uint8Array, options: RequestOptions): Promise<Uint8Array> {
    return this.inner.request(subject, data, options);
  }

  publish(subject: string, data: Uint8Array, options?: PublishOptions): void {
    this.inner.publish(subject, data, options);
  }

  stream(subject: string, data: Uint8Array, options: StreamOptions): ReplyStream {
    return this.inner.stream(subject, data, options);
  }

  subscribe(subject: string, handler: MessageHandler, options?: SubscribeOptions): Subscription {
    return this.inner.subscribe(
      subject,
      (message) => {
        const deliver = (copy: string): void => this.gate.run(`${copy}${message.subject}`, () => handler(this.gated(message)));
        deliver('');
        const kind = kindOf(message.subject);
        if (kind && this.gate.duplicate.has(kind)) {
          this.gate.duplicated[kind]++;
          deliver('duplicate ');
        }
      },
      options,
    );
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  /** The message with its reply delivered at a scheduled point. */
  private gated(message: InboundMessage): InboundMessage {
    const gate = this.gate;
    return {
      subject: message.subject,
      data: message.data,
      expectsReply: message.expectsReply,
      isStream: message.isStream,
      headers: message.headers,
      respond: (data) => {
        const copy = new Uint8Array(data);
        gate.reply(`reply ${message.subject}`, () => message.respond(copy));
      },
      openStream: () => message.openStream(),
    };
  }
}

/** The real clock, except that callbacks are handed to the gate instead of run. */
function gatedClock(gate: Gate): Clock {
  interface Handle {
    cancelled: boolean;
    timer: ReturnType<typeof setTimeout> | undefined;
  }
  return {
    now: () => realClock.now(),
    setTimeout(fn, ms) {
      const handle: Handle = { cancelled: false, timer: undefined };
      handle.timer = setTimeout(() => gate.fabric(() => !handle.cancelled && fn()), Math.max(0, ms));
      return handle;
    },
    clearTimeout(id) {
      const handle = id as Handle | undefined;
      if (!handle) return;
      handle.cancelled = true;
      clearTimeout(handle.timer);
    },
  };
}

/** Options of a scheduled cluster. */
export interface ScheduledClusterOptions {
  seed: number;
  pageBytes: number;
  pageCount: number;
  deadlines?: Partial<Deadlines>;
}

/** One prefill and one decode worker on the memory transport and sim fabric, every hop gated by `gate`. */
export async function scheduledCluster(gate: Gate, options: ScheduledClusterOptions): Promise<{ cluster: Cluster; transport: Transport; network: SimFabricNetwork }> {
  let transport: Transport | undefined;
  let network: SimFabricNetwork | undefined;
  const backends = memoryBackendsWith({
    wrapTransport: (inner) => (transport = new ScheduledTransport(inner, gate)),
    fabricClock: gatedClock(gate),
    onNetwork: (net) => (network = net),
  });
  const cluster = await createCluster({
    seed: options.seed,
    log: silentLogger,
    frontend: false,
    pageBytes: options.pageBytes,
    pageCount: options.pageCount,
    engine: { speedup: Number.POSITIVE_INFINITY },
    backends,
    ...(options.deadlines ? { deadlines: options.deadlines } : {}),
  });
  return { cluster, transport: transport!, network: network! };
}

/**
 * Releases scheduled tasks one at a time until `done` holds; when nothing is scheduled, lets the
 * real clock run (transport hops and engine steps are timers). `onStep` sees each step count.
 */
export async function drive(s: fc.Scheduler, done: () => boolean, timeoutMs: number, what: () => string, onStep?: () => void): Promise<void> {
  const startMs = Date.now();
  while (!done()) {
    onStep?.();
    if (s.count() > 0) await s.waitNext(1);
    else await new Promise<void>((resolve) => setTimeout(resolve, 1));
    if (Date.now() - startMs > timeoutMs) throw new Error(`no quiescence within ${timeoutMs} ms: ${what()}\n${s.report().map((t) => `${t.status} ${t.label}`).join('\n')}`);
  }
}

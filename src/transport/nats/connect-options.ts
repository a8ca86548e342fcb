import { readFileSync } from 'node:fs';
import { credsAuthenticator, type NodeConnectionOptions } from '@nats-io/transport-node';
import { defaultLimits } from '../../limits.js';
import type { Clock } from '../../time/clock.js';
import { assert } from '../../util/assert.js';

/** TLS material, by file path; setting the object at all requires a TLS connection. */
export interface NatsTlsOptions {
  /** PEM file with the certificate authorities that sign the server's certificate. */
  caFile?: string;
  /** PEM file with this client's certificate, for servers that verify clients. */
  certFile?: string;
  /** PEM file with the private key of `certFile`. */
  keyFile?: string;
}

/** How the client reconnects after it loses its server; every field is passed to the library explicitly. */
export interface NatsReconnectOptions {
  /** Reconnect at all; when false the transport closes on the first disconnect. */
  enabled?: boolean;
  /** Pause between attempts on the same server. */
  timeWaitMs?: number;
  /** Random extra pause, up to this much, so a fleet does not reconnect in lockstep. */
  jitterMs?: number;
  /** Random extra pause for TLS connections. */
  jitterTlsMs?: number;
  /** Attempts per server before the transport gives up and closes; -1 never gives up. */
  attemptsMax?: number;
}

/** Options of `NatsTransport.connect`. */
export interface NatsTransportOptions {
  /** Server URLs, e.g. `nats://127.0.0.1:4222`; the client picks among them and fails over. */
  servers: string | string[];
  /** Clock of the transport's own deadlines and heartbeats (the library keeps its own timers). */
  clock: Clock;
  /** Client name, shown in the server's monitoring. */
  name?: string;
  /** Token for servers started with `--auth`. Exclusive with user/pass and credsFile. */
  token?: string;
  /** User name; needs `pass`. */
  user?: string;
  /** Password of `user`. */
  pass?: string;
  /** `.creds` file (JWT and NKey seed) for decentralised auth; read again on every reconnect. */
  credsFile?: string;
  /** TLS material; omit for plain TCP. */
  tls?: NatsTlsOptions;
  /** How long the first connection (and each reconnect handshake) may take. */
  connectTimeoutMs?: number;
  /** Reconnect behaviour after a lost connection. */
  reconnect?: NatsReconnectOptions;
  /** Interval of the client's pings, which detect a dead server connection. */
  pingIntervalMs?: number;
  /** Pings without a pong before the connection counts as stale and is reconnected. */
  pingsOutstandingMax?: number;
  /** Prefix of reply and stream inboxes, for accounts whose permissions restrict subjects. */
  inboxPrefix?: string;
  /** Chunks a stream producer may send beyond what its consumer has read (the credit window). */
  streamWindowMax?: number;
  /** Chunks a producer queues locally once the window is full; one more fails the stream as a slow consumer. */
  streamBufferMax?: number;
  /** Bytes a producer queues locally once the window is full; more fails the stream as a slow consumer. */
  streamBufferBytesMax?: number;
  /** Interval of stream heartbeats in both directions while a side has nothing else to send. */
  streamHeartbeatMs?: number;
  /** Heartbeat intervals without any frame from the other side before it counts as dead. */
  streamHeartbeatsMissedMax?: number;
  /** How long `close()` waits for the connection to drain before closing it outright. */
  drainTimeoutMs?: number;
  /** Sees handler exceptions, which are otherwise dropped so one bad handler cannot stop delivery. */
  onHandlerError?: (error: unknown, subject: string) => void;
  /** Sees stream frames dropped as malformed or as coming from a stranger, and similar protocol noise. */
  onProtocolError?: (error: Error, subject: string) => void;
}

/** The options with every default filled in; what the transport actually runs with. */
export type ResolvedNatsTransportOptions = Required<Omit<NatsTransportOptions, 'name' | 'token' | 'user' | 'pass' | 'credsFile' | 'tls' | 'onHandlerError' | 'onProtocolError' | 'reconnect'>> &
  Pick<NatsTransportOptions, 'name' | 'token' | 'user' | 'pass' | 'credsFile' | 'tls' | 'onHandlerError' | 'onProtocolError'> & {
    reconnect: Required<NatsReconnectOptions>;
  };

/** Defaults; a serving cluster reconnects forever and leaves giving up to its own deadlines. */
export const natsTransportDefaults = {
  connectTimeoutMs: 5_000,
  reconnect: { enabled: true, timeWaitMs: 1_000, jitterMs: 100, jitterTlsMs: 1_000, attemptsMax: -1 },
  pingIntervalMs: 30_000,
  pingsOutstandingMax: 2,
  inboxPrefix: '_INBOX',
  streamWindowMax: 64,
  streamBufferMax: defaultLimits.streamBufferMax,
  streamBufferBytesMax: 64 * 1024 * 1024,
  streamHeartbeatMs: 1_000,
  streamHeartbeatsMissedMax: 3,
  drainTimeoutMs: 5_000,
} as const;

/** Fills in defaults and checks the combinations the server would refuse less clearly. */
export function resolveNatsTransportOptions(options: NatsTransportOptions): ResolvedNatsTransportOptions {
  const defaults = natsTransportDefaults;
  const reconnect = options.reconnect ?? {};
  const resolved: ResolvedNatsTransportOptions = {
    ...options,
    connectTimeoutMs: options.connectTimeoutMs ?? defaults.connectTimeoutMs,
    reconnect: {
      enabled: reconnect.enabled ?? defaults.reconnect.enabled,
      timeWaitMs: reconnect.timeWaitMs ?? defaults.reconnect.timeWaitMs,
      jitterMs: reconnect.jitterMs ?? defaults.reconnect.jitterMs,
      jitterTlsMs: reconnect.jitterTlsMs ?? defaults.reconnect.jitterTlsMs,
      attemptsMax: reconnect.attemptsMax ?? defaults.reconnect.attemptsMax,
    },
    pingIntervalMs: options.pingIntervalMs ?? defaults.pingIntervalMs,
    pingsOutstandingMax: options.pingsOutstandingMax ?? defaults.pingsOutstandingMax,
    inboxPrefix: options.inboxPrefix ?? defaults.inboxPrefix,
    streamWindowMax: options.streamWindowMax ?? defaults.streamWindowMax,
    streamBufferMax: options.streamBufferMax ?? defaults.streamBufferMax,
    streamBufferBytesMax: options.streamBufferBytesMax ?? defaults.streamBufferBytesMax,
    streamHeartbeatMs: options.streamHeartbeatMs ?? defaults.streamHeartbeatMs,
    streamHeartbeatsMissedMax: options.streamHeartbeatsMissedMax ?? defaults.streamHeartbeatsMissedMax,
    drainTimeoutMs: options.drainTimeoutMs ?? defaults.drainTimeoutMs,
  };
  const servers = typeof resolved.servers === 'string' ? [resolved.servers] : resolved.servers;
  assert(servers.length > 0, 'NatsTransport needs at least one server');
  assert(resolved.pass === undefined || resolved.user !== undefined, 'NatsTransport: pass needs user');
  assert(resolved.user === undefined || resolved.pass !== undefined, 'NatsTransport: user needs pass');
  const authKinds = [resolved.token, resolved.user, resolved.credsFile].filter((value) => value !== undefined).length;
  assert(authKinds <= 1, 'NatsTransport: token, user/pass and credsFile are exclusive');
  assert(resolved.streamWindowMax >= 1, 'streamWindowMax is at least 1');
  assert(resolved.streamBufferMax >= 0, 'streamBufferMax is not negative');
  assert(resolved.streamBufferBytesMax >= 0, 'streamBufferBytesMax is not negative');
  assert(resolved.streamHeartbeatMs >= 1, 'streamHeartbeatMs is at least 1');
  assert(resolved.streamHeartbeatsMissedMax >= 2, 'streamHeartbeatsMissedMax is at least 2, so one late heartbeat is not a death');
  assert(resolved.connectTimeoutMs >= 1, 'connectTimeoutMs is at least 1');
  return resolved;
}

/** The library's options, every one of them set here rather than left to the library's defaults. */
export function toNodeConnectionOptions(options: ResolvedNatsTransportOptions): NodeConnectionOptions {
  const { reconnect, credsFile, tls } = options;
  return {
    servers: options.servers,
    name: options.name,
    token: options.token,
    user: options.user,
    pass: options.pass,
    // Read on every (re)connect, so a rotated creds file is picked up without a restart.
    authenticator: credsFile === undefined ? undefined : credsAuthenticator(() => readFileSync(credsFile)),
    // Without TLS material the server decides: TLS when it offers or requires it, plain TCP otherwise.
    tls: tls === undefined ? undefined : { caFile: tls.caFile, certFile: tls.certFile, keyFile: tls.keyFile, rejectUnauthorized: true },
    timeout: options.connectTimeoutMs,
    reconnect: reconnect.enabled,
    reconnectTimeWait: reconnect.timeWaitMs,
    reconnectJitter: reconnect.jitterMs,
    reconnectJitterTLS: reconnect.jitterTlsMs,
    maxReconnectAttempts: reconnect.attemptsMax,
    waitOnFirstConnect: false,
    pingInterval: options.pingIntervalMs,
    maxPingOut: options.pingsOutstandingMax,
    inboxPrefix: options.inboxPrefix,
    noEcho: false,
    noRandomize: false,
    ignoreClusterUpdates: false,
    ignoreAuthErrorAbort: false,
    // Errors are mapped to TransportError with their own context; the library's traces only cost an Error per request.
    noAsyncTraces: true,
    debug: false,
    verbose: false,
    pedantic: false,
  };
}

import { createServer, type Server, type Socket } from 'node:net';
import { ErrorCode, TandemError } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { Clock } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import type { Fabric, FabricConnection, RegionDescriptor, WriterIdentity } from '../fabric.js';
import { helloIdBytesMax, u32Max, type Hello } from './frame-codec.js';
import { TcpConnection } from './tcp-connection.js';
import { TcpInbound, type InboundHost } from './tcp-inbound.js';
import { TcpRegion } from './tcp-region.js';
import { admitRegion, WriterPresence } from '../writer-presence.js';
import { listenFabric, parseEndpoint, regionIdPrefix } from '../fabric-endpoint.js';

/** Defaults of the TCP fabric's limits; each can be overridden in TcpFabricOptions. */
export const tcpFabricDefaults = {
  /** How long a posted write may wait for its acknowledgement before its connection is torn down. */
  writeTimeoutMs: 30_000,
  /** Writes one connection may have posted and not yet acknowledged. */
  writesInFlightMax: 65_536,
  /** Bytes a connection hands to its socket beyond what the kernel took before it waits for 'drain'. */
  sendQueueBytesMax: 1024 * 1024,
  /** Inbound connections one fabric accepts at once. */
  inboundConnectionsMax: 1024,
  /** Acknowledgement bytes queued towards a writer that does not read them before it is dropped. */
  ackBacklogBytesMax: 1024 * 1024,
} as const;

/** Options of createTcpFabric. */
export interface TcpFabricOptions {
  /** Address the fabric listens on for writers; tests use 127.0.0.1. */
  host: string;
  /** Port to listen on; 0 or absent picks a free one. */
  port?: number;
  /** Host written into region descriptors, when peers must reach this one by another name than `host`. */
  advertiseHost?: string;
  /** Source of every timer and completion timestamp. */
  clock: Clock;
  /** Where refused writers and broken connections are logged; default silent. */
  log?: Logger;
  /** Limit on connecting plus the hello exchange, on both sides. */
  connectTimeoutMs: number;
  /** See tcpFabricDefaults.writeTimeoutMs. */
  writeTimeoutMs?: number;
  /** See tcpFabricDefaults.writesInFlightMax. */
  writesInFlightMax?: number;
  /** See tcpFabricDefaults.sendQueueBytesMax. */
  sendQueueBytesMax?: number;
  /** See tcpFabricDefaults.inboundConnectionsMax. */
  inboundConnectionsMax?: number;
  /** See tcpFabricDefaults.ackBacklogBytesMax. */
  ackBacklogBytesMax?: number;
  /**
   * Prefix of this fabric's region ids, which must differ from any earlier fabric's on the same
   * endpoint so a stale descriptor never reaches a new region; default: port, process id, the
   * clock's time at creation and a per-process counter.
   */
  regionIdPrefix?: string;
}

/** Creates a TCP fabric listening on `options.host`; resolves once it listens. */
export async function createTcpFabric(options: TcpFabricOptions): Promise<TcpFabric> {
  const fabric = new TcpFabric(options);
  await fabric.listen();
  return fabric;
}

/**
 * A worker's attachment to the TCP fabric: one listening server for the regions it registers and
 * the connections it opens to other workers' regions. Region descriptors carry `host:port`.
 */
export class TcpFabric implements Fabric {
  readonly clock: Clock;
  readonly log: Logger;
  readonly connectTimeoutMs: number;
  readonly writeTimeoutMs: number;
  readonly writesInFlightMax: number;
  readonly ackBacklogBytesMax: number;
  readonly sendQueueBytesMax: number;
  private readonly server: Server;
  private endpointName = '';
  private regionIdPrefix = '';
  private regionSeq = 0;
  private closed = false;
  private readonly regions = new Map<string, TcpRegion>();
  private readonly outbound = new Set<TcpConnection>();
  private readonly inbound = new Set<TcpInbound>();
  private readonly writers = new WriterPresence();
  private readonly inboundHost: InboundHost;

  constructor(private readonly options: TcpFabricOptions) {
    this.clock = options.clock;
    this.log = options.log ?? silentLogger;
    this.connectTimeoutMs = options.connectTimeoutMs;
    this.writeTimeoutMs = options.writeTimeoutMs ?? tcpFabricDefaults.writeTimeoutMs;
    this.writesInFlightMax = options.writesInFlightMax ?? tcpFabricDefaults.writesInFlightMax;
    this.ackBacklogBytesMax = options.ackBacklogBytesMax ?? tcpFabricDefaults.ackBacklogBytesMax;
    this.sendQueueBytesMax = options.sendQueueBytesMax ?? tcpFabricDefaults.sendQueueBytesMax;
    assert(this.connectTimeoutMs > 0, 'connectTimeoutMs is positive');
    assert(this.writeTimeoutMs > 0, 'writeTimeoutMs is positive');
    assert(Number.isInteger(this.writesInFlightMax) && this.writesInFlightMax > 0, 'writesInFlightMax is a positive integer');
    this.inboundHost = {
      clock: this.clock,
      log: this.log,
      connectTimeoutMs: this.connectTimeoutMs,
      ackBacklogBytesMax: this.ackBacklogBytesMax,
      admit: (hello) => this.admit(hello),
      opened: (inbound) => this.inboundOpened(inbound),
      closed: (inbound) => this.inboundClosed(inbound),
    };
    this.server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    this.server.maxConnections = options.inboundConnectionsMax ?? tcpFabricDefaults.inboundConnectionsMax;
  }

  /** `host:port` where this fabric's regions are reached. */
  get endpoint(): string {
    return this.endpointName;
  }

  /** Starts listening; createTcpFabric calls it. */
  async listen(): Promise<void> {
    const { endpoint, port } = await listenFabric(this.server, { ...this.options, kind: 'tcp fabric', log: this.log });
    this.endpointName = endpoint;
    this.regionIdPrefix = this.options.regionIdPrefix ?? regionIdPrefix(port, this.clock);
  }


  registerRegion(options: { pageBytes: number; pageCount: number }): TcpRegion {
    assert(!this.closed, `tcp fabric ${this.endpointName} registers a region after close`);
    assert(this.endpointName !== '', 'a tcp fabric registers regions once it listens');
    assert(Number.isInteger(options.pageBytes) && options.pageBytes > 0 && options.pageBytes <= u32Max, 'pageBytes fits a u32');
    assert(Number.isInteger(options.pageCount) && options.pageCount > 0 && options.pageCount <= u32Max, 'pageCount fits a u32');
    const regionId = `${this.regionIdPrefix}-${++this.regionSeq}`;
    const region = new TcpRegion({ fabric: 'tcp', endpoint: this.endpointName, regionId, pageBytes: options.pageBytes, pageCount: options.pageCount });
    this.regions.set(regionId, region);
    return region;
  }

  async connect(peer: RegionDescriptor, writer: WriterIdentity): Promise<FabricConnection> {
    const refuse = (why: string): never => {
      throw new TandemError(ErrorCode.TransferFailed, `tcp fabric cannot connect to ${peer.endpoint}/${peer.regionId}: ${why}`);
    };
    if (this.closed) refuse('this fabric is closed');
    if (peer.fabric !== 'tcp') refuse(`the descriptor is for the ${peer.fabric} fabric`);
    const address = parseEndpoint(peer.endpoint);
    if (!address) return refuse(`'${peer.endpoint}' is not host:port`);
    if (!fitsHello(writer.instanceId) || !fitsHello(peer.regionId)) refuse(`instance and region ids are 1..${helloIdBytesMax} UTF-8 bytes`);
    if (!Number.isSafeInteger(writer.epoch) || writer.epoch < 0) refuse(`epoch ${writer.epoch} is not a non-negative integer`);
    const connection = new TcpConnection(this, peer, writer, address);
    this.outbound.add(connection);
    await connection.open();
    return connection;
  }

  onPeerClosed(fn: (writer: WriterIdentity) => void): () => void {
    return this.writers.onPeerClosed(fn);
  }

  isConnected(writer: WriterIdentity): boolean {
    return this.writers.isConnected(writer);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.writers.clear();
    for (const connection of [...this.outbound]) connection.close();
    for (const inbound of [...this.inbound]) inbound.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Called by a connection this fabric opened when it closes. */
  outboundClosed(connection: TcpConnection): void {
    this.outbound.delete(connection);
  }

  /** The region a writer's hello asks for, or why it is refused. */
  private admit(hello: Hello): TcpRegion | string {
    if (this.closed) return 'the fabric is closing';
    return admitRegion(this.regions, hello, this.endpointName);
  }

  /** Called by an inbound connection once its writer's hello is accepted. */
  private inboundOpened(inbound: TcpInbound): void {
    this.writers.opened(inbound.writer!);
  }

  /**
   * Called when an inbound socket has closed. Listeners hear of it only when it was the writer's
   * last connection here: until then a late write of its rooms could still arrive over another.
   * By then the socket delivers nothing more, so nothing from this connection lands afterwards.
   */
  private inboundClosed(inbound: TcpInbound): void {
    if (!this.inbound.delete(inbound) || !inbound.writer || this.closed) return;
    this.writers.closed(inbound.writer);
  }

  private accept(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    this.inbound.add(new TcpInbound(this.inboundHost, socket));
  }
}

function fitsHello(id: string): boolean {
  const bytes = Buffer.byteLength(id, 'utf8');
  return bytes > 0 && bytes <= helloIdBytesMax;
}

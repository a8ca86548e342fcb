import { createServer, type Server, type Socket } from 'node:net';
import { ErrorCode, TandemError } from '../../errors.js';
import { silentLogger, type Logger } from '../../log.js';
import type { Random } from '../../random/random.js';
import type { Clock } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import type { Fabric, FabricConnection, RegionDescriptor, WriterIdentity } from '../fabric.js';
import { listenFabric, parseEndpoint, regionIdPrefix } from '../fabric-endpoint.js';
import type { Hello } from './control-codec.js';
import { verbsAvailability, type VerbsAddon } from './verbs-addon.js';
import { VerbsConnection, type VerbsConnectionHost } from './verbs-connection.js';
import { VerbsDevice } from './verbs-device.js';
import { VerbsInbound, type VerbsInboundHost } from './verbs-inbound.js';
import { VerbsRegion } from './verbs-region.js';
import { admitRegion, WriterPresence } from '../writer-presence.js';

/** Defaults of the verbs fabric's limits; each can be overridden in VerbsFabricOptions. */
export const verbsFabricDefaults = {
  /** Largest single RDMA WRITE; larger writes are sliced. */
  sliceBytesMax: 1024 * 1024,
  /** Registered staging slots per outbound connection (RDMA WRITEs in flight on it). */
  stagingSlots: 8,
  /** Receives posted per inbound queue pair: writes granted and not yet landed per connection. */
  recvWrMax: 64,
  /** Entries of the device's one completion queue; bounds the connections it can serve. */
  completionQueueEntries: 8192,
  /** Writes one connection may have posted and not yet settled. */
  writesInFlightMax: 65_536,
  /** How long a write may wait to be applied before its connection is torn down. */
  writeTimeoutMs: 30_000,
  /** Write requests an inbound connection holds waiting for a free receive. */
  waitingWritesMax: 65_536,
  /** Control sockets accepted and still waiting for their hello; more are closed on arrival. */
  pendingHellosMax: 64,
  /** How long a failed queue pair's work requests may take to flush. */
  flushWaitMs: 1000,
  /** Physical port of the device. */
  port: 1,
  /** Local GID index used on RoCE. */
  gidIndex: 0,
} as const;

/** Options of createVerbsFabric. */
export interface VerbsFabricOptions {
  /** Address the control channel listens on (handshakes and write grants). */
  host: string;
  /** Control port; 0 or absent picks a free one. */
  port?: number;
  /** Host written into region descriptors when peers reach this one by another name. */
  advertiseHost?: string;
  /** Source of every timer and completion timestamp. */
  clock: Clock;
  /** Where refused writers, broken connections and warnings go; default silent. */
  log?: Logger;
  /** Limit on connecting plus the handshake, on both sides. */
  connectTimeoutMs: number;
  /** RDMA device to open (see `ibv_devices`); default the first one listed. */
  deviceName?: string;
  /** See verbsFabricDefaults.port. */
  rdmaPort?: number;
  /** See verbsFabricDefaults.gidIndex; on RoCE pick the index of a RoCE v2 GID (see `show_gids`). */
  gidIndex?: number;
  /** libibverbs to load; default TANDEM_VERBS_LIBRARY or libibverbs.so.1. Tests pass the fake library. */
  libraryPath?: string;
  /** Source of starting packet sequence numbers; default derived from the queue pair number. */
  random?: Random;
  /** See verbsFabricDefaults.sliceBytesMax. */
  sliceBytesMax?: number;
  /** See verbsFabricDefaults.stagingSlots. */
  stagingSlots?: number;
  /** See verbsFabricDefaults.recvWrMax. */
  recvWrMax?: number;
  /** See verbsFabricDefaults.completionQueueEntries. */
  completionQueueEntries?: number;
  /** See verbsFabricDefaults.writesInFlightMax. */
  writesInFlightMax?: number;
  /** See verbsFabricDefaults.flushWaitMs. */
  flushWaitMs?: number;
  /** See verbsFabricDefaults.writeTimeoutMs. */
  writeTimeoutMs?: number;
  /** See verbsFabricDefaults.waitingWritesMax. */
  waitingWritesMax?: number;
  /** See verbsFabricDefaults.pendingHellosMax. */
  pendingHellosMax?: number;
  /** Prefix of region ids; default port, process id, the clock's time and a per-process counter. */
  regionIdPrefix?: string;
}

/**
 * Opens the RDMA device and listens for writers. Rejects with transfer_failed, naming the reason
 * (addon not built, library missing, no kernel support, no device), where verbs cannot run.
 */
export async function createVerbsFabric(options: VerbsFabricOptions): Promise<VerbsFabric> {
  const availability = verbsAvailability(options.libraryPath);
  if (availability.reason !== 'ok' || !availability.addon) {
    throw new TandemError(ErrorCode.TransferFailed, `verbs fabric unavailable (${availability.reason}): ${availability.message}`);
  }
  const deviceName = options.deviceName ?? availability.devices[0]!.name;
  if (!availability.devices.some((device) => device.name === deviceName)) {
    throw new TandemError(ErrorCode.TransferFailed, `verbs fabric unavailable: no RDMA device ${deviceName} (have ${availability.devices.map((d) => d.name).join(', ')})`);
  }
  const fabric = new VerbsFabric(options, availability.addon, deviceName);
  try {
    await fabric.listen();
  } catch (error) {
    await fabric.close();
    throw error;
  }
  return fabric;
}

/**
 * A worker's attachment to an RDMA device. Regions are registered memory; connections are RC
 * queue pairs. The handshake (queue pair numbers, PSNs, LID/GID, region address and rkey) and the
 * per-write ownership check travel over a small TCP control channel at the region's endpoint,
 * the same `host:port` a region descriptor carries for the TCP fabric, so discovery publishes
 * only the descriptor and every connection gets its own queue pair pair, set up once and reused.
 */
export class VerbsFabric implements Fabric {
  readonly device: VerbsDevice;
  private readonly log: Logger;
  private readonly server: Server;
  private readonly connectionHost: VerbsConnectionHost;
  private readonly inboundHost: VerbsInboundHost;
  private readonly connectionsMax: number;
  private readonly pendingHellosMax: number;
  private endpointName = '';
  private regionIdPrefix = '';
  private regionSeq = 0;
  private registeredBytes = 0;
  private closed = false;
  private readonly regions = new Map<string, VerbsRegion>();
  private readonly outbound = new Set<VerbsConnection>();
  /** Accepted control sockets whose hello has not yet been admitted: they hold no queue pair. */
  private readonly awaitingHello = new Set<VerbsInbound>();
  /** Handshaken inbound connections, each holding a queue pair on the shared completion queue. */
  private readonly inbound = new Set<VerbsInbound>();
  private readonly writers = new WriterPresence();

  constructor(
    private readonly options: VerbsFabricOptions,
    private readonly addon: VerbsAddon,
    deviceName: string,
  ) {
    const d = verbsFabricDefaults;
    this.log = options.log ?? silentLogger;
    const stagingSlots = options.stagingSlots ?? d.stagingSlots;
    const recvWrMax = options.recvWrMax ?? d.recvWrMax;
    const completionQueueEntries = options.completionQueueEntries ?? d.completionQueueEntries;
    const sliceBytesMax = options.sliceBytesMax ?? d.sliceBytesMax;
    assert(Number.isInteger(sliceBytesMax) && sliceBytesMax > 0 && sliceBytesMax <= 0x8000_0000, 'sliceBytesMax is a positive integer up to 2 GiB');
    assert(Number.isInteger(stagingSlots) && stagingSlots > 0, 'stagingSlots is a positive integer');
    assert(Number.isInteger(recvWrMax) && recvWrMax > 0, 'recvWrMax is a positive integer');
    // Every queue pair shares the one completion queue; it must hold all their work requests at once.
    this.connectionsMax = Math.floor(completionQueueEntries / (stagingSlots + recvWrMax + 2));
    assert(this.connectionsMax > 0, 'completionQueueEntries holds at least one connection');
    this.pendingHellosMax = options.pendingHellosMax ?? d.pendingHellosMax;
    assert(Number.isInteger(this.pendingHellosMax) && this.pendingHellosMax > 0, 'pendingHellosMax is a positive integer');
    const waitingWritesMax = options.waitingWritesMax ?? d.waitingWritesMax;
    assert(Number.isInteger(waitingWritesMax) && waitingWritesMax > 0, 'waitingWritesMax is a positive integer');
    this.device = new VerbsDevice(addon, { deviceName, port: options.rdmaPort ?? d.port, gidIndex: options.gidIndex ?? d.gidIndex, completionQueueEntries, log: this.log });
    const random = options.random;
    const nextPsn = (qpn: number): number => (random ? random.uint32() : Math.imul(qpn, 0x9e3779b1) >>> 0) & 0xffffff;
    this.connectionHost = {
      clock: options.clock,
      log: this.log,
      device: this.device,
      connectTimeoutMs: options.connectTimeoutMs,
      writeTimeoutMs: options.writeTimeoutMs ?? d.writeTimeoutMs,
      sliceBytesMax,
      stagingSlots,
      writesInFlightMax: options.writesInFlightMax ?? d.writesInFlightMax,
      flushWaitMs: options.flushWaitMs ?? d.flushWaitMs,
      nextPsn,
      outboundClosed: (connection) => this.outbound.delete(connection),
    };
    this.inboundHost = {
      clock: options.clock,
      log: this.log,
      device: this.device,
      connectTimeoutMs: options.connectTimeoutMs,
      recvWrMax,
      waitingWritesMax,
      nextPsn,
      admit: (hello) => this.admit(hello),
      opened: (inbound) => this.inboundOpened(inbound),
      closed: (inbound) => this.inboundClosed(inbound),
    };
    this.server = createServer({ noDelay: true }, (socket) => this.accept(socket));
  }

  /** `host:port` of the control channel. */
  get endpoint(): string {
    return this.endpointName;
  }

  /** Starts listening; createVerbsFabric calls it. */
  async listen(): Promise<void> {
    const { endpoint, port } = await listenFabric(this.server, { ...this.options, kind: 'verbs fabric', log: this.log });
    this.endpointName = endpoint;
    this.regionIdPrefix = this.options.regionIdPrefix ?? regionIdPrefix(port, this.options.clock, 'v');
  }


  registerRegion(options: { pageBytes: number; pageCount: number }): VerbsRegion {
    assert(!this.closed, `verbs fabric ${this.endpointName} registers a region after close`);
    assert(this.endpointName !== '', 'a verbs fabric registers regions once it listens');
    assert(Number.isInteger(options.pageBytes) && options.pageBytes > 0, 'pageBytes is a positive integer');
    assert(Number.isInteger(options.pageCount) && options.pageCount > 0 && options.pageCount <= 0xffff_ffff, 'pageCount fits a u32');
    const byteLength = options.pageBytes * options.pageCount;
    this.warnOnMemlock(byteLength);
    let registration;
    try {
      registration = this.device.context.registerMemory(byteLength);
    } catch (error) {
      throw new TandemError(ErrorCode.TransferFailed, `verbs fabric cannot register ${byteLength} bytes: ${(error as Error).message}`, { cause: error });
    }
    this.registeredBytes += byteLength;
    const regionId = `${this.regionIdPrefix}-${++this.regionSeq}`;
    const region = new VerbsRegion({ fabric: 'verbs', endpoint: this.endpointName, regionId, pageBytes: options.pageBytes, pageCount: options.pageCount }, registration);
    this.regions.set(regionId, region);
    return region;
  }

  async connect(peer: RegionDescriptor, writer: WriterIdentity): Promise<FabricConnection> {
    const refuse = (why: string): never => {
      throw new TandemError(ErrorCode.TransferFailed, `verbs fabric cannot connect to ${peer.endpoint}/${peer.regionId}: ${why}`);
    };
    if (this.closed) refuse('this fabric is closed');
    if (peer.fabric !== 'verbs') refuse(`the descriptor is for the ${peer.fabric} fabric`);
    const address = parseEndpoint(peer.endpoint);
    if (!address) return refuse(`'${peer.endpoint}' is not host:port`);
    if (!Number.isSafeInteger(writer.epoch) || writer.epoch < 0) refuse(`epoch ${writer.epoch} is not a non-negative integer`);
    if (this.outbound.size + this.inbound.size >= this.connectionsMax) refuse(`${this.connectionsMax} connections already share the completion queue (completionQueueEntries)`);
    const connection = new VerbsConnection(this.connectionHost, peer, writer, address);
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
    for (const inbound of [...this.inbound, ...this.awaitingHello]) inbound.destroy('the fabric is closing');
    if (this.server.listening) await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.device.close();
  }

  /** The open outbound connections and handshaken inbound peers, for tests and inspection. */
  connections(): { outbound: readonly VerbsConnection[]; inbound: readonly VerbsInbound[]; awaitingHello: number } {
    return { outbound: [...this.outbound], inbound: [...this.inbound], awaitingHello: this.awaitingHello.size };
  }

  private warnOnMemlock(byteLength: number): void {
    const { softBytes } = this.addon.memlockLimit();
    if (this.registeredBytes + byteLength > softBytes) {
      this.log.warn('registered memory exceeds the memlock limit; registration may fail (raise ulimit -l or systemd LimitMEMLOCK)', {
        registeredBytes: this.registeredBytes + byteLength,
        memlockBytes: softBytes,
      });
    }
  }

  private admit(hello: Hello): VerbsRegion | string {
    if (this.closed) return 'the fabric is closing';
    const region = admitRegion(this.regions, hello, this.endpointName);
    if (typeof region === 'string') return region;
    // Only handshaken connections hold queue pairs; the one asking is not yet among them.
    if (this.outbound.size + this.inbound.size >= this.connectionsMax) return `${this.connectionsMax} connections already share the completion queue`;
    return region;
  }

  private inboundOpened(inbound: VerbsInbound): void {
    assert(this.awaitingHello.delete(inbound), 'an inbound connection opens once, after waiting for its hello');
    this.inbound.add(inbound);
    this.writers.opened(inbound.writer!);
  }

  /**
   * Called once an inbound connection is gone, its queue pair already in error. Listeners hear of
   * it when it was the writer's last connection here: until then its rooms may still be written.
   */
  private inboundClosed(inbound: VerbsInbound): void {
    this.awaitingHello.delete(inbound);
    if (!this.inbound.delete(inbound) || !inbound.writer || this.closed) return;
    this.writers.closed(inbound.writer);
  }

  private accept(socket: Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    // Sockets that never say hello (port scans, health checks) are bounded here and by the hello
    // deadline (connectTimeoutMs), and never count against the completion queue's connections.
    if (this.awaitingHello.size >= this.pendingHellosMax) {
      this.log.warn('verbs fabric refused a control connection: too many wait for their hello (pendingHellosMax)', { endpoint: this.endpointName, pendingHellosMax: this.pendingHellosMax });
      socket.destroy();
      return;
    }
    this.awaitingHello.add(new VerbsInbound(this.inboundHost, socket));
  }
}



import { ErrorCode, TandemError } from '../../errors.js';
import type { Clock } from '../../time/clock.js';
import { assert } from '../../util/assert.js';
import type { Fabric, FabricConnection, RegionDescriptor, WriterIdentity } from '../fabric.js';
import { SimConnection } from './sim-connection.js';
import { SimRegion } from './sim-region.js';
import { admitRegion, WriterPresence } from '../writer-presence.js';

/** Writes one sim connection may have posted and not yet applied, unless the network says otherwise. */
export const simWritesInFlightMaxDefault = 65_536;

/** What a fault hook learns about a write when it is posted. */
export interface SimWriteInfo {
  /** Endpoint name of the writer. */
  from: string;
  /** Endpoint name of the receiver. */
  to: string;
  /** Identity the writer connected with. */
  writer: WriterIdentity;
  /** The write's room. */
  room: number;
  /** Destination pages. */
  pages: readonly number[];
  /** Bytes carried. */
  byteLength: number;
  /** Whether the write carries the room as immediate data. */
  final: boolean;
}

/** Hooks the simulator uses to break writes; each is consulted once per write, when it is posted. */
export interface SimFabricFaults {
  /** True to lose the write in transit: nothing lands and write() rejects with transfer_failed. */
  shouldFailWrite?(write: SimWriteInfo): boolean;
  /** Milliseconds added to the write's travel time (order on its connection is kept). */
  extraDelayMs?(write: SimWriteInfo): number;
  /** True to apply a final write's bytes but lose its completion (write() still resolves). */
  dropCompletion?(write: SimWriteInfo): boolean;
}

/** Options of a sim fabric network. */
export interface SimFabricNetworkOptions {
  /** Schedules every delivery; a VirtualClock makes the network deterministic. */
  clock: Clock;
  /** One-way travel time of every write and of a connection teardown notice; default 0. */
  latencyMs?: number;
  /** Bandwidth of one connection; default Infinity (no transmission time). */
  bytesPerMs?: number;
  /** Fault hooks; replaceable later through `network.faults`. */
  faults?: SimFabricFaults;
  /** Writes one connection may have in flight before write() rejects; default simWritesInFlightMaxDefault. */
  writesInFlightMax?: number;
}

/** Counters of a whole sim network. */
export interface SimFabricNetworkStats {
  /** Connections opened. */
  connectionsOpened: number;
  /** Connections closed, by either side. */
  connectionsClosed: number;
  /** Writes accepted by write(). */
  writesPosted: number;
  /** Writes whose bytes landed. */
  writesApplied: number;
  /** Writes the receiving region refused (ownership, bounds, length). */
  writesRejected: number;
  /** Writes lost to the shouldFailWrite fault. */
  writesFailed: number;
  /** Writes dropped because their connection closed first. */
  writesDropped: number;
  /** Bytes landed. */
  bytesApplied: number;
  /** Completions recorded at receivers. */
  completionsRecorded: number;
  /** Completions lost to the dropCompletion fault. */
  completionsDropped: number;
}

/** The shared medium of the in-process fabric: endpoints attach to it by name. */
export class SimFabricNetwork {
  readonly clock: Clock;
  readonly latencyMs: number;
  readonly bytesPerMs: number;
  readonly writesInFlightMax: number;
  /** Fault hooks consulted per write; set to undefined to heal. */
  faults: SimFabricFaults | undefined;
  readonly stats: SimFabricNetworkStats = {
    connectionsOpened: 0,
    connectionsClosed: 0,
    writesPosted: 0,
    writesApplied: 0,
    writesRejected: 0,
    writesFailed: 0,
    writesDropped: 0,
    bytesApplied: 0,
    completionsRecorded: 0,
    completionsDropped: 0,
  };
  private readonly endpoints = new Map<string, SimFabric>();
  private regionSeq = 0;

  constructor(options: SimFabricNetworkOptions) {
    this.clock = options.clock;
    this.latencyMs = options.latencyMs ?? 0;
    this.bytesPerMs = options.bytesPerMs ?? Number.POSITIVE_INFINITY;
    this.writesInFlightMax = options.writesInFlightMax ?? simWritesInFlightMaxDefault;
    this.faults = options.faults;
    assert(this.latencyMs >= 0, 'latencyMs is not negative');
    assert(this.bytesPerMs > 0, 'bytesPerMs is positive');
    assert(Number.isInteger(this.writesInFlightMax) && this.writesInFlightMax > 0, 'writesInFlightMax is a positive integer');
  }

  /** Gives a worker its fabric under `endpointName`; the name is free again once that fabric closes. */
  attach(endpointName: string): SimFabric {
    assert(!this.endpoints.has(endpointName), `sim endpoint ${endpointName} is already attached`);
    const fabric = new SimFabric(this, endpointName);
    this.endpoints.set(endpointName, fabric);
    return fabric;
  }

  /** The open endpoint named `endpointName`, if any. */
  endpoint(endpointName: string): SimFabric | undefined {
    return this.endpoints.get(endpointName);
  }

  /** Writes posted on any connection and not yet applied, refused or dropped. */
  pendingWrites(): number {
    let count = 0;
    for (const fabric of this.endpoints.values()) count += fabric.pendingWrites();
    return count;
  }

  /** A region id never used before on this network, so a descriptor from a closed endpoint finds nothing after a restart. */
  nextRegionId(): string {
    return `region-${++this.regionSeq}`;
  }

  /** Closes every attached endpoint, rejecting whatever is still in flight. */
  async close(): Promise<void> {
    for (const fabric of [...this.endpoints.values()]) await fabric.close();
  }

  /** Called by a closing fabric. */
  detach(fabric: SimFabric): void {
    if (this.endpoints.get(fabric.name) === fabric) this.endpoints.delete(fabric.name);
  }
}

/** One endpoint of a sim network: its regions, its outbound connections and its inbound ones. */
export class SimFabric implements Fabric {
  private closed = false;
  private readonly regions = new Map<string, SimRegion>();
  private readonly outbound = new Set<SimConnection>();
  private readonly inbound = new Set<SimConnection>();
  private readonly writers = new WriterPresence();

  constructor(
    private readonly network: SimFabricNetwork,
    /** The endpoint name descriptors carry. */
    readonly name: string,
  ) {}

  registerRegion(options: { pageBytes: number; pageCount: number }): SimRegion {
    assert(!this.closed, `sim endpoint ${this.name} registers a region after close`);
    const regionId = this.network.nextRegionId();
    const region = new SimRegion({ fabric: 'sim', endpoint: this.name, regionId, pageBytes: options.pageBytes, pageCount: options.pageCount });
    this.regions.set(regionId, region);
    return region;
  }

  async connect(peer: RegionDescriptor, writer: WriterIdentity): Promise<FabricConnection> {
    const refuse = (why: string): never => {
      throw new TandemError(ErrorCode.TransferFailed, `sim endpoint ${this.name} cannot connect to ${peer.endpoint}/${peer.regionId}: ${why}`);
    };
    if (this.closed) refuse('this endpoint is closed');
    if (peer.fabric !== 'sim') refuse(`the descriptor is for the ${peer.fabric} fabric`);
    const target = this.network.endpoint(peer.endpoint);
    if (!target) return refuse('no such endpoint is attached');
    const region = admitRegion(target.regions, peer, target.name);
    if (typeof region === 'string') return refuse(region);
    const connection = new SimConnection(this.network, this, target, region, writer);
    this.outbound.add(connection);
    target.inboundOpened(connection);
    this.network.stats.connectionsOpened++;
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
    this.network.detach(this);
    this.writers.clear();
    for (const connection of [...this.outbound]) connection.close();
    for (const connection of [...this.inbound]) connection.breakFromReceiver();
    this.inbound.clear();
  }

  /** Writes in flight on this endpoint's outbound connections. */
  pendingWrites(): number {
    let count = 0;
    for (const connection of this.outbound) count += connection.pendingCount;
    return count;
  }

  /** Called by a connection this endpoint opened when it closes. */
  outboundClosed(connection: SimConnection): void {
    this.outbound.delete(connection);
  }

  /** Called when a writer connects to one of this endpoint's regions. */
  inboundOpened(connection: SimConnection): void {
    this.inbound.add(connection);
    this.writers.opened(connection.writer);
  }

  /**
   * Called when a writer closes its connection. Listeners hear of it latencyMs later, and only
   * when it was that writer's last connection here: until then a late write of its rooms could
   * still arrive over another connection, so quarantined pages must stay held.
   */
  inboundClosed(connection: SimConnection): void {
    if (!this.inbound.delete(connection)) return;
    this.writers.closed(connection.writer, (notify) => this.network.clock.setTimeout(notify, this.network.latencyMs));
  }

}


/**
 * A fabric moves KV bytes one-sided from a prefill worker into pages a decode worker allocated.
 * The decode worker registers a region (its page pool's memory) and publishes its descriptor;
 * a prefill worker connects to that descriptor once and writes pages for many rooms over it.
 * Sim, TCP and verbs fabrics pass one conformance suite (test/fabric-conformance.ts).
 */

/** What a decode worker publishes so prefill workers can reach its pages. */
export interface RegionDescriptor {
  /** Which fabric implementation serves the region: 'sim', 'tcp' or 'verbs'. */
  fabric: string;
  /** Where the region's owner listens (sim: endpoint name; tcp: host:port). */
  endpoint: string;
  /** Identifies the region at its endpoint. */
  regionId: string;
  /** Bytes in one page. */
  pageBytes: number;
  /** Pages in the region. */
  pageCount: number;
}

/** Who writes over a connection: the prefill worker's instance id and incarnation epoch. */
export interface WriterIdentity {
  instanceId: string;
  epoch: number;
}

/** The key under which a region records page ownership and completions for one room. */
export function ownerKey(writer: WriterIdentity, room: number): string {
  return `${writer.instanceId}/${writer.epoch}/${room}`;
}

/** The prefix every ownerKey of a writer starts with; of every epoch of it when `epoch` is left out. */
export function ownerPrefix(instanceId: string, epoch?: number): string {
  return epoch === undefined ? `${instanceId}/` : `${instanceId}/${epoch}/`;
}

/** A completed transfer, observed on the decode side. */
export interface Completion {
  /** ownerKey of the room whose final write (with its immediate value) arrived. */
  owner: string;
  /** The immediate value carried by the final write: the room number. */
  imm: number;
  /** Time the completion was recorded, on the fabric's clock. */
  atMs: number;
}

/** Counters every region keeps. */
export interface RegionStats {
  /** Writes applied to pages held for their room. */
  appliedWrites: number;
  /** Writes refused because a page was not held for the writing room. */
  rejectedWrites: number;
  /** Bytes applied. */
  appliedBytes: number;
  /** Completions recorded. */
  completions: number;
}

/** The decode side's registered memory: pages, their owners, and completions per room. */
export interface Region {
  readonly descriptor: RegionDescriptor;
  /** Records that `pages` are held for `owner`; writes for any other room to them are rejected. */
  claim(pages: readonly number[], owner: string): void;
  /** Ends `owner`'s hold on `pages`; later writes to them are rejected. */
  unclaim(pages: readonly number[], owner: string): void;
  /** The owner of a page, or undefined when the page is free. */
  ownerOf(page: number): string | undefined;
  /** Copies `byteLength` bytes out of `pages`, in order. */
  read(pages: readonly number[], byteLength: number): Uint8Array;
  /** The completion recorded for `owner`, if its final write has landed. */
  poll(owner: string): Completion | undefined;
  /** Calls `fn` once when `owner`'s completion lands (at once if it already has); returns an unsubscribe. */
  onCompletion(owner: string, fn: (completion: Completion) => void): () => void;
  /** Drops the completion record of `owner`. */
  forget(owner: string): void;
  readonly stats: RegionStats;
}

/** One write: bytes into destination pages of a room, optionally the room's final write. */
export interface FabricWrite {
  /** The room the bytes belong to; with `final`, also the immediate value. */
  room: number;
  /** Destination pages in the peer region, in order; `data` fills them page after page. */
  pages: readonly number[];
  /** The bytes; at most pages.length * pageBytes. */
  data: Uint8Array;
  /** Carry the room as immediate data: the receiver records a completion after applying. */
  final: boolean;
}

/** A prefill worker's connection to one decode worker's region. */
export interface FabricConnection {
  readonly peer: RegionDescriptor;
  /** Resolves once the bytes are applied at the receiver; rejects with TandemError('transfer_failed'). */
  write(write: FabricWrite): Promise<void>;
  /** Tears the connection down; the receiver is told (see Fabric.onPeerClosed). */
  close(): void;
  readonly closed: boolean;
}

/** One worker's attachment to a fabric. */
export interface Fabric {
  /** Registers `pageCount` pages of `pageBytes` each for peers to write into. */
  registerRegion(options: { pageBytes: number; pageCount: number }): Region;
  /** Connects to a peer's region as `writer`; reuse the connection for every room. */
  connect(peer: RegionDescriptor, writer: WriterIdentity): Promise<FabricConnection>;
  /** Calls `fn` when a writer's connection to one of this fabric's regions closes. Returns an unsubscribe. */
  onPeerClosed(fn: (writer: WriterIdentity) => void): () => void;
  /** Whether `writer` has a connection open to one of this fabric's regions now. */
  isConnected(writer: WriterIdentity): boolean;
  /** Closes every region and connection. */
  close(): Promise<void>;
}

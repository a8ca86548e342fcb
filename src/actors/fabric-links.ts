import type { Fabric, FabricConnection, RegionDescriptor, WriterIdentity } from '../fabric/fabric.js';

function keyOf(peer: RegionDescriptor): string {
  return `${peer.fabric}|${peer.endpoint}|${peer.regionId}`;
}

/**
 * A prefill worker's fabric connections, one per decode region: made on first use, reused for
 * every later room, and made again after one closes.
 */
export class FabricLinks {
  private readonly links = new Map<string, Promise<FabricConnection>>();

  constructor(
    private readonly fabric: Fabric,
    private readonly writer: WriterIdentity,
  ) {}

  get size(): number {
    return this.links.size;
  }

  /** The open connection to `peer`, connecting on first use. */
  async get(peer: RegionDescriptor): Promise<FabricConnection> {
    const key = keyOf(peer);
    const existing = this.links.get(key);
    if (existing) {
      const connection = await existing.catch(() => undefined);
      if (connection && !connection.closed) return connection;
      if (this.links.get(key) === existing) this.links.delete(key);
      return this.get(peer);
    }
    const connecting = this.fabric.connect(peer, this.writer);
    this.links.set(key, connecting);
    connecting.catch(() => {
      if (this.links.get(key) === connecting) this.links.delete(key);
    });
    return connecting;
  }

  /** Tears down the connection to `peer`: every write still in flight on it fails. */
  reset(peer: RegionDescriptor): void {
    const key = keyOf(peer);
    const link = this.links.get(key);
    this.links.delete(key);
    void link?.then((connection) => connection.close()).catch(() => {});
  }

  closeAll(): void {
    for (const link of this.links.values()) void link.then((connection) => connection.close()).catch(() => {});
    this.links.clear();
  }
}

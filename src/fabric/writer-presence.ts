import { assert } from '../util/assert.js';
import type { RegionDescriptor, WriterIdentity } from './fabric.js';

/**
 * The writers connected to one fabric endpoint's regions, counted per writer, and who to tell
 * when a writer's last connection closes (`Fabric.onPeerClosed`). Only the last one counts: until
 * then a late write of its rooms could still arrive over another connection, so pages fenced for
 * it must stay held. Every fabric keeps one.
 */
export class WriterPresence {
  private readonly connections = new Map<string, number>();
  private readonly listeners = new Set<(writer: WriterIdentity) => void>();

  /** Counts one more connection of `writer`. */
  opened(writer: WriterIdentity): void {
    const key = writerKey(writer);
    this.connections.set(key, (this.connections.get(key) ?? 0) + 1);
  }

  /**
   * Counts one connection of `writer` gone. When it was the last, the listeners hear of it —
   * through `defer` when given (the sim fabric delays it by the link latency), else at once.
   */
  closed(writer: WriterIdentity, defer?: (notify: () => void) => void): void {
    const key = writerKey(writer);
    const remaining = (this.connections.get(key) ?? 0) - 1;
    assert(remaining >= 0, 'inbound connection counts never go negative');
    if (remaining > 0) {
      this.connections.set(key, remaining);
      return;
    }
    this.connections.delete(key);
    const gone = { instanceId: writer.instanceId, epoch: writer.epoch };
    const notify = (): void => {
      for (const listener of [...this.listeners]) listener(gone);
    };
    if (defer) defer(notify);
    else notify();
  }

  /** Whether `writer` has a connection open now. */
  isConnected(writer: WriterIdentity): boolean {
    return this.connections.has(writerKey(writer));
  }

  /** Calls `fn` when a writer's last connection closes; returns an unsubscribe. */
  onPeerClosed(fn: (writer: WriterIdentity) => void): () => void {
    const listener = (writer: WriterIdentity): void => fn(writer);
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Forgets every writer and listener (the fabric is closing: nobody is told any more). */
  clear(): void {
    this.connections.clear();
    this.listeners.clear();
  }
}

function writerKey(writer: WriterIdentity): string {
  return `${writer.instanceId}/${writer.epoch}`;
}

/** What a writer's hello names: the region and the page geometry its descriptor promised. */
export interface RegionRequest {
  regionId: string;
  pageBytes: number;
  pageCount: number;
}

/**
 * The region a connecting writer asks for, or why it is refused: the region must exist at this
 * endpoint and have the geometry the writer's descriptor says (a stale descriptor is refused).
 */
export function admitRegion<R extends { readonly descriptor: RegionDescriptor }>(regions: ReadonlyMap<string, R>, request: RegionRequest, endpoint: string): R | string {
  const region = regions.get(request.regionId);
  if (!region) return `no region ${request.regionId} at ${endpoint}`;
  const actual = region.descriptor;
  if (actual.pageBytes !== request.pageBytes || actual.pageCount !== request.pageCount) {
    return `the descriptor says ${request.pageCount} x ${request.pageBytes} B, region ${request.regionId} is ${actual.pageCount} x ${actual.pageBytes} B`;
  }
  return region;
}

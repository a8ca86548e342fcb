import type { Cluster } from '../../src/index.js';
import { waitFor } from './deferred.js';

/**
 * What a cluster still holds: pages held or quarantined, requests in flight, fenced rooms,
 * prefill rooms. Empty once every request has given everything back.
 */
export function leftovers(cluster: Cluster): string[] {
  const stats = cluster.stats();
  const found: string[] = [];
  if (stats.inFlight !== 0) found.push(`frontend: ${stats.inFlight} requests in flight`);
  stats.decode.forEach((worker, i) => {
    const { pool } = worker;
    if (pool.free !== pool.capacity) found.push(`decode ${i}: ${pool.free} of ${pool.capacity} pages free (${pool.held} held, ${pool.quarantined} quarantined)`);
    if (pool.quarantined !== 0) found.push(`decode ${i}: ${pool.quarantined} pages quarantined`);
    if (worker.activeRequests !== 0) found.push(`decode ${i}: ${worker.activeRequests} active requests`);
    if (worker.fencedRooms !== 0) found.push(`decode ${i}: ${worker.fencedRooms} fenced rooms`);
  });
  stats.prefill.forEach((worker, i) => {
    if (worker.rooms !== 0) found.push(`prefill ${i}: ${worker.rooms} rooms held`);
  });
  return found;
}

/** Waits until the cluster holds nothing (see `leftovers`); the error says what is still held. */
export async function waitForIdle(cluster: Cluster, timeoutMs = 10_000): Promise<void> {
  try {
    await waitFor(() => leftovers(cluster).length === 0, timeoutMs, 'the cluster to give every page and room back');
  } catch (error) {
    throw new Error(`${(error as Error).message}; still held: ${leftovers(cluster).join('; ')}`);
  }
}

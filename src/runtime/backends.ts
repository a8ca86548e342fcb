import type { Discovery } from '../discovery/discovery.js';
import { MemoryDiscovery } from '../discovery/memory/memory-discovery.js';
import type { Fabric } from '../fabric/fabric.js';
import { SimFabricNetwork } from '../fabric/sim/sim-fabric.js';
import type { Limits } from '../limits.js';
import type { Logger } from '../log.js';
import type { Clock } from '../time/clock.js';
import { MemoryTransport } from '../transport/memory/memory-transport.js';
import type { Transport } from '../transport/transport.js';
import type { ClusterConfig } from './cluster.js';

/** What the workers of one process talk over: a transport, discovery, and a fabric per worker. */
export interface Backends {
  /** For logs: 'memory', 'nats'. */
  readonly name: string;
  readonly transport: Transport;
  readonly discovery: Discovery;
  /** The fabric endpoint of one worker. */
  fabric(instanceId: string): Promise<Fabric>;
  /** Closes fabrics, discovery and transport, in that order. */
  close(): Promise<void>;
}

export type BackendsFactory = (context: { config: ClusterConfig; clock: Clock; log: Logger; limits: Limits }) => Promise<Backends>;

/** Seams of the in-process backends, for tests and simulators that gate or observe every hop. */
export interface MemoryBackendsOptions {
  /** Wraps the memory transport; the wrapper is what the workers talk through. */
  wrapTransport?: (transport: Transport) => Transport;
  /** Clock of the simulated fabric when it must differ from the cluster's. */
  fabricClock?: Clock;
  /** Sees the simulated fabric network once it exists. */
  onNetwork?: (network: SimFabricNetwork) => void;
}

/** In-process backends with the seams of `options`. */
export function memoryBackendsWith(options: MemoryBackendsOptions): BackendsFactory {
  return async ({ config, clock, log, limits }) => {
    const inner = new MemoryTransport({
      clock,
      streamBufferMax: limits.streamBufferMax,
      onHandlerError: (error, subject) => log.error('a message handler threw', { subject, error: String(error) }),
    });
    const transport = options.wrapTransport?.(inner) ?? inner;
    const discovery = new MemoryDiscovery({ clock });
    const network = new SimFabricNetwork({ clock: options.fabricClock ?? clock, latencyMs: config.fabric?.latencyMs, bytesPerMs: config.fabric?.bytesPerMs });
    options.onNetwork?.(network);
    const fabrics: Fabric[] = [];
    return {
      name: 'memory',
      transport,
      discovery,
      async fabric(instanceId) {
        const fabric = network.attach(instanceId);
        fabrics.push(fabric);
        return fabric;
      },
      async close() {
        for (const fabric of fabrics) await fabric.close();
        await discovery.close();
        await inner.close();
      },
    };
  };
}

/** Everything in this process: the memory transport and discovery, and the simulated fabric. */
export const memoryBackends: BackendsFactory = memoryBackendsWith({});

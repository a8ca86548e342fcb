import { NatsKvDiscovery } from '../discovery/nats-kv/nats-kv-discovery.js';
import type { Fabric } from '../fabric/fabric.js';
import { SimFabricNetwork } from '../fabric/sim/sim-fabric.js';
import { createTcpFabric } from '../fabric/tcp/tcp-fabric.js';
import { createVerbsFabric } from '../fabric/verbs/verbs-fabric.js';
import { resolveNatsTransportOptions, toNodeConnectionOptions, type NatsTransportOptions } from '../transport/nats/connect-options.js';
import { NatsTransport } from '../transport/nats/nats-transport.js';
import type { BackendsFactory } from './backends.js';

/** NATS connection settings of a process: everything NatsTransport takes but its clock. */
export type NatsSettings = Omit<NatsTransportOptions, 'clock'>;

/** Discovery settings on NATS KV. */
export interface NatsDiscoverySettings {
  /** KV bucket holding worker records; default 'tandem_workers'. */
  bucket?: string;
  /** How often a worker re-puts its record. */
  heartbeatIntervalMs?: number;
  /** A record whose heartbeat is older than this is dropped from routing. */
  staleAfterMs?: number;
}

/** Which fabric the workers of a process write KV over. */
export interface FabricSettings {
  /** 'tcp' (across processes and hosts), 'verbs' (RDMA; its control channel uses the TCP settings) or 'sim' (in-process only). */
  kind: 'tcp' | 'verbs' | 'sim';
  /** Verbs: RDMA device to open; default TANDEM_RDMA_DEVICE, else the first one listed. */
  rdmaDevice?: string;
  /** Verbs: local GID index used on RoCE; default TANDEM_RDMA_GID_INDEX, else 0. */
  gidIndex?: number;
  /** TCP: interface to listen on; default 127.0.0.1. */
  host?: string;
  /** TCP: port of the first worker's fabric; default 0 (a free port). */
  port?: number;
  /** TCP: host name peers use to reach this one, when it differs from `host`. */
  advertiseHost?: string;
  /** TCP: limit on connecting to a peer. */
  connectTimeoutMs?: number;
}

/**
 * Workers that find each other in NATS KV, talk over NATS, and move KV over TCP (or, for
 * workers in one process, over the simulated fabric).
 */
export function natsBackends(nats: NatsSettings, fabric: FabricSettings, discovery: NatsDiscoverySettings = {}): BackendsFactory {
  return async ({ config, clock, log }) => {
    const transport = await NatsTransport.connect({
      ...nats,
      clock,
      onHandlerError: (error, subject) => log.error('a message handler threw', { subject, error: String(error) }),
    });
    const registry = await NatsKvDiscovery.connect({
      connection: toNodeConnectionOptions(resolveNatsTransportOptions({ ...nats, clock, name: `${nats.name ?? 'tandem'}-discovery` })),
      ...discovery,
      clock,
      log,
    });
    log.info('connected to NATS', { servers: nats.servers, bucket: discovery.bucket ?? 'tandem_workers' });
    const network = fabric.kind === 'sim' ? new SimFabricNetwork({ clock, latencyMs: config.fabric?.latencyMs, bytesPerMs: config.fabric?.bytesPerMs }) : undefined;
    const fabrics: Fabric[] = [];
    return {
      name: 'nats',
      transport,
      discovery: registry,
      async fabric(instanceId) {
        const listen = {
          host: fabric.host ?? '127.0.0.1',
          port: fabrics.length === 0 ? (fabric.port ?? 0) : 0,
          advertiseHost: fabric.advertiseHost,
          clock,
          log: log.child({ fabric: instanceId }),
          connectTimeoutMs: fabric.connectTimeoutMs ?? 5_000,
        };
        const made: Fabric = network
          ? network.attach(instanceId)
          : fabric.kind === 'verbs'
            ? await createVerbsFabric({ ...listen, ...rdmaSelection(fabric) })
            : await createTcpFabric(listen);
        fabrics.push(made);
        return made;
      },
      async close() {
        for (const made of fabrics) await made.close();
        await registry.close();
        await transport.close();
      },
    };
  };
}

/** The RDMA device and GID index: explicit settings, else TANDEM_RDMA_DEVICE / TANDEM_RDMA_GID_INDEX. */
function rdmaSelection(fabric: FabricSettings): { deviceName?: string; gidIndex?: number } {
  const deviceName = fabric.rdmaDevice ?? process.env['TANDEM_RDMA_DEVICE'];
  const gidText = process.env['TANDEM_RDMA_GID_INDEX'];
  const gidIndex = fabric.gidIndex ?? (gidText !== undefined && gidText !== '' ? Number(gidText) : undefined);
  return { ...(deviceName ? { deviceName } : {}), ...(gidIndex !== undefined && Number.isInteger(gidIndex) ? { gidIndex } : {}) };
}

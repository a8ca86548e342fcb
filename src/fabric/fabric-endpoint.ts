import type { Server } from 'node:net';
import { ErrorCode, TandemError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Clock } from '../time/clock.js';
import { assert } from '../util/assert.js';

// Where a socket-based fabric (TCP, and the verbs fabric's control channel) listens and how its
// endpoint and region ids are named.

/** `host:port`, with an IPv6 host in brackets. */
export function formatEndpoint(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Splits `host:port` or `[v6]:port`; undefined when it is neither. */
export function parseEndpoint(endpoint: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(endpoint);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port < 1 || port > 65_535) return undefined;
  return { host: (match[1] ?? match[2])!, port };
}

/** Where a fabric listens. */
export interface FabricListenOptions {
  /** Interface to listen on. */
  host: string;
  /** Port; 0 or absent picks a free one. */
  port?: number;
  /** Host name peers use, when it differs from `host`. */
  advertiseHost?: string;
  /** The fabric's name in errors and logs, e.g. 'tcp fabric'. */
  kind: string;
  log: Logger;
}

/**
 * Starts `server` listening (exclusively) and returns the endpoint peers reach it at and the port.
 * A failure to listen is a transfer_failed TandemError; later server errors are logged.
 */
export async function listenFabric(server: Server, options: FabricListenOptions): Promise<{ endpoint: string; port: number }> {
  const { host, port = 0, kind, log } = options;
  await new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => reject(new TandemError(ErrorCode.TransferFailed, `${kind} cannot listen on ${host}:${port}: ${error.message}`, { cause: error }));
    server.once('error', onError);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const address = server.address();
  assert(address !== null && typeof address === 'object', 'a listening TCP server has an address');
  const endpoint = formatEndpoint(options.advertiseHost ?? host, address.port);
  server.on('error', (error) => log.error(`${kind} server error`, { endpoint, error: error.message }));
  return { endpoint, port: address.port };
}

/** Fabrics created by this process, so two on one port in one millisecond still get distinct region ids. */
let fabricSeq = 0;

/**
 * The prefix of a fabric's region ids: tag, port, process, time and a per-process sequence, so a
 * restarted worker on the same port never reuses an id a peer may still hold.
 */
export function regionIdPrefix(port: number, clock: Clock, tag?: string): string {
  const parts = [port, process.pid, Math.floor(clock.now()), ++fabricSeq].map((n) => n.toString(36));
  return (tag ? [tag, ...parts] : parts).join('.');
}

import { errors as natsErrors } from '@nats-io/transport-node';
import { TransportError } from '../transport.js';

/**
 * Maps what the NATS client throws onto the normalised kinds: a 503 "no responders" status
 * becomes `no_responders`, the request timer `timeout`, and a closed or draining connection
 * `closed`. Anything else (a payload over max_payload, a permissions violation) also ends the
 * call, so it becomes `closed` with the library's error kept as `cause`.
 */
export function toTransportError(error: unknown, what: string): TransportError {
  if (error instanceof TransportError) return error;
  if (isNoResponders(error)) return new TransportError('no_responders', `no responders on ${what}`, { cause: error });
  if (hasInChain(error, natsErrors.TimeoutError)) return new TransportError('timeout', `${what} timed out`, { cause: error });
  if (hasInChain(error, natsErrors.ClosedConnectionError) || hasInChain(error, natsErrors.DrainingConnectionError)) {
    return new TransportError('closed', `${what} failed: the NATS connection is closed`, { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new TransportError('closed', `${what} failed: ${message}`, { cause: error });
}

/** Explains a failed connect, naming the usual culprits, as a TransportError('closed'). */
export function connectError(error: unknown, servers: string | string[]): TransportError {
  const where = Array.isArray(servers) ? servers.join(', ') : servers;
  const message = error instanceof Error ? error.message : String(error);
  const hint = hasInChain(error, natsErrors.AuthorizationError)
    ? ' (the server refused the credentials: check token, user/pass or credsFile)'
    : '';
  return new TransportError('closed', `could not connect to NATS at ${where}: ${message}${hint}`, { cause: error });
}

function isNoResponders(error: unknown): boolean {
  if (hasInChain(error, natsErrors.NoRespondersError)) return true;
  return error instanceof natsErrors.RequestError && error.isNoResponders();
}

/** True when `error` or one of its causes is an instance of `type`. */
function hasInChain(error: unknown, type: abstract new (...args: never[]) => Error): boolean {
  let current: unknown = error;
  for (let depth = 0; current instanceof Error && depth < 8; depth++) {
    if (current instanceof type) return true;
    current = (current as Error).cause;
  }
  return false;
}

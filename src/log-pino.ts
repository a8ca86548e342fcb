import { pino, type DestinationStream, type Logger as Pino } from 'pino';
import type { LogFields, Logger, LogLevel } from './log.js';
import type { Clock } from './time/clock.js';

/** Options of the JSON logger. */
export interface PinoLoggerOptions {
  /** Lowest level written; 'silent' writes nothing. */
  level: LogLevel;
  /** Timestamps come from this clock (`time`, ms since the epoch on the real clock; virtual time in a simulation). */
  clock: Clock;
  /** Where lines go; default stderr, written synchronously so nothing is lost when the process exits. */
  destination?: DestinationStream;
  /** Fields on every line, e.g. the process role. */
  base?: LogFields;
}

/** Drops fields a child logger already binds to the same value, so a line never repeats a key. */
function unbound(fields: LogFields | undefined, bound: LogFields): LogFields {
  if (!fields) return {};
  const out: LogFields = {};
  for (const [key, value] of Object.entries(fields)) if (!(key in bound) || bound[key] !== value) out[key] = value;
  return out;
}

function wrap(logger: Pino, bound: LogFields): Logger {
  return {
    debug: (message, fields) => logger.debug(unbound(fields, bound), message),
    info: (message, fields) => logger.info(unbound(fields, bound), message),
    warn: (message, fields) => logger.warn(unbound(fields, bound), message),
    error: (message, fields) => logger.error(unbound(fields, bound), message),
    child: (fields) => wrap(logger.child(unbound(fields, bound)), { ...bound, ...fields }),
  };
}

/**
 * A Logger that writes one JSON object per line with pino: `level` (as a name), `time`, `msg`
 * and the structured fields (`request`, `room`, `traceparent`, `worker`, ...).
 */
export function pinoLogger(options: PinoLoggerOptions): Logger {
  const { clock } = options;
  const logger = pino(
    {
      level: options.level,
      base: options.base ?? null,
      messageKey: 'msg',
      timestamp: () => `,"time":${clock.now()}`,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? pino.destination({ fd: 2, sync: true }),
  );
  return wrap(logger, options.base ?? {});
}

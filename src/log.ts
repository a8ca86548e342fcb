/** Severity levels, lowest first. */
export const logLevels = ['debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof logLevels)[number];

/** Structured fields attached to a log line (request id, room, worker...). */
export type LogFields = Record<string, unknown>;

/** What actors log through; the runtime picks the sink. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger;
}

/** Writes `level message key=value ...` lines to stderr, dropping levels below `level`. */
export function consoleLogger(level: LogLevel = 'info', base: LogFields = {}): Logger {
  const threshold = logLevels.indexOf(level);
  const emit = (at: LogLevel, message: string, fields?: LogFields): void => {
    if (logLevels.indexOf(at) < threshold) return;
    const all = { ...base, ...fields };
    const tail = Object.entries(all)
      .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
      .join(' ');
    process.stderr.write(`${at.padEnd(5)} ${message}${tail ? ` ${tail}` : ''}\n`);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (fields) => consoleLogger(level, { ...base, ...fields }),
  };
}

/** A logger that drops everything (tests, benchmarks). */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => silentLogger,
};

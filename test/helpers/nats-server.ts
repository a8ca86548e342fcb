// Starts a real nats-server (the Debian package: /usr/sbin/nats-server, 2.9) for integration
// tests: JetStream on, a private store directory, a free port on 127.0.0.1 only. Every server it
// starts is killed when the test process exits, even when a test forgets `stop()`.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect as connectTcp } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/** A running nats-server. */
export interface NatsServer {
  /** `nats://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  /** Stops the server (SIGTERM, then SIGKILL) and removes its store directory; idempotent. */
  stop(): Promise<void>;
  /** Stops the server and starts it again on the same port and store, as a crash and restart would. */
  restart(): Promise<void>;
}

/** Options of `startNatsServer`. */
export interface NatsServerOptions {
  /** Requires clients to present this token (`--auth`). */
  token?: string;
  /** More command-line arguments, e.g. `['--max_payload', '65536']`. */
  args?: readonly string[];
  /** How long to wait for the server to accept connections. */
  readyTimeoutMs?: number;
}

const host = '127.0.0.1';
const readyTimeoutMsDefault = 10_000;
const stopTimeoutMs = 3_000;
const startAttemptsMax = 3;
const logTailBytesMax = 8 * 1024;

/** Every child still running and every store not yet removed, so an exiting test process takes them down with it. */
const running = new Set<ChildProcess>();
const storeDirs = new Set<string>();
let exitHookInstalled = false;

/** Starts a nats-server on a free port with `-js -sd <tmpdir>`; throws a clear error when it is not installed. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = findNatsServer();
  installExitHook();
  const storeDir = await mkdtemp(join(tmpdir(), 'tandem-nats-'));
  storeDirs.add(storeDir);
  const readyTimeoutMs = options.readyTimeoutMs ?? readyTimeoutMsDefault;
  const extraArgs = [...(options.token === undefined ? [] : ['--auth', options.token]), ...(options.args ?? [])];
  const argsFor = (port: number): string[] => ['-a', host, '-p', String(port), '-js', '-sd', storeDir, ...extraArgs];

  let child: ChildProcess | undefined;
  let port = 0;
  let lastError: unknown;
  // Another process may take the free port between probing and binding it; try a fresh one.
  for (let attempt = 0; attempt < startAttemptsMax && !child; attempt++) {
    port = await freePort();
    try {
      child = await launch(binary, argsFor(port), port, readyTimeoutMs);
    } catch (error) {
      lastError = error;
    }
  }
  if (!child) {
    await rm(storeDir, { recursive: true, force: true });
    storeDirs.delete(storeDir);
    throw lastError instanceof Error ? lastError : new Error(String(lastError));
  }

  let current: ChildProcess | undefined = child;
  let stopped = false;
  return {
    url: `nats://${host}:${port}`,
    port,
    async stop() {
      if (stopped) return;
      stopped = true;
      const previous = current;
      current = undefined;
      if (previous) await terminate(previous);
      await rm(storeDir, { recursive: true, force: true });
      storeDirs.delete(storeDir);
    },
    async restart() {
      if (stopped) throw new Error('nats-server was stopped; start a new one instead of restarting it');
      const previous = current;
      current = undefined;
      if (previous) await terminate(previous);
      current = await launch(binary, argsFor(port), port, readyTimeoutMs);
    },
  };
}

/** The nats-server binary: $NATS_SERVER_BIN, then $PATH, then the Debian location. */
function findNatsServer(): string {
  const candidates = [
    ...(process.env.NATS_SERVER_BIN ? [process.env.NATS_SERVER_BIN] : []),
    ...(process.env.PATH ?? '').split(delimiter).filter(Boolean).map((dir) => join(dir, 'nats-server')),
    '/usr/sbin/nats-server',
    '/usr/bin/nats-server',
  ];
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here; try the next place.
    }
  }
  throw new Error('nats-server is not installed (looked in $NATS_SERVER_BIN, $PATH and /usr/sbin); install it with `apt-get install nats-server`');
}

/** setpriv, when installed, to tie the server's life to this process. */
function findSetpriv(): string | undefined {
  for (const candidate of ['/usr/bin/setpriv', '/bin/setpriv']) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here; try the next place.
    }
  }
  return undefined;
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const child of running) child.kill('SIGKILL');
    for (const dir of storeDirs) rmSync(dir, { recursive: true, force: true });
  });
}

/** A port that was free a moment ago: bind 127.0.0.1:0, read the port, release it. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('could not read a free port'))));
    });
  });
}

/** Spawns the server and resolves once it greets a client with INFO; rejects with its log when it dies or is late. */
async function launch(binary: string, args: string[], port: number, readyTimeoutMs: number): Promise<ChildProcess> {
  // With setpriv (util-linux) the kernel kills the server when this process dies by a signal too,
  // which the exit hook cannot see (vitest ends its workers that way on a timeout).
  const deathSignal = findSetpriv();
  const child = deathSignal ? spawn(deathSignal, ['--pdeathsig', 'KILL', binary, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let log = '';
  const keep = (chunk: Buffer): void => {
    log = (log + chunk.toString('utf8')).slice(-logTailBytesMax);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited: string | undefined;
  child.once('exit', (code, signal) => {
    running.delete(child);
    exited = `exited with ${signal ?? `code ${String(code)}`}`;
  });
  child.once('error', (error) => {
    exited = `could not be started: ${error.message}`;
  });

  const deadlineMs = performance.now() + readyTimeoutMs;
  while (performance.now() < deadlineMs) {
    if (exited !== undefined) break;
    if (await greets(port)) return child;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  await terminate(child);
  const why = exited ?? `did not accept connections within ${readyTimeoutMs} ms`;
  throw new Error(`nats-server ${args.join(' ')} ${why}; its log ends with:\n${log.trim()}`);
}

/** True when something on the port answers with a NATS INFO line. */
function greets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    let answer = '';
    const socket = connectTcp({ host, port });
    const finish = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.once('error', () => finish(false));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('utf8');
      if (answer.startsWith('INFO ')) finish(true);
      else if (answer.length >= 5) finish(false);
    });
  });
}

/** SIGTERM, then SIGKILL when the server has not exited within `stopTimeoutMs`. */
async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), stopTimeoutMs);
  });
  const outcome = await Promise.race([exited, late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    child.kill('SIGKILL');
    await exited;
  }
}


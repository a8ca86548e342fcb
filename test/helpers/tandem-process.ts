import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../../bin/tandem.js', import.meta.url));
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A `tandem` command running in a child process, with its output kept for assertions and failures. */
export interface TandemProcess {
  readonly name: string;
  readonly pid: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Resolves with the first match of `pattern` in the output, waiting for it up to `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Sends a signal; SIGKILL is a crash, SIGTERM a graceful drain. */
  kill(signal: NodeJS.Signals): void;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  exited(): Promise<number | string>;
}

/** Starts `tandem <args>`. */
export function startTandem(name: string, args: string[], env: Record<string, string> = {}): TandemProcess {
  const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let text = '';
  const listeners = new Set<() => void>();
  const append = (chunk: Buffer): void => {
    text += chunk.toString('utf8');
    if (text.length > 1_000_000) text = text.slice(-500_000);
    for (const listener of listeners) listener();
  };
  child.stdout!.on('data', append);
  child.stderr!.on('data', append);
  const exit = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve(code ?? signal ?? 'unknown');
      for (const listener of listeners) listener();
    });
  });
  return {
    name,
    pid: child.pid!,
    output: () => text,
    waitFor(pattern, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const match = text.match(pattern);
          if (match) {
            done();
            resolve(match);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            done();
            reject(new Error(`${name} exited before printing ${pattern}; output:\n${text.slice(-4000)}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${name} did not print ${pattern} within ${timeoutMs} ms; output:\n${text.slice(-4000)}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    kill(signal) {
      child.kill(signal);
    },
    exited: () => exit,
  };
}

/** How many workers of each role the frontend at `url` lists on GET /health. */
export async function healthCounts(url: string): Promise<{ prefill: number; decode: number }> {
  return ((await (await fetch(`${url}/health`)).json()) as { workers: { prefill: number; decode: number } }).workers;
}

/** Waits until the frontend at `url` lists exactly `expected` workers; fails with every process's output otherwise. */
export async function waitForWorkers(url: string, expected: { prefill: number; decode: number }, processes: readonly TandemProcess[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const counts = await healthCounts(url);
    if (counts.prefill === expected.prefill && counts.decode === expected.decode) return;
    if (Date.now() > deadline) throw new Error(`workers did not register: ${JSON.stringify(counts)}\n${processes.map((p) => p.output()).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Stops processes: SIGTERM (a graceful drain), up to 5 s to exit, then SIGKILL. */
export async function stopAll(processes: readonly TandemProcess[]): Promise<void> {
  for (const child of processes) child.kill('SIGTERM');
  await Promise.all(processes.map((child) => Promise.race([child.exited(), new Promise((resolve) => setTimeout(resolve, 5000))])));
  for (const child of processes) child.kill('SIGKILL');
}

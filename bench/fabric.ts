// TCP fabric throughput between two processes, side by side with a plain TCP socket sending the
// same bytes on loopback to a process that copies them into one buffer.
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { RegionDescriptor } from '../src/fabric/fabric.js';
import { createTcpFabric } from '../src/fabric/tcp/tcp-fabric.js';
import { realClock } from '../src/time/real-clock.js';

const pageBytes = 256 * 1024;
const writeBytes = 4 * 1024 * 1024;
const child = fileURLToPath(new URL('./fabric-child.ts', import.meta.url));

async function startChild(mode: 'fabric' | 'socket', pageCount: number): Promise<{ process: ChildProcess; info: Record<string, unknown> }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', child, mode, String(pageBytes), String(pageCount)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', resolve);
    proc.once('exit', (code) => reject(new Error(`bench child exited with ${code}`)));
  });
  return { process: proc, info: JSON.parse(line) as Record<string, unknown> };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Milliseconds per transfer of `bytes` over the TCP fabric (median of `runs`). */
async function fabricTransfer(bytes: number, runs: number): Promise<number> {
  const pageCount = Math.ceil(bytes / pageBytes);
  const { process: proc, info } = await startChild('fabric', pageCount);
  const fabric = await createTcpFabric({ host: '127.0.0.1', port: 0, clock: realClock, connectTimeoutMs: 5000 });
  try {
    const connection = await fabric.connect(info.descriptor as RegionDescriptor, { instanceId: 'bench-writer', epoch: 1 });
    const data = Buffer.alloc(bytes, 7);
    const pagesPerWrite = writeBytes / pageBytes;
    const times: number[] = [];
    for (let run = 0; run < runs + 1; run++) {
      const started = performance.now();
      const writes: Array<Promise<void>> = [];
      for (let first = 0; first < pageCount; first += pagesPerWrite) {
        const last = Math.min(first + pagesPerWrite, pageCount);
        writes.push(
          connection.write({
            room: 1,
            pages: Array.from({ length: last - first }, (_, i) => first + i),
            data: data.subarray(first * pageBytes, Math.min(last * pageBytes, bytes)),
            final: last === pageCount,
          }),
        );
      }
      await Promise.all(writes);
      if (run > 0) times.push(performance.now() - started); // the first run warms up
    }
    connection.close();
    return median(times);
  } finally {
    await fabric.close();
    proc.kill();
  }
}

/** Milliseconds per transfer of `bytes` over a plain socket to a copying receiver (median of `runs`). */
async function socketTransfer(bytes: number, runs: number): Promise<number> {
  const { process: proc, info } = await startChild('socket', Math.ceil(bytes / pageBytes));
  const socket = connect(info.port as number, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  try {
    const data = Buffer.alloc(bytes, 7);
    const header = Buffer.alloc(8);
    header.writeBigUInt64LE(BigInt(bytes));
    const times: number[] = [];
    for (let run = 0; run < runs + 1; run++) {
      const started = performance.now();
      const answered = new Promise<void>((resolve) => socket.once('data', () => resolve()));
      socket.write(header);
      for (let offset = 0; offset < bytes; offset += writeBytes) {
        if (!socket.write(data.subarray(offset, Math.min(offset + writeBytes, bytes)))) await new Promise((resolve) => socket.once('drain', resolve));
      }
      await answered;
      if (run > 0) times.push(performance.now() - started);
    }
    return median(times);
  } finally {
    socket.destroy();
    proc.kill();
  }
}

/** Prints the fabric table; returns nothing. */
export async function benchFabric(): Promise<void> {
  const rows: string[] = [];
  for (const [label, bytes, runs] of [
    ['1 MiB', 1 << 20, 30],
    ['16 MiB', 16 << 20, 10],
    ['256 MiB', 256 << 20, 3],
  ] as const) {
    process.stderr.write(`  fabric: ${label}…\n`);
    const fabricMs = await fabricTransfer(bytes, runs);
    const socketMs = await socketTransfer(bytes, runs);
    const gbps = (ms: number) => (bytes / (ms / 1000) / 1e9).toFixed(2);
    rows.push(
      `${label.padEnd(9)} ${fabricMs.toFixed(2).padStart(10)} ${gbps(fabricMs).padStart(8)} ${socketMs.toFixed(2).padStart(10)} ${gbps(socketMs).padStart(8)} ${(socketMs / fabricMs).toFixed(2).padStart(13)}`,
    );
  }
  console.log('\nTCP fabric between two processes vs a plain TCP socket (loopback, median ms per transfer; speed ratio = fabric throughput / socket throughput)');
  console.log(`${'size'.padEnd(9)} ${'fabric ms'.padStart(10)} ${'GB/s'.padStart(8)} ${'socket ms'.padStart(10)} ${'GB/s'.padStart(8)} ${'speed ratio'.padStart(13)}`);
  for (const row of rows) console.log(row);
}

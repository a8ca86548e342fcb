// The receiving side of the fabric benchmark, in its own process. Mode 'fabric' registers a
// TcpFabric region whose pages are all held for the benchmark's writer; mode 'socket' is the
// baseline: a plain TCP server that copies the same bytes into one buffer and answers one byte
// once it has them all. Prints one JSON line with where to connect.
import { createServer } from 'node:net';
import { ownerKey } from '../src/fabric/fabric.js';
import { createTcpFabric } from '../src/fabric/tcp/tcp-fabric.js';
import { realClock } from '../src/time/real-clock.js';

const [mode, pageBytesArg, pageCountArg] = process.argv.slice(2);
const pageBytes = Number(pageBytesArg);
const pageCount = Number(pageCountArg);

if (mode === 'fabric') {
  const fabric = await createTcpFabric({ host: '127.0.0.1', port: 0, clock: realClock, connectTimeoutMs: 5000 });
  const region = fabric.registerRegion({ pageBytes, pageCount });
  const pages = Array.from({ length: pageCount }, (_, i) => i);
  region.claim(pages, ownerKey({ instanceId: 'bench-writer', epoch: 1 }, 1));
  process.stdout.write(`${JSON.stringify({ descriptor: region.descriptor })}\n`);
} else {
  const buffer = Buffer.alloc(pageBytes * pageCount);
  const server = createServer((socket) => {
    socket.setNoDelay(true);
    let expected = -1;
    let received = 0;
    let header = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      let data = chunk;
      if (expected < 0) {
        header = Buffer.concat([header, data]);
        if (header.length < 8) return;
        expected = Number(header.readBigUInt64LE(0));
        data = header.subarray(8);
        received = 0;
      }
      data.copy(buffer, received % buffer.length);
      received += data.length;
      if (received >= expected) {
        expected = -1;
        header = Buffer.alloc(0);
        socket.write(Buffer.from([1]));
      }
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    process.stdout.write(`${JSON.stringify({ port })}\n`);
  });
}

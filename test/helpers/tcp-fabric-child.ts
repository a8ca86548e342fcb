// A decode-side process for test/tcp-fabric.test.ts: it registers a region on a TCP fabric,
// holds every page for one room, prints the region's descriptor as a JSON line, and once the
// room's completion lands prints a SHA-256 of the pages in descending order (the order the test
// writes them in) and exits. It exits too when its stdin closes, so it never outlives the test.
//
//   node --import tsx test/helpers/tcp-fabric-child.ts <pageBytes> <pageCount> <instanceId> <epoch> <room>
import { createHash } from 'node:crypto';
import { ownerKey, type WriterIdentity } from '../../src/fabric/fabric.js';
import { createTcpFabric } from '../../src/fabric/tcp/tcp-fabric.js';
import { realClock } from '../../src/time/real-clock.js';

const [pageBytesArg, pageCountArg, instanceId, epochArg, roomArg] = process.argv.slice(2);
const pageBytes = Number(pageBytesArg);
const pageCount = Number(pageCountArg);
const writer: WriterIdentity = { instanceId: instanceId ?? 'prefill', epoch: Number(epochArg) };
const room = Number(roomArg);

const fabric = await createTcpFabric({ host: '127.0.0.1', port: 0, clock: realClock, connectTimeoutMs: 5000 });
const region = fabric.registerRegion({ pageBytes, pageCount });
const pages = Array.from({ length: pageCount }, (_, i) => pageCount - 1 - i);
const owner = ownerKey(writer, room);
region.claim(pages, owner);

const stop = async (code: number): Promise<void> => {
  await fabric.close();
  process.exit(code);
};
process.stdin.on('end', () => void stop(1));
process.stdin.resume();

region.onCompletion(owner, (completion) => {
  const hash = createHash('sha256');
  for (const page of pages) hash.update(region.memory.subarray(page * pageBytes, (page + 1) * pageBytes));
  const report = { imm: completion.imm, owner: completion.owner, sha256: hash.digest('hex'), stats: region.stats };
  process.stdout.write(`${JSON.stringify(report)}\n`, () => void stop(0));
});

process.stdout.write(`${JSON.stringify(region.descriptor)}\n`);

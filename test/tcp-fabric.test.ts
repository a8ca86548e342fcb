import { spawn } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ErrorCode, TandemError } from '../src/errors.js';
import { ownerKey, type RegionDescriptor, type WriterIdentity } from '../src/fabric/fabric.js';
import { encodeHello, encodeHelloReply, encodeWriteHeader, frameMagic, protocolVersion } from '../src/fabric/tcp/frame-codec.js';
import { parseEndpoint } from '../src/fabric/fabric-endpoint.js';
import { createTcpFabric, type TcpFabric, type TcpFabricOptions } from '../src/fabric/tcp/tcp-fabric.js';
import type { TcpRegion } from '../src/fabric/tcp/tcp-region.js';
import { realClock } from '../src/time/real-clock.js';
import { fabricConformance } from './fabric-conformance.js';
import { waitFor } from './helpers/deferred.js';
import { recordingLogger, transferFailed } from './helpers/fabric-test-helpers.js';

const writer: WriterIdentity = { instanceId: 'prefill-a', epoch: 1 };

/** Lets socket data already on its way arrive and be handled. */
function settle(ms = 20): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function tcpFabric(options: Partial<TcpFabricOptions> = {}): Promise<TcpFabric> {
  return createTcpFabric({ host: '127.0.0.1', port: 0, clock: realClock, connectTimeoutMs: 2000, ...options });
}

fabricConformance('tcp, two fabrics on 127.0.0.1', async () => {
  const receiver = await tcpFabric();
  const sender = await tcpFabric();
  return {
    receiver,
    sender,
    settle: () => settle(),
    async cleanup() {
      await sender.close();
      await receiver.close();
    },
  };
});

/** A raw socket to a fabric's endpoint, for speaking the protocol badly on purpose. */
async function rawSocket(descriptor: RegionDescriptor): Promise<Socket & { closedPromise: Promise<void>; received: Buffer[] }> {
  const address = parseEndpoint(descriptor.endpoint)!;
  const socket = connect({ host: address.host, port: address.port }) as Socket & { closedPromise: Promise<void>; received: Buffer[] };
  socket.setNoDelay(true);
  socket.received = [];
  socket.on('data', (chunk: Buffer) => socket.received.push(chunk));
  socket.on('error', () => {});
  socket.closedPromise = new Promise((resolve) => socket.on('close', () => resolve()));
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  return socket;
}

function helloFor(descriptor: RegionDescriptor, who: WriterIdentity = writer): Buffer {
  return encodeHello({ version: protocolVersion, instanceId: who.instanceId, epoch: who.epoch, regionId: descriptor.regionId, pageBytes: descriptor.pageBytes, pageCount: descriptor.pageCount });
}

function sha256(chunks: Iterable<Uint8Array>): string {
  const hash = createHash('sha256');
  for (const chunk of chunks) hash.update(chunk);
  return hash.digest('hex');
}

function regionPages(region: TcpRegion, pages: readonly number[]): Uint8Array[] {
  const { pageBytes } = region.descriptor;
  return pages.map((page) => region.memory.subarray(page * pageBytes, (page + 1) * pageBytes));
}

describe('TcpFabric', () => {
  const open: TcpFabric[] = [];
  const servers: Server[] = [];
  afterEach(async () => {
    for (const fabric of open.splice(0)) await fabric.close();
    for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve));
  });

  async function pair(receiverOptions: Partial<TcpFabricOptions> = {}) {
    const receiver = await tcpFabric(receiverOptions);
    const sender = await tcpFabric();
    open.push(receiver, sender);
    return { receiver, sender };
  }

  it('describes regions with its host:port endpoint and ids that a restart on the same port does not reuse', async () => {
    const first = await tcpFabric();
    const region = first.registerRegion({ pageBytes: 16, pageCount: 4 });
    const port = parseEndpoint(region.descriptor.endpoint)!.port;
    expect(region.descriptor).toMatchObject({ fabric: 'tcp', endpoint: `127.0.0.1:${port}`, pageBytes: 16, pageCount: 4 });
    expect(first.registerRegion({ pageBytes: 16, pageCount: 4 }).descriptor.regionId).not.toBe(region.descriptor.regionId);
    await first.close();
    const restarted = await tcpFabric({ port });
    open.push(restarted);
    const fresh = restarted.registerRegion({ pageBytes: 16, pageCount: 4 });
    expect(fresh.descriptor.endpoint).toBe(region.descriptor.endpoint);
    expect(fresh.descriptor.regionId).not.toBe(region.descriptor.regionId);
    const sender = await tcpFabric();
    open.push(sender);
    expect((await transferFailed(sender.connect(region.descriptor, writer))).message).toContain(region.descriptor.regionId);
    const advertised = await tcpFabric({ advertiseHost: 'decode-0.example' });
    open.push(advertised);
    expect(advertised.registerRegion({ pageBytes: 16, pageCount: 4 }).descriptor.endpoint).toMatch(/^decode-0\.example:\d+$/);
  });

  it('refuses a descriptor whose page geometry differs from the region, and a malformed endpoint', async () => {
    const { receiver, sender } = await pair();
    const region = receiver.registerRegion({ pageBytes: 16, pageCount: 4 });
    expect((await transferFailed(sender.connect({ ...region.descriptor, pageBytes: 32 }, writer))).message).toContain('32');
    expect((await transferFailed(sender.connect({ ...region.descriptor, endpoint: 'no-port' }, writer))).message).toContain('no-port');
    expect((await transferFailed(sender.connect({ ...region.descriptor, fabric: 'sim' }, writer))).message).toContain('sim');
  });

  it('resolves a write only once its bytes are in the region', async () => {
    const { receiver, sender } = await pair();
    const pageBytes = 64 * 1024;
    const region = receiver.registerRegion({ pageBytes, pageCount: 64 });
    const connection = await sender.connect(region.descriptor, writer);
    region.claim(
      Array.from({ length: 64 }, (_, i) => i),
      ownerKey(writer, 1),
    );
    const seen: boolean[] = [];
    const writes = Array.from({ length: 8 }, (_, i) => {
      const pages = Array.from({ length: 8 }, (_, j) => 8 * i + j);
      const data = randomFillSync(new Uint8Array(8 * pageBytes - i));
      return connection.write({ room: 1, pages, data, final: i === 7 }).then(() => {
        // Checked in the very turn the promise settles: no later delivery can have helped.
        seen.push(Buffer.from(region.read(pages, data.byteLength)).equals(data));
        seen.push(i < 7 ? region.poll(ownerKey(writer, 1)) === undefined : region.poll(ownerKey(writer, 1))?.imm === 1);
      });
    });
    await Promise.all(writes);
    expect(seen).toEqual(new Array(16).fill(true));
  });

  it('parses frames split across many small socket chunks', async () => {
    const { receiver } = await pair();
    const region = receiver.registerRegion({ pageBytes: 8, pageCount: 4 });
    region.claim([3, 1], ownerKey(writer, 5));
    const socket = await rawSocket(region.descriptor);
    const data = Uint8Array.from({ length: 13 }, (_, i) => i + 1);
    const frame = Buffer.concat([helloFor(region.descriptor), encodeWriteHeader({ writeId: 0, room: 5, final: true, pageCount: 2, dataBytes: 13 }, [3, 1]), data]);
    for (let offset = 0; offset < frame.byteLength; offset += 5) {
      socket.write(frame.subarray(offset, offset + 5));
      await settle(2);
    }
    await waitFor(() => region.poll(ownerKey(writer, 5)) !== undefined, 2000, 'the completion');
    expect(region.read([3, 1], 13)).toEqual(data);
    const replies = Buffer.concat(socket.received);
    expect(replies.subarray(0, 8)).toEqual(encodeHelloReply(true));
    expect(replies.readUInt32LE(8)).toBe(frameMagic);
    expect(replies.readUInt8(13)).toBe(0);
    socket.destroy();
  });

  it('stops copying a write into a page released while it arrives, and refuses the write', async () => {
    const { receiver } = await pair();
    const region = receiver.registerRegion({ pageBytes: 16, pageCount: 2 });
    const owner = ownerKey(writer, 1);
    region.claim([0, 1], owner);
    const socket = await rawSocket(region.descriptor);
    const header = encodeWriteHeader({ writeId: 0, room: 1, final: true, pageCount: 2, dataBytes: 32 }, [0, 1]);
    socket.write(Buffer.concat([helloFor(region.descriptor), header, Buffer.alloc(16, 7)]));
    await waitFor(() => region.read([0], 16)[15] === 7, 2000, 'the first page to land');
    region.unclaim([1], owner);
    region.claim([1], ownerKey(writer, 2));
    socket.write(Buffer.alloc(16, 8));
    await waitFor(() => Buffer.concat(socket.received).byteLength > 8 + 12, 2000, 'the acknowledgement');
    const ack = Buffer.concat(socket.received).subarray(8);
    expect(ack.readUInt8(5)).toBe(1);
    expect(ack.toString('utf8', 12)).toContain('page 1 was released while the write was arriving');
    expect(region.read([1], 16)).toEqual(new Uint8Array(16));
    expect(region.stats).toMatchObject({ appliedWrites: 0, rejectedWrites: 1, completions: 0 });
    expect(region.poll(owner)).toBeUndefined();
    socket.destroy();
  });

  describe('hostile input', () => {
    async function hostileSetup() {
      const log = recordingLogger();
      const { receiver, sender } = await pair({ log });
      const region = receiver.registerRegion({ pageBytes: 16, pageCount: 4 });
      region.claim([0, 1, 2, 3], ownerKey(writer, 1));
      const peerClosed: WriterIdentity[] = [];
      receiver.onPeerClosed((who) => peerClosed.push(who));
      /** Sends `bytes` on a fresh socket and waits for the fabric to close it. */
      const expectClosedAfter = async (bytes: Buffer): Promise<void> => {
        const socket = await rawSocket(region.descriptor);
        socket.write(bytes);
        await socket.closedPromise;
      };
      /** The fabric still works for a well-behaved writer. */
      const stillServes = async (): Promise<void> => {
        const connection = await sender.connect(region.descriptor, writer);
        await connection.write({ room: 1, pages: [2], data: new Uint8Array(16).fill(9), final: false });
        connection.close();
      };
      return { log, region, peerClosed, expectClosedAfter, stillServes };
    }

    it('closes a socket that sends garbage instead of a hello, and logs why', async () => {
      const { log, region, expectClosedAfter, stillServes } = await hostileSetup();
      await expectClosedAfter(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\nmore garbage than a hello'));
      expect(log.warnings.join('\n')).toContain('bad magic');
      await expectClosedAfter(encodeHello({ version: protocolVersion, instanceId: 'x'.repeat(300), epoch: 1, regionId: region.descriptor.regionId, pageBytes: 16, pageCount: 4 }));
      expect(log.warnings.join('\n')).toContain('id lengths');
      await stillServes();
      expect(region.stats).toMatchObject({ appliedWrites: 1, rejectedWrites: 0 });
    });

    it('closes a connection whose write header claims 4 GiB, before a byte lands', async () => {
      const { log, region, peerClosed, expectClosedAfter } = await hostileSetup();
      const header = encodeWriteHeader({ writeId: 0, room: 1, final: true, pageCount: 4, dataBytes: 0xffff_ffff }, [0, 1, 2, 3]);
      await expectClosedAfter(Buffer.concat([helloFor(region.descriptor), header, Buffer.alloc(64, 7)]));
      expect(log.warnings.join('\n')).toContain('4294967295 bytes do not fit');
      const manyPages = encodeWriteHeader({ writeId: 0, room: 1, final: true, pageCount: 0x4000_0000, dataBytes: 16 }, []);
      await expectClosedAfter(Buffer.concat([helloFor(region.descriptor), manyPages]));
      expect(log.warnings.join('\n')).toContain('1073741824 pages in a region of 4');
      expect(region.read([0, 1, 2, 3], 64)).toEqual(new Uint8Array(64));
      expect(region.stats).toMatchObject({ appliedWrites: 0, appliedBytes: 0, completions: 0 });
      await waitFor(() => peerClosed.length === 2, 2000, 'peer closed notices');
    });

    it('closes a connection that names a page outside the region or a page twice, writing nothing', async () => {
      const { log, region, expectClosedAfter, stillServes } = await hostileSetup();
      const outside = encodeWriteHeader({ writeId: 0, room: 1, final: true, pageCount: 1, dataBytes: 16 }, [4]);
      await expectClosedAfter(Buffer.concat([helloFor(region.descriptor), outside, Buffer.alloc(16, 7)]));
      expect(log.warnings.join('\n')).toContain('page 4 is outside 0..3');
      const huge = encodeWriteHeader({ writeId: 0, room: 1, final: true, pageCount: 1, dataBytes: 16 }, [0xffff_ffff]);
      await expectClosedAfter(Buffer.concat([helloFor(region.descriptor), huge, Buffer.alloc(16, 7)]));
      const twice = encodeWriteHeader({ writeId: 0, room: 1, final: true, pageCount: 2, dataBytes: 32 }, [1, 1]);
      await expectClosedAfter(Buffer.concat([helloFor(region.descriptor), twice, Buffer.alloc(32, 7)]));
      expect(log.warnings.join('\n')).toContain('page 1 is listed twice');
      const badFrame = Buffer.from(encodeWriteHeader({ writeId: 0, room: 1, final: false, pageCount: 1, dataBytes: 16 }, [0]));
      badFrame.writeUInt8(99, 4);
      await expectClosedAfter(Buffer.concat([helloFor(region.descriptor), badFrame]));
      expect(log.warnings.join('\n')).toContain('unexpected frame type 99');
      expect(region.read([0, 1, 2, 3], 64)).toEqual(new Uint8Array(64));
      expect(region.stats.appliedWrites).toBe(0);
      await stillServes();
    });

    it('drops a socket that never says hello after connectTimeoutMs', async () => {
      const log = recordingLogger();
      const { receiver } = await pair({ log, connectTimeoutMs: 50 });
      const region = receiver.registerRegion({ pageBytes: 16, pageCount: 4 });
      const socket = await rawSocket(region.descriptor);
      await socket.closedPromise;
      expect(log.warnings.join('\n')).toContain('no hello within 50 ms');
    });
  });

  describe('connection loss and limits', () => {
    it('rejects pending writes and closes the connection when the receiving fabric closes', async () => {
      const { receiver, sender } = await pair();
      const region = receiver.registerRegion({ pageBytes: 1024 * 1024, pageCount: 64 });
      const pages = Array.from({ length: 64 }, (_, i) => i);
      region.claim(pages, ownerKey(writer, 1));
      const connection = await sender.connect(region.descriptor, writer);
      const writes = pages.map((page) => connection.write({ room: 1, pages: [page], data: new Uint8Array(1024 * 1024), final: page === 63 }));
      await receiver.close();
      const results = await Promise.allSettled(writes);
      expect(results.some((result) => result.status === 'rejected')).toBe(true);
      for (const result of results) if (result.status === 'rejected') expect((result.reason as TandemError).code).toBe(ErrorCode.TransferFailed);
      await waitFor(() => connection.closed, 2000, 'the connection to close');
      await transferFailed(connection.write({ room: 1, pages: [0], data: new Uint8Array(1), final: true }));
    });

    it("tells the receiver a writer is gone only when that writer's last connection closes", async () => {
      const { receiver, sender } = await pair();
      const region = receiver.registerRegion({ pageBytes: 16, pageCount: 4 });
      const heard: WriterIdentity[] = [];
      receiver.onPeerClosed((who) => heard.push(who));
      const first = await sender.connect(region.descriptor, writer);
      const second = await sender.connect(region.descriptor, writer);
      const otherEpoch = await sender.connect(region.descriptor, { ...writer, epoch: 2 });
      first.close();
      await settle();
      expect(heard).toEqual([]);
      otherEpoch.close();
      await waitFor(() => heard.length === 1, 2000, 'the first notice');
      expect(heard).toEqual([{ ...writer, epoch: 2 }]);
      second.close();
      await waitFor(() => heard.length === 2, 2000, 'the second notice');
      expect(heard[1]).toEqual(writer);
    });

    it('tears the connection down when a write is not acknowledged within writeTimeoutMs', async () => {
      // A receiver that accepts the hello and then swallows everything without acknowledging.
      const server = createServer((socket) => {
        socket.once('data', () => socket.write(encodeHelloReply(true)));
        socket.on('error', () => {}).resume();
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as { port: number }).port;
      const sender = await tcpFabric({ writeTimeoutMs: 100 });
      open.push(sender);
      const descriptor: RegionDescriptor = { fabric: 'tcp', endpoint: `127.0.0.1:${port}`, regionId: 'r', pageBytes: 16, pageCount: 4 };
      const connection = await sender.connect(descriptor, writer);
      const error = await transferFailed(connection.write({ room: 1, pages: [0], data: new Uint8Array(16), final: true }));
      expect(error.message).toContain('writeTimeoutMs');
      expect(connection.closed).toBe(true);
    });

    it('gives up connecting to a peer that never answers the hello after connectTimeoutMs', async () => {
      // A peer that reads the hello and never answers it.
      const server = createServer((socket) => socket.on('error', () => {}).resume());
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as { port: number }).port;
      const sender = await tcpFabric({ connectTimeoutMs: 50 });
      open.push(sender);
      const descriptor: RegionDescriptor = { fabric: 'tcp', endpoint: `127.0.0.1:${port}`, regionId: 'r', pageBytes: 16, pageCount: 4 };
      expect((await transferFailed(sender.connect(descriptor, writer))).message).toContain('connectTimeoutMs');
    });

    it('rejects a write beyond writesInFlightMax without breaking the connection', async () => {
      const receiver = await tcpFabric();
      const sender = await tcpFabric({ writesInFlightMax: 2 });
      open.push(receiver, sender);
      const region = receiver.registerRegion({ pageBytes: 16, pageCount: 4 });
      region.claim([0], ownerKey(writer, 1));
      const connection = await sender.connect(region.descriptor, writer);
      const writes = [0, 1, 2].map((i) => connection.write({ room: 1, pages: [0], data: new Uint8Array(16).fill(i), final: false }));
      expect((await transferFailed(writes[2]!)).message).toContain('writesInFlightMax');
      await Promise.all(writes.slice(0, 2));
      await connection.write({ room: 1, pages: [0], data: new Uint8Array(16).fill(7), final: true });
      expect(region.poll(ownerKey(writer, 1))?.imm).toBe(1);
    });
  });

  it('round-trips a 256 MiB transfer exactly', async () => {
    const { receiver, sender } = await pair();
    const pageBytes = 1024 * 1024;
    const pageCount = 256;
    const region = receiver.registerRegion({ pageBytes, pageCount });
    const connection = await sender.connect(region.descriptor, writer);
    const pages = Array.from({ length: pageCount }, (_, i) => (i * 101) % pageCount);
    const owner = ownerKey(writer, 256);
    region.claim(pages, owner);
    const data = randomFillSync(new Uint8Array(pageCount * pageBytes));
    const pagesPerWrite = 16;
    const writes: Promise<void>[] = [];
    for (let first = 0; first < pageCount; first += pagesPerWrite) {
      writes.push(
        connection.write({
          room: 256,
          pages: pages.slice(first, first + pagesPerWrite),
          data: data.subarray(first * pageBytes, (first + pagesPerWrite) * pageBytes),
          final: first + pagesPerWrite >= pageCount,
        }),
      );
    }
    await Promise.all(writes);
    expect(region.poll(owner)?.imm).toBe(256);
    expect(sha256(regionPages(region, pages))).toBe(sha256([data]));
    expect(region.stats).toMatchObject({ appliedWrites: pageCount / pagesPerWrite, appliedBytes: data.byteLength, rejectedWrites: 0, completions: 1 });
  });

  it('writes into a region registered by another process', async () => {
    const pageBytes = 512 * 1024;
    const pageCount = 32;
    const script = fileURLToPath(new URL('./helpers/tcp-fabric-child.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', script, String(pageBytes), String(pageCount), writer.instanceId, String(writer.epoch), '77'], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    try {
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
      const descriptor = JSON.parse(((await lines.next()).value as string) ?? '{}') as RegionDescriptor;
      expect(descriptor).toMatchObject({ fabric: 'tcp', pageBytes, pageCount });
      const sender = await tcpFabric();
      open.push(sender);
      const connection = await sender.connect(descriptor, writer);
      const data = randomFillSync(new Uint8Array(pageBytes * pageCount));
      const descending = Array.from({ length: pageCount }, (_, i) => pageCount - 1 - i);
      const writes: Promise<void>[] = [];
      for (let first = 0; first < pageCount; first += 4) {
        writes.push(
          connection.write({ room: 77, pages: descending.slice(first, first + 4), data: data.subarray(first * pageBytes, (first + 4) * pageBytes), final: first + 4 >= pageCount }),
        );
      }
      await Promise.all(writes);
      const report = JSON.parse(((await lines.next()).value as string) ?? '{}') as { imm: number; owner: string; sha256: string; stats: { appliedBytes: number } };
      expect(report).toMatchObject({ imm: 77, owner: ownerKey(writer, 77), sha256: sha256([data]) });
      expect(report.stats.appliedBytes).toBe(data.byteLength);
      await new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
      expect(child.exitCode).toBe(0);
    } finally {
      child.stdin.end();
      if (child.exitCode === null) child.kill();
    }
  });
});

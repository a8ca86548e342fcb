// The conformance suite every Fabric implementation runs (sim, tcp, verbs). It speaks only the
// Fabric interface, so a behaviour it checks is one the actors may rely on whatever fabric the
// runtime picks.
import { describe, expect, it } from 'vitest';
import { ErrorCode, TandemError } from '../src/errors.js';
import { ownerKey, type Completion, type Fabric, type FabricConnection, type Region, type WriterIdentity } from '../src/fabric/fabric.js';

/** Two attachments to one fabric: decode registers regions on `receiver`, prefill writes from `sender`. */
export interface FabricFixture {
  receiver: Fabric;
  sender: Fabric;
  /** Lets deliveries already under way finish (e.g. a turn of the event loop, or advancing a virtual clock). */
  settle?(): Promise<void>;
  cleanup(): Promise<void>;
}

const writer: WriterIdentity = { instanceId: 'prefill-a', epoch: 1 };
const pageBytes = 64;
const pageCount = 16;

/** Bytes whose value depends on their position and `seed`, so misplaced bytes show. */
function pattern(byteLength: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(byteLength);
  let x = (seed * 0x9e3779b1) >>> 0 || 1;
  for (let i = 0; i < byteLength; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

function sameBytes(actual: Uint8Array, expected: Uint8Array): boolean {
  return Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength));
}

async function expectTransferFailed(promise: Promise<unknown>): Promise<TandemError> {
  const error = await promise.then(
    () => undefined,
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(TandemError);
  expect((error as TandemError).code).toBe(ErrorCode.TransferFailed);
  return error as TandemError;
}

/** Runs the Fabric conformance suite against fixtures from `make`. */
export function fabricConformance(name: string, make: () => Promise<FabricFixture>): void {
  describe(`fabric conformance: ${name}`, () => {
    async function withFabric(body: (fixture: FabricFixture, region: Region, connection: FabricConnection) => Promise<void>): Promise<void> {
      const fixture = await make();
      try {
        const region = fixture.receiver.registerRegion({ pageBytes, pageCount });
        const connection = await fixture.sender.connect(region.descriptor, writer);
        await body(fixture, region, connection);
      } finally {
        await fixture.cleanup();
      }
    }

    it('describes the registered region', async () => {
      await withFabric(async (_fixture, region, connection) => {
        expect(region.descriptor.pageBytes).toBe(pageBytes);
        expect(region.descriptor.pageCount).toBe(pageCount);
        expect(connection.peer).toEqual(region.descriptor);
        expect(connection.closed).toBe(false);
        expect(region.ownerOf(0)).toBeUndefined();
      });
    });

    it('lands a write in the destination pages, in the order given, and touches no other page', async () => {
      await withFabric(async (_fixture, region, connection) => {
        const owner = ownerKey(writer, 7);
        region.claim([5, 2, 9], owner);
        expect(region.ownerOf(2)).toBe(owner);
        const data = pattern(pageBytes * 2 + 10, 1);
        await connection.write({ room: 7, pages: [5, 2, 9], data, final: false });
        expect(sameBytes(region.read([5, 2, 9], data.byteLength), data)).toBe(true);
        expect(sameBytes(region.read([5], pageBytes), data.subarray(0, pageBytes))).toBe(true);
        expect(sameBytes(region.read([2], pageBytes), data.subarray(pageBytes, 2 * pageBytes))).toBe(true);
        expect(sameBytes(region.read([0, 1, 3, 4, 6], 5 * pageBytes), new Uint8Array(5 * pageBytes))).toBe(true);
        expect(region.stats.appliedWrites).toBe(1);
        expect(region.stats.appliedBytes).toBe(data.byteLength);
        expect(region.stats.rejectedWrites).toBe(0);
        expect(region.poll(owner)).toBeUndefined();
      });
    });

    it('records a completion with the room as immediate on a final write and tells subscribers, early or late', async () => {
      await withFabric(async (_fixture, region, connection) => {
        const owner = ownerKey(writer, 42);
        region.claim([0, 1], owner);
        const early: Completion[] = [];
        region.onCompletion(owner, (completion) => early.push(completion));
        const unsubscribed: Completion[] = [];
        region.onCompletion(owner, (completion) => unsubscribed.push(completion))();
        await connection.write({ room: 42, pages: [0], data: pattern(pageBytes, 2), final: false });
        expect(region.poll(owner)).toBeUndefined();
        const last = pattern(pageBytes, 3);
        const seenAtCompletion: boolean[] = [];
        region.onCompletion(owner, () => seenAtCompletion.push(sameBytes(region.read([1], pageBytes), last)));
        await connection.write({ room: 42, pages: [1], data: last, final: true });
        await new Promise<void>((resolve) => region.onCompletion(owner, () => resolve()));
        const completion = region.poll(owner);
        expect(completion).toMatchObject({ owner, imm: 42 });
        expect(typeof completion?.atMs).toBe('number');
        expect(early).toEqual([completion]);
        expect(unsubscribed).toEqual([]);
        expect(seenAtCompletion).toEqual([true]);
        const late = await new Promise<Completion>((resolve) => region.onCompletion(owner, resolve));
        expect(late).toEqual(completion);
        expect(region.stats.completions).toBe(1);
        region.forget(owner);
        expect(region.poll(owner)).toBeUndefined();
      });
    });

    it('applies the writes of one connection in the order they were posted', async () => {
      await withFabric(async (_fixture, region, connection) => {
        const owner = ownerKey(writer, 3);
        region.claim([4], owner);
        const order: number[] = [];
        const writes = Array.from({ length: 20 }, (_, i) =>
          connection
            .write({ room: 3, pages: [4], data: new Uint8Array(pageBytes).fill(i + 1), final: i === 19 })
            .then(() => order.push(i)),
        );
        await Promise.all(writes);
        expect(order).toEqual(Array.from({ length: 20 }, (_, i) => i));
        expect(sameBytes(region.read([4], pageBytes), new Uint8Array(pageBytes).fill(20))).toBe(true);
        expect(region.poll(owner)?.imm).toBe(3);
        expect(region.stats.appliedWrites).toBe(20);
      });
    });

    it('refuses the whole write when any destination page is not held for the writing room, and counts it', async () => {
      await withFabric(async (fixture, region, connection) => {
        region.claim([0, 1], ownerKey(writer, 1));
        region.claim([2], ownerKey(writer, 2));
        const otherRoom = await expectTransferFailed(connection.write({ room: 2, pages: [0], data: pattern(pageBytes, 4), final: true }));
        expect(otherRoom.message).toContain('0');
        await expectTransferFailed(connection.write({ room: 1, pages: [0, 3], data: pattern(2 * pageBytes, 5), final: true }));
        await expectTransferFailed(connection.write({ room: 1, pages: [1, 2], data: pattern(2 * pageBytes, 6), final: false }));
        await fixture.settle?.();
        expect(sameBytes(region.read([0, 1, 2, 3], 4 * pageBytes), new Uint8Array(4 * pageBytes))).toBe(true);
        expect(region.stats.rejectedWrites).toBe(3);
        expect(region.stats.appliedWrites).toBe(0);
        expect(region.poll(ownerKey(writer, 1))).toBeUndefined();
        expect(region.poll(ownerKey(writer, 2))).toBeUndefined();
        // A refused write does not poison the connection.
        await connection.write({ room: 1, pages: [0, 1], data: pattern(2 * pageBytes, 7), final: true });
        expect(region.poll(ownerKey(writer, 1))?.imm).toBe(1);
      });
    });

    it('refuses a write from an earlier epoch of the same writer to pages held for the current one', async () => {
      await withFabric(async (fixture, region) => {
        const stale = await fixture.sender.connect(region.descriptor, { instanceId: writer.instanceId, epoch: writer.epoch - 1 });
        region.claim([6], ownerKey(writer, 9));
        await expectTransferFailed(stale.write({ room: 9, pages: [6], data: pattern(pageBytes, 8), final: true }));
        expect(sameBytes(region.read([6], pageBytes), new Uint8Array(pageBytes))).toBe(true);
        expect(region.stats.rejectedWrites).toBe(1);
        stale.close();
      });
    });

    it('refuses writes after the page is unclaimed, including once it is held for another room', async () => {
      await withFabric(async (fixture, region, connection) => {
        const first = pattern(pageBytes, 9);
        region.claim([3], ownerKey(writer, 1));
        await connection.write({ room: 1, pages: [3], data: first, final: false });
        region.unclaim([3], ownerKey(writer, 1));
        expect(region.ownerOf(3)).toBeUndefined();
        await expectTransferFailed(connection.write({ room: 1, pages: [3], data: pattern(pageBytes, 10), final: true }));
        region.claim([3], ownerKey(writer, 2));
        await expectTransferFailed(connection.write({ room: 1, pages: [3], data: pattern(pageBytes, 11), final: true }));
        await fixture.settle?.();
        expect(sameBytes(region.read([3], pageBytes), first)).toBe(true);
        expect(region.stats.rejectedWrites).toBe(2);
        expect(region.poll(ownerKey(writer, 1))).toBeUndefined();
      });
    });

    it('refuses page indices outside the region and data longer than its pages', async () => {
      await withFabric(async (fixture, region, connection) => {
        region.claim([0], ownerKey(writer, 1));
        await expectTransferFailed(connection.write({ room: 1, pages: [pageCount], data: pattern(8, 12), final: false }));
        await expectTransferFailed(connection.write({ room: 1, pages: [-1], data: pattern(8, 13), final: false }));
        await expectTransferFailed(connection.write({ room: 1, pages: [0], data: pattern(pageBytes + 1, 14), final: false }));
        await fixture.settle?.();
        expect(sameBytes(region.read([0], pageBytes), new Uint8Array(pageBytes))).toBe(true);
        expect(region.stats.appliedWrites).toBe(0);
      });
    });

    it('rejects pending writes when the connection closes mid-transfer, and tells the receiver who left', async () => {
      await withFabric(async (fixture, region, connection) => {
        const owner = ownerKey(writer, 5);
        const pages = Array.from({ length: pageCount }, (_, i) => i);
        region.claim(pages, owner);
        const peerClosed = new Promise<WriterIdentity>((resolve) => fixture.receiver.onPeerClosed(resolve));
        const writes = pages.map((page) =>
          connection.write({ room: 5, pages: [page], data: pattern(pageBytes, page + 20), final: page === pageCount - 1 }),
        );
        connection.close();
        expect(connection.closed).toBe(true);
        const results = await Promise.allSettled(writes);
        // No acknowledgement can arrive in the turn that posted the writes, so every one is rejected.
        for (const result of results) {
          expect(result.status).toBe('rejected');
          if (result.status === 'rejected') expect((result.reason as TandemError).code).toBe(ErrorCode.TransferFailed);
        }
        expect(await peerClosed).toEqual(writer);
        await expectTransferFailed(connection.write({ room: 5, pages: [0], data: pattern(pageBytes, 99), final: true }));
        // Once the receiver heard of the close, nothing from that connection lands any more.
        const landed = region.read(pages, pageCount * pageBytes);
        const applied = region.stats.appliedWrites;
        await fixture.settle?.();
        expect(sameBytes(region.read(pages, pageCount * pageBytes), landed)).toBe(true);
        expect(region.stats.appliedWrites).toBe(applied);
      });
    });

    it('round-trips a 64 MiB transfer across many pages exactly', async () => {
      const fixture = await make();
      try {
        const bigPageBytes = 256 * 1024;
        const bigPageCount = 256;
        const region = fixture.receiver.registerRegion({ pageBytes: bigPageBytes, pageCount: bigPageCount });
        const connection = await fixture.sender.connect(region.descriptor, writer);
        const owner = ownerKey(writer, 64);
        // Scattered destination pages, as a pool that has been in use hands them out.
        const pages = Array.from({ length: bigPageCount }, (_, i) => (i * 97) % bigPageCount);
        region.claim(pages, owner);
        const data = pattern(bigPageCount * bigPageBytes, 64);
        const pagesPerWrite = 16;
        const writes: Promise<void>[] = [];
        for (let first = 0; first < bigPageCount; first += pagesPerWrite) {
          writes.push(
            connection.write({
              room: 64,
              pages: pages.slice(first, first + pagesPerWrite),
              data: data.subarray(first * bigPageBytes, (first + pagesPerWrite) * bigPageBytes),
              final: first + pagesPerWrite >= bigPageCount,
            }),
          );
        }
        await Promise.all(writes);
        await new Promise<void>((resolve) => region.onCompletion(owner, () => resolve()));
        expect(sameBytes(region.read(pages, data.byteLength), data)).toBe(true);
        expect(region.stats.appliedBytes).toBe(data.byteLength);
        connection.close();
      } finally {
        await fixture.cleanup();
      }
    });

    it('fails to connect to an endpoint or region that does not exist, or has closed, with transfer_failed', async () => {
      const fixture = await make();
      try {
        const region = fixture.receiver.registerRegion({ pageBytes, pageCount });
        await expectTransferFailed(fixture.sender.connect({ ...region.descriptor, endpoint: 'nowhere.invalid:1' }, writer));
        await expectTransferFailed(fixture.sender.connect({ ...region.descriptor, regionId: 'no-such-region' }, writer));
        await fixture.receiver.close();
        await expectTransferFailed(fixture.sender.connect(region.descriptor, writer));
      } finally {
        await fixture.cleanup();
      }
    });
  });
}

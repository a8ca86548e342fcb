import { describe, expect, it } from 'vitest';
import { ErrorCode, TandemError } from '../src/errors.js';
import { ownerKey, type WriterIdentity } from '../src/fabric/fabric.js';
import { SimFabricNetwork, type SimFabricNetworkOptions } from '../src/fabric/sim/sim-fabric.js';
import { realClock } from '../src/time/real-clock.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { AssertionError } from '../src/util/assert.js';
import { fabricConformance } from './fabric-conformance.js';

const writer: WriterIdentity = { instanceId: 'prefill-a', epoch: 1 };

/** Lets promise callbacks queued by timers that already fired run. */
function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

async function settled<T>(promise: Promise<T>): Promise<{ state: 'pending' | 'resolved' | 'rejected'; reason?: unknown }> {
  let outcome: { state: 'pending' | 'resolved' | 'rejected'; reason?: unknown } = { state: 'pending' };
  promise.then(
    () => (outcome = { state: 'resolved' }),
    (reason: unknown) => (outcome = { state: 'rejected', reason }),
  );
  await flush();
  return outcome;
}

fabricConformance('sim, real clock, no latency', async () => {
  const network = new SimFabricNetwork({ clock: realClock });
  const receiver = network.attach('decode-0');
  const sender = network.attach('prefill-0');
  return {
    receiver,
    sender,
    settle: flush,
    async cleanup() {
      await sender.close();
      await receiver.close();
    },
  };
});

fabricConformance('sim, real clock, 1 ms latency, 10 GB/s', async () => {
  const network = new SimFabricNetwork({ clock: realClock, latencyMs: 1, bytesPerMs: 10_000_000 });
  const receiver = network.attach('decode-0');
  const sender = network.attach('prefill-0');
  return {
    receiver,
    sender,
    settle: () => new Promise((resolve) => setTimeout(resolve, 5)),
    async cleanup() {
      await sender.close();
      await receiver.close();
    },
  };
});

/** A decode endpoint with one claimed region and a prefill connection to it, on a virtual clock. */
async function virtualSetup(options: Omit<SimFabricNetworkOptions, 'clock'> = {}, pageBytes = 1000) {
  const clock = new VirtualClock();
  const network = new SimFabricNetwork({ clock, ...options });
  const decode = network.attach('decode-0');
  const prefill = network.attach('prefill-0');
  const region = decode.registerRegion({ pageBytes, pageCount: 8 });
  const connection = await prefill.connect(region.descriptor, writer);
  return { clock, network, decode, prefill, region, connection, pageBytes };
}

describe('SimFabricNetwork timing', () => {
  it('applies a write after latencyMs plus bytes/bytesPerMs, and stamps the completion with that time', async () => {
    const { clock, region, connection } = await virtualSetup({ latencyMs: 5, bytesPerMs: 100 });
    region.claim([0], ownerKey(writer, 1));
    const write = connection.write({ room: 1, pages: [0], data: new Uint8Array(1000).fill(7), final: true });
    clock.advance(14);
    expect((await settled(write)).state).toBe('pending');
    expect(region.stats.appliedWrites).toBe(0);
    clock.advance(1);
    expect((await settled(write)).state).toBe('resolved');
    expect(region.read([0], 1)[0]).toBe(7);
    expect(region.poll(ownerKey(writer, 1))).toEqual({ owner: ownerKey(writer, 1), imm: 1, atMs: 15 });
  });

  it('serialises transmission on one connection and starts afresh once it is idle', async () => {
    const { clock, region, connection } = await virtualSetup({ latencyMs: 5, bytesPerMs: 100 });
    region.claim([0, 1, 2], ownerKey(writer, 1));
    const first = connection.write({ room: 1, pages: [0], data: new Uint8Array(1000), final: false });
    const second = connection.write({ room: 1, pages: [1], data: new Uint8Array(1000), final: false });
    clock.advance(15);
    expect((await settled(first)).state).toBe('resolved');
    expect((await settled(second)).state).toBe('pending');
    clock.advance(10);
    expect((await settled(second)).state).toBe('resolved');
    clock.advance(75);
    const third = connection.write({ room: 1, pages: [2], data: new Uint8Array(500), final: false });
    clock.advance(9);
    expect((await settled(third)).state).toBe('pending');
    clock.advance(1);
    expect((await settled(third)).state).toBe('resolved');
    expect(clock.now()).toBe(110);
  });

  it('keeps order on a connection when an earlier write is delayed by a fault', async () => {
    const { clock, region, connection } = await virtualSetup({
      latencyMs: 1,
      faults: { extraDelayMs: (write) => (write.final ? 0 : 50) },
    });
    region.claim([0], ownerKey(writer, 1));
    const applied: string[] = [];
    const slow = connection.write({ room: 1, pages: [0], data: new Uint8Array(10).fill(1), final: false }).then(() => applied.push('slow'));
    const fast = connection.write({ room: 1, pages: [0], data: new Uint8Array(10).fill(2), final: true }).then(() => applied.push('fast'));
    clock.advance(50);
    await flush();
    expect(applied).toEqual([]);
    clock.advance(1);
    await Promise.all([slow, fast]);
    expect(applied).toEqual(['slow', 'fast']);
    expect(region.read([0], 10)).toEqual(new Uint8Array(10).fill(2));
    expect(region.poll(ownerKey(writer, 1))?.atMs).toBe(51);
  });

  it('tells the receiver of a closed connection latencyMs later', async () => {
    const { clock, decode, connection } = await virtualSetup({ latencyMs: 3 });
    const heard: WriterIdentity[] = [];
    decode.onPeerClosed((who) => heard.push(who));
    connection.close();
    clock.advance(2);
    expect(heard).toEqual([]);
    clock.advance(1);
    expect(heard).toEqual([writer]);
  });
});

describe('SimFabricNetwork faults', () => {
  it('loses a write that shouldFailWrite picks: it rejects, nothing lands, and other writes go through', async () => {
    const { network, region, connection } = await virtualSetup({}, 16);
    network.faults = { shouldFailWrite: (write) => write.room === 2 };
    region.claim([0], ownerKey(writer, 1));
    region.claim([1], ownerKey(writer, 2));
    const lost = connection.write({ room: 2, pages: [1], data: new Uint8Array(16).fill(9), final: true });
    const kept = connection.write({ room: 1, pages: [0], data: new Uint8Array(16).fill(8), final: true });
    (network.clock as VirtualClock).advance(0);
    const error = await lost.catch((reason: unknown) => reason);
    expect(error).toBeInstanceOf(TandemError);
    expect((error as TandemError).code).toBe(ErrorCode.TransferFailed);
    expect((error as TandemError).message).toContain('injected');
    await kept;
    expect(region.read([1], 16)).toEqual(new Uint8Array(16));
    expect(region.poll(ownerKey(writer, 2))).toBeUndefined();
    expect(region.poll(ownerKey(writer, 1))?.imm).toBe(1);
    expect(region.stats.rejectedWrites).toBe(0);
    expect(network.stats).toMatchObject({ writesPosted: 2, writesFailed: 1, writesApplied: 1, completionsRecorded: 1 });
  });

  it('applies a final write picked by dropCompletion but records no completion, until the faults are healed', async () => {
    const { clock, network, region, connection } = await virtualSetup({ faults: { dropCompletion: () => true } }, 16);
    region.claim([0], ownerKey(writer, 1));
    region.claim([1], ownerKey(writer, 2));
    const dropped = connection.write({ room: 1, pages: [0], data: new Uint8Array(16).fill(5), final: true });
    clock.advance(0);
    await dropped;
    expect(region.read([0], 16)).toEqual(new Uint8Array(16).fill(5));
    expect(region.poll(ownerKey(writer, 1))).toBeUndefined();
    expect(network.stats.completionsDropped).toBe(1);
    network.faults = undefined;
    const healed = connection.write({ room: 2, pages: [1], data: new Uint8Array(16).fill(6), final: true });
    clock.advance(0);
    await healed;
    expect(region.poll(ownerKey(writer, 2))?.imm).toBe(2);
    expect(region.stats.completions).toBe(1);
  });

  it('hands each hook what it needs to pick a write', async () => {
    const seen: unknown[] = [];
    const { clock, region, connection } = await virtualSetup({ faults: { shouldFailWrite: (write) => (seen.push(write), false) } }, 16);
    region.claim([3, 4], ownerKey(writer, 7));
    const write = connection.write({ room: 7, pages: [3, 4], data: new Uint8Array(20), final: true });
    clock.advance(0);
    await write;
    expect(seen).toEqual([{ from: 'prefill-0', to: 'decode-0', writer, room: 7, pages: [3, 4], byteLength: 20, final: true }]);
  });
});

describe('SimFabricNetwork endpoints and connections', () => {
  it('rejects in-flight writes when the writer endpoint closes, and tells the receiver', async () => {
    const { clock, network, decode, prefill, region, connection } = await virtualSetup({ latencyMs: 10 });
    region.claim([0], ownerKey(writer, 1));
    const heard: WriterIdentity[] = [];
    decode.onPeerClosed((who) => heard.push(who));
    const write = connection.write({ room: 1, pages: [0], data: new Uint8Array(8).fill(1), final: true });
    expect(network.pendingWrites()).toBe(1);
    await prefill.close();
    expect(connection.closed).toBe(true);
    expect((await settled(write)).state).toBe('rejected');
    clock.advance(100);
    expect(heard).toEqual([writer]);
    expect(region.stats.appliedWrites).toBe(0);
    expect(network.pendingWrites()).toBe(0);
    expect(network.stats).toMatchObject({ writesDropped: 1, connectionsOpened: 1, connectionsClosed: 1 });
  });

  it('breaks connections into an endpoint that closes, without telling its own (closed) listeners', async () => {
    const { clock, decode, region, connection } = await virtualSetup({ latencyMs: 10 });
    region.claim([0], ownerKey(writer, 1));
    const heard: WriterIdentity[] = [];
    decode.onPeerClosed((who) => heard.push(who));
    const write = connection.write({ room: 1, pages: [0], data: new Uint8Array(8), final: true });
    await decode.close();
    const outcome = await settled(write);
    expect(outcome.state).toBe('rejected');
    expect((outcome.reason as TandemError).code).toBe(ErrorCode.TransferFailed);
    expect(connection.closed).toBe(true);
    clock.advance(100);
    expect(heard).toEqual([]);
  });

  it("reports a writer as gone only when its last connection to the endpoint closes", async () => {
    const { clock, decode, prefill, region, connection } = await virtualSetup();
    const second = await prefill.connect(region.descriptor, writer);
    const otherEpoch = await prefill.connect(region.descriptor, { ...writer, epoch: 2 });
    const heard: WriterIdentity[] = [];
    decode.onPeerClosed((who) => heard.push(who));
    connection.close();
    clock.advance(0);
    expect(heard).toEqual([]);
    otherEpoch.close();
    clock.advance(0);
    expect(heard).toEqual([{ ...writer, epoch: 2 }]);
    second.close();
    second.close();
    clock.advance(0);
    expect(heard).toEqual([{ ...writer, epoch: 2 }, writer]);
  });

  it('refuses connections with a stale, foreign or mismatched descriptor, or from a closed endpoint', async () => {
    const { network, decode, prefill, region } = await virtualSetup();
    const fail = async (promise: Promise<unknown>): Promise<string> => {
      const error = await promise.then(() => undefined, (reason: unknown) => reason);
      expect((error as TandemError).code).toBe(ErrorCode.TransferFailed);
      return (error as TandemError).message;
    };
    expect(await fail(prefill.connect({ ...region.descriptor, fabric: 'tcp' }, writer))).toContain('tcp');
    expect(await fail(prefill.connect({ ...region.descriptor, pageBytes: 2000 }, writer))).toContain('2000');
    expect(await fail(prefill.connect({ ...region.descriptor, endpoint: 'decode-9' }, writer))).toContain('decode-9');
    await decode.close();
    const restarted = network.attach('decode-0');
    const fresh = restarted.registerRegion({ pageBytes: 1000, pageCount: 8 });
    expect(fresh.descriptor.regionId).not.toBe(region.descriptor.regionId);
    expect(await fail(prefill.connect(region.descriptor, writer))).toContain(region.descriptor.regionId);
    await prefill.close();
    expect(await fail(prefill.connect(fresh.descriptor, writer))).toContain('closed');
  });

  it('closes every endpoint when the network closes', async () => {
    const { network, region, connection } = await virtualSetup({ latencyMs: 1 });
    region.claim([0], ownerKey(writer, 1));
    const write = connection.write({ room: 1, pages: [0], data: new Uint8Array(1), final: true });
    await network.close();
    expect((await settled(write)).state).toBe('rejected');
    expect(network.endpoint('decode-0')).toBeUndefined();
    expect(network.endpoint('prefill-0')).toBeUndefined();
    expect(network.pendingWrites()).toBe(0);
  });

  it('asserts against attaching one endpoint name twice while it is open', () => {
    const network = new SimFabricNetwork({ clock: new VirtualClock() });
    network.attach('decode-0');
    expect(() => network.attach('decode-0')).toThrow(AssertionError);
  });

  it('rejects a write beyond writesInFlightMax on one connection', async () => {
    const { clock, region, connection } = await virtualSetup({ writesInFlightMax: 2 }, 16);
    region.claim([0], ownerKey(writer, 1));
    const writes = [0, 1, 2].map((i) => connection.write({ room: 1, pages: [0], data: new Uint8Array(1).fill(i), final: false }));
    const third = await settled(writes[2]!);
    expect(third.state).toBe('rejected');
    expect((third.reason as TandemError).message).toContain('writesInFlightMax');
    clock.advance(0);
    await Promise.all(writes.slice(0, 2));
    expect(region.stats.appliedWrites).toBe(2);
  });

  it('copies the data at write() so the caller may reuse its buffer', async () => {
    const { clock, region, connection } = await virtualSetup({}, 16);
    region.claim([0], ownerKey(writer, 1));
    const buffer = new Uint8Array(16).fill(1);
    const write = connection.write({ room: 1, pages: [0], data: buffer, final: false });
    buffer.fill(2);
    clock.advance(0);
    await write;
    expect(region.read([0], 16)).toEqual(new Uint8Array(16).fill(1));
  });

  it('records the first completion of an owner and ignores a repeated final write', async () => {
    const { clock, region, connection } = await virtualSetup({ latencyMs: 1 }, 16);
    region.claim([0], ownerKey(writer, 1));
    const first = connection.write({ room: 1, pages: [0], data: new Uint8Array(4), final: true });
    clock.advance(1);
    await first;
    const again = connection.write({ room: 1, pages: [0], data: new Uint8Array(4), final: true });
    clock.advance(1);
    await again;
    expect(region.poll(ownerKey(writer, 1))?.atMs).toBe(1);
    expect(region.stats).toMatchObject({ completions: 1, appliedWrites: 2 });
  });
});

describe('SimRegion', () => {
  it('asserts on a double claim and on an unclaim by someone who does not hold the page', async () => {
    const { region } = await virtualSetup({}, 16);
    region.claim([1, 2], 'a');
    expect(() => region.claim([2], 'b')).toThrow(AssertionError);
    expect(() => region.unclaim([1], 'b')).toThrow(AssertionError);
    expect(() => region.unclaim([3], 'a')).toThrow(AssertionError);
    expect(() => region.claim([8], 'a')).toThrow(AssertionError);
    region.unclaim([1, 2], 'a');
    expect(region.ownerOf(1)).toBeUndefined();
  });

  it('reads pages in the order given and stops mid-page at byteLength', async () => {
    const { clock, region, connection } = await virtualSetup({}, 4);
    region.claim([6, 1], ownerKey(writer, 1));
    const write = connection.write({ room: 1, pages: [6, 1], data: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]), final: false });
    clock.advance(0);
    await write;
    expect(region.read([6, 1], 6)).toEqual(Uint8Array.from([1, 2, 3, 4, 5, 6]));
    expect(region.read([1, 6], 5)).toEqual(Uint8Array.from([5, 6, 7, 8, 1]));
    expect(region.read([], 0)).toEqual(new Uint8Array(0));
    expect(() => region.read([1], 5)).toThrow(AssertionError);
  });
});

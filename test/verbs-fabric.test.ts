// The verbs fabric over the fake verbs table: an in-process loopback device built next to the
// addon (native/build/Release/fake_verbs.so). There is no RDMA device here, so this drives the
// addon's real C++ (dlopen'd table, queue-pair transitions, libuv-polled completion channel, work
// completions and async events) against a stand-in for the hardware; it says so in its output.
import { connect as netConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { TandemError } from '../src/errors.js';
import { ownerKey, type WriterIdentity } from '../src/fabric/fabric.js';
import { fakeVerbsLibraryPath, verbsAvailability } from '../src/fabric/verbs/verbs-addon.js';
import type { VerbsConnection } from '../src/fabric/verbs/verbs-connection.js';
import { VerbsError, WcStatus } from '../src/fabric/verbs/verbs-errors.js';
import { createVerbsFabric, type VerbsFabric, type VerbsFabricOptions } from '../src/fabric/verbs/verbs-fabric.js';
import type { LogFields, Logger } from '../src/log.js';
import { realClock } from '../src/time/real-clock.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { fabricConformance } from './fabric-conformance.js';
import { waitFor } from './helpers/deferred.js';
import { recordingLogger, transferFailed } from './helpers/fabric-test-helpers.js';

const fake = verbsAvailability(fakeVerbsLibraryPath);
const fakeMissing = fake.reason !== 'ok' ? `the fake verbs library is not usable (${fake.reason}: ${fake.message})` : undefined;
console.log(
  fakeMissing
    ? `verbs fabric conformance skipped: ${fakeMissing}`
    : 'verbs fabric conformance runs through the fake verbs table (no RDMA device here): an in-process loopback, not hardware',
);

function settle(ms = 20): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function fakeFabric(options: Partial<VerbsFabricOptions> = {}): Promise<VerbsFabric> {
  return createVerbsFabric({ host: '127.0.0.1', port: 0, clock: realClock, connectTimeoutMs: 2000, libraryPath: fakeVerbsLibraryPath, sliceBytesMax: 64 * 1024, ...options });
}

describe.skipIf(fakeMissing !== undefined)('verbs fabric through the fake verbs table (no RDMA device here)', () => {
  fabricConformance('verbs, two fabrics on the fake loopback device', async () => {
    const receiver = await fakeFabric();
    const sender = await fakeFabric();
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
});

const writer: WriterIdentity = { instanceId: 'prefill-a', epoch: 1 };
const pageBytes = 4096;
const fabrics: VerbsFabric[] = [];

/** A receiver with one region, a sender connected to it, and the fake's controls. */
async function pair(options: Partial<VerbsFabricOptions> = {}) {
  const receiver = await fakeFabric(options);
  const sender = await fakeFabric(options);
  fabrics.push(sender, receiver);
  const region = receiver.registerRegion({ pageBytes, pageCount: 8 });
  const connection = (await sender.connect(region.descriptor, writer)) as VerbsConnection;
  const inbound = receiver.connections().inbound[0]!;
  const peerClosed: WriterIdentity[] = [];
  receiver.onPeerClosed((who) => peerClosed.push(who));
  return { receiver, sender, region, connection, inbound, peerClosed, control: fake.addon!.fakeControl.bind(fake.addon) };
}

/** A control connection that never says hello, like a port scan or a health check. */
async function idleSocket(endpoint: string): Promise<Socket> {
  const [host, port] = endpoint.split(':');
  const socket = netConnect({ host: host!, port: Number(port) });
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  return socket;
}

function verbsCause(error: TandemError): VerbsError {
  expect(error.cause).toBeInstanceOf(VerbsError);
  return error.cause as VerbsError;
}

describe.skipIf(fakeMissing !== undefined)('verbs fabric connections and failures through the fake verbs table (no RDMA device here)', () => {
  afterEach(async () => {
    for (const fabric of fabrics.splice(0)) await fabric.close();
    fake.addon?.fakeControl('link_layer', 1);
    fake.addon?.fakeControl('fail_next_send', -1);
    fake.addon?.fakeControl('fail_next_poll', 0);
  });

  it('sets up one RC queue pair per connection on each side, both in RTS, addressed by LID on InfiniBand', async () => {
    const { sender, receiver, connection, inbound } = await pair();
    expect(sender.device.portInfo.linkLayer).toBe('infiniband');
    expect(sender.device.context.queuePairState(connection.queuePairNumber!)).toBe('rts');
    expect(receiver.device.context.queuePairState(inbound.queuePairNumber!)).toBe('rts');
    expect(inbound.writer).toEqual(writer);
  });

  it('sets up over RoCE, where the path carries the GID, and moves bytes', async () => {
    fake.addon!.fakeControl('link_layer', 2);
    const { sender, region, connection } = await pair();
    expect(sender.device.portInfo).toMatchObject({ linkLayer: 'ethernet', lid: 0 });
    region.claim([1], ownerKey(writer, 5));
    await connection.write({ room: 5, pages: [1], data: new Uint8Array(pageBytes).fill(9), final: true });
    expect(region.poll(ownerKey(writer, 5))?.imm).toBe(5);
  });

  it('slices a large write into RDMA WRITEs, and counts its WRITE_WITH_IMM once, with the room as immediate', async () => {
    const { region, connection } = await pair({ sliceBytesMax: 1000, stagingSlots: 3 });
    const owner = ownerKey(writer, 0xfeedbee);
    region.claim([6, 2, 3], owner);
    const data = Uint8Array.from({ length: 3 * pageBytes - 7 }, (_, i) => (i * 31) & 0xff);
    await connection.write({ room: 0xfeedbee, pages: [6, 2, 3], data, final: true });
    expect(Buffer.from(region.read([6, 2, 3], data.byteLength)).equals(Buffer.from(data))).toBe(true);
    expect(region.poll(owner)).toMatchObject({ owner, imm: 0xfeedbee });
    expect(region.stats).toMatchObject({ appliedWrites: 1, appliedBytes: data.byteLength, completions: 1, rejectedWrites: 0 });
  });

  it('fails a write whose work completion fails with transfer_failed carrying the status, and closes the connection', async () => {
    const { region, connection, peerClosed } = await pair();
    region.claim([0], ownerKey(writer, 1));
    fake.addon!.fakeControl('fail_next_send', WcStatus.RemoteAccessError);
    const error = await transferFailed(connection.write({ room: 1, pages: [0], data: new Uint8Array(pageBytes).fill(1), final: true }));
    const cause = verbsCause(error);
    expect(cause).toMatchObject({ kind: 'completion', status: WcStatus.RemoteAccessError, statusName: 'remote access error' });
    expect(error.message).toContain('remote access error');
    await waitFor(() => connection.closed && peerClosed.length === 1, 5000, 'connection teardown');
    expect(peerClosed).toEqual([writer]);
    expect(region.poll(ownerKey(writer, 1))).toBeUndefined();
    await transferFailed(connection.write({ room: 1, pages: [0], data: new Uint8Array(8), final: true }));
  });

  it('fails the writes posted after a first error with flush errors that name the first one', async () => {
    const { region, connection } = await pair({ sliceBytesMax: 256, stagingSlots: 16 });
    region.claim([0, 1], ownerKey(writer, 1));
    fake.addon!.fakeControl('fail_next_send', WcStatus.RetryExceeded);
    const first = connection.write({ room: 1, pages: [0], data: new Uint8Array(pageBytes).fill(1), final: false });
    const second = connection.write({ room: 1, pages: [1], data: new Uint8Array(pageBytes).fill(2), final: true });
    const firstError = await transferFailed(first);
    const secondError = await transferFailed(second);
    expect(verbsCause(firstError)).toMatchObject({ kind: 'completion', status: WcStatus.RetryExceeded });
    const flushed = verbsCause(secondError);
    expect(flushed).toMatchObject({ kind: 'flushed', status: WcStatus.WrFlushError });
    expect(flushed.message).toMatch(/earlier error.*transport retry counter exceeded/);
    expect(region.stats.appliedWrites).toBe(0);
  });

  it('fails pending writes on a QP fatal async event for the writer\'s queue pair, and the receiver hears the writer left', async () => {
    const { region, connection, peerClosed } = await pair();
    region.claim([0], ownerKey(writer, 1));
    const pending = connection.write({ room: 1, pages: [0], data: new Uint8Array(pageBytes), final: true });
    expect(fake.addon!.fakeControl('qp_fatal', connection.queuePairNumber!)).toBe(0);
    const error = await transferFailed(pending);
    expect(verbsCause(error)).toMatchObject({ kind: 'async_event', statusName: 'local work queue catastrophic error' });
    expect(connection.closed).toBe(true);
    await waitFor(() => peerClosed.length === 1, 5000, 'peer closed');
  });

  it('drops the connection on a QP fatal event on the receiver\'s queue pair, failing the writer\'s pending writes', async () => {
    const { region, connection, inbound, peerClosed } = await pair();
    region.claim([0], ownerKey(writer, 1));
    const pending = connection.write({ room: 1, pages: [0], data: new Uint8Array(pageBytes), final: true });
    fake.addon!.fakeControl('qp_fatal', inbound.queuePairNumber!);
    const error = await transferFailed(pending);
    expect(error.message).toMatch(/closed by the receiver|failed/);
    await waitFor(() => connection.closed && peerClosed.length === 1, 5000, 'teardown');
  });

  it('tears the connection down when a write is not applied within writeTimeoutMs', async () => {
    const receiver = await fakeFabric();
    const clock = new VirtualClock();
    const sender = await fakeFabric({ clock, writeTimeoutMs: 500 });
    fabrics.push(sender, receiver);
    const region = receiver.registerRegion({ pageBytes, pageCount: 2 });
    const connecting = sender.connect(region.descriptor, writer);
    const connection = await connecting;
    region.claim([0], ownerKey(writer, 1));
    const pending = connection.write({ room: 1, pages: [0], data: new Uint8Array(16), final: true });
    // The receiver cannot answer within this turn, so the write is still unapplied when time runs out.
    clock.advance(499);
    expect(connection.closed).toBe(false);
    clock.advance(1);
    const error = await transferFailed(pending);
    expect(error.message).toContain('writeTimeoutMs');
    expect(connection.closed).toBe(true);
  });

  it('does not count control sockets still waiting for their hello against the completion queue\'s connections', async () => {
    // 8 staging slots + 64 receives + 2 per connection: room for two connections on each side.
    const options = { completionQueueEntries: 2 * (8 + 64 + 2) };
    const receiver = await fakeFabric(options);
    const sender = await fakeFabric(options);
    fabrics.push(sender, receiver);
    const region = receiver.registerRegion({ pageBytes, pageCount: 2 });
    const idle = [await idleSocket(receiver.endpoint), await idleSocket(receiver.endpoint)];
    await waitFor(() => receiver.connections().awaitingHello === 2, 5000, 'idle sockets accepted');
    await sender.connect(region.descriptor, writer);
    await sender.connect(region.descriptor, { instanceId: 'prefill-b', epoch: 1 });
    expect(receiver.connections()).toMatchObject({ awaitingHello: 2 });
    expect(receiver.connections().inbound).toHaveLength(2);
    const third = await fakeFabric(options);
    fabrics.push(third);
    const error = await transferFailed(third.connect(region.descriptor, { instanceId: 'prefill-c', epoch: 1 }));
    expect(error.message).toContain('completion queue');
    for (const socket of idle) socket.destroy();
  });

  it('closes control sockets beyond pendingHellosMax that wait for their hello, and keeps the others', async () => {
    const receiver = await fakeFabric({ pendingHellosMax: 2 });
    fabrics.push(receiver);
    const kept = [await idleSocket(receiver.endpoint), await idleSocket(receiver.endpoint)];
    await waitFor(() => receiver.connections().awaitingHello === 2, 5000, 'idle sockets accepted');
    const refused = await idleSocket(receiver.endpoint);
    await new Promise<void>((resolve) => refused.once('close', () => resolve()));
    expect(receiver.connections().awaitingHello).toBe(2);
    expect(kept.every((socket) => !socket.destroyed)).toBe(true);
    // A freed place takes a newcomer again.
    kept[0]!.destroy();
    await waitFor(() => receiver.connections().awaitingHello === 1, 5000, 'idle socket gone');
    const region = receiver.registerRegion({ pageBytes, pageCount: 2 });
    const sender = await fakeFabric();
    fabrics.push(sender);
    await sender.connect(region.descriptor, writer);
    expect(receiver.connections().inbound).toHaveLength(1);
    kept[1]!.destroy();
  });

  it('still closes the connection and tells listeners the writer left when the queue pair cannot be torn down', async () => {
    const log = recordingLogger();
    const errors = log.errors;
    const receiver = await fakeFabric({ log });
    const sender = await fakeFabric();
    fabrics.push(sender, receiver);
    const region = receiver.registerRegion({ pageBytes, pageCount: 2 });
    const peerClosed: WriterIdentity[] = [];
    receiver.onPeerClosed((who) => peerClosed.push(who));
    const connection = await sender.connect(region.descriptor, writer);
    // The fake cannot fail these calls, so the receiver's context gets own methods that do
    // (the addon's are read-only on its prototype); the fabric's close still releases the pair.
    const context = receiver.device.context as unknown as { modifyQueuePair: (...args: unknown[]) => void };
    const realModify = context.modifyQueuePair.bind(context);
    Object.defineProperty(context, 'modifyQueuePair', {
      value: (...args: unknown[]) => {
        if (args[1] === 'error') throw new Error('injected modify failure');
        realModify(...args);
      },
    });
    Object.defineProperty(context, 'destroyQueuePair', {
      value: () => {
        throw new Error('injected destroy failure');
      },
    });
    connection.close();
    await waitFor(() => peerClosed.length === 1, 5000, 'peer closed');
    expect(peerClosed).toEqual([writer]);
    expect(receiver.connections().inbound).toEqual([]);
    expect(errors.join('\n')).toMatch(/error state.*injected modify failure[\s\S]*destroyed.*injected destroy failure/);
  });

  it('keeps many concurrent empty writes within the send queue, whose depth the fake enforces', async () => {
    // One staging slot: a send queue of two entries, and 48 granted zero-length WRITE_WITH_IMMs.
    const { region, connection } = await pair({ stagingSlots: 1 });
    const rooms = Array.from({ length: 48 }, (_, i) => i + 1);
    await Promise.all(rooms.map((room) => connection.write({ room, pages: [], data: new Uint8Array(0), final: true })));
    for (const room of rooms) expect(region.poll(ownerKey(writer, room))?.imm).toBe(room);
    expect(connection.closed).toBe(false);
  });

  it('tears the connection down on either side when its completion queue cannot be polled', async () => {
    const { region, connection, peerClosed } = await pair();
    region.claim([0], ownerKey(writer, 1));
    fake.addon!.fakeControl('fail_next_poll', 1);
    // Whichever side polls first gets the CQ error; the write may land before it does, or fail.
    const settled = connection.write({ room: 1, pages: [0], data: new Uint8Array(pageBytes), final: true }).catch((error: unknown) => error);
    await waitFor(() => connection.closed && peerClosed.length === 1, 5000, 'teardown after the CQ error');
    const outcome = await settled;
    if (outcome !== undefined) expect((outcome as TandemError).message).toMatch(/CQ error: ibv_poll_cq failed|closed by the receiver/);
  });

  it('fails every connection on the port when the port goes down', async () => {
    const { region, connection } = await pair();
    region.claim([0], ownerKey(writer, 1));
    const pending = connection.write({ room: 1, pages: [0], data: new Uint8Array(pageBytes), final: true });
    fake.addon!.fakeControl('port_error', 1);
    const error = await transferFailed(pending);
    expect(verbsCause(error)).toMatchObject({ kind: 'async_event', statusName: 'port error' });
    expect(connection.closed).toBe(true);
  });
});

const memlockBytes = fake.addon?.memlockLimit().softBytes ?? Infinity;
const memlockTestable = Number.isFinite(memlockBytes) && memlockBytes <= 256 * 1024 * 1024;
if (!memlockTestable) console.log(`memlock warning test skipped: the memlock limit here is ${memlockBytes} bytes, too large to exceed in a test`);

describe.skipIf(fakeMissing !== undefined || !memlockTestable)('verbs fabric memlock check through the fake verbs table (no RDMA device here)', () => {
  it('warns when registered memory exceeds the memlock soft limit, naming ulimit -l and LimitMEMLOCK', async () => {
    const warnings: string[] = [];
    const log: Logger = {
      debug: () => {},
      info: () => {},
      warn: (message: string, fields?: LogFields) => void warnings.push(`${message} ${JSON.stringify(fields ?? {})}`),
      error: () => {},
      child: () => log,
    };
    const fabric = await fakeFabric({ log });
    try {
      fabric.registerRegion({ pageBytes: 4096, pageCount: 4 });
      expect(warnings).toEqual([]);
      fabric.registerRegion({ pageBytes: 4096, pageCount: Math.ceil(memlockBytes / 4096) });
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/memlock limit.*ulimit -l.*LimitMEMLOCK/);
    } finally {
      await fabric.close();
    }
  });
});

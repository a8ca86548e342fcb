// The addon's C++ driven through the fake verbs table (native/build/Release/fake_verbs.so), since
// there is no RDMA device here: loading by path, device listing and its reasons, queue-pair state
// transitions for InfiniBand and RoCE, registered memory, WRITE and WRITE_WITH_IMM completions
// delivered through the libuv-polled completion channel, failed and flushed work completions,
// async events and teardown. The fake loops back in process; it stands in for hardware.
import { afterEach, describe, expect, it } from 'vitest';
import { fakeVerbsLibraryPath, loadVerbsAddon, type VerbsAddon, type VerbsAsyncEvent, type VerbsCompletion, type VerbsContext } from '../src/fabric/verbs/verbs-addon.js';
import { AsyncEventType, WcStatus } from '../src/fabric/verbs/verbs-errors.js';
import { waitFor } from './helpers/deferred.js';

const loaded = loadVerbsAddon();
const addon: VerbsAddon | undefined = typeof loaded === 'string' ? undefined : loaded;
const fakeLoad = addon?.load(fakeVerbsLibraryPath);
const skipReason = !addon ? (loaded as string) : !fakeLoad?.loaded ? `the fake verbs library does not load: ${fakeLoad?.message}` : undefined;
console.log(skipReason ? `verbs addon tests skipped: ${skipReason}` : 'verbs addon C++ tests run through the fake verbs table (no RDMA device here)');

/** A context with its completions and async events collected. */
interface Opened {
  context: VerbsContext;
  completions: VerbsCompletion[];
  events: VerbsAsyncEvent[];
}

const opened: Opened[] = [];

function open(): Opened {
  const context = new addon!.Context('fake0', 256);
  const out: Opened = { context, completions: [], events: [] };
  context.start(
    (completions) => out.completions.push(...completions),
    (event) => out.events.push(event),
  );
  opened.push(out);
  return out;
}

/** Two contexts with an RC queue pair each, connected to each other and in RTS. */
function connectedPair(): { a: Opened; b: Opened; qpA: number; qpB: number } {
  const a = open();
  const b = open();
  const qpA = a.context.createQueuePair(16, 16);
  const qpB = b.context.createQueuePair(16, 16);
  const portA = a.context.queryPort(1);
  const portB = b.context.queryPort(1);
  a.context.modifyQueuePair(qpA, 'init', { port: 1 });
  b.context.modifyQueuePair(qpB, 'init', { port: 1 });
  a.context.modifyQueuePair(qpA, 'rtr', { port: 1, destQpn: qpB, rqPsn: 100, mtu: portA.activeMtu, lid: portB.lid });
  b.context.modifyQueuePair(qpB, 'rtr', { port: 1, destQpn: qpA, rqPsn: 200, mtu: portB.activeMtu, lid: portA.lid });
  a.context.modifyQueuePair(qpA, 'rts', { sqPsn: 200 });
  b.context.modifyQueuePair(qpB, 'rts', { sqPsn: 100 });
  return { a, b, qpA, qpB };
}

afterEach(() => {
  for (const { context } of opened.splice(0)) context.close();
  addon?.fakeControl('device_count', 1);
  addon?.fakeControl('no_kernel_support', 0);
  addon?.fakeControl('link_layer', 1);
  addon?.fakeControl('fail_next_send', -1);
  addon?.fakeControl('fail_next_poll', 0);
  addon?.fakeControl('fail_next_notify', 0);
  addon?.fakeControl('unpollable_channel', 0);
});

describe.skipIf(skipReason !== undefined)('verbs addon through the fake verbs table (no RDMA device here)', () => {
  it('loads the library named by path and refuses to switch libraries in the same process', () => {
    expect(fakeLoad).toMatchObject({ loaded: true, path: fakeVerbsLibraryPath });
    const other = addon!.load('/nonexistent/libibverbs.so.1');
    expect(other.loaded).toBe(false);
    expect(other.message).toContain('already loaded');
  });

  it('lists the device, and says why there is none: no kernel support (ENOSYS) or no device', () => {
    expect(addon!.listDevices()).toMatchObject({ reason: 'ok', devices: [{ name: 'fake0', guid: '0002c90300fa4e00' }] });
    addon!.fakeControl('no_kernel_support', 1);
    expect(addon!.listDevices()).toMatchObject({ reason: 'no_kernel_support', devices: [] });
    addon!.fakeControl('no_kernel_support', 0);
    addon!.fakeControl('device_count', 0);
    expect(addon!.listDevices()).toMatchObject({ reason: 'no_device', devices: [] });
  });

  it('queries the port and a GID, and fails cleanly on a port that does not exist', () => {
    const { context } = open();
    expect(context.deviceName).toBe('fake0');
    expect(context.queryPort(1)).toMatchObject({ state: 4, lid: 7, linkLayer: 'infiniband', activeMtu: 5 });
    expect([...context.queryGid(1, 2)]).toEqual([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    expect(() => context.queryPort(2)).toThrow(/ibv_query_port\(2\) failed/);
  });

  it('walks a queue pair RESET -> INIT -> RTR -> RTS and refuses a transition out of order', () => {
    const { context } = open();
    const qpn = context.createQueuePair(4, 4);
    expect(context.queuePairState(qpn)).toBe('reset');
    expect(() => context.modifyQueuePair(qpn, 'rts', { sqPsn: 1 })).toThrow(/-> rts\) failed/);
    expect(() => context.modifyQueuePair(qpn, 'rtr', { port: 1, destQpn: qpn, rqPsn: 0, mtu: 5, lid: 7 })).toThrow(/-> rtr\) failed/);
    context.modifyQueuePair(qpn, 'init', { port: 1 });
    expect(context.queuePairState(qpn)).toBe('init');
    context.modifyQueuePair(qpn, 'rtr', { port: 1, destQpn: qpn, rqPsn: 0, mtu: 5, lid: 7 });
    expect(context.queuePairState(qpn)).toBe('rtr');
    context.modifyQueuePair(qpn, 'rts', { sqPsn: 0 });
    expect(context.queuePairState(qpn)).toBe('rts');
    context.modifyQueuePair(qpn, 'error');
    expect(context.queuePairState(qpn)).toBe('error');
  });

  it('addresses the peer by GID on RoCE, where a LID-only path is refused', () => {
    addon!.fakeControl('link_layer', 2);
    const { context } = open();
    expect(context.queryPort(1)).toMatchObject({ linkLayer: 'ethernet', lid: 0 });
    const qpn = context.createQueuePair(4, 4);
    context.modifyQueuePair(qpn, 'init', { port: 1 });
    expect(() => context.modifyQueuePair(qpn, 'rtr', { port: 1, destQpn: qpn, rqPsn: 0, mtu: 5, lid: 0 })).toThrow(/Invalid argument/);
    context.modifyQueuePair(qpn, 'rtr', { port: 1, destQpn: qpn, rqPsn: 0, mtu: 5, lid: 0, gid: context.queryGid(1, 1), gidIndex: 1 });
    expect(context.queuePairState(qpn)).toBe('rtr');
  });

  it('registers stable native memory that JS reads and writes as an external ArrayBuffer', () => {
    const { context } = open();
    const memory = context.registerMemory(8192);
    expect(memory.buffer.byteLength).toBe(8192);
    expect(memory.address % 4096n).toBe(0n);
    expect(memory.rkey).not.toBe(memory.lkey);
    new Uint8Array(memory.buffer).fill(7);
    expect(new Uint8Array(memory.buffer)[8191]).toBe(7);
    context.deregisterMemory(memory.id);
    // The bytes outlive the registration while JS holds them.
    expect(new Uint8Array(memory.buffer)[0]).toBe(7);
    expect(() => context.registerMemory(0)).toThrow(/zero bytes/);
  });

  it('lands an RDMA WRITE_WITH_IMM in the peer region and completes the receive with the immediate through the completion channel', async () => {
    const { a, b, qpA, qpB } = connectedPair();
    const source = a.context.registerMemory(4096);
    const target = b.context.registerMemory(4096);
    new Uint8Array(source.buffer).set([1, 2, 3, 4, 5], 0);
    b.context.postReceive(qpB, 77);
    a.context.postWrite(qpA, 1, source.address, 5, source.lkey, target.address + 100n, target.rkey, null);
    a.context.postWrite(qpA, 2, source.address, 3, source.lkey, target.address + 200n, target.rkey, 0xdeadbeef);
    // Completions arrive through libuv, never in the turn that posted.
    expect(a.completions).toEqual([]);
    await waitFor(() => a.completions.length === 2 && b.completions.length === 1, 5000, 'completions');
    expect(a.completions.map((c) => [c.wrId, c.status, c.opcode])).toEqual([
      [1, WcStatus.Success, 'write'],
      [2, WcStatus.Success, 'write'],
    ]);
    expect(b.completions[0]).toMatchObject({ wrId: 77, status: 0, opcode: 'receive_immediate', imm: 0xdeadbeef, qpn: qpB, byteLength: 3 });
    expect([...new Uint8Array(target.buffer, 100, 5)]).toEqual([1, 2, 3, 4, 5]);
    expect([...new Uint8Array(target.buffer, 200, 3)]).toEqual([1, 2, 3]);
  });

  it('reports a failed work completion with its status, then flushes everything posted after it', async () => {
    const { a, b, qpA } = connectedPair();
    const source = a.context.registerMemory(4096);
    const target = b.context.registerMemory(4096);
    a.context.postWrite(qpA, 1, source.address, 8, source.lkey, target.address + 4090n, target.rkey, null);
    a.context.postWrite(qpA, 2, source.address, 8, source.lkey, target.address, target.rkey, null);
    await waitFor(() => a.completions.length === 2, 5000, 'completions');
    expect(a.completions[0]).toMatchObject({ wrId: 1, status: WcStatus.RemoteAccessError, statusName: 'remote access error' });
    expect(a.completions[1]).toMatchObject({ wrId: 2, status: WcStatus.WrFlushError });
    expect(a.completions[1]!.opcode).toBeUndefined();
    expect(a.context.queuePairState(qpA)).toBe('error');
  });

  it('fails a write whose immediate finds no posted receive (RNR) and an injected status', async () => {
    const { a, b, qpA } = connectedPair();
    const source = a.context.registerMemory(64);
    const target = b.context.registerMemory(64);
    a.context.postWrite(qpA, 5, source.address, 4, source.lkey, target.address, target.rkey, 1);
    await waitFor(() => a.completions.length === 1, 5000, 'completion');
    expect(a.completions[0]).toMatchObject({ wrId: 5, status: WcStatus.RnrRetryExceeded });
    const second = connectedPair();
    addon!.fakeControl('fail_next_send', WcStatus.RetryExceeded);
    second.a.context.postWrite(second.qpA, 6, source.address, 4, source.lkey, target.address, target.rkey, null);
    await waitFor(() => second.a.completions.length === 1, 5000, 'completion');
    expect(second.a.completions[0]).toMatchObject({ wrId: 6, status: WcStatus.RetryExceeded, statusName: 'transport retry counter exceeded' });
  });

  it('delivers a QP fatal async event with its queue pair, and a port error with its port', async () => {
    const { a, b, qpA } = connectedPair();
    a.context.postReceive(qpA, 9);
    expect(addon!.fakeControl('qp_fatal', qpA)).toBe(0);
    await waitFor(() => a.events.length === 1 && a.completions.length === 1, 5000, 'async event and flushed receive');
    expect(a.events[0]).toEqual({ type: AsyncEventType.QpFatal, typeName: 'local work queue catastrophic error', qpn: qpA });
    expect(a.completions[0]).toMatchObject({ wrId: 9, status: WcStatus.WrFlushError, qpn: qpA });
    expect(a.context.queuePairState(qpA)).toBe('error');
    addon!.fakeControl('port_error', 1);
    await waitFor(() => a.events.length === 2 && b.events.length === 1, 5000, 'port events');
    expect(a.events[1]).toEqual({ type: AsyncEventType.PortError, typeName: 'port error', port: 1 });
  });

  it('fails start with an error when libuv cannot poll the completion channel, and still closes cleanly', () => {
    addon!.fakeControl('unpollable_channel', 1);
    const context = new addon!.Context('fake0', 256);
    expect(() =>
      context.start(
        () => {},
        () => {},
      ),
    ).toThrow(/uv_poll_init\(completion channel\) failed/);
    context.close();
    expect(() => context.createQueuePair(1, 1)).toThrow(/closed/);
  });

  it('reports a failed ibv_poll_cq as a CQ error event instead of dropping it, and delivers the completion on the next wake-up', async () => {
    const { a, b, qpA } = connectedPair();
    const source = a.context.registerMemory(64);
    const target = b.context.registerMemory(64);
    addon!.fakeControl('fail_next_poll', 1);
    a.context.postWrite(qpA, 1, source.address, 4, source.lkey, target.address, target.rkey, null);
    await waitFor(() => a.events.length === 1, 5000, 'CQ error event');
    expect(a.events[0]).toMatchObject({ type: AsyncEventType.CqError });
    expect(a.events[0]!.typeName).toMatch(/CQ error: ibv_poll_cq failed/);
    expect(a.completions).toEqual([]);
    a.context.postWrite(qpA, 2, source.address, 4, source.lkey, target.address, target.rkey, null);
    await waitFor(() => a.completions.length === 2, 5000, 'both completions');
    expect(a.completions.map((completion) => completion.wrId)).toEqual([1, 2]);
  });

  it('reports a failed ibv_req_notify_cq as a CQ error event after delivering the completions polled', async () => {
    const { a, b, qpA } = connectedPair();
    const source = a.context.registerMemory(64);
    const target = b.context.registerMemory(64);
    addon!.fakeControl('fail_next_notify', 5);
    a.context.postWrite(qpA, 1, source.address, 4, source.lkey, target.address, target.rkey, null);
    await waitFor(() => a.events.length === 1, 5000, 'CQ error event');
    expect(a.completions).toMatchObject([{ wrId: 1, status: WcStatus.Success }]);
    expect(a.events[0]).toMatchObject({ type: AsyncEventType.CqError });
    expect(a.events[0]!.typeName).toMatch(/CQ error: ibv_req_notify_cq failed: /);
  });

  it('refuses posts beyond the send queue depth until polled completions retire them', async () => {
    const { a, b, qpA } = connectedPair();
    const source = a.context.registerMemory(64);
    const target = b.context.registerMemory(64);
    for (let wrId = 1; wrId <= 16; wrId++) a.context.postWrite(qpA, wrId, source.address, 4, source.lkey, target.address, target.rkey, null);
    expect(() => a.context.postWrite(qpA, 17, source.address, 4, source.lkey, target.address, target.rkey, null)).toThrow(/Cannot allocate memory/);
    await waitFor(() => a.completions.length === 16, 5000, 'completions');
    a.context.postWrite(qpA, 18, source.address, 4, source.lkey, target.address, target.rkey, null);
    await waitFor(() => a.completions.length === 17, 5000, 'completion after the queue drained');
  });

  it('tears down queue pairs, registrations and the device on close, and refuses use afterwards', () => {
    const before = addon!.fakeControl('live_qps', 0);
    const { a, qpA } = connectedPair();
    expect(addon!.fakeControl('live_qps', 0)).toBe(before + 2);
    a.context.destroyQueuePair(qpA);
    expect(addon!.fakeControl('live_qps', 0)).toBe(before + 1);
    const memory = a.context.registerMemory(64);
    for (const { context } of opened.splice(0)) context.close();
    expect(addon!.fakeControl('live_qps', 0)).toBe(before);
    expect(() => a.context.createQueuePair(1, 1)).toThrow(/closed/);
    expect(new Uint8Array(memory.buffer).byteLength).toBe(64);
  });
});

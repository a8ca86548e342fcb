import { describe, expect, it } from 'vitest';
import { RoomFence } from '../src/actors/room-fence.js';
import { ownerKey, type WriterIdentity } from '../src/fabric/fabric.js';
import { PagePool } from '../src/kv/page-pool.js';
import { defaultDeadlines, silentLogger } from '../src/index.js';
import { MemoryTransport } from '../src/transport/memory/memory-transport.js';
import { realClock } from '../src/time/real-clock.js';
import { waitFor } from './helpers/deferred.js';

// A prefill worker that dies before it ever connects to this decode worker's fabric never answers
// the abort and never closes a connection. Its fenced pages must come back once it is gone from
// discovery (and not connected), and not before.

describe('RoomFence', () => {
  it('keeps an aborted room fenced while its writer may still write, and releases it once the writer is neither alive nor connected', async () => {
    const transport = new MemoryTransport({ clock: realClock });
    const pool = new PagePool({ pageCount: 8, ownership: { claim: () => {}, unclaim: () => {} }, waitersMax: 4 });
    let alive = true;
    const asked: WriterIdentity[] = [];
    const fence = new RoomFence({
      transport,
      clock: realClock,
      log: silentLogger,
      deadlines: { ...defaultDeadlines, cleanupMs: 10 },
      writerMayWrite: (writer) => {
        asked.push(writer);
        return alive;
      },
    });
    fence.attach(pool);
    const grant = { prefillId: 'prefill-a', subjectPrefix: 'tandem.prefill.a', epoch: 3, room: 7 };
    const owner = ownerKey({ instanceId: grant.prefillId, epoch: grant.epoch }, grant.room);
    await pool.acquire(owner, 5);
    fence.abort(owner, grant, 'req-1', true);
    expect(pool.stats().quarantined).toBe(5);
    // Nobody answers the abort (no responder), so the fence keeps asking and the pages stay put.
    await waitFor(() => asked.length >= 3, 2000, 'a few retries');
    expect(pool.stats().quarantined).toBe(5);
    expect(fence.size).toBe(1);
    expect(asked.every((w) => w.instanceId === 'prefill-a' && w.epoch === 3)).toBe(true);

    alive = false;
    await waitFor(() => fence.size === 0, 2000, 'the fence to release the room');
    expect(pool.stats()).toMatchObject({ quarantined: 0, free: 8 });
    pool.checkConservation();
    fence.stop();
    await transport.close();
  });

  it('never releases by that rule without the check (the default keeps asking)', async () => {
    const transport = new MemoryTransport({ clock: realClock });
    const pool = new PagePool({ pageCount: 4, ownership: { claim: () => {}, unclaim: () => {} }, waitersMax: 4 });
    const fence = new RoomFence({ transport, clock: realClock, log: silentLogger, deadlines: { ...defaultDeadlines, cleanupMs: 5 } });
    fence.attach(pool);
    const grant = { prefillId: 'prefill-b', subjectPrefix: 'tandem.prefill.b', epoch: 1, room: 1 };
    const owner = ownerKey({ instanceId: grant.prefillId, epoch: grant.epoch }, grant.room);
    await pool.acquire(owner, 2);
    fence.abort(owner, grant, 'req-2', true);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(fence.size).toBe(1);
    expect(pool.stats().quarantined).toBe(2);
    fence.writerGone({ instanceId: 'prefill-b', epoch: 1 });
    expect(fence.size).toBe(0);
    expect(pool.stats().free).toBe(4);
    fence.stop();
    await transport.close();
  });
});

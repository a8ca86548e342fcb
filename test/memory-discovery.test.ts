import { describe, expect, it } from 'vitest';
import type { DiscoveryEvent, WorkerRecord } from '../src/discovery/discovery.js';
import { MemoryDiscovery } from '../src/discovery/memory/memory-discovery.js';
import { ErrorCode } from '../src/errors.js';
import { realClock } from '../src/time/real-clock.js';
import { VirtualClock } from '../src/time/virtual-clock.js';
import { discoveryConformance } from './discovery-conformance.js';

function worker(instanceId: string, role: WorkerRecord['role'], epoch = 1): WorkerRecord {
  return { instanceId, role, model: 'tiny', epoch, subjectPrefix: `tandem.${role}.${instanceId}` };
}

function decodeWorker(instanceId: string, pageCount: number): WorkerRecord {
  return {
    ...worker(instanceId, 'decode'),
    pageCount,
    region: { fabric: 'sim', endpoint: instanceId, regionId: 'kv', pageBytes: 4096, pageCount },
  };
}

/** A discovery on a virtual clock plus everything its watcher has seen so far. */
function setup(): { clock: VirtualClock; discovery: MemoryDiscovery; events: DiscoveryEvent[]; unwatch: () => void } {
  const clock = new VirtualClock();
  const discovery = new MemoryDiscovery({ clock });
  const events: DiscoveryEvent[] = [];
  const unwatch = discovery.watch((event) => events.push(event));
  return { clock, discovery, events, unwatch };
}

describe('MemoryDiscovery', () => {
  it('lists records in registration order, optionally of one role', async () => {
    const { discovery } = setup();
    await discovery.register(worker('p1', 'prefill'));
    await discovery.register(decodeWorker('d1', 64));
    await discovery.register(worker('p2', 'prefill'));
    expect(discovery.list().map((record) => record.instanceId)).toEqual(['p1', 'd1', 'p2']);
    expect(discovery.list('prefill').map((record) => record.instanceId)).toEqual(['p1', 'p2']);
    expect(discovery.list('decode')).toEqual([decodeWorker('d1', 64)]);
  });

  it('notifies watchers one clock turn after a change, in the order of the changes', async () => {
    const { clock, discovery, events } = setup();
    await discovery.register(worker('p1', 'prefill'));
    await discovery.deregister('p1');
    expect(events).toEqual([]);
    clock.advance(0);
    expect(events).toEqual([
      { type: 'added', record: worker('p1', 'prefill') },
      { type: 'removed', record: worker('p1', 'prefill') },
    ]);
  });

  it('replaces a re-registered instance in place and notifies added with the new record', async () => {
    const { clock, discovery, events } = setup();
    await discovery.register(worker('p1', 'prefill'));
    await discovery.register(worker('p2', 'prefill'));
    await discovery.register(worker('p1', 'prefill', 2));
    clock.advance(0);
    expect(discovery.list().map((record) => [record.instanceId, record.epoch])).toEqual([
      ['p1', 2],
      ['p2', 1],
    ]);
    expect(events.at(-1)).toEqual({ type: 'added', record: worker('p1', 'prefill', 2) });
  });

  it('ignores deregistering an unknown instance', async () => {
    const { clock, discovery, events } = setup();
    await discovery.deregister('ghost');
    clock.advance(0);
    expect(events).toEqual([]);
    expect(discovery.stats()).toEqual({ recordCount: 0, watcherCount: 1, pendingNotificationCount: 0 });
  });

  it('shows a watcher only later changes and stops at unwatch, even for notifications already scheduled', async () => {
    const { clock, discovery, events, unwatch } = setup();
    await discovery.register(worker('p1', 'prefill'));
    const late: DiscoveryEvent[] = [];
    discovery.watch((event) => late.push(event));
    await discovery.register(worker('p2', 'prefill'));
    unwatch();
    clock.advance(0);
    expect(events).toEqual([]);
    expect(late).toEqual([{ type: 'added', record: worker('p2', 'prefill') }]);
  });

  it('keeps notifying other watchers when one throws, and reports the error', async () => {
    const clock = new VirtualClock();
    const errors: unknown[] = [];
    const discovery = new MemoryDiscovery({ clock, onWatcherError: (error) => errors.push(error) });
    const seen: string[] = [];
    discovery.watch(() => {
      throw new Error('watcher bug');
    });
    discovery.watch((event) => seen.push(event.record.instanceId));
    await discovery.register(worker('p1', 'prefill'));
    clock.advance(0);
    expect(seen).toEqual(['p1']);
    expect(errors).toHaveLength(1);
  });

  it('copies records in and out so callers cannot change the registry by mutation', async () => {
    const { clock, discovery, events } = setup();
    const record = decodeWorker('d1', 64);
    await discovery.register(record);
    record.pageCount = 1;
    record.region!.pageCount = 1;
    discovery.list()[0]!.epoch = 99;
    clock.advance(0);
    events[0]!.record.model = 'changed';
    expect(discovery.list()).toEqual([decodeWorker('d1', 64)]);
  });

  it('drops records, watchers and pending notifications on close, and refuses later changes', async () => {
    const { clock, discovery, events } = setup();
    await discovery.register(worker('p1', 'prefill'));
    expect(discovery.stats()).toEqual({ recordCount: 1, watcherCount: 1, pendingNotificationCount: 1 });
    await discovery.close();
    expect(discovery.stats()).toEqual({ recordCount: 0, watcherCount: 0, pendingNotificationCount: 0 });
    expect(clock.pendingCount).toBe(0);
    expect(events).toEqual([]);
    expect(discovery.list()).toEqual([]);
    await expect(discovery.register(worker('p2', 'prefill'))).rejects.toMatchObject({ code: ErrorCode.Closed });
    await expect(discovery.deregister('p1')).rejects.toMatchObject({ code: ErrorCode.Closed });
    const unwatch = discovery.watch(() => undefined);
    unwatch();
    expect(discovery.stats().watcherCount).toBe(0);
    await discovery.close();
  });
});

discoveryConformance('MemoryDiscovery', async () => {
  const discovery = new MemoryDiscovery({ clock: realClock });
  return {
    discovery,
    observer: discovery,
    settle: () => new Promise((resolve) => setImmediate(resolve)),
    cleanup: () => discovery.close(),
  };
});

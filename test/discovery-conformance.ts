// The behaviour every Discovery must show, whatever stores the records. Each implementation's test
// file calls `discoveryConformance` with a factory; checks wait for effects with real (short)
// timeouts so the suite runs against a live NATS server as well as in memory.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Discovery, DiscoveryEvent, WorkerRecord } from '../src/discovery/discovery.js';
import { ErrorCode } from '../src/errors.js';
import { waitFor } from './helpers/deferred.js';

/** What a factory hands the suite for one test. */
export interface DiscoveryHarness {
  /** The instance that registers and deregisters workers. */
  discovery: Discovery;
  /** The instance that lists and watches; the same object for in-process discoveries, another connection for NATS. */
  observer: Discovery;
  /** Waits long enough that a change which was going to reach `observer` has reached it. */
  settle(): Promise<void>;
  /** Releases everything the factory made; it runs even after a test closed `discovery` itself. */
  cleanup(): Promise<void>;
}

export function worker(instanceId: string, role: WorkerRecord['role'], epoch = 1): WorkerRecord {
  return { instanceId, role, model: 'tiny', epoch, subjectPrefix: `tandem.${role}.${instanceId}` };
}

export function decodeWorker(instanceId: string, pageCount: number): WorkerRecord {
  return {
    ...worker(instanceId, 'decode'),
    pageCount,
    region: { fabric: 'sim', endpoint: instanceId, regionId: 'kv', pageBytes: 4096, pageCount },
  };
}

const ids = (records: WorkerRecord[]): string[] => records.map((record) => record.instanceId);

export function discoveryConformance(name: string, factory: () => Promise<DiscoveryHarness>): void {
  describe(`Discovery conformance: ${name}`, () => {
    let harness: DiscoveryHarness;
    let events: DiscoveryEvent[];

    beforeEach(async () => {
      harness = await factory();
      events = [];
      harness.observer.watch((event) => events.push(event));
    });

    afterEach(async () => {
      await harness.cleanup();
    });

    it('lists records in registration order, optionally of one role', async () => {
      const { discovery, observer } = harness;
      await discovery.register(worker('p1', 'prefill'));
      await discovery.register(decodeWorker('d1', 64));
      await discovery.register(worker('p2', 'prefill'));
      await waitFor(() => observer.list().length === 3, 5000, 'three records');
      expect(ids(observer.list())).toEqual(['p1', 'd1', 'p2']);
      expect(ids(observer.list('prefill'))).toEqual(['p1', 'p2']);
      expect(observer.list('decode')).toEqual([decodeWorker('d1', 64)]);
    });

    it('tells watchers of a registration and a deregistration, in that order, never synchronously', async () => {
      const { discovery, observer } = harness;
      // Watchers hear of a change later, never inside the call that made it; over a network the
      // change may already have been seen by the time the call resolves.
      const registering = discovery.register(worker('p1', 'prefill'));
      expect(events).toEqual([]);
      await registering;
      await waitFor(() => events.length === 1, 5000, 'added');
      await discovery.deregister('p1');
      await waitFor(() => events.length === 2, 5000, 'removed');
      expect(events).toEqual([
        { type: 'added', record: worker('p1', 'prefill') },
        { type: 'removed', record: worker('p1', 'prefill') },
      ]);
      expect(observer.list()).toEqual([]);
    });

    it('replaces a re-registered instance in place and tells watchers added with the new record', async () => {
      const { discovery, observer } = harness;
      await discovery.register(worker('p1', 'prefill'));
      await discovery.register(worker('p2', 'prefill'));
      await waitFor(() => observer.list().length === 2, 5000, 'two records');
      await discovery.register(worker('p1', 'prefill', 2));
      await waitFor(() => observer.list()[0]?.epoch === 2, 5000, 'the new epoch');
      expect(observer.list().map((record) => [record.instanceId, record.epoch])).toEqual([
        ['p1', 2],
        ['p2', 1],
      ]);
      await waitFor(() => events.length === 3, 5000, 'three events');
      expect(events.at(-1)).toEqual({ type: 'added', record: worker('p1', 'prefill', 2) });
    });

    it('ignores deregistering an unknown instance', async () => {
      await harness.discovery.deregister('ghost');
      await harness.settle();
      expect(events).toEqual([]);
      expect(harness.observer.list()).toEqual([]);
    });

    it('shows a watcher only later changes and stops at unwatch', async () => {
      const { discovery, observer } = harness;
      await discovery.register(worker('p1', 'prefill'));
      await waitFor(() => events.length === 1, 5000, 'added p1');
      const late: DiscoveryEvent[] = [];
      const unwatchLate = observer.watch((event) => late.push(event));
      const stopped: DiscoveryEvent[] = [];
      const unwatchStopped = observer.watch((event) => stopped.push(event));
      unwatchStopped();
      await discovery.register(worker('p2', 'prefill'));
      await waitFor(() => late.length === 1, 5000, 'added p2');
      unwatchLate();
      await discovery.deregister('p2');
      await waitFor(() => events.length === 3, 5000, 'removed p2');
      await harness.settle();
      expect(late).toEqual([{ type: 'added', record: worker('p2', 'prefill') }]);
      expect(stopped).toEqual([]);
    });

    it('keeps telling other watchers when one throws', async () => {
      const { discovery, observer } = harness;
      observer.watch(() => {
        throw new Error('watcher bug');
      });
      const seen: string[] = [];
      observer.watch((event) => seen.push(event.record.instanceId));
      await discovery.register(worker('p1', 'prefill'));
      await discovery.register(worker('p2', 'prefill'));
      await waitFor(() => seen.length === 2, 5000, 'both records');
      expect(seen).toEqual(['p1', 'p2']);
    });

    it('copies records in and out, so nobody changes the registry by mutating an object', async () => {
      const { discovery, observer } = harness;
      const record = decodeWorker('d1', 64);
      await discovery.register(record);
      record.pageCount = 1;
      record.region!.pageCount = 1;
      await waitFor(() => events.length === 1, 5000, 'added');
      events[0]!.record.model = 'changed';
      observer.list()[0]!.epoch = 99;
      expect(observer.list()).toEqual([decodeWorker('d1', 64)]);
    });

    it('refuses changes after close, lists nothing and ignores watch; closing twice is fine', async () => {
      const { discovery } = harness;
      await discovery.register(worker('p1', 'prefill'));
      await discovery.close();
      expect(discovery.list()).toEqual([]);
      await expect(discovery.register(worker('p2', 'prefill'))).rejects.toMatchObject({ code: ErrorCode.Closed });
      await expect(discovery.deregister('p1')).rejects.toMatchObject({ code: ErrorCode.Closed });
      const seen: DiscoveryEvent[] = [];
      const unwatch = discovery.watch((event) => seen.push(event));
      unwatch();
      await discovery.close();
      expect(seen).toEqual([]);
    });
  });
}

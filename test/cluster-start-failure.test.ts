import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { createCluster, silentLogger } from '../src/index.js';
import { SimEngine } from '../src/engine/sim/sim-engine.js';
import { memoryBackends } from '../src/runtime/backends.js';
import { realClock } from '../src/time/real-clock.js';

// A cluster that cannot start (here: its HTTP port is taken) gives back what it had already
// made: workers stopped, engines closed, transport, discovery and fabrics closed.
describe('createCluster start failure', () => {
  it('closes its backends and engines and stops its workers when the frontend cannot listen', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    let backendsClosed = false;
    const engines: SimEngine[] = [];
    let subscriptionsAtClose = -1;
    try {
      await expect(
        createCluster({
          port,
          log: silentLogger,
          prefillWorkers: 2,
          decodeWorkers: 2,
          engineFactory: async () => {
            const engine = new SimEngine({ clock: realClock, speedup: Infinity });
            engines.push(engine);
            return engine;
          },
          backends: async (context) => {
            const backends = await memoryBackends(context);
            return {
              ...backends,
              close: async () => {
                subscriptionsAtClose = (backends.transport as unknown as { stats(): { subscriptionCount: number } }).stats().subscriptionCount;
                backendsClosed = true;
                await backends.close();
              },
            };
          },
        }),
      ).rejects.toThrow(/EADDRINUSE|address already in use/);
    } finally {
      blocker.close();
    }
    expect(backendsClosed).toBe(true);
    // The workers had subscribed when they started; they unsubscribed before the transport closed.
    expect(subscriptionsAtClose).toBe(0);
    expect(engines).toHaveLength(5);
    // A closed sim engine refuses work.
    for (const engine of engines) await expect(engine.prefill([1, 2, 3], { temperature: 0, topP: 1, seed: 0, maxTokens: 1, ignoreEos: true })).rejects.toThrow(/closed/);
  });
});

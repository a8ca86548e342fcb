// Time to first token of a disaggregated request over NATS (frontend, prefill and decode
// workers talking through a real nats-server), side by side with the round trip of a bare NATS
// request on the same server: what tandem's protocol costs on top of the transport.
import { startNatsServer } from '../test/helpers/nats-server.js';
import { createCluster, silentLogger } from '../src/index.js';
import { natsBackends } from '../src/runtime/nats-backends.js';
import { NatsTransport } from '../src/transport/nats/nats-transport.js';
import { realClock } from '../src/time/real-clock.js';
import { percentile } from './percentile.js';

async function ttftMs(url: string, i: number): Promise<number> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tandem-sim', prompt: `bench request ${i} `.repeat(6), max_tokens: 2, stream: true, temperature: 0 }),
  });
  const reader = response.body!.getReader();
  await reader.read();
  const ttft = performance.now() - started;
  while (!(await reader.read()).done);
  return ttft;
}

export async function benchNats(requests: number): Promise<void> {
  const server = await startNatsServer();
  try {
    const backends = natsBackends({ servers: server.url }, { kind: 'tcp' }, { heartbeatIntervalMs: 250 });
    const cluster = await createCluster({ port: 0, seed: 3, log: silentLogger, engine: { speedup: Number.POSITIVE_INFINITY }, backends });
    const requester = await NatsTransport.connect({ servers: server.url, clock: realClock });
    const responder = await NatsTransport.connect({ servers: server.url, clock: realClock });
    try {
      responder.subscribe('bench.echo', (message) => message.respond(message.data));
      await responder.flush();
      const payload = new Uint8Array(64);
      const rtt: number[] = [];
      const ttft: number[] = [];
      for (let i = 0; i < 20; i++) {
        await ttftMs(cluster.url, i);
        await requester.request('bench.echo', payload, { timeoutMs: 2000 });
      }
      for (let i = 0; i < requests; i++) {
        const started = performance.now();
        await requester.request('bench.echo', payload, { timeoutMs: 2000 });
        rtt.push(performance.now() - started);
        ttft.push(await ttftMs(cluster.url, i));
        if ((i + 1) % 50 === 0) process.stderr.write(`\r  nats: ${i + 1}/${requests} requests`);
      }
      process.stderr.write('\n');
      ttft.sort((a, b) => a - b);
      rtt.sort((a, b) => a - b);
      console.log('\nover NATS (one request at a time): disaggregated TTFT via HTTP vs a bare NATS request round trip, ms');
      console.log(`${''.padEnd(22)} ${'p50'.padStart(8)} ${'p99'.padStart(8)}`);
      console.log(`${'TTFT, disaggregated'.padEnd(22)} ${percentile(ttft, 50).toFixed(2).padStart(8)} ${percentile(ttft, 99).toFixed(2).padStart(8)}`);
      console.log(`${'bare NATS request'.padEnd(22)} ${percentile(rtt, 50).toFixed(2).padStart(8)} ${percentile(rtt, 99).toFixed(2).padStart(8)}`);
      console.log(`${'ratio'.padEnd(22)} ${(percentile(ttft, 50) / percentile(rtt, 50)).toFixed(1).padStart(8)} ${(percentile(ttft, 99) / percentile(rtt, 99)).toFixed(1).padStart(8)}`);
    } finally {
      await requester.close();
      await responder.close();
      await cluster.close();
    }
  } finally {
    await server.stop();
  }
}

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as connectTcp, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as connectRaw, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { realClock } from '../src/time/real-clock.js';
import { AssertionError } from '../src/util/assert.js';
import type { NatsTransportOptions } from '../src/transport/nats/connect-options.js';
import { NatsTransport } from '../src/transport/nats/nats-transport.js';
import { TransportError, type ReplyStream, type StreamWriter } from '../src/transport/transport.js';
import { deferred, waitFor } from './helpers/deferred.js';
import { startNatsServer, type NatsServer } from './helpers/nats-server.js';
import { transportConformance } from './transport-conformance.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const bytes = (value: string): Uint8Array => encoder.encode(value);
const text = (value: Uint8Array): string => decoder.decode(value);
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Small windows, buffers and heartbeats so flow control and liveness show within milliseconds. */
const testOptions = {
  clock: realClock,
  name: 'tandem-test',
  connectTimeoutMs: 2_000,
  reconnect: { enabled: true, timeWaitMs: 100, jitterMs: 20, attemptsMax: -1 },
  streamWindowMax: 16,
  streamBufferMax: 128,
  streamHeartbeatMs: 100,
  // Five intervals, not three: a loaded CI machine can stall the event loop for a few hundred ms.
  streamHeartbeatsMissedMax: 5,
  drainTimeoutMs: 1_000,
} satisfies Omit<NatsTransportOptions, 'servers'>;

const opensslAvailable = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    console.warn('skipping the NATS TLS test: the openssl command is not installed (apt-get install openssl)');
    return false;
  }
})();

let server: NatsServer;
const opened: NatsTransport[] = [];

/** A transport on the shared server (or `servers`), closed after the file's tests. */
async function open(options: Partial<NatsTransportOptions> = {}): Promise<NatsTransport> {
  const transport = await NatsTransport.connect({ ...testOptions, servers: server.url, ...options });
  opened.push(transport);
  return transport;
}

beforeAll(async () => {
  server = await startNatsServer();
});

afterAll(async () => {
  await Promise.all(opened.map((transport) => transport.close()));
  await server.stop();
});

transportConformance('NatsTransport', async () => {
  const transport = await open();
  const peer = await open();
  return {
    transport,
    peer,
    settle: async () => {
      await peer.flush();
      await transport.flush();
    },
    cleanup: async () => {
      await Promise.all([transport.close(), peer.close()]);
    },
  };
});

/** A TCP relay to the shared server that a test can cut (the peer's sockets reset) or freeze (a silent partition). */
interface Relay {
  url: string;
  /** Resets every connection and refuses new ones, as a crashed process's kernel would. */
  sever(): void;
  /** Stops relaying without closing anything, as a network partition would. */
  freeze(): void;
  close(): Promise<void>;
}

async function startRelay(targetPort: number): Promise<Relay> {
  const sockets = new Set<Socket>();
  const pairs: [Socket, Socket][] = [];
  const relay = createServer((client) => {
    const upstream = connectTcp({ host: '127.0.0.1', port: targetPort });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.on('close', () => sockets.delete(socket));
    }
    client.pipe(upstream);
    upstream.pipe(client);
    pairs.push([client, upstream]);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const address = relay.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const stopListening = (): Promise<void> => new Promise((resolve) => relay.close(() => resolve()));
  return {
    url: `nats://127.0.0.1:${port}`,
    sever: () => {
      void stopListening();
      for (const socket of sockets) socket.resetAndDestroy();
    },
    freeze: () => {
      void stopListening();
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await stopListening().catch(() => undefined);
    },
  };
}

/** Reads a stream until it fails; returns the error and the chunks read first. */
async function readUntilFailure(stream: ReplyStream): Promise<{ error: unknown; chunks: string[] }> {
  const chunks: string[] = [];
  try {
    for await (const chunk of stream) chunks.push(text(chunk));
  } catch (error) {
    return { error, chunks };
  }
  throw new Error(`expected the stream to fail, it ended after ${chunks.length} chunks`);
}

/** Writes a numbered chunk every `everyMs` until the writer closes. */
function trickle(writer: StreamWriter, everyMs: number): void {
  void (async () => {
    for (let index = 0; !writer.closed; index++) {
      writer.write(bytes(String(index)));
      await pause(everyMs);
    }
  })().catch(() => undefined);
}

describe('NatsTransport', () => {
  it('fails the consumer within its idle timeout when the producer connection dies mid-stream', async () => {
    const relay = await startRelay(server.port);
    const producer = await open({ servers: relay.url, reconnect: { enabled: false } });
    const consumer = await open();
    producer.subscribe('nats.dead.producer', (message) => trickle(message.openStream(), 10));
    await producer.flush();
    const idleTimeoutMs = 3_000;
    const stream = consumer.stream('nats.dead.producer', bytes('go'), { idleTimeoutMs });
    const iterator = stream[Symbol.asyncIterator]();
    expect(text((await iterator.next()).value as Uint8Array)).toBe('0');
    relay.sever();
    const startedMs = performance.now();
    let failure: unknown;
    for (;;) {
      try {
        if ((await iterator.next()).done) break;
      } catch (error) {
        failure = error;
        break;
      }
    }
    const tookMs = performance.now() - startedMs;
    expect(failure).toBeInstanceOf(TransportError);
    expect(['closed', 'timeout']).toContain((failure as TransportError).kind);
    // The server drops the dead connection's inbox, so the consumer's next heartbeat bounces: well within the idle timeout.
    expect(tookMs).toBeLessThan(idleTimeoutMs);
    expect(consumer.stats().openStreamCount).toBe(0);
    await relay.close();
  });

  it('fails the consumer by missed heartbeats when the producer goes dark without closing', async () => {
    const relay = await startRelay(server.port);
    const producer = await open({ servers: relay.url, reconnect: { enabled: false }, drainTimeoutMs: 200 });
    const consumer = await open();
    // The producer writes once and then only heartbeats: alive, but with a long idle timeout nothing else would notice.
    producer.subscribe('nats.dark.producer', (message) => message.openStream().write(bytes('first')));
    await producer.flush();
    const stream = consumer.stream('nats.dark.producer', bytes('go'), { idleTimeoutMs: 10_000 });
    const iterator = stream[Symbol.asyncIterator]();
    expect(text((await iterator.next()).value as Uint8Array)).toBe('first');
    await pause(700); // heartbeats keep an idle but live producer alive past its 500 ms liveness deadline
    relay.freeze();
    const startedMs = performance.now();
    const failure = await iterator.next().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(TransportError);
    expect((failure as TransportError).kind).toBe('timeout');
    expect((failure as TransportError).message).toMatch(/producer/);
    expect(performance.now() - startedMs).toBeLessThan(2_000);
    await relay.close();
  });

  it('cancels the writer across connections when the consumer cancels, breaks or its connection dies', async () => {
    const relay = await startRelay(server.port);
    const producer = await open();
    const consumer = await open();
    const doomedConsumer = await open({ servers: relay.url, reconnect: { enabled: false } });
    const cancelled: string[] = [];
    const writers: StreamWriter[] = [];
    producer.subscribe('nats.cancel', (message) => {
      const writer = message.openStream();
      writers.push(writer);
      writer.onCancel(() => cancelled.push(text(message.data)));
      trickle(writer, 5);
    });
    await producer.flush();

    const first = consumer.stream('nats.cancel', bytes('cancel'), { idleTimeoutMs: 5_000 });
    const iterator = first[Symbol.asyncIterator]();
    await iterator.next();
    first.cancel();
    for await (const _chunk of consumer.stream('nats.cancel', bytes('break'), { idleTimeoutMs: 5_000 })) break;
    const doomed = doomedConsumer.stream('nats.cancel', bytes('crash'), { idleTimeoutMs: 5_000 });
    await doomed[Symbol.asyncIterator]().next();
    relay.sever();

    await waitFor(() => cancelled.length === 3, 3_000, 'every writer to be cancelled');
    expect(cancelled.sort()).toEqual(['break', 'cancel', 'crash']);
    expect(writers.every((writer) => writer.closed)).toBe(true);
    await waitFor(() => producer.stats().openWriterCount === 0, 1_000, 'the producer to forget its writers');
    expect(consumer.stats().openStreamCount).toBe(0);
    await relay.close();
  });

  it('keeps memory bounded on both ends when the consumer stops reading, then fails cleanly', async () => {
    const producer = await open();
    const consumer = await open();
    let accepted = 0;
    const cancelled = deferred<void>();
    producer.subscribe('nats.slow', (message) => {
      const writer = message.openStream();
      writer.onCancel(() => cancelled.resolve());
      void (async () => {
        while (!writer.closed) {
          writer.write(bytes('x'.repeat(100)));
          accepted++;
          if (accepted % 32 === 0) await nextTurn();
        }
      })().catch(() => undefined);
    });
    await producer.flush();
    const stream = consumer.stream('nats.slow', bytes('go'), { idleTimeoutMs: 5_000 });
    await cancelled.promise;
    // The window (16) went out, the local queue (64) filled, and the next write failed the stream.
    expect(accepted).toBeLessThanOrEqual(testOptions.streamWindowMax + testOptions.streamBufferMax + 1);
    const { error, chunks } = await readUntilFailure(stream);
    expect(chunks.length).toBeLessThanOrEqual(testOptions.streamWindowMax);
    expect(error).toBeInstanceOf(TransportError);
    expect((error as TransportError).kind).toBe('closed');
    expect((error as TransportError).message).toMatch(/slow consumer/);
    expect(producer.stats().openWriterCount).toBe(0);
    expect(consumer.stats().openStreamCount).toBe(0);
  });

  it('bounds the producer queue by bytes as well as by chunks', async () => {
    const producer = await open({ streamBufferBytesMax: 64 * 1024 });
    const consumer = await open();
    let accepted = 0;
    const cancelled = deferred<void>();
    producer.subscribe('nats.slow.bytes', (message) => {
      const writer = message.openStream();
      writer.onCancel(() => cancelled.resolve());
      while (!writer.closed && accepted < 1_000) {
        writer.write(new Uint8Array(16 * 1024));
        accepted++;
      }
    });
    await producer.flush();
    const stream = consumer.stream('nats.slow.bytes', bytes('go'), { idleTimeoutMs: 5_000 });
    await cancelled.promise;
    // 16 chunks in the window, then 3 queued (64 KiB less frame headers), then the failure.
    expect(accepted).toBe(testOptions.streamWindowMax + 4);
    expect(((await readUntilFailure(stream)).error as TransportError).message).toMatch(/slow consumer/);
  });

  it('delivers a long stream through many credit rounds to a consumer that reads at its own pace', async () => {
    const producer = await open();
    const consumer = await open();
    const total = 500;
    producer.subscribe('nats.long', (message) => {
      const writer = message.openStream();
      void (async () => {
        for (let index = 0; index < total; index++) {
          writer.write(bytes(String(index)));
          if (index % 16 === 15) await pause(2);
        }
        writer.end();
      })().catch(() => undefined);
    });
    await producer.flush();
    const received: string[] = [];
    for await (const chunk of consumer.stream('nats.long', bytes('go'), { idleTimeoutMs: 5_000 })) {
      received.push(text(chunk));
      if (received.length % 10 === 0) await nextTurn();
    }
    expect(received).toEqual(Array.from({ length: total }, (_, index) => String(index)));
    await waitFor(() => producer.stats().openWriterCount === 0, 1_000, 'the writer to settle');
  });

  it('serves requests again once the client has reconnected after a nats-server restart', async () => {
    const restartable = await startNatsServer();
    try {
      const requester = await open({ servers: restartable.url });
      const responder = await open({ servers: restartable.url });
      responder.subscribe('nats.restart.echo', (message) => message.respond(bytes(`echo:${text(message.data)}`)));
      await responder.flush();
      expect(text(await requester.request('nats.restart.echo', bytes('before'), { timeoutMs: 1_000 }))).toBe('echo:before');

      await restartable.restart();
      const failures = new Set<string>();
      const deadlineMs = performance.now() + 10_000;
      for (;;) {
        try {
          expect(text(await requester.request('nats.restart.echo', bytes('after'), { timeoutMs: 200 }))).toBe('echo:after');
          break;
        } catch (error) {
          // Until both clients are back and the responder resubscribed, requests fail with one of the normalised kinds.
          expect(error).toBeInstanceOf(TransportError);
          failures.add((error as TransportError).kind);
          if (performance.now() > deadlineMs) throw error;
          await pause(50);
        }
      }
      expect([...failures].every((kind) => kind === 'timeout' || kind === 'no_responders')).toBe(true);
      for (let round = 0; round < 5; round++) {
        expect(text(await requester.request('nats.restart.echo', bytes(String(round)), { timeoutMs: 1_000 }))).toBe(`echo:${round}`);
      }
    } finally {
      await restartable.stop();
    }
  });

  it('passes a token through to a protected server and explains a wrong one', async () => {
    const guarded = await startNatsServer({ token: 's3cret-token' });
    try {
      const good = await open({ servers: guarded.url, token: 's3cret-token' });
      good.subscribe('nats.auth.echo', (message) => message.respond(message.data));
      await good.flush();
      expect(text(await good.request('nats.auth.echo', bytes('in'), { timeoutMs: 1_000 }))).toBe('in');

      for (const token of ['wrong-token', undefined]) {
        const refused = await NatsTransport.connect({ ...testOptions, servers: guarded.url, token }).then(
          async (transport) => {
            await transport.close();
            return undefined;
          },
          (error: unknown) => error,
        );
        expect(refused).toBeInstanceOf(TransportError);
        expect((refused as TransportError).kind).toBe('closed');
        expect((refused as TransportError).message).toMatch(/Authorization Violation.*check token/);
      }
    } finally {
      await guarded.stop();
    }
  });

  it('passes user and password through', async () => {
    const guarded = await startNatsServer({ args: ['--user', 'tandem', '--pass', 'hunter2'] });
    try {
      const good = await open({ servers: guarded.url, user: 'tandem', pass: 'hunter2' });
      await good.flush();
      const refused = await NatsTransport.connect({ ...testOptions, servers: guarded.url, user: 'tandem', pass: 'nope' }).catch((error: unknown) => error);
      expect((refused as TransportError).message).toMatch(/Authorization Violation/);
    } finally {
      await guarded.stop();
    }
  });

  it.skipIf(!opensslAvailable)('passes TLS material through and explains an untrusted certificate', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tandem-tls-'));
    try {
      const certFile = join(dir, 'cert.pem');
      const keyFile = join(dir, 'key.pem');
      // The client checks a server reached by IP address against the name `localhost`, so the certificate names both.
      execFileSync('openssl', [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
        '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', keyFile, '-out', certFile,
      ], { stdio: 'ignore' });
      const secure = await startNatsServer({ args: ['--tls', '--tlscert', certFile, '--tlskey', keyFile] });
      try {
        const trusted = await open({ servers: secure.url, tls: { caFile: certFile } });
        trusted.subscribe('nats.tls.echo', (message) => message.respond(message.data));
        await trusted.flush();
        expect(text(await trusted.request('nats.tls.echo', bytes('sealed'), { timeoutMs: 1_000 }))).toBe('sealed');
        const refused = await NatsTransport.connect({ ...testOptions, servers: secure.url, tls: {} }).catch((error: unknown) => error);
        expect(refused).toBeInstanceOf(TransportError);
        expect((refused as TransportError).message).toMatch(/could not connect to NATS.*certificate/);
      } finally {
        await secure.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects a connection to a server that is not there with a clear error', async () => {
    const error = await NatsTransport.connect({ ...testOptions, servers: 'nats://127.0.0.1:1' }).catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(TransportError);
    expect((error as TransportError).message).toMatch(/could not connect to NATS at nats:\/\/127\.0\.0\.1:1/);
  });

  it('drops malformed bytes on stream inboxes and control subjects without crashing or disturbing the stream', async () => {
    const protocolErrors: string[] = [];
    const onProtocolError = (error: Error): void => {
      protocolErrors.push(error.message);
    };
    const producer = await open({ onProtocolError });
    const consumer = await open({ onProtocolError });
    const raw: NatsConnection = await connectRaw({ servers: server.url, reconnect: false, timeout: 2_000 });
    try {
      const release = deferred<void>();
      producer.subscribe('nats.garbage', (message) => {
        const writer = message.openStream();
        writer.write(bytes('a'));
        void release.promise.then(() => {
          writer.write(bytes('b'));
          writer.end();
        });
      });
      // The raw client sees the request's reply inbox and, on that inbox, the producer's control subject.
      const inbox = deferred<string>();
      const control = deferred<string>();
      raw.subscribe('nats.garbage', { callback: (_error, msg) => inbox.resolve(msg.reply ?? '') });
      await raw.flush();
      await producer.flush();
      const stream = consumer.stream('nats.garbage', bytes('go'), { idleTimeoutMs: 5_000 });
      const inboxSubject = await inbox.promise;
      raw.subscribe(inboxSubject, { callback: (_error, msg) => control.resolve(msg.reply ?? '') });
      await raw.flush();
      const iterator = stream[Symbol.asyncIterator]();
      expect(text((await iterator.next()).value as Uint8Array)).toBe('a');
      // `a` went out before the raw client listened on the inbox; the producer's next heartbeat carries the control subject.
      const controlSubject = await control.promise;
      expect(controlSubject).not.toBe('');

      const garbage = [new Uint8Array(0), bytes('hello'), new Uint8Array([9, 9, 9, 9, 9, 9, 9]), new Uint8Array([1, 2, 0, 0, 0, 0, 1]), new Uint8Array(3000).fill(0xff), new Uint8Array([1, 2, 0, 0, 0, 1, 0x41])];
      for (const junk of garbage) {
        raw.publish(inboxSubject, junk);
        raw.publish(inboxSubject, junk, { reply: '_INBOX.stranger' });
        raw.publish(controlSubject, junk);
      }
      await raw.flush();
      await pause(50);
      release.resolve();
      expect(text((await iterator.next()).value as Uint8Array)).toBe('b');
      expect((await iterator.next()).done).toBe(true);
      expect(protocolErrors.length).toBeGreaterThanOrEqual(garbage.length);
      expect(protocolErrors.some((message) => /malformed/.test(message))).toBe(true);
      expect(producer.stats().openWriterCount).toBe(0);
      expect(consumer.stats().openStreamCount).toBe(0);
    } finally {
      await raw.close();
    }
  });

  it('refuses a chunk over max_payload with a clear error and fails that stream', async () => {
    const producer = await open();
    const consumer = await open();
    const refused = deferred<unknown>();
    producer.subscribe('nats.huge', (message) => {
      const writer = message.openStream();
      writer.write(bytes('small'));
      try {
        writer.write(new Uint8Array(producer.maxPayloadBytes));
      } catch (error) {
        refused.resolve(error);
      }
    });
    await producer.flush();
    const { error, chunks } = await readUntilFailure(consumer.stream('nats.huge', bytes('go'), { idleTimeoutMs: 5_000 }));
    const thrown = await refused.promise;
    expect(thrown).toBeInstanceOf(TransportError);
    expect((thrown as TransportError).message).toMatch(/over the 1048570-byte limit/);
    expect(chunks).toEqual(['small']);
    expect((error as TransportError).kind).toBe('closed');
    expect((error as TransportError).message).toMatch(/max_payload/);
    expect(() => consumer.publish('nats.huge.pub', new Uint8Array(2 * 1024 * 1024))).toThrow(/max_payload/);
    await expect(consumer.request('nats.huge.req', new Uint8Array(2 * 1024 * 1024), { timeoutMs: 100 })).rejects.toMatchObject({ kind: 'closed' });
  });

  it('refuses caller headers that would collide with the stream protocol, whatever their case', async () => {
    const transport = await open();
    const reserved = { 'tandem-stream-window': '1' };
    expect(() => transport.publish('nats.reserved', bytes('x'), { headers: reserved })).toThrow(AssertionError);
    await expect(async () => transport.request('nats.reserved', bytes('x'), { timeoutMs: 100, headers: { 'Tandem-Stream': '1' } })).rejects.toThrow(AssertionError);
    expect(() => transport.stream('nats.reserved', bytes('x'), { idleTimeoutMs: 100, headers: reserved })).toThrow(AssertionError);
  });

  it('reports handler errors, thrown or rejected, and holds nothing once a mix of calls has finished', async () => {
    const errors: string[] = [];
    const producer = await open({ onHandlerError: (error) => errors.push((error as Error).message) });
    const consumer = await open();
    const subscriptions = [
      producer.subscribe('nats.leak.sync', () => {
        throw new Error('sync bug');
      }),
      producer.subscribe('nats.leak.async', async () => {
        throw new Error('async bug');
      }),
      producer.subscribe('nats.leak.echo', (message) => message.respond(message.data), { queue: 'echo' }),
      producer.subscribe('nats.leak.stream', (message) => {
        const writer = message.openStream();
        writer.write(bytes('1'));
        writer.end();
      }),
    ];
    await producer.flush();
    consumer.publish('nats.leak.sync', bytes('x'));
    consumer.publish('nats.leak.async', bytes('x'));
    expect(text(await consumer.request('nats.leak.echo', bytes('e'), { timeoutMs: 1_000 }))).toBe('e');
    const chunks: string[] = [];
    for await (const chunk of consumer.stream('nats.leak.stream', bytes('go'), { idleTimeoutMs: 1_000 })) chunks.push(text(chunk));
    expect(chunks).toEqual(['1']);
    await waitFor(() => errors.length === 2, 1_000, 'both handler errors');
    expect(errors.sort()).toEqual(['async bug', 'sync bug']);
    for (const subscription of subscriptions) subscription.unsubscribe();
    await waitFor(() => producer.stats().openWriterCount === 0, 1_000, 'the writer to settle');
    expect(producer.stats()).toEqual({ subscriptionCount: 0, pendingRequestCount: 0, openStreamCount: 0, openWriterCount: 0 });
    expect(consumer.stats()).toEqual({ subscriptionCount: 0, pendingRequestCount: 0, openStreamCount: 0, openWriterCount: 0 });
  });

  it('tells the consumer at once when the producer transport closes mid-stream', async () => {
    const producer = await open();
    const consumer = await open();
    producer.subscribe('nats.producer.close', (message) => message.openStream().write(bytes('first')));
    await producer.flush();
    const iterator = consumer.stream('nats.producer.close', bytes('go'), { idleTimeoutMs: 5_000 })[Symbol.asyncIterator]();
    await iterator.next();
    const startedMs = performance.now();
    await producer.close();
    const failure = await iterator.next().then(
      () => undefined,
      (error: unknown) => error,
    );
    expect((failure as TransportError).kind).toBe('closed');
    expect((failure as TransportError).message).toMatch(/producer's transport closed/);
    expect(performance.now() - startedMs).toBeLessThan(1_000);
  });
});

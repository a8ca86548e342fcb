import { hostname } from 'node:os';
import { ConsoleSpanExporter } from '@opentelemetry/sdk-trace-base';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { RoutingMode } from '../actors/router.js';
import type { Deadlines } from '../limits.js';
import { consoleLogger, logLevels, type Logger, type LogLevel } from '../log.js';
import { pinoLogger } from '../log-pino.js';
import { serveMetrics } from '../metrics/metrics-server.js';
import { memoryBackends, type BackendsFactory } from '../runtime/backends.js';
import { createCluster, type Cluster, type ClusterConfig } from '../runtime/cluster.js';
import type { LlamaClusterConfig } from '../runtime/engine-factory.js';
import { natsBackends, type NatsSettings } from '../runtime/nats-backends.js';
import { realClock, realSeed } from '../time/real-clock.js';
import { integer, registerSimulateCommand } from './simulate-command.js';
import { registerVizCommands, traceConfig } from './viz-commands.js';

function nonNegative(value: string): number {
  if (value === 'inf' || value === 'Infinity') return Number.POSITIVE_INFINITY;
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < 0) throw new InvalidArgumentError(`expected a number >= 0 (or 'inf'), got '${value}'`);
  return parsed;
}

/** Options every command shares: the model, the engine, KV pages, seed, logging, shutdown. */
function withCommonOptions(command: Command): Command {
  return withRoutingOptions(command)
    .addOption(new Option('--model <path>', 'serve this GGUF model on llama.cpp (CPU build) instead of the sim engine').env('TANDEM_MODEL'))
    .addOption(new Option('--model-name <name>', "name clients use in the model field (default: 'tandem-sim', or the GGUF file's general.name with --model)").env('TANDEM_MODEL_NAME'))
    .addOption(new Option('--threads <n>', 'llama.cpp: CPU threads of one evaluation (default: its own choice)').argParser(integer(1)).env('TANDEM_THREADS'))
    .addOption(new Option('--sequences <n>', 'llama.cpp: sequences per context, the largest decode batch; prefill and decode workers must agree').default(8).argParser(integer(1)))
    .addOption(new Option('--gpu <kind>', 'llama.cpp binary: cpu (default), or a GPU build installed as the README says').choices(['cpu', 'cuda', 'vulkan', 'metal', 'auto']).default('cpu').env('TANDEM_GPU'))
    .addOption(new Option('--context-tokens <n>', 'llama.cpp: largest context of one sequence (default: the trained context, at most 2048)').argParser(integer(2)))
    .addOption(new Option('--speedup <x>', "divide the sim engine's step times by x ('inf' for zero time)").default(1).argParser(nonNegative).env('TANDEM_SPEEDUP'))
    .addOption(new Option('--kv-bytes-per-token <n>', 'KV bytes per token of the sim model').default(64).argParser(integer(8)))
    .addOption(new Option('--eos-every <n>', 'sim engine ends a sequence with EOS about once per n steps').argParser(integer(1)))
    .addOption(new Option('--page-bytes <n>', 'bytes per KV page').default(16 * 1024).argParser(integer(64)))
    .addOption(new Option('--pages <n>', 'KV pages per decode worker').default(4096).argParser(integer(1)))
    .addOption(new Option('--seed <n>', 'seed of ids, rooms and default sampling seeds').argParser(integer(0)))
    .addOption(new Option('--log-level <level>', 'log level').choices([...logLevels]).default('info').env('TANDEM_LOG_LEVEL'))
    .addOption(new Option('--log-format <format>', 'text (key=value lines) or json (one JSON object per line, pino)').choices(['text', 'json']).default('text').env('TANDEM_LOG_FORMAT'))
    .addOption(new Option('--otel-console', "print an OpenTelemetry span per request and request-machine state of this process's decode workers to stdout; off by default"))
    .addOption(new Option('--drain-timeout-ms <ms>', 'on SIGTERM/SIGINT, how long requests in flight may finish').default(10_000).argParser(integer(0)))
    .addOption(
      new Option('--deadlines <json>', `per-state deadlines in ms, e.g. '{"transfer_ms":5000}' (states: ${deadlineStates.join(', ')})`)
        .argParser(parseDeadlines)
        .env('TANDEM_DEADLINES'),
    );
}

/** Routing options: how prefill workers are picked, when decode workers prefill locally, migration. */
function withRoutingOptions(command: Command): Command {
  return command
    .addOption(new Option('--routing <mode>', 'how prefill workers are picked (kv-aware: by cached prefix and load; every process must agree)').choices(['round-robin', 'random', 'kv-aware']).default('round-robin').env('TANDEM_ROUTING'))
    .addOption(new Option('--overlap-weight <x>', 'kv-aware cost of one uncached prefill block relative to one block in flight').default(1).argParser(nonNegative))
    .addOption(new Option('--router-temperature <x>', 'kv-aware softmax temperature over costs (0 always picks a cheapest worker)').default(0).argParser(nonNegative))
    .addOption(new Option('--local-prefill-tokens-max <n>', 'conditional disaggregation: decode workers prefill prompts with at most n uncached tokens themselves').argParser(integer(0)))
    .addOption(new Option('--prefill-busy-blocks <n>', 'conditional disaggregation: decode workers prefill themselves while every prefill worker has n blocks in flight').argParser(integer(1)))
    .addOption(new Option('--migrations-max <n>', 'times a request moves to another decode worker when its worker dies mid-stream (0 disables)').default(2).argParser(integer(0)));
}

/** The routing part of a cluster config, from `withRoutingOptions`. */
function routingConfig(options: Options): Pick<ClusterConfig, 'routing' | 'overlapWeight' | 'routerTemperature' | 'conditionalDisaggregation' | 'migrationsMax'> {
  const localPrefillTokensMax = options.localPrefillTokensMax as number | undefined;
  const prefillBusyBlocks = options.prefillBusyBlocks as number | undefined;
  const conditional = localPrefillTokensMax !== undefined || prefillBusyBlocks !== undefined;
  return {
    routing: options.routing as RoutingMode,
    overlapWeight: options.overlapWeight as number,
    routerTemperature: options.routerTemperature as number,
    migrationsMax: options.migrationsMax as number,
    ...(conditional ? { conditionalDisaggregation: { ...(localPrefillTokensMax !== undefined ? { localPrefillTokensMax } : {}), ...(prefillBusyBlocks !== undefined ? { prefillBusyBlocks } : {}) } } : {}),
  };
}

const deadlineStates = ['bootstrap', 'allocation', 'prefill', 'transfer', 'polling', 'cleanup', 'decode'] as const;

/** Parses `--deadlines`: a JSON object of `<state>_ms` keys with positive integer values. */
function parseDeadlines(value: string): Partial<Deadlines> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new InvalidArgumentError(`expected a JSON object, got '${value}'`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new InvalidArgumentError('expected a JSON object');
  const deadlines: Partial<Deadlines> = {};
  for (const [key, ms] of Object.entries(parsed)) {
    const state = deadlineStates.find((name) => `${name}_ms` === key);
    if (!state) throw new InvalidArgumentError(`unknown deadline '${key}'; known: ${deadlineStates.map((name) => `${name}_ms`).join(', ')}`);
    if (!Number.isInteger(ms) || (ms as number) < 1) throw new InvalidArgumentError(`${key} must be a positive integer`);
    deadlines[`${state}Ms`] = ms as number;
  }
  return deadlines;
}

/** NATS connection options; `--nats` switches from the in-process transport to NATS. */
function withNatsOptions(command: Command, required: boolean): Command {
  const servers = new Option('--nats <urls>', 'NATS server URL(s), comma-separated').env('TANDEM_NATS_URL');
  if (required) servers.makeOptionMandatory();
  return command
    .addOption(servers)
    .addOption(new Option('--nats-token <token>', 'NATS auth token').env('TANDEM_NATS_TOKEN'))
    .addOption(new Option('--nats-user <user>', 'NATS user').env('TANDEM_NATS_USER'))
    .addOption(new Option('--nats-pass <pass>', 'NATS password').env('TANDEM_NATS_PASS'))
    .addOption(new Option('--nats-creds <file>', 'NATS .creds file').env('TANDEM_NATS_CREDS'))
    .addOption(new Option('--nats-tls-ca <file>', 'CA bundle that signs the NATS server certificate').env('TANDEM_NATS_TLS_CA'))
    .addOption(new Option('--nats-tls-cert <file>', 'client certificate for NATS').env('TANDEM_NATS_TLS_CERT'))
    .addOption(new Option('--nats-tls-key <file>', 'client key for NATS').env('TANDEM_NATS_TLS_KEY'))
    .addOption(new Option('--discovery-bucket <name>', 'JetStream KV bucket of worker records').default('tandem_workers').env('TANDEM_DISCOVERY_BUCKET'))
    .addOption(new Option('--heartbeat-ms <ms>', 'how often workers refresh their discovery record').default(1000).argParser(integer(50)));
}

/** Fabric options of processes that run workers. */
function withFabricOptions(command: Command, defaultKind: 'tcp' | 'sim'): Command {
  return command
    .addOption(new Option('--fabric <kind>', 'KV fabric: tcp (across processes), verbs (RDMA; its control channel uses the TCP fabric settings) or sim (in-process only)').choices(['tcp', 'verbs', 'sim']).default(defaultKind).env('TANDEM_FABRIC'))
    .addOption(new Option('--rdma-device <name>', 'verbs fabric: RDMA device to open (default the first listed)').env('TANDEM_RDMA_DEVICE'))
    .addOption(new Option('--rdma-gid-index <n>', 'verbs fabric: local GID index, on RoCE (default 0)').argParser(integer(0)).env('TANDEM_RDMA_GID_INDEX'))
    .addOption(new Option('--fabric-host <host>', 'interface the TCP fabric listens on').default('127.0.0.1').env('TANDEM_FABRIC_HOST'))
    .addOption(new Option('--fabric-port <port>', 'port of the TCP fabric (0 picks a free one)').default(0).argParser(integer(0)).env('TANDEM_FABRIC_PORT'))
    .addOption(new Option('--advertise-host <host>', 'host name peers use to reach this fabric').env('TANDEM_ADVERTISE_HOST'));
}

type Options = Record<string, unknown>;

function natsSettings(options: Options, name: string): NatsSettings {
  const tls = options.natsTlsCa || options.natsTlsCert || options.natsTlsKey;
  return {
    servers: String(options.nats).split(',').map((url) => url.trim()).filter(Boolean),
    name,
    token: options.natsToken as string | undefined,
    user: options.natsUser as string | undefined,
    pass: options.natsPass as string | undefined,
    credsFile: options.natsCreds as string | undefined,
    tls: tls ? { caFile: options.natsTlsCa as string | undefined, certFile: options.natsTlsCert as string | undefined, keyFile: options.natsTlsKey as string | undefined } : undefined,
  };
}

function backendsFor(options: Options, name: string): BackendsFactory {
  if (!options.nats) return memoryBackends;
  return natsBackends(
    natsSettings(options, name),
    {
      kind: (options.fabric as 'tcp' | 'verbs' | 'sim' | undefined) ?? 'sim',
      rdmaDevice: options.rdmaDevice as string | undefined,
      gidIndex: options.rdmaGidIndex as number | undefined,
      host: options.fabricHost as string | undefined,
      port: options.fabricPort as number | undefined,
      advertiseHost: options.advertiseHost as string | undefined,
    },
    { bucket: options.discoveryBucket as string | undefined, heartbeatIntervalMs: options.heartbeatMs as number | undefined },
  );
}

/** The process's logger: `--log-format json` writes JSON lines to stderr with pino, `text` key=value lines. */
function loggerFor(options: Options): Logger {
  const level = options.logLevel as LogLevel;
  return options.logFormat === 'json' ? pinoLogger({ level, clock: realClock }) : consoleLogger(level);
}

function baseConfig(options: Options): ClusterConfig {
  return {
    seed: (options.seed as number | undefined) ?? realSeed(),
    pageBytes: options.pageBytes as number,
    pageCount: options.pages as number,
    logLevel: options.logLevel as LogLevel,
    log: loggerFor(options),
    deadlines: options.deadlines as Partial<Deadlines> | undefined,
    ...routingConfig(options),
    trace: traceConfig(options),
    ...(options.otelConsole === true ? { otel: { exporter: new ConsoleSpanExporter() } } : {}),
    ...(typeof options.model === 'string' ? { llama: llamaConfig(options) } : {}),
    engine: {
      modelName: (options.modelName as string | undefined) ?? 'tandem-sim',
      speedup: options.speedup as number,
      kvBytesPerToken: options.kvBytesPerToken as number,
      eosEvery: options.eosEvery as number | undefined,
    },
  };
}

/** The llama engine settings of `--model` and its companions. */
function llamaConfig(options: Options): LlamaClusterConfig {
  return {
    modelPath: options.model as string,
    sequencesMax: options.sequences as number,
    gpu: options.gpu === 'cpu' || options.gpu === undefined ? false : (options.gpu as 'cuda' | 'vulkan' | 'metal' | 'auto'),
    ...(options.modelName !== undefined ? { modelName: options.modelName as string } : {}),
    ...(options.threads !== undefined ? { threads: options.threads as number } : {}),
    ...(options.contextTokens !== undefined ? { contextTokensMax: options.contextTokens as number } : {}),
  };
}

/** Drains on SIGTERM or SIGINT: stop taking work, finish what is in flight, leave discovery, exit. */
function drainOnSignals(cluster: Cluster, timeoutMs: number): void {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`${signal} again: exiting now\n`);
      process.exit(1);
    }
    stopping = true;
    process.stderr.write(`${signal}: draining for up to ${timeoutMs} ms\n`);
    cluster.drain(timeoutMs).then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`drain failed: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}

/** Incarnation number of a process: seconds since the epoch, so a restarted worker has a newer one. */
function processEpoch(): number {
  return Math.floor(realClock.now() / 1000);
}

const program = new Command('tandem').description('Disaggregated LLM serving: prefill and decode on separate workers, KV over a fabric.');

withFabricOptions(
  withNatsOptions(
    withCommonOptions(
      program
        .command('serve')
        .description('Run a frontend, prefill and decode workers in this process (in-process transport and simulated fabric, or NATS with --nats).')
        .addOption(new Option('--host <host>', 'interface to listen on').default('127.0.0.1').env('TANDEM_HOST'))
        .addOption(new Option('-p, --port <port>', 'HTTP port (0 picks a free one)').default(8080).argParser(integer(0)).env('TANDEM_PORT'))
        .addOption(new Option('--prefill-workers <n>', 'prefill workers').default(1).argParser(integer(1)))
        .addOption(new Option('--decode-workers <n>', 'decode workers').default(1).argParser(integer(1)))
        .addOption(new Option('--mode <mode>', 'disaggregated, or aggregated (decode workers prefill locally)').choices(['disaggregated', 'aggregated']).default('disaggregated')),
    ),
    false,
  ),
  'sim',
).action(async (options: Options) => {
  const cluster = await createCluster({
    ...baseConfig(options),
    host: options.host as string,
    port: options.port as number,
    prefillWorkers: options.prefillWorkers as number,
    decodeWorkers: options.decodeWorkers as number,
    mode: options.mode as 'disaggregated' | 'aggregated',
    epoch: processEpoch(),
    instanceTag: options.nats ? `${hostname()}-${process.pid}` : undefined,
    backends: backendsFor(options, `tandem-serve-${hostname()}-${process.pid}`),
  });
  process.stderr.write(`tandem serving '${String(options.modelName ?? options.model ?? 'tandem-sim')}' at ${cluster.url}/v1 — Ctrl-C to stop\n`);
  drainOnSignals(cluster, options.drainTimeoutMs as number);
});

withNatsOptions(
  withCommonOptions(
    program
      .command('frontend')
      .description('Run the HTTP frontend; it finds workers through NATS.')
      .addOption(new Option('--host <host>', 'interface to listen on').default('127.0.0.1').env('TANDEM_HOST'))
      .addOption(new Option('-p, --port <port>', 'HTTP port (0 picks a free one)').default(8080).argParser(integer(0)).env('TANDEM_PORT')),
  ),
  true,
).action(async (options: Options) => {
  const cluster = await createCluster({
    ...baseConfig(options),
    host: options.host as string,
    port: options.port as number,
    prefillWorkers: 0,
    decodeWorkers: 0,
    backends: backendsFor(options, `tandem-frontend-${hostname()}-${process.pid}`),
  });
  process.stderr.write(`tandem frontend at ${cluster.url}/v1\n`);
  drainOnSignals(cluster, options.drainTimeoutMs as number);
});

withFabricOptions(
  withNatsOptions(
    withCommonOptions(
      program
        .command('worker')
        .description('Run one prefill or decode worker; it registers in NATS KV and moves KV over the TCP fabric.')
        .addOption(new Option('--role <role>', 'prefill or decode').choices(['prefill', 'decode']).makeOptionMandatory().env('TANDEM_ROLE'))
        .addOption(new Option('--metrics-port <port>', 'serve Prometheus metrics on GET /metrics at this port (0 picks a free one); off by default').argParser(integer(0)).env('TANDEM_METRICS_PORT'))
        .addOption(new Option('--metrics-host <host>', 'interface of the metrics listener').default('127.0.0.1').env('TANDEM_METRICS_HOST')),
    ),
    true,
  ),
  'tcp',
).action(async (options: Options) => {
  const role = options.role as 'prefill' | 'decode';
  const cluster = await createCluster({
    ...baseConfig(options),
    frontend: false,
    prefillWorkers: role === 'prefill' ? 1 : 0,
    decodeWorkers: role === 'decode' ? 1 : 0,
    epoch: processEpoch(),
    instanceTag: `${hostname()}-${process.pid}`,
    backends: backendsFor(options, `tandem-${role}-${hostname()}-${process.pid}`),
  });
  const worker = role === 'prefill' ? cluster.prefill[0] : cluster.decode[0];
  process.stderr.write(`tandem ${role} worker ${worker?.instanceId ?? ''} running\n`);
  if (options.metricsPort !== undefined) {
    const server = await serveMetrics(cluster.metrics, options.metricsHost as string, options.metricsPort as number);
    process.stderr.write(`tandem ${role} worker metrics at ${server.url}\n`);
  }
  drainOnSignals(cluster, options.drainTimeoutMs as number);
});

registerVizCommands(program);
registerSimulateCommand(program);
try {
  await program.parseAsync(process.argv);
} catch (error) {
  // A deployment that cannot start (NATS unreachable, no RDMA device, a bad model file) says why in one line.
  const code = (error as { code?: unknown }).code;
  process.stderr.write(`tandem: ${error instanceof Error ? error.message : String(error)}${typeof code === 'string' ? ` (${code})` : ''}\n`);
  process.exit(1);
}

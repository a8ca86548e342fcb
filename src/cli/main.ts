import { Command, InvalidArgumentError, Option } from 'commander';
import { createCluster } from '../runtime/cluster.js';
import { logLevels, type LogLevel } from '../log.js';

function integer(min: number) {
  return (value: string): number => {
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed < min) throw new InvalidArgumentError(`expected an integer >= ${min}, got '${value}'`);
    return parsed;
  };
}

function nonNegative(value: string): number {
  if (value === 'inf' || value === 'Infinity') return Number.POSITIVE_INFINITY;
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < 0) throw new InvalidArgumentError(`expected a number >= 0 (or 'inf'), got '${value}'`);
  return parsed;
}

const program = new Command('tandem').description('Disaggregated LLM serving: prefill and decode on separate workers, KV over a fabric.');

program
  .command('serve')
  .description('Run a frontend, prefill and decode workers in this process (memory transport, simulated fabric, sim engine).')
  .addOption(new Option('--host <host>', 'interface to listen on').default('127.0.0.1').env('TANDEM_HOST'))
  .addOption(new Option('-p, --port <port>', 'HTTP port (0 picks a free one)').default(8080).argParser(integer(0)).env('TANDEM_PORT'))
  .addOption(new Option('--prefill-workers <n>', 'prefill workers').default(1).argParser(integer(1)))
  .addOption(new Option('--decode-workers <n>', 'decode workers').default(1).argParser(integer(1)))
  .addOption(new Option('--mode <mode>', 'disaggregated, or aggregated (decode workers prefill locally)').choices(['disaggregated', 'aggregated']).default('disaggregated'))
  .addOption(new Option('--model-name <name>', 'name clients use in the model field').default('tandem-sim'))
  .addOption(new Option('--speedup <x>', "divide the sim engine's step times by x ('inf' for zero time)").default(1).argParser(nonNegative))
  .addOption(new Option('--kv-bytes-per-token <n>', 'KV bytes per token of the sim model').default(64).argParser(integer(1)))
  .addOption(new Option('--eos-every <n>', 'sim engine ends a sequence with EOS about once per n steps').argParser(integer(1)))
  .addOption(new Option('--page-bytes <n>', 'bytes per KV page').default(16 * 1024).argParser(integer(64)))
  .addOption(new Option('--pages <n>', 'KV pages per decode worker').default(4096).argParser(integer(1)))
  .addOption(new Option('--seed <n>', 'seed of ids, rooms and default sampling seeds').argParser(integer(0)))
  .addOption(new Option('--log-level <level>', 'log level').choices([...logLevels]).default('info').env('TANDEM_LOG_LEVEL'))
  .action(async (options) => {
    const cluster = await createCluster({
      host: options.host,
      port: options.port,
      prefillWorkers: options.prefillWorkers,
      decodeWorkers: options.decodeWorkers,
      mode: options.mode,
      seed: options.seed,
      pageBytes: options.pageBytes,
      pageCount: options.pages,
      logLevel: options.logLevel as LogLevel,
      engine: { modelName: options.modelName, speedup: options.speedup, kvBytesPerToken: options.kvBytesPerToken, eosEvery: options.eosEvery },
    });
    process.stderr.write(`tandem serving '${options.modelName}' at ${cluster.url}/v1 — Ctrl-C to stop\n`);
    const shutdown = async (signal: string): Promise<void> => {
      process.stderr.write(`${signal}: stopping\n`);
      await cluster.close();
      process.exit(0);
    };
    process.once('SIGINT', () => void shutdown('SIGINT'));
    process.once('SIGTERM', () => void shutdown('SIGTERM'));
  });

await program.parseAsync(process.argv);

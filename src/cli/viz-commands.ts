import Fastify from 'fastify';
import { Command, InvalidArgumentError, Option } from 'commander';
import { inspectLimits } from '../inspect/inspect-limits.js';
import { InspectionRecorder } from '../inspect/inspection-recorder.js';
import { diagramMachines, machineDiagram, toDot, toMermaid } from '../inspect/machine-diagram.js';
import { readTraceFiles } from '../inspect/trace-file.js';
import type { MachineKind } from '../inspect/transition-record.js';
import type { ClusterConfig } from '../runtime/cluster.js';
import { realClock } from '../time/real-clock.js';
import { registerUi } from '../ui/ui-routes.js';

type Options = Record<string, unknown>;

const formats = ['mermaid', 'dot', 'json'] as const;
type DiagramFormat = (typeof formats)[number];

function port(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0 || parsed > 65_535) throw new InvalidArgumentError(`expected a port number, got '${value}'`);
  return parsed;
}

/** The machines' diagrams in one format, generated from their definitions. */
export function renderMachines(format: DiagramFormat, names: readonly MachineKind[]): string {
  const diagrams = names.map((name) => machineDiagram(diagramMachines[name]));
  if (format === 'json') return `${JSON.stringify(Object.fromEntries(names.map((name, i) => [name, diagrams[i]])), null, 2)}\n`;
  const render = format === 'mermaid' ? toMermaid : toDot;
  return diagrams.map(render).join('\n');
}

/** The `trace` part of a cluster config from the `--trace` flag of serve and worker. */
export function traceConfig(options: Options): ClusterConfig['trace'] {
  return typeof options.trace === 'string' ? { file: options.trace } : undefined;
}

/**
 * Adds `tandem machines` and `tandem viz`, and the `--trace <file>` flag to the commands that
 * run workers (`serve`, `worker`). Call it after those commands are defined.
 */
export function registerVizCommands(program: Command): void {
  for (const command of program.commands) {
    if (command.name() === 'serve' || command.name() === 'worker') {
      command.addOption(new Option('--trace <file>', "append every request and room machine transition to this JSONL file (see 'tandem viz')").env('TANDEM_TRACE'));
    }
  }

  program
    .command('machines')
    .description('Print the request, room and local request machines as diagrams, generated from their definitions.')
    .addOption(new Option('--format <format>', 'output format').choices([...formats]).default('mermaid'))
    .addOption(new Option('--machine <name>', 'only this machine').choices(Object.keys(diagramMachines)))
    .action((options: Options) => {
      const names = options.machine ? [options.machine as MachineKind] : (Object.keys(diagramMachines) as MachineKind[]);
      process.stdout.write(renderMachines(options.format as DiagramFormat, names));
    });

  program
    .command('viz')
    .description('Serve the web UI over recorded JSONL traces (from --trace or a simulation), with a time slider.')
    .argument('<traces...>', 'JSONL trace files; several (one per process) are merged by time')
    .addOption(new Option('--host <host>', 'interface to listen on').default('127.0.0.1'))
    .addOption(new Option('-p, --port <port>', 'HTTP port (0 picks a free one)').default(8081).argParser(port))
    .action(async (traces: string[], options: Options) => {
      const { url } = await serveTrace(traces, options.host as string, options.port as number);
      process.stderr.write(`tandem viz at ${url}/ui — Ctrl-C to stop\n`);
    });
}

/** Serves the UI over trace files; resolves with the base URL and a way to stop. */
export async function serveTrace(traces: readonly string[], host: string, listenPort: number): Promise<{ url: string; close: () => Promise<void> }> {
  const { records, skipped, truncated } = await readTraceFiles(traces);
  if (skipped > 0) process.stderr.write(`skipped ${skipped} malformed line(s)\n`);
  if (truncated) process.stderr.write(`read only the first ${inspectLimits.traceRecordsMax} records\n`);
  const recorder = new InspectionRecorder({
    clock: realClock,
    ringMax: Math.max(1, records.length),
    requestsMax: inspectLimits.traceRecordsMax,
    transitionsPerRequestMax: 1024,
  });
  for (const record of records) recorder.record(record);
  const app = Fastify({ logger: false });
  registerUi(app, { mode: 'trace', recorder, clock: realClock, title: traces.join(', ') });
  app.get('/', async (_request, reply) => reply.redirect('/ui'));
  const address = await app.listen({ host, port: listenPort });
  process.stderr.write(`${records.length} transitions of ${recorder.index.size} requests\n`);
  return { url: address, close: () => app.close() };
}

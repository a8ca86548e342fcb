// npm run bench — the cost of disaggregation on the embedded default, as ratios measured side by
// side in one run. Each mode serves the same requests (same prompts, seeds and lengths) through
// the HTTP frontend with a zero-time sim engine, so what is measured is tandem's own overhead.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createCluster, silentLogger } from '../src/index.js';
import { benchFabric } from './fabric.js';
import { benchLlamaInterference } from './llama-interference.js';
import { benchNats } from './nats.js';
import { compareRouting } from '../simulations/routing-bench.js';
import { percentile } from './percentile.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '32' },
    'max-tokens': { type: 'string', default: '16' },
    'prompt-bytes': { type: 'string', default: '128' },
    rounds: { type: 'string', default: '2' },
    only: { type: 'string', default: 'embedded,fabric,nats,sim,routing,llama' },
    'llama-streams': { type: 'string', default: '4' },
    'llama-stream-tokens': { type: 'string', default: '32' },
    'llama-long-prompts': { type: 'string', default: '3' },
    'llama-long-tokens': { type: 'string', default: '1000' },
    'llama-threads': { type: 'string', default: '1' },
    'routing-requests': { type: 'string', default: '400' },
    'sim-requests': { type: 'string', default: '5000' },
    'nats-requests': { type: 'string', default: '300' },
  },
});
const sections = new Set(values.only.split(','));
const requests = Number(values.requests);
const concurrency = Number(values.concurrency);
const maxTokens = Number(values['max-tokens']);
const promptBytes = Number(values['prompt-bytes']);
const rounds = Number(values.rounds);

type Mode = 'disaggregated' | 'aggregated';

interface RoundResult {
  requestsPerSecond: number;
  ttftMs: number[];
  failures: number;
}

function prompt(i: number): string {
  const words = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel'];
  let text = `request ${i}:`;
  for (let w = 0; text.length < promptBytes; w++) text += ` ${words[(i * 7 + w) % words.length]}`;
  return text.slice(0, promptBytes);
}

/** One streamed completion; returns the time to the first text chunk, in ms. */
async function streamOne(url: string, i: number): Promise<number> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tandem-sim', prompt: prompt(i), max_tokens: maxTokens, temperature: 0, seed: i, stream: true, ignore_eos: true }),
  });
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
  let ttft = -1;
  let tail = '';
  const decoder = new TextDecoder();
  for await (const bytes of response.body) {
    if (ttft < 0) ttft = performance.now() - started;
    tail = (tail + decoder.decode(bytes as Uint8Array, { stream: true })).slice(-64);
  }
  if (!tail.includes('[DONE]')) throw new Error('stream ended without [DONE]');
  return ttft;
}

async function runRound(mode: Mode, label: string): Promise<RoundResult> {
  const cluster = await createCluster({ mode, port: 0, seed: 7, log: silentLogger, engine: { speedup: Number.POSITIVE_INFINITY } });
  try {
    for (let i = 0; i < 50; i++) await streamOne(cluster.url, i); // warm-up
    const ttftMs: number[] = [];
    let next = 0;
    let failures = 0;
    let done = 0;
    const started = performance.now();
    const worker = async (): Promise<void> => {
      while (next < requests) {
        const i = next++;
        try {
          ttftMs.push(await streamOne(cluster.url, i));
        } catch {
          failures++;
        }
        done++;
        if (done % 100 === 0 || done === requests) process.stderr.write(`\r  ${label}: ${done}/${requests} requests`);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const seconds = (performance.now() - started) / 1000;
    process.stderr.write('\n');
    return { requestsPerSecond: requests / seconds, ttftMs, failures };
  } finally {
    await cluster.close();
  }
}

function summarise(results: RoundResult[]) {
  const ttft = results.flatMap((r) => r.ttftMs).sort((a, b) => a - b);
  return {
    rps: results.reduce((sum, r) => sum + r.requestsPerSecond, 0) / results.length,
    p50: percentile(ttft, 50),
    p99: percentile(ttft, 99),
    failures: results.reduce((sum, r) => sum + r.failures, 0),
  };
}

async function benchEmbedded(): Promise<void> {
  process.stderr.write(
    `tandem bench: ${requests} streamed completions per round, concurrency ${concurrency}, ${promptBytes}-byte prompts, ${maxTokens} tokens, zero-time sim engine, ${rounds} interleaved round(s) per mode\n`,
  );
  const byMode: Record<Mode, RoundResult[]> = { disaggregated: [], aggregated: [] };
  for (let round = 1; round <= rounds; round++) {
    for (const mode of ['disaggregated', 'aggregated'] as const) byMode[mode].push(await runRound(mode, `round ${round} ${mode}`));
  }
  const dis = summarise(byMode.disaggregated);
  const agg = summarise(byMode.aggregated);
  const row = (name: string, s: ReturnType<typeof summarise>) =>
    `${name.padEnd(15)} ${s.rps.toFixed(0).padStart(8)} ${s.p50.toFixed(2).padStart(10)} ${s.p99.toFixed(2).padStart(10)} ${String(s.failures).padStart(8)}`;
  console.log('\nembedded cluster, HTTP + SSE, zero-time sim engine');
  console.log(`${'mode'.padEnd(15)} ${'req/s'.padStart(8)} ${'TTFT p50'.padStart(10)} ${'TTFT p99'.padStart(10)} ${'failures'.padStart(8)}`);
  console.log(row('disaggregated', dis));
  console.log(row('aggregated', agg));
  console.log(
    `ratio dis/agg   ${(dis.rps / agg.rps).toFixed(2).padStart(8)} ${(dis.p50 / agg.p50).toFixed(2).padStart(10)} ${(dis.p99 / agg.p99).toFixed(2).padStart(10)}`,
  );
  if (dis.failures + agg.failures > 0) process.exitCode = 1;
}

if (sections.has('embedded')) await benchEmbedded();
if (sections.has('fabric')) await benchFabric();
if (sections.has('nats')) await benchNats(Number(values['nats-requests']));
if (sections.has('routing')) await compareRouting(Number(values['routing-requests']), 1, (line) => console.log(line));
if (sections.has('llama')) {
  await benchLlamaInterference({
    streams: Number(values['llama-streams']),
    streamTokens: Number(values['llama-stream-tokens']),
    longPrompts: Number(values['llama-long-prompts']),
    longPromptTokens: Number(values['llama-long-tokens']),
    threads: Number(values['llama-threads']),
  });
}
if (sections.has('sim')) {
  // Simulator speed: the real actors in virtual time on 16 prefill + 16 decode workers, faults on.
  console.log('');
  const run = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('../simulations/bench.ts', import.meta.url)), '--requests', values['sim-requests']], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (run.status !== 0) process.exitCode = 1;
}

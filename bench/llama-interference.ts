// Prefill interference on a real (generated) model: a steady set of decoding streams while long
// prompts arrive, served aggregated (one worker prefills and decodes in one llama.cpp context)
// and disaggregated (a prefill process and a decode process, KV over the TCP fabric). Reports the
// inter-token latency of the running streams in both modes, side by side.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchSpec, writeTinyLlama } from '../test/helpers/gguf-writer.js';
import { startNatsServer, type NatsServer } from '../test/helpers/nats-server.js';
import { startTandem, stopAll, waitForWorkers } from '../test/helpers/tandem-process.js';
import { percentile } from './percentile.js';

/** What the benchmark runs; every field has a command-line flag in bench/main.ts. */
export interface InterferenceOptions {
  /** Decoding streams kept running (each restarts when it finishes). */
  streams: number;
  /** Tokens each stream generates per request. */
  streamTokens: number;
  /** Long prompts sent, one after another, while the streams run. */
  longPrompts: number;
  /** Length of each long prompt, in tokens (one byte each). */
  longPromptTokens: number;
  /** llama.cpp threads per worker process. */
  threads: number;
}

interface ModeResult {
  itlMs: number[];
  longTtftMs: number[];
  streamRequests: number;
  failures: number;
}

const modelName = 'bench-llama';

/** Streams one completion; returns the arrival times (ms) of its text events. */
async function streamTimes(url: string, prompt: string, maxTokens: number): Promise<number[]> {
  const response = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: modelName, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true }),
  });
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  const times: number[] = [];
  const decoder = new TextDecoder();
  let buffer = '';
  let done = false;
  for await (const bytes of response.body) {
    const now = performance.now();
    buffer += decoder.decode(bytes as Uint8Array, { stream: true });
    const events = buffer.split('\n\n');
    buffer = events.pop() ?? '';
    for (const event of events) {
      if (event.includes('[DONE]')) done = true;
      else if (event.includes('"text":"') && !event.includes('"text":""')) times.push(now);
    }
  }
  if (!done) throw new Error('stream ended without [DONE]');
  return times;
}

function longPrompt(i: number, tokens: number): string {
  const words = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel'];
  let text = `document ${i}:`;
  for (let w = 0; text.length < tokens; w++) text += ` ${words[(i * 5 + w) % words.length]}`;
  return text.slice(0, tokens);
}

async function runLoad(url: string, options: InterferenceOptions, label: string): Promise<ModeResult> {
  await streamTimes(url, 'warm up', 4);
  const result: ModeResult = { itlMs: [], longTtftMs: [], streamRequests: 0, failures: 0 };
  let longsDone = false;
  const stream = async (s: number): Promise<void> => {
    for (let r = 0; !longsDone; r++) {
      try {
        const times = await streamTimes(url, `stream ${s} request ${r}: tell me a story`, options.streamTokens);
        for (let i = 1; i < times.length; i++) result.itlMs.push(times[i]! - times[i - 1]!);
        result.streamRequests++;
      } catch {
        result.failures++;
      }
    }
  };
  const longs = async (): Promise<void> => {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    for (let i = 0; i < options.longPrompts; i++) {
      const started = performance.now();
      try {
        const times = await streamTimes(url, longPrompt(i, options.longPromptTokens), 1);
        result.longTtftMs.push((times[0] ?? Number.NaN) - started);
      } catch {
        result.failures++;
      }
      process.stderr.write(`\r  ${label}: long prompt ${i + 1}/${options.longPrompts}, ${result.itlMs.length} stream tokens so far`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    longsDone = true;
  };
  await Promise.all([longs(), ...Array.from({ length: options.streams }, (_, s) => stream(s))]);
  process.stderr.write('\n');
  return result;
}

async function aggregated(model: string, options: InterferenceOptions): Promise<ModeResult> {
  const args = ['--model', model, '--model-name', modelName, '--threads', String(options.threads), '--log-level', 'warn'];
  const serve = startTandem('serve', ['serve', '--mode', 'aggregated', '--port', '0', ...args]);
  try {
    const url = (await serve.waitFor(/at (http:\/\/\S+)\/v1/, 60_000))[1]!;
    return await runLoad(url, options, 'aggregated');
  } finally {
    await stopAll([serve]);
  }
}

async function disaggregated(model: string, options: InterferenceOptions): Promise<ModeResult> {
  const nats: NatsServer = await startNatsServer();
  const common = ['--nats', nats.url, '--model', model, '--model-name', modelName, '--threads', String(options.threads), '--log-level', 'warn', '--heartbeat-ms', '250'];
  const processes = [startTandem('prefill', ['worker', '--role', 'prefill', ...common]), startTandem('decode', ['worker', '--role', 'decode', ...common])];
  try {
    const frontend = startTandem('frontend', ['frontend', '--port', '0', ...common, '--log-level', 'info']);
    processes.push(frontend);
    const url = (await frontend.waitFor(/frontend listening .*url=(http:\/\/\S+)/, 60_000))[1]!;
    await waitForWorkers(url, { prefill: 1, decode: 1 }, processes, 60_000);
    return await runLoad(url, options, 'disaggregated');
  } finally {
    await stopAll(processes);
    await nats.stop();
  }
}

/** Runs both modes on a generated 8-layer, 512-wide model and prints the comparison. */
export async function benchLlamaInterference(options: InterferenceOptions): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-bench-gguf-'));
  try {
    const model = join(dir, 'bench.gguf');
    process.stderr.write(`llama interference: writing a ${benchSpec.layers}-layer, ${benchSpec.width}-wide random-weight model\n`);
    await writeTinyLlama(model, benchSpec);
    process.stderr.write(
      `llama interference: ${options.streams} decoding streams of ${options.streamTokens} tokens, ${options.longPrompts} prompts of ${options.longPromptTokens} tokens, ${options.threads} thread(s) per worker process\n`,
    );
    const results = { aggregated: await aggregated(model, options), disaggregated: await disaggregated(model, options) };
    console.log(`\nprefill interference, llama.cpp CPU, ${benchSpec.layers}x${benchSpec.width} model, ${options.threads} thread(s) per worker process`);
    console.log(`${'mode'.padEnd(15)} ${'ITL p50'.padStart(9)} ${'ITL p99'.padStart(9)} ${'ITL max'.padStart(9)} ${'long TTFT p50'.padStart(14)} ${'tokens'.padStart(7)} ${'failures'.padStart(9)}`);
    const summary = (result: (typeof results)['aggregated']) => {
      const itl = [...result.itlMs].sort((a, b) => a - b);
      const ttft = [...result.longTtftMs].sort((a, b) => a - b);
      return { p50: percentile(itl, 50), p99: percentile(itl, 99), max: itl.at(-1) ?? Number.NaN, ttft: percentile(ttft, 50), tokens: itl.length };
    };
    const rows = { aggregated: summary(results.aggregated), disaggregated: summary(results.disaggregated) };
    for (const [mode, row] of Object.entries(rows)) {
      const failures = results[mode as keyof typeof results].failures;
      console.log(
        `${mode.padEnd(15)} ${row.p50.toFixed(1).padStart(9)} ${row.p99.toFixed(1).padStart(9)} ${row.max.toFixed(1).padStart(9)} ${row.ttft.toFixed(0).padStart(14)} ${String(row.tokens).padStart(7)} ${String(failures).padStart(9)}`,
      );
      if (failures > 0) process.exitCode = 1;
    }
    const { aggregated: agg, disaggregated: dis } = rows;
    console.log(`${'ratio agg/dis'.padEnd(15)} ${(agg.p50 / dis.p50).toFixed(2).padStart(9)} ${(agg.p99 / dis.p99).toFixed(2).padStart(9)} ${(agg.max / dis.max).toFixed(2).padStart(9)} ${(agg.ttft / dis.ttft).toFixed(2).padStart(14)}`);
    console.log('(ms; ITL = time between streamed tokens of the running streams)');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

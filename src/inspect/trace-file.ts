import { createReadStream, createWriteStream, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Logger } from '../log.js';
import { inspectLimits } from './inspect-limits.js';
import { parseTransitionRecord, type TransitionRecord } from './transition-record.js';

/** Appends transition records to a JSONL file, one JSON object per line. */
export class TraceFileWriter {
  private readonly stream: WriteStream;
  private droppedCount = 0;

  constructor(
    readonly path: string,
    private readonly log?: Logger,
  ) {
    this.stream = createWriteStream(path, { flags: 'a' });
    this.stream.on('error', (error) => this.log?.error('trace file failed', { path, error: error.message }));
  }

  /** Records dropped because the disk could not keep up. */
  get dropped(): number {
    return this.droppedCount;
  }

  write(record: TransitionRecord): void {
    // A disk slower than the feed would grow the stream's buffer without bound; drop instead.
    if (this.stream.writableLength > inspectLimits.traceBufferBytesMax || this.stream.destroyed) {
      if (this.droppedCount++ === 0) this.log?.warn('trace file is behind; dropping records', { path: this.path });
      return;
    }
    this.stream.write(`${JSON.stringify(record)}\n`);
  }

  /** Flushes and closes the file. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.stream.destroyed || this.stream.writableFinished) {
        resolve();
        return;
      }
      this.stream.end(() => resolve());
      this.stream.once('error', () => resolve());
    });
  }
}

/** Reads JSONL trace files; malformed lines are counted and skipped, not fatal. */
export async function readTraceFiles(paths: readonly string[]): Promise<{ records: TransitionRecord[]; skipped: number; truncated: boolean }> {
  const records: TransitionRecord[] = [];
  let skipped = 0;
  let truncated = false;
  for (const path of paths) {
    const lines = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Number.POSITIVE_INFINITY });
    for await (const line of lines) {
      if (line.trim() === '') continue;
      if (records.length >= inspectLimits.traceRecordsMax) {
        truncated = true;
        break;
      }
      const parsed = parseTransitionRecord(line);
      if (typeof parsed === 'string') skipped++;
      else records.push(parsed);
    }
    lines.close();
  }
  // Files of several processes interleave by time; a stable sort keeps each file's own order.
  records.sort((a, b) => a.ts_ms - b.ts_ms);
  return { records, skipped, truncated };
}

import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LlamaContextSequence } from 'node-llama-cpp';

/**
 * Moves a sequence's KV state between llama.cpp and bytes. node-llama-cpp 3.x exposes sequence
 * state only as files (saveStateToFile / loadStateFromFile, llama_state_seq_*_file underneath),
 * so the bytes pass through a file in a memory-backed directory (/dev/shm where it exists) that
 * lives only for the call. The file holds the sequence's tokens and its K and V rows per layer.
 * Files go into a private directory made for this engine (mode 0700, created exclusively), so no
 * other user can plant or read one, and files are created exclusively ('wx'); `close()` removes it.
 */
export class LlamaStateFiles {
  private readonly parent: string;
  private directory: string | undefined;
  private counter = 0;

  constructor(
    /** Makes the file names of this engine unique within the process. */
    private readonly tag: string,
    directory?: string,
  ) {
    this.parent = directory ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
  }

  /** The directory state files of this engine go to (made on first use). */
  get path(): string | undefined {
    return this.directory;
  }

  /** Removes the engine's directory and anything left in it. */
  close(): void {
    if (this.directory !== undefined) rmSync(this.directory, { recursive: true, force: true });
    this.directory = undefined;
  }

  /** The state of `sequence` as bytes. */
  async save(sequence: LlamaContextSequence): Promise<Uint8Array> {
    const path = this.nextPath();
    try {
      await sequence.saveStateToFile(path);
      return new Uint8Array(await readFile(path));
    } finally {
      await rm(path, { force: true });
    }
  }

  /**
   * Loads `bytes` into `sequence`. llama.cpp trusts the file to come from the same model (a
   * foreign one may crash the process), which is why decode checks the payload's model stamp
   * before it ever gets here.
   */
  async load(sequence: LlamaContextSequence, bytes: Uint8Array): Promise<void> {
    const path = this.nextPath();
    try {
      await writeFile(path, bytes, { flag: 'wx' });
      await sequence.loadStateFromFile(path, { acceptRisk: true });
    } finally {
      await rm(path, { force: true });
    }
  }

  private nextPath(): string {
    this.directory ??= mkdtempSync(join(this.parent, `tandem-kv-${process.pid}-`));
    return join(this.directory, `${this.tag}-${this.counter++}.state`);
  }
}

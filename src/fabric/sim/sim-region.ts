import { ErrorCode, TandemError } from '../../errors.js';
import { assert } from '../../util/assert.js';
import type { Completion, Region, RegionDescriptor, RegionStats } from '../fabric.js';

/**
 * One registered region of the sim fabric: a contiguous byte array cut into pages, the owner
 * each page is held for, and the completions recorded per owner. The network applies writes
 * through `apply`, which is all-or-nothing: a write with one page not held for its owner
 * changes no byte.
 */
export class SimRegion implements Region {
  readonly descriptor: RegionDescriptor;
  readonly stats: RegionStats = { appliedWrites: 0, rejectedWrites: 0, appliedBytes: 0, completions: 0 };
  private readonly memory: Uint8Array;
  private readonly owners: (string | undefined)[];
  private readonly completions = new Map<string, Completion>();
  private readonly completionListeners = new Map<string, Set<(completion: Completion) => void>>();

  constructor(descriptor: RegionDescriptor) {
    assert(Number.isInteger(descriptor.pageBytes) && descriptor.pageBytes > 0, 'pageBytes is a positive integer');
    assert(Number.isInteger(descriptor.pageCount) && descriptor.pageCount > 0, 'pageCount is a positive integer');
    this.descriptor = descriptor;
    this.memory = new Uint8Array(descriptor.pageBytes * descriptor.pageCount);
    this.owners = new Array<string | undefined>(descriptor.pageCount).fill(undefined);
  }

  claim(pages: readonly number[], owner: string): void {
    for (const page of pages) {
      this.assertPage(page);
      const current = this.owners[page];
      assert(current === undefined, `page ${page} claimed for ${owner} is already held for ${current}`);
      this.owners[page] = owner;
    }
  }

  unclaim(pages: readonly number[], owner: string): void {
    for (const page of pages) {
      this.assertPage(page);
      const current = this.owners[page];
      assert(current === owner, `page ${page} unclaimed by ${owner} is held for ${current ?? 'nobody'}`);
      this.owners[page] = undefined;
    }
  }

  ownerOf(page: number): string | undefined {
    this.assertPage(page);
    return this.owners[page];
  }

  read(pages: readonly number[], byteLength: number): Uint8Array {
    const { pageBytes } = this.descriptor;
    assert(byteLength >= 0 && byteLength <= pages.length * pageBytes, `read of ${byteLength} bytes from ${pages.length} pages`);
    const out = new Uint8Array(byteLength);
    for (let i = 0; i * pageBytes < byteLength; i++) {
      const page = pages[i]!;
      this.assertPage(page);
      const length = Math.min(pageBytes, byteLength - i * pageBytes);
      out.set(this.memory.subarray(page * pageBytes, page * pageBytes + length), i * pageBytes);
    }
    return out;
  }

  poll(owner: string): Completion | undefined {
    return this.completions.get(owner);
  }

  onCompletion(owner: string, fn: (completion: Completion) => void): () => void {
    const landed = this.completions.get(owner);
    if (landed) {
      fn(landed);
      return () => {};
    }
    let listeners = this.completionListeners.get(owner);
    if (!listeners) {
      listeners = new Set();
      this.completionListeners.set(owner, listeners);
    }
    // Wrap so the same function subscribed twice is called twice and unsubscribes separately.
    const listener = (completion: Completion): void => fn(completion);
    listeners.add(listener);
    return () => {
      const current = this.completionListeners.get(owner);
      current?.delete(listener);
      if (current?.size === 0) this.completionListeners.delete(owner);
    };
  }

  forget(owner: string): void {
    this.completions.delete(owner);
  }

  /**
   * Checks a write against page bounds, its length and page ownership, then copies its bytes.
   * Throws TandemError(TransferFailed) and changes nothing when any check fails.
   */
  apply(owner: string, pages: readonly number[], data: Uint8Array): void {
    const { pageBytes, pageCount } = this.descriptor;
    const refuse = (why: string): never => {
      this.stats.rejectedWrites++;
      throw new TandemError(ErrorCode.TransferFailed, `write for ${owner} to region ${this.descriptor.regionId} refused: ${why}`);
    };
    if (data.byteLength > pages.length * pageBytes) {
      refuse(`${data.byteLength} bytes do not fit in ${pages.length} pages of ${pageBytes} bytes`);
    }
    const seen = new Set<number>();
    for (const page of pages) {
      if (!Number.isInteger(page) || page < 0 || page >= pageCount) refuse(`page ${page} is outside 0..${pageCount - 1}`);
      if (seen.has(page)) refuse(`page ${page} is listed twice`);
      seen.add(page);
      const current = this.owners[page];
      if (current !== owner) refuse(`page ${page} is held for ${current ?? 'nobody'}, not ${owner}`);
    }
    for (let i = 0; i * pageBytes < data.byteLength; i++) {
      const chunk = data.subarray(i * pageBytes, Math.min((i + 1) * pageBytes, data.byteLength));
      this.memory.set(chunk, pages[i]! * pageBytes);
    }
    this.stats.appliedWrites++;
    this.stats.appliedBytes += data.byteLength;
  }

  /** Records `owner`'s completion and calls its listeners; a second final write for the same owner is ignored. */
  complete(completion: Completion): boolean {
    if (this.completions.has(completion.owner)) return false;
    this.completions.set(completion.owner, completion);
    this.stats.completions++;
    const listeners = this.completionListeners.get(completion.owner);
    this.completionListeners.delete(completion.owner);
    for (const listener of listeners ?? []) listener(completion);
    return true;
  }

  private assertPage(page: number): void {
    assert(Number.isInteger(page) && page >= 0 && page < this.descriptor.pageCount, `page ${page} is outside the region`);
  }
}

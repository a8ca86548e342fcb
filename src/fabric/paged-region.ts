import { assert } from '../util/assert.js';
import type { Completion, Region, RegionDescriptor, RegionStats } from './fabric.js';

/**
 * A registered region: a contiguous byte array cut into pages, the owner each page is held for,
 * and the completions recorded per owner. Each fabric adds how writes reach `memory`.
 */
export class PagedRegion implements Region {
  readonly descriptor: RegionDescriptor;
  readonly stats: RegionStats = { appliedWrites: 0, rejectedWrites: 0, appliedBytes: 0, completions: 0 };
  /** The pages' bytes; inbound connections write here directly. */
  readonly memory: Uint8Array;
  protected readonly owners: (string | undefined)[];
  private readonly completions = new Map<string, Completion>();
  private readonly completionListeners = new Map<string, Set<(completion: Completion) => void>>();

  /** `memory`, when given, is the region's bytes (e.g. registered native memory); else they are allocated here. */
  constructor(descriptor: RegionDescriptor, memory?: Uint8Array) {
    assert(Number.isInteger(descriptor.pageBytes) && descriptor.pageBytes > 0, 'pageBytes is a positive integer');
    assert(Number.isInteger(descriptor.pageCount) && descriptor.pageCount > 0, 'pageCount is a positive integer');
    const byteLength = descriptor.pageBytes * descriptor.pageCount;
    assert(memory === undefined || memory.byteLength === byteLength, `region memory of ${memory?.byteLength} bytes for ${byteLength}`);
    this.descriptor = descriptor;
    this.memory = memory ?? new Uint8Array(byteLength);
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

  /** True when `page` (already checked to be in range) is held for `owner`; the inbound hot path. */
  heldFor(page: number, owner: string): boolean {
    return this.owners[page] === owner;
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

import { ErrorCode, TandemError } from '../errors.js';
import { assert } from '../util/assert.js';

/** Where page ownership is recorded for the fabric to enforce; a fabric Region satisfies it. */
export interface PageOwnership {
  /** Marks `pages` as held for `owner`. */
  claim(pages: readonly number[], owner: string): void;
  /** Ends `owner`'s hold on `pages`. */
  unclaim(pages: readonly number[], owner: string): void;
}

/** Options of a page pool. */
export interface PagePoolOptions {
  /** Pages in the pool, numbered 0..pageCount-1 (the region's pages). */
  pageCount: number;
  /** Told of every allocation and free, so the fabric refuses writes to pages an owner does not hold. */
  ownership: PageOwnership;
  /** Most acquire() calls that may wait for pages at once (limits.allocationWaitersMax). */
  waitersMax: number;
}

/** A snapshot of the pool's accounting. */
export interface PagePoolStats {
  /** Pages in the pool. */
  capacity: number;
  /** Pages nobody holds. */
  free: number;
  /** Pages held by owners whose transfer is live or done. */
  held: number;
  /** Pages of aborted transfers, held back until their writer can no longer write. */
  quarantined: number;
  /** acquire() calls waiting for pages. */
  waiters: number;
  /** Owners holding or quarantining pages. */
  owners: number;
}

interface Allocation {
  readonly pages: number[];
  state: 'held' | 'quarantined';
}

interface Waiter {
  readonly owner: string;
  readonly count: number;
  readonly resolve: (pages: number[]) => void;
  readonly detach: () => void;
}

/** The number of pages of `pageBytes` that `bytes` bytes fill. */
export function pagesFor(bytes: number, pageBytes: number): number {
  assert(Number.isInteger(pageBytes) && pageBytes > 0, 'pageBytes is a positive integer');
  assert(Number.isInteger(bytes) && bytes >= 0, 'bytes is a non-negative integer');
  return Math.ceil(bytes / pageBytes);
}

/**
 * The decode worker's KV pages. Each owner (a room's ownerKey) holds at most one allocation.
 * Waiters are served strictly first come, first served: a head waiter that does not fit blocks
 * the ones behind it, so large requests never starve. Freed pages go on a stack and are handed
 * out again last-freed first, which is deterministic and reuses pages as soon as possible (the
 * harshest test of fencing). Aborted transfers are quarantined: their pages stay claimed for the
 * aborted room, so a late write lands in them and nowhere else, until releaseQuarantined.
 */
export class PagePool {
  private readonly pageCount: number;
  private readonly ownership: PageOwnership;
  private readonly waitersMax: number;
  /** Free pages; the next allocation pops from the end. */
  private readonly freePages: number[];
  private readonly allocations = new Map<string, Allocation>();
  private readonly waiters: Waiter[] = [];
  private heldCount = 0;
  private quarantinedCount = 0;

  constructor(options: PagePoolOptions) {
    assert(Number.isInteger(options.pageCount) && options.pageCount > 0, 'pageCount is a positive integer');
    assert(Number.isInteger(options.waitersMax) && options.waitersMax >= 0, 'waitersMax is a non-negative integer');
    this.pageCount = options.pageCount;
    this.ownership = options.ownership;
    this.waitersMax = options.waitersMax;
    // Reversed so that a fresh pool hands out pages 0, 1, 2, ...
    this.freePages = Array.from({ length: options.pageCount }, (_, i) => options.pageCount - 1 - i);
  }

  /** Allocates `count` pages for `owner` now, or returns undefined when they are not free or others are waiting. */
  tryAllocate(owner: string, count: number): number[] | undefined {
    this.assertNewOwner(owner, count);
    if (this.waiters.length > 0 || count > this.freePages.length) return undefined;
    return this.allocate(owner, count);
  }

  /**
   * Allocates `count` pages for `owner`, waiting in line when they are not free. Rejects with
   * kv_capacity when the pool could never hold them or the line is full, and with the signal's
   * reason when aborted while waiting. Once it resolves the pages are held: the caller releases.
   */
  acquire(owner: string, count: number, signal?: AbortSignal): Promise<number[]> {
    this.assertNewOwner(owner, count);
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (count > this.pageCount) {
      return Promise.reject(new TandemError(ErrorCode.KvCapacity, `${count} KV pages asked for ${owner}; the pool has ${this.pageCount}`));
    }
    if (this.waiters.length === 0 && count <= this.freePages.length) return Promise.resolve(this.allocate(owner, count));
    if (this.waiters.length >= this.waitersMax) {
      return Promise.reject(
        new TandemError(ErrorCode.KvCapacity, `${this.waiters.length} requests already wait for KV pages (waitersMax); ${owner} is refused`),
      );
    }
    return new Promise<number[]>((resolve, reject) => {
      const onAbort = (): void => {
        const index = this.waiters.indexOf(waiter);
        assert(index >= 0, 'an aborted waiter is still in line');
        this.waiters.splice(index, 1);
        reject(signal?.reason);
        // The head may have been the one blocking the others.
        if (index === 0) this.wake();
      };
      const waiter: Waiter = {
        owner,
        count,
        resolve,
        detach: () => signal?.removeEventListener('abort', onAbort),
      };
      this.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Frees every page `owner` holds (not quarantined ones) and serves waiters; returns the pages freed. */
  release(owner: string): number {
    const allocation = this.allocations.get(owner);
    if (!allocation || allocation.state !== 'held') return 0;
    this.drop(owner, allocation);
    this.wake();
    return allocation.pages.length;
  }

  /** Moves `owner`'s held pages to quarantine; they stay claimed for it. Returns the pages moved. */
  quarantine(owner: string): number {
    const allocation = this.allocations.get(owner);
    if (!allocation || allocation.state !== 'held') return 0;
    allocation.state = 'quarantined';
    this.heldCount -= allocation.pages.length;
    this.quarantinedCount += allocation.pages.length;
    return allocation.pages.length;
  }

  /** Frees `owner`'s quarantined pages once its writer can no longer write; returns the pages freed. */
  releaseQuarantined(owner: string): number {
    const allocation = this.allocations.get(owner);
    if (!allocation || allocation.state !== 'quarantined') return 0;
    this.drop(owner, allocation);
    this.wake();
    return allocation.pages.length;
  }

  /** Frees the quarantined pages of every owner `predicate` accepts (e.g. all rooms of a closed writer); returns the pages freed. */
  releaseQuarantinedWhere(predicate: (owner: string) => boolean): number {
    const owners = [...this.allocations].filter(([owner, allocation]) => allocation.state === 'quarantined' && predicate(owner));
    let freed = 0;
    for (const [owner, allocation] of owners) {
      this.drop(owner, allocation);
      freed += allocation.pages.length;
    }
    if (freed > 0) this.wake();
    return freed;
  }

  /** Forgets `owner`'s allocation, held or quarantined, and frees its pages (without serving waiters). */
  private drop(owner: string, allocation: Allocation): void {
    this.allocations.delete(owner);
    if (allocation.state === 'held') this.heldCount -= allocation.pages.length;
    else this.quarantinedCount -= allocation.pages.length;
    this.free(owner, allocation.pages);
  }

  /** The pages `owner` holds or has in quarantine, in allocation order; undefined when it has none. */
  pagesOf(owner: string): readonly number[] | undefined {
    const allocation = this.allocations.get(owner);
    return allocation ? [...allocation.pages] : undefined;
  }

  /** Whether `owner`'s pages are held or quarantined; undefined when it has none. */
  stateOf(owner: string): 'held' | 'quarantined' | undefined {
    return this.allocations.get(owner)?.state;
  }

  stats(): PagePoolStats {
    return {
      capacity: this.pageCount,
      free: this.freePages.length,
      held: this.heldCount,
      quarantined: this.quarantinedCount,
      waiters: this.waiters.length,
      owners: this.allocations.size,
    };
  }

  /** Asserts free + held + quarantined = capacity, with no page in two places and no page lost. */
  checkConservation(): void {
    const seen = new Uint8Array(this.pageCount);
    const mark = (page: number, where: string): void => {
      assert(Number.isInteger(page) && page >= 0 && page < this.pageCount, `page ${page} (${where}) is outside the pool`);
      assert(seen[page] === 0, `page ${page} (${where}) is in two places at once`);
      seen[page] = 1;
    };
    for (const page of this.freePages) mark(page, 'free');
    let held = 0;
    let quarantined = 0;
    for (const [owner, allocation] of this.allocations) {
      for (const page of allocation.pages) mark(page, `${allocation.state} by ${owner}`);
      if (allocation.state === 'held') held += allocation.pages.length;
      else quarantined += allocation.pages.length;
    }
    assert(held === this.heldCount, `held pages counted ${this.heldCount}, found ${held}`);
    assert(quarantined === this.quarantinedCount, `quarantined pages counted ${this.quarantinedCount}, found ${quarantined}`);
    assert(
      this.freePages.length + held + quarantined === this.pageCount,
      `free ${this.freePages.length} + held ${held} + quarantined ${quarantined} != capacity ${this.pageCount}`,
    );
    if (this.waiters.length > 0) {
      assert(this.waiters[0]!.count > this.freePages.length, 'the head waiter waits only while its pages are not free');
    }
  }

  private assertNewOwner(owner: string, count: number): void {
    assert(Number.isInteger(count) && count > 0, `page count ${count} for ${owner} is a positive integer`);
    assert(!this.allocations.has(owner), `${owner} already has a ${this.allocations.get(owner)?.state} allocation`);
    assert(!this.waiters.some((waiter) => waiter.owner === owner), `${owner} is already waiting for pages`);
  }

  private allocate(owner: string, count: number): number[] {
    assert(count <= this.freePages.length, 'an allocation fits in the free pages');
    const pages = this.freePages.splice(this.freePages.length - count, count).reverse();
    this.ownership.claim(pages, owner);
    this.allocations.set(owner, { pages, state: 'held' });
    this.heldCount += count;
    return [...pages];
  }

  private free(owner: string, pages: number[]): void {
    this.ownership.unclaim(pages, owner);
    // Pushed in reverse so the next allocation gets them back in the same order.
    for (let i = pages.length - 1; i >= 0; i--) this.freePages.push(pages[i]!);
  }

  private wake(): void {
    for (;;) {
      const head = this.waiters[0];
      if (!head || head.count > this.freePages.length) return;
      this.waiters.shift();
      head.detach();
      head.resolve(this.allocate(head.owner, head.count));
    }
  }
}

import { assert } from '../util/assert.js';

/** A fixed-capacity FIFO: pushing onto a full ring overwrites its oldest item. */
export class RingBuffer<T> {
  private readonly items: Array<T | undefined>;
  private start = 0;
  private count = 0;
  /** Items ever pushed, including those overwritten since. */
  private pushedCount = 0;

  constructor(readonly capacityMax: number) {
    assert(Number.isInteger(capacityMax) && capacityMax > 0, `ring capacity must be a positive integer, got ${capacityMax}`);
    this.items = new Array<T | undefined>(capacityMax);
  }

  get size(): number {
    return this.count;
  }

  /** Items ever pushed; `pushed - size` were overwritten. */
  get pushed(): number {
    return this.pushedCount;
  }

  push(item: T): void {
    this.pushedCount++;
    if (this.count < this.capacityMax) {
      this.items[(this.start + this.count) % this.capacityMax] = item;
      this.count++;
      return;
    }
    this.items[this.start] = item;
    this.start = (this.start + 1) % this.capacityMax;
  }

  /** The items, oldest first. */
  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.items[(this.start + i) % this.capacityMax] as T);
    return out;
  }
}

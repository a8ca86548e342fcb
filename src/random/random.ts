/** A seeded pseudo-random source; the only randomness src/ may use. */
export interface Random {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [0, bound). */
  int(bound: number): number;
  /** A uniformly random unsigned 32-bit integer. */
  uint32(): number;
  /** A new independent stream derived from this one and `label`, so adding draws to one stream does not shift another. */
  split(label: string): Random;
  /** A random identifier of `length` lowercase base-36 characters. */
  id(length?: number): string;
}

/** FNV-1a over a string's UTF-16 units; used to turn labels into seeds. */
export function hashString(text: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** sfc32: small, fast, and good enough for workloads, jitter and ids. */
class Sfc32 implements Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 12; i++) this.uint32();
  }

  uint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) >>> 0;
    return t;
  }

  next(): number {
    return this.uint32() / 4294967296;
  }

  int(bound: number): number {
    return Math.floor(this.next() * bound);
  }

  split(label: string): Random {
    return new Sfc32(hashString(label, this.uint32()));
  }

  id(length = 12): string {
    let out = '';
    for (let i = 0; i < length; i++) out += (this.uint32() % 36).toString(36);
    return out;
  }
}

/** A deterministic Random from a 32-bit seed. */
export function seededRandom(seed: number): Random {
  return new Sfc32(seed);
}

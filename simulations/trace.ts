/**
 * A running 64-bit digest of everything observable in a run: every message and its fate, every
 * state a machine enters, every token a client receives, every outcome, each with its virtual
 * time. Two runs with the same seed and the same code give the same digest; any difference in
 * what happened, or when, changes it.
 */
export class TraceHash {
  private low = 0x811c9dc5;
  private high = 0x2f3b6c1d;
  private count = 0;

  /** Entries added so far. */
  get entries(): number {
    return this.count;
  }

  /** Adds one entry; fields are joined with a separator that cannot appear in a number. */
  add(...fields: Array<string | number | undefined>): void {
    this.count++;
    let low = this.low;
    let high = this.high;
    for (const field of fields) {
      const text = field === undefined ? '\u0000' : typeof field === 'number' ? numberText(field) : field;
      for (let i = 0; i < text.length; i++) {
        const code = text.charCodeAt(i);
        low = Math.imul(low ^ code, 0x01000193) >>> 0;
        high = Math.imul(high ^ code, 0x01000193) >>> 0;
      }
      low = Math.imul(low ^ 0x1f, 0x01000193) >>> 0;
      high = Math.imul((high ^ low) >>> 0, 0x01000193) >>> 0;
    }
    this.low = low;
    this.high = high;
  }

  /** The digest as 16 hex digits. */
  digest(): string {
    return hex32(this.high) + hex32(this.low);
  }
}

/** Times are fractions of a millisecond; nine significant digits after the point are plenty and stable. */
function numberText(value: number): string {
  return Number.isInteger(value) ? String(value) : value.toFixed(6);
}

function hex32(value: number): string {
  return (value >>> 0).toString(16).padStart(8, '0');
}

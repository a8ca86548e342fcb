/**
 * Finds stop sequences in streamed text. Text that could be the start of a stop sequence is
 * held back until the next push tells whether it is; the stop sequence itself is never emitted.
 */
export class StopMatcher {
  private held = '';
  private stopped = false;
  private readonly longest: number;

  constructor(private readonly stops: readonly string[]) {
    this.longest = Math.max(0, ...stops.map((stop) => stop.length));
  }

  /** True once a stop sequence was found. */
  get done(): boolean {
    return this.stopped;
  }

  /** Adds text; returns what can be emitted now. */
  push(text: string): string {
    if (this.stopped) return '';
    if (this.stops.length === 0) return text;
    const buffer = this.held + text;
    let cut = -1;
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      this.held = '';
      return buffer.slice(0, cut);
    }
    const keep = this.partialSuffix(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return buffer.slice(0, buffer.length - keep);
  }

  /** Returns what is held back; call when the stream ends without a stop. */
  flush(): string {
    const rest = this.stopped ? '' : this.held;
    this.held = '';
    return rest;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop sequence. */
  private partialSuffix(buffer: string): number {
    for (let length = Math.min(this.longest - 1, buffer.length); length > 0; length--) {
      const suffix = buffer.slice(buffer.length - length);
      if (this.stops.some((stop) => stop.startsWith(suffix))) return length;
    }
    return 0;
  }
}

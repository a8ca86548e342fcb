import { ErrorCode, TandemError } from '../../errors.js';
import { PagedRegion } from '../paged-region.js';

/**
 * One registered region of the sim fabric. The network applies writes through `apply`, which is
 * all-or-nothing: a write with one page not held for its owner changes no byte.
 */
export class SimRegion extends PagedRegion {
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
}

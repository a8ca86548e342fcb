import { assert } from '../../util/assert.js';

/** One RDMA WRITE: `byteLength` bytes from `dataOffset` of the write's data to `regionOffset` of the peer region. */
export interface Slice {
  dataOffset: number;
  regionOffset: number;
  byteLength: number;
}

/**
 * Cuts a write of `byteLength` bytes into pages `pages` (in order) into RDMA WRITEs of at most
 * `sliceBytesMax` bytes, merging pages that lie back to back in the region so a contiguous run
 * goes out as few work requests as possible.
 */
export function planSlices(pages: readonly number[], byteLength: number, pageBytes: number, sliceBytesMax: number): Slice[] {
  assert(sliceBytesMax > 0, 'sliceBytesMax is positive');
  assert(byteLength <= pages.length * pageBytes, `${byteLength} bytes do not fit ${pages.length} pages`);
  const slices: Slice[] = [];
  let dataOffset = 0;
  for (let i = 0; dataOffset < byteLength; i++) {
    const page = pages[i]!;
    let pageOffset = 0;
    const inPage = Math.min(pageBytes, byteLength - dataOffset);
    while (pageOffset < inPage) {
      const regionOffset = page * pageBytes + pageOffset;
      const last = slices[slices.length - 1];
      const room = last && last.regionOffset + last.byteLength === regionOffset && last.dataOffset + last.byteLength === dataOffset ? sliceBytesMax - last.byteLength : 0;
      if (last && room > 0) {
        const take = Math.min(room, inPage - pageOffset);
        last.byteLength += take;
        pageOffset += take;
        dataOffset += take;
        continue;
      }
      const take = Math.min(sliceBytesMax, inPage - pageOffset);
      slices.push({ dataOffset, regionOffset, byteLength: take });
      pageOffset += take;
      dataOffset += take;
    }
  }
  return slices;
}

import { describe, expect, it } from 'vitest';
import { planSlices } from '../src/fabric/verbs/slice-plan.js';

describe('planSlices', () => {
  it('merges pages that are back to back in the region, up to the slice limit, and splits the rest', () => {
    expect(planSlices([2, 3, 5], 300, 100, 150)).toEqual([
      { dataOffset: 0, regionOffset: 200, byteLength: 150 },
      { dataOffset: 150, regionOffset: 350, byteLength: 50 },
      { dataOffset: 200, regionOffset: 500, byteLength: 100 },
    ]);
  });

  it('cuts a page larger than the slice limit, and stops at the last byte of a partial page', () => {
    expect(planSlices([1, 0], 250, 200, 80)).toEqual([
      { dataOffset: 0, regionOffset: 200, byteLength: 80 },
      { dataOffset: 80, regionOffset: 280, byteLength: 80 },
      { dataOffset: 160, regionOffset: 360, byteLength: 40 },
      { dataOffset: 200, regionOffset: 0, byteLength: 50 },
    ]);
  });

  it('covers every byte exactly once, in order', () => {
    const pages = [7, 8, 9, 1, 2, 4];
    const slices = planSlices(pages, 6 * 64 - 5, 64, 100);
    let next = 0;
    for (const slice of slices) {
      expect(slice.dataOffset).toBe(next);
      expect(slice.byteLength).toBeGreaterThan(0);
      expect(slice.byteLength).toBeLessThanOrEqual(100);
      next += slice.byteLength;
    }
    expect(next).toBe(6 * 64 - 5);
    expect(planSlices(pages, 0, 64, 100)).toEqual([]);
  });
});

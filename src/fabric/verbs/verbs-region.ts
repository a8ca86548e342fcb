import type { RegionDescriptor } from '../fabric.js';
import { PagedRegion } from '../paged-region.js';
import type { VerbsMemory } from './verbs-addon.js';

/**
 * One registered region of the verbs fabric: its pages live in memory the addon allocated and
 * registered, so peers write into them with RDMA and the CPU here only counts immediates.
 */
export class VerbsRegion extends PagedRegion {
  /** The registration peers write through: address and rkey go to each writer in the handshake. */
  readonly registration: VerbsMemory;

  constructor(descriptor: RegionDescriptor, registration: VerbsMemory) {
    super(descriptor, new Uint8Array(registration.buffer));
    this.registration = registration;
  }
}

import { PagedRegion } from '../paged-region.js';

/**
 * One registered region of the TCP fabric. Inbound connections copy payload bytes into `memory`
 * themselves, chunk by chunk, checking ownership with `heldFor` before every copy, so a page
 * released in the middle of a write receives nothing more of it.
 */
export class TcpRegion extends PagedRegion {}

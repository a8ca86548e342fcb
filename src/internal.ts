// Building blocks for tests, simulations and custom compositions. Not a stable API.
export { DecodeWorker } from './actors/decode-worker.js';
export { PrefillWorker } from './actors/prefill-worker.js';
export { Frontend } from './actors/frontend/frontend.js';
export { Router } from './actors/router.js';
export { MemoryTransport } from './transport/memory/memory-transport.js';
export { TransportError } from './transport/transport.js';
export { MemoryDiscovery } from './discovery/memory/memory-discovery.js';
export { SimFabricNetwork } from './fabric/sim/sim-fabric.js';
export { ownerKey } from './fabric/fabric.js';
export { PagePool, pagesFor } from './kv/page-pool.js';
export { encodeKvPayload, decodeKvPayload, kvPayloadBytes } from './kv/kv-payload.js';
export { runAggregated } from './engine/aggregated.js';
export { encode, decode, schemaVersion } from './protocol/codec.js';
export { subjects, workerPrefix } from './protocol/subjects.js';
export { localRequestMachine } from './machines/local-request-machine.js';
export { VirtualClock } from './time/virtual-clock.js';
export { realClock, realSeed } from './time/real-clock.js';
export { seededRandom } from './random/random.js';

export type { DecodeWorkerStats } from './actors/decode-worker.js';
export type { PrefillWorkerStats } from './actors/prefill-worker.js';
export type { MessageOf, MessageType } from './protocol/messages.js';

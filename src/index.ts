// The public surface of tandem. Anything tests and simulations need beyond it comes from
// src/internal.ts.
export { createCluster } from './runtime/cluster.js';
export { ErrorCode, TandemError } from './errors.js';
export { defaultDeadlines, defaultLimits } from './limits.js';
export { consoleLogger, silentLogger } from './log.js';
export { SimEngine, createSimEngine } from './engine/sim/sim-engine.js';
export { requestMachine } from './machines/request-machine.js';
export { roomMachine } from './machines/room-machine.js';

export type { Cluster, ClusterConfig, SimEngineConfig } from './runtime/cluster.js';
export type { EngineFactory, EngineRole, LlamaClusterConfig } from './runtime/engine-factory.js';
export type { LlamaEngine, LlamaEngineOptions } from './engine/llama/llama-engine.js';
export type { WireError } from './errors.js';
export type { Deadlines, Limits } from './limits.js';
export type { Logger, LogLevel } from './log.js';
export type { Engine, EngineKvEvent, ModelInfo, SamplingParams, ChatMessage } from './engine/engine.js';
export type { RoutingMode } from './actors/router.js';
export type { ConditionalDisaggregation, PrefillPlacement } from './routing/prefill-placement.js';
export type { Fabric, Region, RegionDescriptor, FabricConnection } from './fabric/fabric.js';
export type { Transport, TransportError, ReplyStream, StreamWriter, MessageHeaders, PublishOptions } from './transport/transport.js';
export type { OtelOptions } from './trace/otel.js';
export type { Discovery, WorkerRecord } from './discovery/discovery.js';
export type { Clock } from './time/clock.js';
export type { Random } from './random/random.js';

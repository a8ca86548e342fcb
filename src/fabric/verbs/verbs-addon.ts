import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/**
 * The typed face of the native ibverbs binding (native/). The addon is a thin layer: it opens a
 * device, registers memory, drives queue pairs and reports completions and async events; every
 * decision about what to write where stays in TypeScript.
 */

/** Where `npm install` builds the addon. */
export const verbsAddonPath = fileURLToPath(new URL('../../../native/build/Release/tandem_verbs.node', import.meta.url));

/** The test-only verbs library built next to the addon: an in-process loopback device named fake0. */
export const fakeVerbsLibraryPath = fileURLToPath(new URL('../../../native/build/Release/fake_verbs.so', import.meta.url));

/** The library loaded when neither an option nor TANDEM_VERBS_LIBRARY names another. */
export const defaultVerbsLibrary = 'libibverbs.so.1';

/** Why no RDMA device can be used; 'ok' when at least one can. */
export type VerbsReason = 'ok' | 'addon_not_built' | 'library_missing' | 'no_kernel_support' | 'no_device' | 'error';

/** An RDMA device libibverbs lists. */
export interface VerbsDevice {
  name: string;
  /** Node GUID as 16 hex digits. */
  guid: string;
}

/** The answer of listDevices: the devices, or the reason there are none. */
export interface VerbsDeviceList {
  reason: VerbsReason;
  message: string;
  devices: VerbsDevice[];
}

/** What ibv_query_port reports about one port. */
export interface VerbsPort {
  /** ibv_port_state; 4 is ACTIVE. */
  state: number;
  /** The port's LID (InfiniBand); 0 on RoCE. */
  lid: number;
  linkLayer: 'infiniband' | 'ethernet';
  /** ibv_mtu enum value (1 = 256 B ... 5 = 4096 B). */
  activeMtu: number;
  gidTableLength: number;
}

/** Memory allocated and registered by the addon; `buffer` is its bytes, valid until collected. */
export interface VerbsMemory {
  id: number;
  buffer: ArrayBuffer;
  address: bigint;
  lkey: number;
  rkey: number;
}

/** One work completion, as ibv_poll_cq returned it. */
export interface VerbsCompletion {
  wrId: number;
  /** ibv_wc_status; 0 is success. */
  status: number;
  statusName: string;
  qpn: number;
  vendorError: number;
  /** Only on success: 'write', 'receive_immediate', ... */
  opcode?: string;
  byteLength?: number;
  /** The immediate value, host order, on a receive completed by WRITE_WITH_IMM. */
  imm?: number;
}

/** One async event (ibv_get_async_event). */
export interface VerbsAsyncEvent {
  /** ibv_event_type. */
  type: number;
  typeName: string;
  /** Set on queue-pair events. */
  qpn?: number;
  /** Set on port events. */
  port?: number;
}

/** Address of the peer queue pair for the INIT -> RTR transition. */
export interface VerbsRtrAttributes {
  port: number;
  destQpn: number;
  rqPsn: number;
  /** ibv_mtu enum value. */
  mtu: number;
  /** The peer's LID; used on InfiniBand when no GID is given. */
  lid: number;
  /** The peer's GID: required on RoCE, optional on InfiniBand. */
  gid?: Buffer;
  /** Index of this side's GID used as the source. */
  gidIndex?: number;
}

/** An opened device: protection domain, one completion queue with its channel, queue pairs. */
export interface VerbsContext {
  readonly deviceName: string;
  queryPort(port: number): VerbsPort;
  queryGid(port: number, index: number): Buffer;
  registerMemory(byteLength: number): VerbsMemory;
  deregisterMemory(id: number): void;
  createQueuePair(sendWrMax: number, recvWrMax: number): number;
  modifyQueuePair(qpn: number, target: 'init', attributes: { port: number }): void;
  modifyQueuePair(qpn: number, target: 'rtr', attributes: VerbsRtrAttributes): void;
  modifyQueuePair(qpn: number, target: 'rts', attributes: { sqPsn: number; timeout?: number; retryCount?: number; rnrRetry?: number }): void;
  modifyQueuePair(qpn: number, target: 'error'): void;
  queuePairState(qpn: number): string;
  destroyQueuePair(qpn: number): void;
  /** Posts a signaled RDMA WRITE, or WRITE_WITH_IMM when `imm` is a number. */
  postWrite(qpn: number, wrId: number, localAddress: bigint, byteLength: number, lkey: number, remoteAddress: bigint, rkey: number, imm: number | null): void;
  /** Posts a receive without buffers, for one immediate. */
  postReceive(qpn: number, wrId: number): void;
  /** Starts watching the completion channel and async events through libuv. */
  start(onCompletions: (completions: VerbsCompletion[]) => void, onAsyncEvent: (event: VerbsAsyncEvent) => void): void;
  close(): void;
}

/** The addon's exports. */
export interface VerbsAddon {
  load(libraryPath: string): { loaded: boolean; path: string; message: string };
  listDevices(): VerbsDeviceList;
  memlockLimit(): { softBytes: number; hardBytes: number };
  /** Test hook of the fake library; throws with any other. */
  fakeControl(command: string, value: number): number;
  Context: new (deviceName: string, completionQueueEntries: number) => VerbsContext;
}

let cachedAddon: VerbsAddon | string | undefined;

/** The addon, or why it cannot be loaded (not built, or built for another Node). */
export function loadVerbsAddon(): VerbsAddon | string {
  if (cachedAddon !== undefined) return cachedAddon;
  if (!existsSync(verbsAddonPath)) {
    cachedAddon = `the native addon is not built (${verbsAddonPath} is missing; run npm install with libibverbs-dev installed)`;
    return cachedAddon;
  }
  try {
    cachedAddon = createRequire(import.meta.url)(verbsAddonPath) as VerbsAddon;
  } catch (error) {
    cachedAddon = `the native addon does not load: ${(error as Error).message}`;
  }
  return cachedAddon;
}

/** The library to load: the explicit path, else TANDEM_VERBS_LIBRARY, else libibverbs.so.1. */
export function verbsLibraryPath(explicit?: string): string {
  return explicit ?? process.env['TANDEM_VERBS_LIBRARY'] ?? defaultVerbsLibrary;
}

/** Whether the verbs fabric can run here: the addon, the library and the devices, or why not. */
export interface VerbsAvailability extends VerbsDeviceList {
  addon: VerbsAddon | undefined;
  libraryPath: string;
}

/** Loads the addon and the library and lists devices; never throws. */
export function verbsAvailability(libraryPath?: string): VerbsAvailability {
  const path = verbsLibraryPath(libraryPath);
  const addon = loadVerbsAddon();
  if (typeof addon === 'string') return { reason: 'addon_not_built', message: addon, devices: [], addon: undefined, libraryPath: path };
  const loaded = addon.load(path);
  if (!loaded.loaded) return { reason: 'library_missing', message: loaded.message, devices: [], addon, libraryPath: path };
  return { ...addon.listDevices(), addon, libraryPath: path };
}

import type { Logger } from '../../log.js';
import { assert } from '../../util/assert.js';
import type { QueuePairAddress } from './control-codec.js';
import type { VerbsAddon, VerbsAsyncEvent, VerbsCompletion, VerbsContext, VerbsPort } from './verbs-addon.js';
import { AsyncEventType, VerbsError, fatalQueuePairEvents } from './verbs-errors.js';

/** What a queue pair's owner hears from the device. */
export interface QueuePairHandler {
  /** A work completion of this queue pair (send or receive). */
  onCompletion(completion: VerbsCompletion): void;
  /** The queue pair can carry nothing more: a fatal async event, or its port went down. */
  onFatal(error: VerbsError): void;
}

/** Options of a device attachment. */
export interface VerbsDeviceOptions {
  /** RDMA device to open, as `ibv_devices` lists it. */
  deviceName: string;
  /** Physical port, from 1. */
  port: number;
  /** Index of the local GID used as the source address on RoCE (and routed InfiniBand). */
  gidIndex: number;
  /** Entries of the one completion queue every queue pair of the device shares. */
  completionQueueEntries: number;
  /** Where port warnings, unhandled async events and teardown failures go. */
  log: Logger;
}

const portActive = 4;

/**
 * One opened RDMA device shared by a fabric's regions and connections: completions and async
 * events arrive through libuv on the JS thread and are routed to the queue pair they belong to.
 */
export class VerbsDevice {
  readonly context: VerbsContext;
  readonly portInfo: VerbsPort;
  readonly gid: Buffer;
  private readonly handlers = new Map<number, QueuePairHandler>();
  private closed = false;

  constructor(
    addon: VerbsAddon,
    private readonly options: VerbsDeviceOptions,
  ) {
    this.context = new addon.Context(options.deviceName, options.completionQueueEntries);
    try {
      this.portInfo = this.context.queryPort(options.port);
      if (this.portInfo.state !== portActive) options.log.warn('rdma port is not active', { device: options.deviceName, port: options.port, state: this.portInfo.state });
      this.gid = this.context.queryGid(options.port, options.gidIndex);
      this.context.start(
        (completions) => this.dispatch(completions),
        (event) => this.onAsyncEvent(event),
      );
    } catch (error) {
      this.context.close();
      throw error;
    }
  }

  /** Creates an RC queue pair in INIT whose completions go to `handler`. */
  createQueuePair(handler: QueuePairHandler, sendWrMax: number, recvWrMax: number): number {
    assert(!this.closed, 'a closed device creates no queue pair');
    const qpn = this.context.createQueuePair(sendWrMax, recvWrMax);
    this.handlers.set(qpn, handler);
    try {
      this.context.modifyQueuePair(qpn, 'init', { port: this.options.port });
    } catch (error) {
      this.destroyQueuePair(qpn);
      throw error;
    }
    return qpn;
  }

  /** This side's address for the handshake. */
  address(qpn: number, psn: number): QueuePairAddress {
    return { qpn, psn, lid: this.portInfo.lid, gid: this.gid.toString('hex'), mtu: this.portInfo.activeMtu };
  }

  /**
   * Moves `qpn` through RTR to RTS towards `peer`. RoCE has no LIDs, so its path always carries the
   * peer's GID; on InfiniBand the LID addresses the peer unless it has none.
   */
  connectQueuePair(qpn: number, localPsn: number, peer: QueuePairAddress): void {
    const global = this.portInfo.linkLayer === 'ethernet' || peer.lid === 0;
    this.context.modifyQueuePair(qpn, 'rtr', {
      port: this.options.port,
      destQpn: peer.qpn,
      rqPsn: peer.psn,
      mtu: Math.min(this.portInfo.activeMtu, peer.mtu),
      lid: peer.lid,
      ...(global ? { gid: Buffer.from(peer.gid, 'hex'), gidIndex: this.options.gidIndex } : {}),
    });
    this.context.modifyQueuePair(qpn, 'rts', { sqPsn: localPsn });
  }

  /**
   * Moves `qpn` to the error state (nothing more lands or leaves) and destroys it. Never throws:
   * it runs from socket 'close' handlers and teardown paths whose bookkeeping must still happen,
   * so a failure is logged (the device's close releases whatever is left).
   */
  destroyQueuePair(qpn: number): void {
    if (!this.handlers.delete(qpn) || this.closed) return;
    try {
      this.context.modifyQueuePair(qpn, 'error');
    } catch (error) {
      this.options.log.error('rdma queue pair cannot move to the error state', { device: this.options.deviceName, qpn, error: (error as Error).message });
    }
    try {
      this.context.destroyQueuePair(qpn);
    } catch (error) {
      this.options.log.error('rdma queue pair cannot be destroyed', { device: this.options.deviceName, qpn, error: (error as Error).message });
    }
  }

  /** Deregisters memory registered with `context.registerMemory`; never throws, for the same reason as destroyQueuePair. */
  deregisterMemory(id: number): void {
    if (this.closed) return;
    try {
      this.context.deregisterMemory(id);
    } catch (error) {
      this.options.log.error('rdma memory cannot be deregistered', { device: this.options.deviceName, id, error: (error as Error).message });
    }
  }

  /** Releases every queue pair, registration and the device. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handlers.clear();
    this.context.close();
  }

  private dispatch(completions: VerbsCompletion[]): void {
    for (const completion of completions) this.handlers.get(completion.qpn)?.onCompletion(completion);
  }

  private onAsyncEvent(event: VerbsAsyncEvent): void {
    const error = VerbsError.fromEvent(event);
    if (event.qpn !== undefined && fatalQueuePairEvents.has(event.type)) {
      this.handlers.get(event.qpn)?.onFatal(error);
    } else if ((event.type === AsyncEventType.PortError && event.port === this.options.port) || event.type === AsyncEventType.DeviceFatal || event.type === AsyncEventType.CqError) {
      // Reliable connections over a dead port or device would only fail later, after their retries.
      for (const handler of [...this.handlers.values()]) handler.onFatal(error);
    } else {
      this.options.log.info('rdma async event', { device: this.options.deviceName, event: event.typeName, qpn: event.qpn, port: event.port });
    }
  }
}

import type { Socket } from 'node:net';
import type { Logger } from '../../log.js';
import type { Clock, TimerId } from '../../time/clock.js';
import { ownerKey, type WriterIdentity } from '../fabric.js';
import { Fifo } from '../tcp/fifo.js';
import { ControlReader, controlVersion, encodeControl, writerMessage, type Hello, type ReceiverMessage, type WriteRequest, type WriterMessage } from './control-codec.js';
import type { VerbsCompletion } from './verbs-addon.js';
import type { QueuePairHandler, VerbsDevice } from './verbs-device.js';
import type { VerbsError } from './verbs-errors.js';
import { WcStatus } from './verbs-errors.js';
import type { VerbsRegion } from './verbs-region.js';

/** What an inbound connection needs from its fabric. */
export interface VerbsInboundHost {
  readonly clock: Clock;
  readonly log: Logger;
  readonly device: VerbsDevice;
  readonly connectTimeoutMs: number;
  /** Receives posted per queue pair, hence writes granted and not yet landed per connection. */
  readonly recvWrMax: number;
  /** Write requests waiting for a grant before the connection is dropped. */
  readonly waitingWritesMax: number;
  nextPsn(qpn: number): number;
  /** The region a hello asks for, or why it is refused. */
  admit(hello: Hello): VerbsRegion | string;
  opened(inbound: VerbsInbound): void;
  closed(inbound: VerbsInbound): void;
}

interface GrantedWrite extends WriteRequest {
  readonly owner: string;
}

/**
 * The receiving end of one writer's connection: the control socket and the queue pair the
 * writer's RDMA WRITEs arrive on. Each write request is checked against page ownership before it
 * is granted; its final WRITE_WITH_IMM consumes one posted receive, and the immediate (the room)
 * is matched, in order, to the oldest granted write, counted, and acknowledged.
 */
export class VerbsInbound implements QueuePairHandler {
  writer: WriterIdentity | undefined;
  private region: VerbsRegion | undefined;
  private qpn: number | undefined;
  private readonly reader = new ControlReader(writerMessage);
  private readonly granted = new Fifo<GrantedWrite>();
  private readonly waiting = new Fifo<GrantedWrite>();
  private nextReceiveId = 1;
  private done = false;
  private timer: TimerId | undefined;

  constructor(
    private readonly host: VerbsInboundHost,
    private readonly socket: Socket,
  ) {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    socket.on('close', () => this.destroy('the writer closed the connection'));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.timer = host.clock.setTimeout(() => {
      this.timer = undefined;
      if (!this.writer) this.destroy(`no hello within ${host.connectTimeoutMs} ms`);
    }, host.connectTimeoutMs);
  }

  /** The local queue pair number, once the hello is accepted. */
  get queuePairNumber(): number | undefined {
    return this.qpn;
  }

  onCompletion(completion: VerbsCompletion): void {
    if (this.done) return;
    if (completion.status !== WcStatus.Success) {
      this.destroy(`receive failed: ${completion.statusName} (status ${completion.status})`);
      return;
    }
    const write = this.granted.shift();
    if (!write || completion.imm !== write.room) {
      this.destroy(`immediate ${completion.imm} does not match the oldest granted write (room ${write?.room ?? 'none'})`);
      return;
    }
    try {
      this.host.device.context.postReceive(this.qpn!, this.nextReceiveId++);
    } catch (error) {
      this.destroy(`cannot repost a receive: ${(error as Error).message}`);
      return;
    }
    const region = this.region!;
    const released = write.pages.find((page) => !region.heldFor(page, write.owner));
    if (released !== undefined) {
      // The bytes landed in a page released meanwhile; fencing keeps such pages quarantined until this connection is gone.
      region.stats.rejectedWrites++;
      this.send({ t: 'rejected', seq: write.seq, message: `page ${released} was released while the write for ${write.owner} was in flight` });
    } else {
      region.stats.appliedWrites++;
      region.stats.appliedBytes += write.byteLength;
      if (write.final) region.complete({ owner: write.owner, imm: completion.imm, atMs: this.host.clock.now() });
      this.send({ t: 'applied', seq: write.seq });
    }
    this.grant();
  }

  onFatal(error: VerbsError): void {
    this.destroy(error.message);
  }

  /** Drops the connection: the queue pair goes to error first, so nothing from this writer lands afterwards. */
  destroy(why: string): void {
    if (this.done) return;
    this.done = true;
    if (this.timer !== undefined) this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (this.writer) this.host.log.debug('verbs inbound connection closed', { writer: this.writer.instanceId, epoch: this.writer.epoch, why });
    if (this.qpn !== undefined) this.host.device.destroyQueuePair(this.qpn);
    this.socket.destroy();
    this.host.closed(this);
  }

  private onData(chunk: Buffer): void {
    const messages = this.reader.push(chunk);
    if (typeof messages === 'string') {
      this.destroy(messages);
      return;
    }
    for (const message of messages) {
      if (this.done) return;
      this.onMessage(message);
    }
  }

  private onMessage(message: WriterMessage): void {
    if (message.t === 'hello') {
      if (this.writer) return this.destroy('a second hello');
      return this.accept(message);
    }
    if (!this.writer) return this.destroy('a write before hello');
    const region = this.region!;
    const owner = ownerKey(this.writer, message.room);
    const why = this.refusal(message, owner);
    if (why !== undefined) {
      region.stats.rejectedWrites++;
      this.send({ t: 'rejected', seq: message.seq, message: why });
      return;
    }
    if (this.waiting.length >= this.host.waitingWritesMax) return this.destroy(`more than ${this.host.waitingWritesMax} writes wait for a grant (waitingWritesMax)`);
    this.waiting.push({ ...message, owner });
    this.grant();
  }

  private accept(hello: Hello): void {
    if (hello.version !== controlVersion) return this.refuse(`control version ${hello.version} is not ${controlVersion}`);
    const region = this.host.admit(hello);
    if (typeof region === 'string') return this.refuse(region);
    const { device, recvWrMax } = this.host;
    let psn = 0;
    try {
      this.qpn = device.createQueuePair(this, 1, recvWrMax);
      psn = this.host.nextPsn(this.qpn);
      for (let i = 0; i < recvWrMax; i++) device.context.postReceive(this.qpn, this.nextReceiveId++);
      device.connectQueuePair(this.qpn, psn, hello);
    } catch (error) {
      return this.refuse(`cannot set up a queue pair: ${(error as Error).message}`);
    }
    this.region = region;
    this.writer = { instanceId: hello.instanceId, epoch: hello.epoch };
    if (this.timer !== undefined) this.host.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.host.opened(this);
    const { registration } = region;
    this.send({ t: 'welcome', ...device.address(this.qpn, psn), address: registration.address.toString(), rkey: registration.rkey });
  }

  private refuse(message: string): void {
    this.send({ t: 'refused', message });
    this.socket.end();
  }

  /** Grants waiting writes while receives are free, re-checking ownership (it may have changed while they waited). */
  private grant(): void {
    const region = this.region!;
    while (!this.done && this.waiting.length > 0 && this.granted.length < this.host.recvWrMax) {
      const write = this.waiting.shift()!;
      const released = write.pages.find((page) => !region.heldFor(page, write.owner));
      if (released !== undefined) {
        region.stats.rejectedWrites++;
        this.send({ t: 'rejected', seq: write.seq, message: `page ${released} is not held for ${write.owner}` });
        continue;
      }
      this.granted.push(write);
      this.send({ t: 'grant', seq: write.seq });
    }
  }

  /** Why a write request is refused outright, or undefined when its pages are held for its room. */
  private refusal(write: WriteRequest, owner: string): string | undefined {
    const { pageBytes, pageCount } = this.region!.descriptor;
    if (write.byteLength > write.pages.length * pageBytes) return `${write.byteLength} bytes do not fit ${write.pages.length} pages of ${pageBytes} B`;
    for (const page of write.pages) {
      if (page >= pageCount) return `page ${page} is outside the region's ${pageCount} pages`;
      if (!this.region!.heldFor(page, owner)) return `page ${page} is not held for ${owner}`;
    }
    return undefined;
  }

  private send(message: ReceiverMessage): void {
    if (!this.socket.destroyed) this.socket.write(encodeControl(message));
  }
}

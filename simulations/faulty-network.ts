import type { Random } from '../src/index.js';
import { chance } from './random-streams.js';
import type { FaultPlan } from './scenario.js';

/** What happens to one message on its way from one actor to another. */
export interface MessageFate {
  drop: boolean;
  duplicate: boolean;
  /** Extra time in transit, on top of the transport's latency. */
  delayMs: number;
  /** A small delay meant to let the next message overtake this one (stream chunks: swapped with the next). */
  reorder: boolean;
  /** Why it was dropped or delayed, for the request's history; undefined when nothing happened. */
  fault: string | undefined;
}

/** Kinds of traffic: a request or published message, a reply, a stream opening, a stream chunk. */
export type TrafficKind = 'message' | 'reply' | 'open' | 'chunk';

const clean: MessageFate = { drop: false, duplicate: false, delayMs: 0, reorder: false, fault: undefined };

/**
 * The network between the simulated actors: who listens on which subject, which actors are
 * down, which links are cut, and the per-message faults of the plan. Every transport wrapper and
 * the fabric hooks consult it, so a partition cuts messages and fabric writes alike.
 */
export class FaultyNetwork {
  /** False once the run heals: from then on only crashed-and-not-yet-restarted actors lose messages. */
  faulty = true;
  private readonly owners = new Map<string, string>();
  private readonly down = new Set<string>();
  /** "from>to" → number of partitions cutting that direction now (they may overlap). */
  private readonly cuts = new Map<string, number>();
  readonly counters: Record<string, number> = {};

  constructor(
    private readonly plan: FaultPlan['messages'],
    private readonly random: Random,
  ) {}

  /** Records that `actor` listens on `subject` (subjects name one worker instance). */
  claim(subject: string, actor: string): void {
    this.owners.set(subject, actor);
  }

  /** The actor listening on `subject`, if any ever did. */
  ownerOf(subject: string): string | undefined {
    return this.owners.get(subject);
  }

  isDown(actor: string): boolean {
    return this.down.has(actor);
  }

  setDown(actor: string, isDown: boolean): void {
    if (isDown) this.down.add(actor);
    else this.down.delete(actor);
  }

  /** Cuts the link from `a` to `b` (and back unless `oneWay`). */
  cut(a: string, b: string, oneWay: boolean): void {
    for (const key of oneWay ? [`${a}>${b}`] : [`${a}>${b}`, `${b}>${a}`]) this.cuts.set(key, (this.cuts.get(key) ?? 0) + 1);
  }

  /** Undoes one `cut` with the same arguments. */
  mend(a: string, b: string, oneWay: boolean): void {
    for (const key of oneWay ? [`${a}>${b}`] : [`${a}>${b}`, `${b}>${a}`]) {
      const left = (this.cuts.get(key) ?? 0) - 1;
      if (left > 0) this.cuts.set(key, left);
      else this.cuts.delete(key);
    }
  }

  /** Whether messages from `from` to `to` are cut now. */
  isCut(from: string, to: string): boolean {
    return this.cuts.has(`${from}>${to}`);
  }

  /** Links cut now, for reports. */
  cutLinks(): string[] {
    return [...this.cuts.keys()];
  }

  /** Stops every random fault and mends every partition. */
  heal(): void {
    this.faulty = false;
    this.cuts.clear();
  }

  count(kind: string): void {
    this.counters[kind] = (this.counters[kind] ?? 0) + 1;
  }

  /** Decides the fate of one message from `from` to `to` (undefined: nobody listens, the transport answers). */
  decide(from: string, to: string | undefined, kind: TrafficKind): MessageFate {
    // Nobody listens on the subject, or a crashed actor's subscriptions are gone: the transport
    // itself answers (no_responders), as NATS does.
    if (to === undefined || to === from || this.down.has(to)) return clean;
    if (this.down.has(from)) {
      this.count(`${kind}.lost-to-crash`);
      return { ...clean, drop: true, fault: `lost: ${from} is down` };
    }
    if (this.cuts.has(`${from}>${to}`)) {
      this.count(`${kind}.partitioned`);
      return { ...clean, drop: true, fault: `lost: ${from} -> ${to} is partitioned` };
    }
    if (!this.faulty || (kind === 'chunk' && !this.plan.streamChunks)) return clean;
    const { random, plan } = this;
    if (chance(random, plan.dropRate)) {
      this.count(`${kind}.dropped`);
      return { ...clean, drop: true, fault: 'dropped' };
    }
    const duplicate = kind !== 'reply' && chance(random, plan.duplicateRate);
    let delayMs = 0;
    let reorder = false;
    let fault: string | undefined;
    if (chance(random, plan.delayRate)) {
      delayMs = random.next() * plan.delayMsMax;
      fault = `delayed ${delayMs.toFixed(1)} ms`;
      this.count(`${kind}.delayed`);
    } else if (chance(random, plan.reorderRate)) {
      delayMs = random.next() * plan.reorderMsMax;
      reorder = true;
      fault = `reordered (+${delayMs.toFixed(2)} ms)`;
      this.count(`${kind}.reordered`);
    }
    if (duplicate) {
      this.count(`${kind}.duplicated`);
      fault = fault ? `${fault}, duplicated` : 'duplicated';
    }
    return { drop: false, duplicate, delayMs, reorder, fault };
  }
}

import { assert } from '../../util/assert.js';
import type { MessageHandler } from '../transport.js';

/** One subscription as the memory transport routes to it. */
export interface Route {
  readonly subject: string;
  readonly queue: string | undefined;
  readonly handler: MessageHandler;
  /** False once unsubscribed, so deliveries already scheduled skip it. */
  active: boolean;
}

interface QueueGroup {
  readonly members: Route[];
  /** Round-robin cursor; deterministic so simulated runs replay exactly. */
  nextIndex: number;
}

interface SubjectRoutes {
  readonly plain: Route[];
  readonly groups: Map<string, QueueGroup>;
}

/** Subscriptions by exact subject, with queue groups served round-robin. */
export class SubjectTable {
  private readonly bySubject = new Map<string, SubjectRoutes>();
  private routeCount = 0;

  /** Live subscriptions, for leak checks. */
  get size(): number {
    return this.routeCount;
  }

  add(route: Route): void {
    let routes = this.bySubject.get(route.subject);
    if (!routes) {
      routes = { plain: [], groups: new Map() };
      this.bySubject.set(route.subject, routes);
    }
    if (route.queue === undefined) {
      routes.plain.push(route);
    } else {
      const group = routes.groups.get(route.queue) ?? { members: [], nextIndex: 0 };
      group.members.push(route);
      routes.groups.set(route.queue, group);
    }
    this.routeCount++;
  }

  remove(route: Route): void {
    const routes = this.bySubject.get(route.subject);
    assert(routes, 'a live route has a subject entry');
    const group = route.queue === undefined ? undefined : routes.groups.get(route.queue);
    const list = group ? group.members : routes.plain;
    const index = list.indexOf(route);
    assert(index >= 0, 'a live route is listed under its subject');
    list.splice(index, 1);
    this.routeCount--;
    if (group && group.members.length === 0 && route.queue !== undefined) routes.groups.delete(route.queue);
    if (routes.plain.length === 0 && routes.groups.size === 0) this.bySubject.delete(route.subject);
  }

  /** Who receives the next message on `subject`: every plain route and one member per group. */
  pick(subject: string): Route[] {
    const routes = this.bySubject.get(subject);
    if (!routes) return [];
    const picked = [...routes.plain];
    for (const group of routes.groups.values()) {
      const member = group.members[group.nextIndex % group.members.length];
      assert(member, 'an empty queue group is removed');
      group.nextIndex = (group.nextIndex + 1) % group.members.length;
      picked.push(member);
    }
    return picked;
  }

  /** Deactivates every route, for shutdown. */
  clear(): void {
    for (const routes of this.bySubject.values()) {
      for (const route of routes.plain) route.active = false;
      for (const group of routes.groups.values()) for (const route of group.members) route.active = false;
    }
    this.bySubject.clear();
    this.routeCount = 0;
  }
}


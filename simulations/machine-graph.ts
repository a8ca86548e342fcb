import type { AnyStateMachine } from 'xstate';

/**
 * The edges of a flat machine's state graph, read from its definition so the checker follows
 * the machine as it changes: every `on`, `after`, invoke `onDone`/`onError` and `always`
 * transition of each state, plus the root's transitions (such as CANCEL) from every non-final
 * state. A transition without a target keeps the state, which the inspection does not report
 * as a step.
 */
export class MachineGraph {
  readonly initial: string;
  /** States the machine may be in when it has started: the initial one and where `always` leads from it. */
  readonly startStates: ReadonlySet<string>;
  readonly finalStates: ReadonlySet<string>;
  private readonly edges = new Map<string, Set<string>>();

  constructor(readonly machine: AnyStateMachine) {
    const root = machine.root;
    const states = Object.entries(root.states);
    const finals = new Set<string>();
    const always = new Map<string, string[]>();
    for (const [key, node] of states) {
      const targets = new Set<string>();
      if (node.type === 'final') finals.add(key);
      for (const transitions of node.transitions.values()) {
        for (const transition of transitions) for (const target of transition.target ?? []) targets.add(target.key);
      }
      const eventless = (node.always ?? []).flatMap((transition) => (transition.target ?? []).map((target) => target.key));
      for (const target of eventless) targets.add(target);
      always.set(key, eventless);
      if (node.type !== 'final') {
        for (const transitions of root.transitions.values()) {
          for (const transition of transitions) for (const target of transition.target ?? []) targets.add(target.key);
        }
      }
      this.edges.set(key, targets);
    }
    this.finalStates = finals;
    const initialKey = root.initial?.target?.[0]?.key ?? states[0]?.[0];
    if (initialKey === undefined) throw new Error(`machine ${machine.id} has no states`);
    this.initial = initialKey;
    const start = new Set<string>([initialKey]);
    for (const key of start) for (const next of always.get(key) ?? []) start.add(next);
    this.startStates = start;
  }

  /** Whether the machine may go from `from` to `to` in one step. */
  allows(from: string, to: string): boolean {
    return this.edges.get(from)?.has(to) ?? false;
  }

  isFinal(state: string): boolean {
    return this.finalStates.has(state);
  }

  /** Every edge, for reports. */
  edgeList(): Array<[string, string]> {
    return [...this.edges].flatMap(([from, targets]) => [...targets].map((to): [string, string] => [from, to]));
  }
}

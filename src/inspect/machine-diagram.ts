import type { AnyStateMachine } from 'xstate';
import { localRequestMachine } from '../machines/local-request-machine.js';
import { requestMachine } from '../machines/request-machine.js';
import { roomMachine } from '../machines/room-machine.js';
import type { MachineKind } from './transition-record.js';

/** One state of a machine diagram. */
export interface DiagramState {
  key: string;
  final: boolean;
  /** Ids of the actors the state invokes. */
  invokes: string[];
}

/** One transition of a machine diagram, read from the machine definition. */
export interface DiagramTransition {
  source: string;
  /** Null for a transition that runs actions and stays (no exit, no entry). */
  target: string | null;
  /** The xstate event type, e.g. `xstate.done.actor.bootstrap`; '' for eventless (always). */
  event: string;
  /** A short label: `done(bootstrap)`, `error(bootstrap)`, `after(bootstrapDeadline)`, `always`, or the event type. */
  label: string;
  guard: string | null;
  /** The state is exited and entered again. */
  reenter: boolean;
  /** Defined on the machine's root, so it applies from every state that has not ended. */
  fromRoot: boolean;
}

/** A flat machine's graph, in definition order, so every rendering of it is deterministic. */
export interface MachineDiagram {
  id: string;
  initial: string;
  states: DiagramState[];
  transitions: DiagramTransition[];
}

/** The machines `tandem machines` and the UI draw, by the name records use. */
export const diagramMachines: Readonly<Record<MachineKind, AnyStateMachine>> = {
  request: requestMachine,
  room: roomMachine,
  localRequest: localRequestMachine,
};

interface TransitionDefinition {
  eventType: string;
  target?: ReadonlyArray<{ key: string }>;
  guard?: unknown;
  reenter?: boolean;
  delay?: unknown;
}

function guardName(guard: unknown): string | null {
  if (guard === undefined || guard === null) return null;
  if (typeof guard === 'string') return guard;
  if (typeof guard === 'object' && 'type' in guard && typeof guard.type === 'string') return guard.type;
  return 'guard';
}

/** A short, stable label of an xstate event type. */
export function eventLabel(eventType: string, delay?: unknown): string {
  if (eventType === '') return 'always';
  const done = /^xstate\.done\.actor\.(.+)$/.exec(eventType);
  if (done) return `done(${done[1]})`;
  const error = /^xstate\.error\.actor\.(.+)$/.exec(eventType);
  if (error) return `error(${error[1]})`;
  if (eventType.startsWith('xstate.after.')) return `after(${typeof delay === 'string' ? delay : (eventType.split('.')[2] ?? 'delay')})`;
  return eventType;
}

/** Reads the diagram of a flat (one-level) machine from its definition. */
export function machineDiagram(machine: AnyStateMachine): MachineDiagram {
  const root = machine.root;
  const initial = root.initial?.target?.[0]?.key;
  if (initial === undefined) throw new Error(`machine '${machine.id}' has no initial state`);
  const states: DiagramState[] = [];
  const transitions: DiagramTransition[] = [];
  const convert = (source: string, definition: TransitionDefinition, fromRoot: boolean): DiagramTransition[] => {
    const base = {
      source,
      event: definition.eventType,
      label: eventLabel(definition.eventType, definition.delay),
      guard: guardName(definition.guard),
      reenter: Boolean(definition.reenter),
      fromRoot,
    };
    const targets = definition.target ?? [];
    if (targets.length === 0) return [{ ...base, target: null }];
    return targets.map((target) => ({ ...base, target: target.key }));
  };
  const rootTransitions = [...root.transitions.values()].flat() as TransitionDefinition[];
  for (const [key, node] of Object.entries(root.states)) {
    if (Object.keys(node.states).length > 0) throw new Error(`state '${key}' of '${machine.id}' is nested; only flat machines are drawn`);
    const final = node.type === 'final';
    states.push({ key, final, invokes: node.invoke.map((invoke) => invoke.id) });
    for (const definition of node.always ?? []) transitions.push(...convert(key, definition as TransitionDefinition, false));
    for (const list of node.transitions.values()) for (const definition of list) transitions.push(...convert(key, definition as TransitionDefinition, false));
    if (!final) for (const definition of rootTransitions) transitions.push(...convert(key, definition, true));
  }
  return { id: machine.id, initial, states, transitions };
}

function transitionLabel(transition: DiagramTransition): string {
  const guard = transition.guard ? ` [${transition.guard}]` : '';
  const stays = transition.target === null ? ' (stays)' : transition.reenter ? ' (re-enter)' : '';
  return `${transition.label}${guard}${stays}`;
}

/** The diagram as a Mermaid `stateDiagram-v2`. */
export function toMermaid(diagram: MachineDiagram): string {
  const lines = ['stateDiagram-v2', `  %% machine '${diagram.id}', generated from its definition by \`tandem machines\``, `  [*] --> ${diagram.initial}`];
  for (const state of diagram.states) if (state.invokes.length > 0) lines.push(`  ${state.key} : invokes ${state.invokes.join(', ')}`);
  for (const transition of diagram.transitions) {
    lines.push(`  ${transition.source} --> ${transition.target ?? transition.source} : ${transitionLabel(transition)}`);
  }
  for (const state of diagram.states) if (state.final) lines.push(`  ${state.key} --> [*]`);
  return `${lines.join('\n')}\n`;
}

function dotString(text: string): string {
  return `"${text.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`;
}

/** The diagram as a Graphviz digraph. */
export function toDot(diagram: MachineDiagram): string {
  const lines = [
    `digraph ${dotString(diagram.id)} {`,
    '  rankdir=TB;',
    '  node [shape=box, style=rounded, fontname="Helvetica"];',
    '  edge [fontname="Helvetica", fontsize=10];',
    '  "__start" [shape=point, width=0.15];',
  ];
  for (const state of diagram.states) {
    const label = state.invokes.length > 0 ? `${state.key}\\ninvokes ${state.invokes.join(', ')}` : state.key;
    lines.push(`  ${dotString(state.key)} [label=${dotString(label).replaceAll('\\\\n', '\\n')}${state.final ? ', peripheries=2' : ''}];`);
  }
  lines.push(`  "__start" -> ${dotString(diagram.initial)};`);
  for (const transition of diagram.transitions) {
    const style = transition.fromRoot ? ', style=dashed' : transition.target === null ? ', style=dotted' : '';
    lines.push(`  ${dotString(transition.source)} -> ${dotString(transition.target ?? transition.source)} [label=${dotString(transitionLabel(transition))}${style}];`);
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

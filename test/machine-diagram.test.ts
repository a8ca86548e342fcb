import { describe, expect, it } from 'vitest';
import { requestMachine, roomMachine } from '../src/index.js';
import { diagramMachines, localRequestMachine, machineDiagram, toDot, toMermaid } from '../src/internal.js';
import { requestStates } from '../src/machines/request-machine.js';
import { roomStates } from '../src/machines/room-machine.js';
import { renderMachines } from '../src/cli/viz-commands.js';

describe('machineDiagram', () => {
  it('has every state of the request machine, in definition order, with its invokes', () => {
    const diagram = machineDiagram(requestMachine);
    expect(diagram.id).toBe('request');
    expect(diagram.initial).toBe('bootstrap');
    expect(diagram.states.map((s) => s.key)).toEqual([...requestStates]);
    expect(diagram.states.filter((s) => s.final).map((s) => s.key)).toEqual(['done', 'failed', 'cancelled']);
    expect(diagram.states.find((s) => s.key === 'polling')?.invokes).toEqual(['awaitKv']);
  });

  it('has every transition of the definition, root transitions repeated from each state that has not ended', () => {
    const diagram = machineDiagram(requestMachine);
    let expected = 0;
    for (const node of Object.values(requestMachine.root.states)) {
      for (const list of node.transitions.values()) for (const t of list) expected += Math.max(1, t.target?.length ?? 0);
      expected += (node.always ?? []).length;
    }
    const nonFinal = requestStates.length - 3;
    expect(diagram.transitions).toHaveLength(expected + nonFinal);
    const edges = new Set(diagram.transitions.map((t) => `${t.source}>${t.target}:${t.label}`));
    for (const edge of [
      'bootstrap>allocation:done(bootstrap)',
      'bootstrap>bootstrap:error(bootstrap)',
      'bootstrap>failed:always',
      'bootstrap>bootstrap:after(bootstrapDeadline)',
      'prefill>null:TRANSFER_POSTED',
      'transfer>polling:always',
      'polling>cleanup:done(awaitKv)',
      'cleanup>decode:after(cleanupDeadline)',
      'decode>done:done(decode)',
      'decode>cancelled:CANCEL',
    ]) {
      expect(edges).toContain(edge);
    }
    expect(diagram.transitions.filter((t) => t.fromRoot).map((t) => t.source)).toEqual(requestStates.slice(0, nonFinal));
  });

  it('renders every state and transition in mermaid and dot', () => {
    const diagram = machineDiagram(requestMachine);
    const mermaid = toMermaid(diagram);
    const dot = toDot(diagram);
    expect(mermaid.startsWith('stateDiagram-v2\n')).toBe(true);
    expect(mermaid).toContain('[*] --> bootstrap');
    for (const state of requestStates) expect(dot).toContain(`"${state}" [label=`);
    const mermaidEdges = mermaid.split('\n').filter((line) => / --> /.test(line) && !line.includes('[*]'));
    const dotEdges = dot.split('\n').filter((line) => line.includes(' -> ') && !line.includes('__start'));
    expect(mermaidEdges).toHaveLength(diagram.transitions.length);
    expect(dotEdges).toHaveLength(diagram.transitions.length);
    for (const t of diagram.transitions) expect(mermaid).toContain(`${t.source} --> ${t.target ?? t.source} : ${t.label}`);
  });

  it('is deterministic: the same definition gives the same output', () => {
    for (const format of ['mermaid', 'dot', 'json'] as const) {
      expect(renderMachines(format, ['request', 'room', 'localRequest'])).toBe(renderMachines(format, ['request', 'room', 'localRequest']));
    }
    expect(JSON.parse(renderMachines('json', ['room'])).room).toEqual(machineDiagram(roomMachine));
  });

  it('draws the room and local request machines too', () => {
    expect(machineDiagram(roomMachine).states.map((s) => s.key)).toEqual([...roomStates]);
    expect(machineDiagram(localRequestMachine).initial).toBe('prefill');
    expect(Object.keys(diagramMachines)).toEqual(['request', 'room', 'localRequest']);
  });

  it('matches the diagram in the README', async () => {
    const { readFile } = await import('node:fs/promises');
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    expect(readme).toContain(toMermaid(machineDiagram(requestMachine)).trimEnd());
  });
});

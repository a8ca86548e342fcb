import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

const eslint = new ESLint({ cwd: process.cwd() });

async function ruleIds(code: string, filePath: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath });
  return (result?.messages ?? []).map((message) => message.ruleId ?? message.message);
}

describe('lint rules', () => {
  it('keep real time, real randomness and bare timers out of src/', async () => {
    const offenders = [
      'export const t = Date.now();',
      'export const r = Math.random();',
      'export const u = crypto.randomUUID();',
      'setTimeout(() => {}, 10);',
      'export const d = new Date();',
      "import { setTimeout as wait } from 'node:timers/promises';\nexport { wait };",
      "import { randomBytes } from 'node:crypto';\nexport { randomBytes };",
    ];
    for (const code of offenders) {
      const ids = await ruleIds(code, 'src/actors/example.ts');
      expect(ids.length, code).toBeGreaterThan(0);
      expect(ids.every((id) => id.startsWith('no-restricted')), code).toBe(true);
    }
  });

  it('allow them in the one real-clock module and in tests', async () => {
    expect(await ruleIds('export const t = Date.now();\nsetTimeout(() => {}, 1);\n', 'src/time/real-clock.ts')).toEqual([]);
    expect(await ruleIds('export const t = Date.now();\n', 'test/example.test.ts')).toEqual([]);
  });

  it('keep I/O out of machines and concrete implementations out of actors', async () => {
    expect(await ruleIds("import { readFile } from 'node:fs';\nexport { readFile };", 'src/machines/example.ts')).toContain('no-restricted-imports');
    expect(await ruleIds("import { MemoryTransport } from '../transport/memory/memory-transport.js';\nexport { MemoryTransport };", 'src/actors/example.ts')).toContain(
      'no-restricted-imports',
    );
  });
});

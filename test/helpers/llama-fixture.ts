import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chatmlTemplate, tinySpec, writeTinyLlama, type TinyLlamaSpec } from './gguf-writer.js';

/** Generated model files in a temp dir: `model` and `other` (same shapes and name, different weights). */
export interface TinyModels {
  dir: string;
  /** The model under test, with a ChatML chat template. */
  model: string;
  /** Same shapes, same general.name, different weights: its KV must be refused by `model`. */
  other: string;
  /** Same as `model` without a chat template. */
  plain: string;
  remove(): void;
}

/** Writes the tiny test models; call `remove` in afterAll. */
export async function writeTinyModels(spec: Partial<TinyLlamaSpec> = {}): Promise<TinyModels> {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-gguf-'));
  const base = { ...tinySpec, name: 'tiny-llama', chatTemplate: chatmlTemplate, ...spec };
  const files = { model: join(dir, 'tiny.gguf'), other: join(dir, 'tiny-other.gguf'), plain: join(dir, 'tiny-plain.gguf') };
  await writeTinyLlama(files.model, base);
  await writeTinyLlama(files.other, { ...base, seed: base.seed + 1000 });
  const { chatTemplate: _omitted, ...withoutTemplate } = base;
  await writeTinyLlama(files.plain, withoutTemplate);
  return { dir, ...files, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A prompt of about `length` tokens (one byte each, plus the '▁' of each space) of varied text. */
export function promptOfLength(length: number, salt = 0): string {
  const words = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india', 'juliett'];
  let text = '';
  for (let i = 0; text.length < length; i++) text += `${words[(i * 7 + salt) % words.length]} `;
  return text.slice(0, Math.max(1, length));
}

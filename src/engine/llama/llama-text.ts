import { Template } from '@huggingface/jinja';
import type { LlamaModel, Token } from 'node-llama-cpp';
import { ErrorCode, TandemError } from '../../errors.js';
import type { ChatMessage, Detokenizer } from '../engine.js';

/** Tokens of context the detokenizer passes along so a piece's leading space is rendered right. */
const detokenizeContextMax = 8;
/** Longest UTF-8 encoding of one character, in bytes (byte tokens). */
const utf8BytesMax = 4;

/**
 * Turns generated tokens into text as they arrive. A token may carry part of a UTF-8 character
 * (byte tokens do), so text that ends in an incomplete character is held back until the tokens
 * that complete it arrive; `flush` gives up on it.
 */
export class LlamaDetokenizer implements Detokenizer {
  private pending: Token[] = [];
  private previous: Token[] = [];

  constructor(private readonly model: LlamaModel) {}

  push(tokens: readonly number[]): string {
    this.pending.push(...(tokens as Token[]));
    const text = this.model.detokenize(this.pending, false, this.previous);
    // A UTF-8 character spans at most 4 byte tokens; bytes that stay invalid longer are let through.
    if (text.endsWith('\uFFFD') && this.pending.length < utf8BytesMax) return '';
    return this.take(text);
  }

  flush(): string {
    return this.pending.length === 0 ? '' : this.take(this.model.detokenize(this.pending, false, this.previous));
  }

  private take(text: string): string {
    this.previous = [...this.previous, ...this.pending].slice(-detokenizeContextMax);
    this.pending = [];
    return text;
  }
}

/** How prompts are rendered when the model file carries no chat template. */
function fallbackTemplate(messages: readonly ChatMessage[]): string {
  return messages.map((message) => `${message.role}: ${message.content}\n`).join('') + 'assistant:';
}

/**
 * The model's chat template (tokenizer.chat_template in the GGUF metadata), rendered with a
 * generation prompt; a plain `role: content` layout when the model has none.
 */
export class LlamaChatTemplate {
  private readonly template: Template | undefined;
  private readonly bosText: string;
  private readonly eosText: string;

  constructor(model: LlamaModel) {
    const source = model.fileInfo.metadata.tokenizer?.chat_template;
    this.template = typeof source === 'string' && source.length > 0 ? new Template(source) : undefined;
    this.bosText = model.tokens.bosString ?? '';
    this.eosText = model.tokens.eosString ?? '';
  }

  /** Whether the model file carries its own template. */
  get fromModel(): boolean {
    return this.template !== undefined;
  }

  apply(messages: readonly ChatMessage[]): string {
    if (!this.template) return fallbackTemplate(messages);
    try {
      return this.template.render({
        messages: messages.map((message) => ({ role: message.role, content: message.content })),
        add_generation_prompt: true,
        bos_token: this.bosText,
        eos_token: this.eosText,
      });
    } catch (error) {
      throw new TandemError(ErrorCode.BadRequest, `the model's chat template failed on these messages: ${String(error)}`, { cause: error });
    }
  }
}

import type { GenerationEvent } from './generation.js';

export type ResponseKind = 'completion' | 'chat';
type Finish = Extract<GenerationEvent, { type: 'finish' }>;

function usage(finish: Finish) {
  return { prompt_tokens: finish.promptTokens, completion_tokens: finish.completionTokens, total_tokens: finish.promptTokens + finish.completionTokens };
}

/** Builds the OpenAI-shaped bodies and stream chunks of one response. */
export function responseShape(kind: ResponseKind, id: string, model: string, created: number) {
  const chunkObject = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({ id, object: chunkObject, created, model, choices, ...extra });
  const choice = (content: string | undefined, finishReason: string | null, role = false) =>
    kind === 'chat'
      ? { index: 0, delta: content === undefined ? (role ? { role: 'assistant', content: '' } : {}) : { content }, logprobs: null, finish_reason: finishReason }
      : { index: 0, text: content ?? '', logprobs: null, finish_reason: finishReason };
  return {
    /** The non-streamed body. */
    complete(text: string, finish: Finish) {
      const only =
        kind === 'chat'
          ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: finish.finishReason }
          : { index: 0, text, logprobs: null, finish_reason: finish.finishReason };
      return { id, object: kind === 'chat' ? 'chat.completion' : 'text_completion', created, model, choices: [only], usage: usage(finish) };
    },
    /** The first chunk, announcing the assistant's role (chat only). */
    opening() {
      return kind === 'chat' ? chunk([choice(undefined, null, true)]) : undefined;
    },
    delta(text: string) {
      return chunk([choice(text, null)]);
    },
    last(finish: Finish) {
      return chunk([choice(kind === 'chat' ? undefined : '', finish.finishReason)]);
    },
    /** The usage chunk sent when `stream_options.include_usage` is set. */
    usage(finish: Finish) {
      return chunk([], { usage: usage(finish) });
    },
  };
}

import { z } from 'zod';
import type { Limits } from '../../limits.js';

// Request bodies of the OpenAI-compatible API. Unknown fields are ignored, as OpenAI clients
// send more than tandem uses; known fields of the wrong type or out of range are refused.

/** A per-state deadline: at least 1 ms, at most an hour. */
const deadlineMs = z.number().int().min(1).max(3_600_000).optional();

function shared(limits: Limits) {
  return {
    model: z.string().min(1).max(256),
    max_tokens: z.number().int().min(1).max(limits.maxTokensMax).nullish(),
    temperature: z.number().min(0).max(2).nullish(),
    top_p: z.number().gt(0).max(1).nullish(),
    n: z.literal(1, { message: 'only n=1 is supported' }).nullish(),
    stream: z.boolean().nullish(),
    stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
    seed: z.number().int().min(0).max(0xffffffff).nullish(),
    stop: z.union([z.string().min(1).max(256), z.array(z.string().min(1).max(256)).max(limits.stopSequencesMax)]).nullish(),
    /** Keep generating past EOS, up to max_tokens (benchmarks). */
    ignore_eos: z.boolean().nullish(),
    logprobs: z.union([z.null(), z.literal(false)], { message: 'logprobs are not supported' }).optional(),
    /** Per-state deadlines of this request (an extension), overriding the deployment's. */
    deadlines: z
      .strictObject({
        bootstrap_ms: deadlineMs,
        allocation_ms: deadlineMs,
        prefill_ms: deadlineMs,
        transfer_ms: deadlineMs,
        polling_ms: deadlineMs,
        cleanup_ms: deadlineMs,
        decode_ms: deadlineMs,
      })
      .nullish(),
    /** KV-aware routing weights of this request (an extension), overriding the deployment's. */
    routing: z
      .strictObject({
        overlap_weight: z.number().min(0).max(1_000_000).nullish(),
        temperature: z.number().min(0).max(100).nullish(),
      })
      .nullish(),
  };
}

export function completionSchema(limits: Limits) {
  return z.object({
    ...shared(limits),
    prompt: z.union([z.string(), z.array(z.string()).length(1, { message: 'only one prompt per request is supported' })]),
    echo: z.union([z.null(), z.literal(false)], { message: 'echo is not supported' }).optional(),
    best_of: z.union([z.null(), z.literal(1)], { message: 'best_of is not supported' }).optional(),
  });
}

const textPart = z.object({ type: z.literal('text'), text: z.string() });

export function chatSchema(limits: Limits) {
  return z.object({
    ...shared(limits),
    max_completion_tokens: z.number().int().min(1).max(limits.maxTokensMax).nullish(),
    messages: z
      .array(
        z.object({
          role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
          content: z.union([z.string(), z.array(textPart)]),
        }),
      )
      .min(1),
  });
}

export type CompletionBody = z.infer<ReturnType<typeof completionSchema>>;
export type ChatBody = z.infer<ReturnType<typeof chatSchema>>;

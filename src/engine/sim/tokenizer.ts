import type { ChatMessage, Detokenizer } from '../engine.js';

/** Token ids 0..255 are bytes; this one ends generation. The vocabulary has 257 entries. */
export const SIM_EOS_TOKEN = 256;

const encoder = new TextEncoder();

/**
 * UTF-8 bytes as token ids, no BOS. Lone UTF-16 surrogates cannot be encoded and become U+FFFD,
 * as everywhere else in the platform.
 */
export function tokenizeBytes(text: string): number[] {
  return Array.from(encoder.encode(text));
}

/**
 * Incremental UTF-8 decoding of byte tokens. A multi-byte character split across pushes is held
 * back until it is complete; EOS (and any id outside 0..255) never becomes text.
 */
export class ByteDetokenizer implements Detokenizer {
  // ignoreBOM: a U+FEFF at the start of the output is content, not a byte-order mark.
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  push(tokens: readonly number[]): string {
    const bytes = new Uint8Array(tokens.length);
    let length = 0;
    for (const token of tokens) {
      if (Number.isInteger(token) && token >= 0 && token <= 255) bytes[length++] = token;
    }
    return this.decoder.decode(bytes.subarray(0, length), { stream: true });
  }

  flush(): string {
    // Incomplete trailing bytes come out as U+FFFD; the decoder is then ready for a new stream.
    return this.decoder.decode();
  }
}

/**
 * The sim chat template: `<|role|>\n{content}\n` per message, then `<|assistant|>\n` to open the
 * reply. Content is not escaped, so a message may contain what looks like a role marker.
 */
export function applySimChatTemplate(messages: readonly ChatMessage[]): string {
  let text = '';
  for (const message of messages) text += `<|${message.role}|>\n${message.content}\n`;
  return `${text}<|assistant|>\n`;
}

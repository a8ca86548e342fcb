import type { InboundMessage, MessageHeaders } from '../transport/transport.js';

/** The W3C header name; NATS carries it next to the message as HTTP carries it next to a body. */
export const traceparentHeader = 'traceparent';

/** The longest `traceparent` a receiver accepts, the same bound the message schemas put on the field. */
const traceparentBytesMax = 512;

/** Transport headers carrying `traceparent`, or undefined when the request has none. */
export function traceHeaders(traceparent: string | undefined): MessageHeaders | undefined {
  return traceparent ? { [traceparentHeader]: traceparent } : undefined;
}

/**
 * The message body with the `traceparent` its sender put in the transport headers. The header
 * wins; the body's own `traceparent` field stays the fallback for senders that only set the field.
 */
export function withHeaderTraceparent<T extends { traceparent?: string | undefined }>(body: T, message: InboundMessage): T {
  const header = message.headers[traceparentHeader];
  if (header === undefined || header.length === 0 || header.length > traceparentBytesMax || header === body.traceparent) return body;
  return { ...body, traceparent: header };
}

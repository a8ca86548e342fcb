import type { ServerResponse } from 'node:http';
import type { FastifyReply } from 'fastify';
import { ErrorCode, TandemError } from '../../errors.js';
import type { GenerationEvent } from './generation.js';
import { httpError } from './http-error.js';
import type { responseShape } from './openai-responses.js';

// How a generation reaches the HTTP client: one JSON body, or server-sent events.

/** Collects a generation into one JSON body. */
export async function collectResponse(events: AsyncGenerator<GenerationEvent>, shape: ReturnType<typeof responseShape>): Promise<unknown> {
  let text = '';
  for await (const event of events) {
    if (event.type === 'text') text += event.text;
    else return shape.complete(text, event);
  }
  throw new TandemError(ErrorCode.Internal, 'the generation ended without finishing');
}

/** Streams SSE. Headers go out with the first event, so a request that fails before it gets a plain HTTP error. */
export async function streamResponse(
  reply: FastifyReply,
  events: AsyncGenerator<GenerationEvent>,
  shape: ReturnType<typeof responseShape>,
  includeUsage: boolean,
): Promise<void> {
  const res = reply.raw;
  try {
    let started = false;
    for await (const event of events) {
      if (!started) {
        reply.hijack();
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
        started = true;
        const opening = shape.opening();
        if (opening) await send(res, opening);
      }
      if (event.type === 'text') {
        await send(res, shape.delta(event.text));
      } else {
        await send(res, shape.last(event));
        if (includeUsage) await send(res, shape.usage(event));
        res.end('data: [DONE]\n\n');
        return;
      }
    }
  } catch (error) {
    if (!res.headersSent) throw error;
    // The stream already started: report the failure in-band, as OpenAI's API does.
    if (!res.writableEnded && !res.destroyed) {
      const { body } = httpError(TandemError.from(error));
      res.end(`data: ${JSON.stringify(body)}\n\n`);
    }
  }
}

/** Writes one SSE event, waiting for the socket to drain when the client reads slowly. */
async function send(res: ServerResponse, payload: unknown): Promise<void> {
  if (res.destroyed) throw new TandemError(ErrorCode.Cancelled, 'the client went away');
  if (!res.write(`data: ${JSON.stringify(payload)}\n\n`)) {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }
}

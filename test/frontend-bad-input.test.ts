import http from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, silentLogger, type Cluster } from '../src/index.js';
import { waitForIdle } from './helpers/cluster-idle.js';

const model = 'tandem-sim';
const httpBodyBytesMax = 16 * 1024;
const promptTokensMax = 256;
const contextTokensMax = 512;

interface BadRequest {
  /** What is wrong with the request, for the test's name. */
  name: string;
  method?: string;
  path?: string;
  /** Sent as is; objects are JSON-encoded. */
  body?: unknown;
  /** Content-Type header; default application/json. Null sends none. */
  contentType?: string | null;
  status: number;
  code?: string;
  param?: string | null;
}

const completion = (fields: Record<string, unknown>) => ({ model, prompt: 'hello', max_tokens: 4, ...fields });

const cases: BadRequest[] = [
  { name: 'malformed JSON', body: '{"model": "tandem-sim", "prompt": ', status: 400, code: 'bad_request' },
  { name: 'an empty body', body: '', status: 400, code: 'bad_request' },
  { name: 'a JSON array as the body', body: '[1, 2, 3]', status: 400, code: 'bad_request' },
  { name: 'a JSON string as the body', body: '"hello"', status: 400, code: 'bad_request' },
  { name: 'JSON null as the body', body: 'null', status: 400, code: 'bad_request' },
  { name: 'a JSON number as the body', body: '42', status: 400, code: 'bad_request' },
  { name: 'a prompt that is a number', body: completion({ prompt: 42 }), status: 400, code: 'bad_request', param: 'prompt' },
  { name: 'a missing prompt', body: { model, max_tokens: 4 }, status: 400, code: 'bad_request', param: 'prompt' },
  { name: 'a missing model', body: { prompt: 'hello' }, status: 400, code: 'bad_request', param: 'model' },
  { name: 'max_tokens as a string', body: completion({ max_tokens: 'ten' }), status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'temperature as a string', body: completion({ temperature: 'hot' }), status: 400, code: 'bad_request', param: 'temperature' },
  { name: 'stream as a string', body: completion({ stream: 'yes' }), status: 400, code: 'bad_request', param: 'stream' },
  { name: 'chat messages as a string', path: '/v1/chat/completions', body: { model, messages: 'hi' }, status: 400, code: 'bad_request', param: 'messages' },
  { name: 'no chat messages', path: '/v1/chat/completions', body: { model, messages: [] }, status: 400, code: 'bad_request', param: 'messages' },
  { name: 'a chat message with an unknown role', path: '/v1/chat/completions', body: { model, messages: [{ role: 'wizard', content: 'hi' }] }, status: 400, code: 'bad_request' },
  { name: 'a streamed request with zero max_tokens (a JSON error, not a stream)', body: completion({ stream: true, max_tokens: 0 }), status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'negative max_tokens', body: completion({ max_tokens: -5 }), status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'zero max_tokens', body: completion({ max_tokens: 0 }), status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'fractional max_tokens', body: completion({ max_tokens: 2.5 }), status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'huge max_tokens', body: completion({ max_tokens: 1e12 }), status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'max_tokens that overflows to Infinity', body: '{"model":"tandem-sim","prompt":"hello","max_tokens":1e400}', status: 400, code: 'bad_request', param: 'max_tokens' },
  { name: 'max_tokens past the context window', body: completion({ max_tokens: contextTokensMax }), status: 400, code: 'prompt_too_long' },
  { name: 'temperature above 2', body: completion({ temperature: 3 }), status: 400, code: 'bad_request', param: 'temperature' },
  { name: 'an empty prompt', body: completion({ prompt: '' }), status: 400, code: 'bad_request' },
  { name: 'two prompts', body: completion({ prompt: ['a', 'b'] }), status: 400, code: 'bad_request', param: 'prompt' },
  { name: 'a body over httpBodyBytesMax', body: completion({ prompt: 'x'.repeat(httpBodyBytesMax + 1) }), status: 413, code: 'body_too_large' },
  { name: 'a prompt over promptTokensMax tokens', body: completion({ prompt: 'x'.repeat(promptTokensMax + 1) }), status: 400, code: 'prompt_too_long' },
  { name: 'a prompt over promptTokensMax bytes in fewer characters', body: completion({ prompt: 'é'.repeat(promptTokensMax / 2 + 1) }), status: 400, code: 'prompt_too_long' },
  { name: 'an unknown model', body: completion({ model: 'gpt-imaginary' }), status: 404, code: 'model_not_found' },
  { name: 'an unknown model on chat', path: '/v1/chat/completions', body: { model: 'gpt-imaginary', messages: [{ role: 'user', content: 'hi' }] }, status: 404, code: 'model_not_found' },
  { name: 'n: 2', body: completion({ n: 2 }), status: 400, code: 'bad_request', param: 'n' },
  { name: 'too many stop sequences', body: completion({ stop: ['a', 'b', 'c', 'd', 'e'] }), status: 400, code: 'bad_request', param: 'stop' },
  { name: 'an unknown route', path: '/v1/embeddings', body: { model, input: 'hi' }, status: 404, code: 'not_found' },
  { name: 'a text/plain body', body: JSON.stringify(completion({})), contentType: 'text/plain', status: 415, code: 'unsupported_media_type' },
  { name: 'a form-encoded body', body: 'model=tandem-sim&prompt=hello', contentType: 'application/x-www-form-urlencoded', status: 415, code: 'unsupported_media_type' },
  { name: 'GET on a POST route', method: 'GET', path: '/v1/completions', contentType: null, status: 405, code: 'method_not_allowed' },
  { name: 'POST on a GET route', method: 'POST', path: '/v1/models', body: {}, status: 405, code: 'method_not_allowed' },
];

describe('Frontend (bad input)', () => {
  let cluster: Cluster;
  let good = 0;

  beforeAll(async () => {
    cluster = await createCluster({
      port: 0,
      log: silentLogger,
      seed: 5,
      engine: { speedup: Infinity, contextTokensMax },
      limits: { httpBodyBytesMax, promptTokensMax },
    });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  afterEach(async () => {
    // The server keeps serving: a good request right after each bad one succeeds.
    const response = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(completion({ prompt: `good request ${good}`, max_tokens: 3 })),
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { choices: Array<{ text: string }> };
    expect(body.choices[0]!.text).toHaveLength(3);
    good++;
  });

  it.each(cases)('answers $name with $status and an OpenAI-shaped error', async (bad) => {
    const headers: Record<string, string> = {};
    const contentType = bad.contentType === undefined ? 'application/json' : bad.contentType;
    if (contentType !== null) headers['content-type'] = contentType;
    const body = bad.body === undefined ? undefined : typeof bad.body === 'string' ? bad.body : JSON.stringify(bad.body);
    const response = await fetch(`${cluster.url}${bad.path ?? '/v1/completions'}`, { method: bad.method ?? 'POST', headers, body });

    expect(response.status).toBe(bad.status);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    const error = ((await response.json()) as { error: Record<string, unknown> }).error;
    expect(Object.keys(error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(error.type).toBe('invalid_request_error');
    expect(typeof error.message).toBe('string');
    expect((error.message as string).length).toBeGreaterThan(0);
    if (bad.code !== undefined) expect(error.code).toBe(bad.code);
    if (bad.param !== undefined) expect(error.param).toBe(bad.param);
    if (bad.status === 405) expect(response.headers.get('allow')).toBeTruthy();
  });

  it('answers a chunked body over httpBodyBytesMax with 413', async () => {
    const url = new URL(cluster.url);
    const { status, body } = await new Promise<{ status: number | undefined; body: string }>((resolve, reject) => {
      const request = http.request(
        { host: url.hostname, port: url.port, path: '/v1/completions', method: 'POST', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' } },
        (response) => {
          let text = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (text += chunk));
          response.on('end', () => resolve({ status: response.statusCode, body: text }));
        },
      );
      request.on('error', reject);
      request.write(`{"model":"${model}","prompt":"`);
      for (let written = 0; written <= httpBodyBytesMax; written += 1024) request.write('x'.repeat(1024));
      request.end('"}');
    });
    expect(status).toBe(413);
    expect(JSON.parse(body)).toMatchObject({ error: { type: 'invalid_request_error', code: 'body_too_large', param: null } });
  });

  it('sent none of the refused requests to a worker', async () => {
    await waitForIdle(cluster);
    const { decode, prefill } = cluster.stats();
    // Only the good requests reached the workers (this test's own good request runs after it).
    expect(decode[0]!.finished).toEqual({ done: good, failed: 0, cancelled: 0 });
    expect(prefill[0]!.retired.released).toBe(good);
    expect(decode[0]!.invalidMessages).toBe(0);
  });
});

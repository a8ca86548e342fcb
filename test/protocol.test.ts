import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { ErrorCode, TandemError } from '../src/errors.js';
import { decode, encode, schemaVersion } from '../src/protocol/codec.js';

const packr = new Packr({ useRecords: false });

const grant = { request_id: 'r1', prefill_id: 'p1', epoch: 2, room: 77 };

function refusal(fn: () => unknown): TandemError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(TandemError);
    return error as TandemError;
  }
  throw new Error('expected the decoder to refuse the message');
}

describe('protocol codec', () => {
  it('round-trips every step of the flow with its schema version', () => {
    const sampling = { temperature: 0, top_p: 1, seed: 5, max_tokens: 8, ignore_eos: false };
    const messages = [
      encode('generate', { request_id: 'r1', model: 'm', prompt_tokens: [1, 2, 3], sampling, prefill_candidates: [{ instance_id: 'p1', subject_prefix: 'tandem.prefill.p1' }] }),
      encode('bootstrap_request', { request_id: 'r1', decode_id: 'd1', model: 'm' }),
      encode('bootstrap_grant', grant),
      encode('prefill_request', {
        ...grant,
        decode_id: 'd1',
        events_subject: 'tandem.decode.d1.events',
        prompt_tokens: [1],
        sampling,
        region: { fabric: 'sim', endpoint: 'd1', region_id: 'r', page_bytes: 4096, page_count: 8 },
        pages: [0, 1],
      }),
      encode('prefill_started', grant),
      encode('transfer_posted', { ...grant, kv_bytes: 100 }),
      encode('prefill_failed', { ...grant, error: { code: 'prefill_failed', message: 'boom' } }),
      encode('release_request', { ...grant, outcome: 'aborted' }),
      encode('release_ack', grant),
      encode('tokens', { request_id: 'r1', index: 0, tokens: [65] }),
      encode('finish', { request_id: 'r1', finish_reason: 'stop', prompt_tokens: 3, completion_tokens: 1 }),
      encode('error', { error: { code: 'timeout', message: 'late' } }),
    ];
    const types = messages.map((bytes) => decode(bytes).t);
    expect(types).toEqual([
      'generate', 'bootstrap_request', 'bootstrap_grant', 'prefill_request', 'prefill_started', 'transfer_posted',
      'prefill_failed', 'release_request', 'release_ack', 'tokens', 'finish', 'error',
    ]);
    expect(decode(messages[2]!, 'bootstrap_grant')).toEqual({ t: 'bootstrap_grant', ...grant });
    expect((packr.unpack(messages[0]!) as { v: number }).v).toBe(schemaVersion);
  });

  it('refuses bytes that are not msgpack', () => {
    expect(refusal(() => decode(new Uint8Array([0xc1, 0xff, 0x00]))).code).toBe(ErrorCode.InvalidMessage);
  });

  it('refuses a message that is not a map', () => {
    expect(refusal(() => decode(packr.pack([1, 2, 3]))).code).toBe(ErrorCode.InvalidMessage);
    expect(refusal(() => decode(packr.pack('hello'))).code).toBe(ErrorCode.InvalidMessage);
  });

  it('refuses another schema version with unsupported_version', () => {
    const error = refusal(() => decode(packr.pack({ v: schemaVersion + 1, t: 'bootstrap_grant', ...grant })));
    expect(error.code).toBe(ErrorCode.UnsupportedVersion);
  });

  it('refuses an unknown message type', () => {
    const error = refusal(() => decode(packr.pack({ v: schemaVersion, t: 'launch_missiles', ...grant })));
    expect(error.code).toBe(ErrorCode.InvalidMessage);
    expect(error.message).toContain('launch_missiles');
  });

  it('refuses a known type the caller does not expect', () => {
    const error = refusal(() => decode(encode('release_ack', grant), 'bootstrap_grant', 'error'));
    expect(error.message).toContain("unexpected message type 'release_ack'");
  });

  it('refuses wrong field types, missing fields, extra fields and out-of-range values, naming the field', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ ...grant, room: 'seventy' }, 'room'],
      [{ ...grant, room: -1 }, 'room'],
      [{ ...grant, room: 2 ** 33 }, 'room'],
      [{ ...grant, epoch: 1.5 }, 'epoch'],
      [{ request_id: 'r1', prefill_id: 'p1', epoch: 2 }, 'room'],
      [{ ...grant, request_id: '' }, 'request_id'],
      [{ ...grant, smuggled: true }, '(message)'],
    ];
    for (const [body, field] of cases) {
      const error = refusal(() => decode(packr.pack({ v: schemaVersion, t: 'bootstrap_grant', ...body })));
      expect(error.code).toBe(ErrorCode.InvalidMessage);
      expect(error.message).toContain(field);
    }
  });

  it('never throws anything but a TandemError on arbitrary bytes (fast-check)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), (bytes) => {
        try {
          decode(bytes);
        } catch (error) {
          return error instanceof TandemError;
        }
        return true;
      }),
      { numRuns: 2000 },
    );
  });

  it('never throws anything but a TandemError on arbitrary msgpack maps (fast-check)', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue()), fc.constantFrom('generate', 'prefill_request', 'tokens', 'nope'), (body, t) => {
        try {
          decode(packr.pack({ ...body, v: schemaVersion, t }));
        } catch (error) {
          return error instanceof TandemError && error.code === ErrorCode.InvalidMessage;
        }
        return true;
      }),
      { numRuns: 1000 },
    );
  });
});

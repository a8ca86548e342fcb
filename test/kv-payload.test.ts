import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ErrorCode, TandemError } from '../src/errors.js';
import { decodeKvPayload, encodeKvPayload, kvPayloadBytes, kvStampStringBytesMax } from '../src/kv/kv-payload.js';
import { AssertionError } from '../src/util/assert.js';

const modelIdentity = 'llama-3.1-8b@rev-abc';
const kvLayout = 'sim/f16/L32/H8/D128';
const expected = { modelIdentity, kvLayout };

function kvBytes(byteLength: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(byteLength);
  let x = seed;
  for (let i = 0; i < byteLength; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

function stamp(kv = kvBytes(1000)): Uint8Array {
  return encodeKvPayload({ modelIdentity, kvLayout, tokenCount: 37, firstToken: 4242, kv });
}

/** Asserts that decoding `bytes` is refused with kv_mismatch, and returns the message. */
function refusal(bytes: Uint8Array, expectation: Parameters<typeof decodeKvPayload>[1] = expected): string {
  let caught: unknown;
  try {
    decodeKvPayload(bytes, expectation);
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(TandemError);
  expect((caught as TandemError).code).toBe(ErrorCode.KvMismatch);
  return (caught as TandemError).message;
}

describe('kv-payload', () => {
  it('round-trips token count, first token and the KV bytes', () => {
    const kv = kvBytes(1000);
    const payload = stamp(kv);
    expect(payload.byteLength).toBe(kvPayloadBytes(kv.byteLength, modelIdentity, kvLayout));
    const decoded = decodeKvPayload(payload, { ...expected, tokenCount: 37 });
    expect(decoded.tokenCount).toBe(37);
    expect(decoded.firstToken).toBe(4242);
    expect(decoded.kv).toEqual(kv);
  });

  it('round-trips empty KV, unaligned views, multi-byte identities and the largest token values', () => {
    const backing = kvBytes(103);
    const kv = backing.subarray(3, 100);
    const identity = 'modèle-日本語';
    const payload = encodeKvPayload({ modelIdentity: identity, kvLayout, tokenCount: 0xffffffff, firstToken: 0, kv });
    const shifted = new Uint8Array(payload.byteLength + 1);
    shifted.set(payload, 1);
    const decoded = decodeKvPayload(shifted.subarray(1), { modelIdentity: identity, kvLayout });
    expect(decoded).toEqual({ tokenCount: 0xffffffff, firstToken: 0, kv });
    const empty = encodeKvPayload({ modelIdentity, kvLayout, tokenCount: 1, firstToken: 2, kv: new Uint8Array(0) });
    expect(decodeKvPayload(empty, expected).kv.byteLength).toBe(0);
  });

  it('ignores bytes after the payload, as whole pages are read back', () => {
    const kv = kvBytes(100);
    const payload = stamp(kv);
    const pages = new Uint8Array(4096);
    pages.set(payload);
    pages.fill(0xee, payload.byteLength);
    expect(decodeKvPayload(pages, expected).kv).toEqual(kv);
  });

  it('refuses a payload for another model, naming both', () => {
    const message = refusal(stamp(), { modelIdentity: 'qwen-7b', kvLayout });
    expect(message).toContain(modelIdentity);
    expect(message).toContain('qwen-7b');
  });

  it('refuses a payload with another KV layout', () => {
    expect(refusal(stamp(), { modelIdentity, kvLayout: 'sim/f32/L32/H8/D128' })).toContain('layout');
  });

  it('refuses a payload covering another token count when the request says how many', () => {
    expect(refusal(stamp(), { ...expected, tokenCount: 38 })).toContain('37');
  });

  it('refuses a payload with one flipped KV byte', () => {
    const payload = stamp();
    payload[payload.byteLength - 500]! ^= 0x01;
    expect(refusal(payload)).toContain('checksum');
  });

  it('refuses a payload whose stamped token count or first token was altered', () => {
    const payload = stamp();
    const tokenCountAt = 8 + 1 + modelIdentity.length + 1 + kvLayout.length;
    payload[tokenCountAt + 4]! ^= 0x01;
    expect(refusal(payload)).toContain('checksum');
  });

  it('refuses a truncated payload, whether the KV or the header is cut', () => {
    const payload = stamp();
    expect(refusal(payload.subarray(0, payload.byteLength - 1))).toContain('arrived');
    expect(refusal(payload.subarray(0, 20))).toMatch(/shorter|cut off|header/);
    expect(refusal(payload.subarray(0, 3))).toContain('shorter');
  });

  it('refuses bytes without the magic, such as a page that was never written', () => {
    expect(refusal(new Uint8Array(4096))).toContain('TKV1');
  });

  it('refuses a payload whose pages arrived swapped', () => {
    const pageBytes = 256;
    const payload = stamp(kvBytes(pageBytes * 6));
    const swapped = payload.slice();
    swapped.set(payload.subarray(2 * pageBytes, 3 * pageBytes), 4 * pageBytes);
    swapped.set(payload.subarray(4 * pageBytes, 5 * pageBytes), 2 * pageBytes);
    expect(swapped).not.toEqual(payload);
    expect(refusal(swapped)).toContain('checksum');
  });

  it('refuses a payload where one page is stale, left from an earlier request', () => {
    const pageBytes = 256;
    const earlier = stamp(kvBytes(pageBytes * 4, 7));
    const payload = stamp(kvBytes(pageBytes * 4, 8));
    payload.set(earlier.subarray(2 * pageBytes, 3 * pageBytes), 2 * pageBytes);
    expect(refusal(payload)).toContain('checksum');
  });

  it('refuses any single flipped bit anywhere in the payload', () => {
    // fast-check prints the seed and the failing case; paste them into a regression test here.
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2000 }), fc.nat(), fc.integer({ min: 0, max: 7 }), (kvLength, at, bit) => {
        const payload = stamp(kvBytes(kvLength, kvLength + 1));
        const index = at % payload.byteLength;
        payload[index]! ^= 1 << bit;
        refusal(payload);
      }),
      { numRuns: 500 },
    );
  });

  it('sizes a payload before the KV exists', () => {
    expect(kvPayloadBytes(0, 'm', 'l')).toBe(stamp(new Uint8Array(0)).byteLength - modelIdentity.length - kvLayout.length + 2);
    expect(kvPayloadBytes(10, modelIdentity, kvLayout) - kvPayloadBytes(0, modelIdentity, kvLayout)).toBe(10);
  });

  it('asserts against identities longer than the stamp holds', () => {
    const long = 'x'.repeat(kvStampStringBytesMax + 1);
    expect(() => kvPayloadBytes(1, long, kvLayout)).toThrow(AssertionError);
    expect(() => encodeKvPayload({ modelIdentity, kvLayout: long, tokenCount: 1, firstToken: 1, kv: new Uint8Array(1) })).toThrow(AssertionError);
  });
});

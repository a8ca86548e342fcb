import type { Random } from '../random/random.js';

// W3C Trace Context `traceparent`: version-traceid-parentid-flags, lowercase hex
// (https://www.w3.org/TR/trace-context/#traceparent-header).

/** A parsed `traceparent`. */
export interface TraceParent {
  /** 32 lowercase hex digits, not all zero. */
  traceId: string;
  /** 16 lowercase hex digits, not all zero: the caller's span. */
  parentId: string;
  /** Two hex digits; bit 0 is `sampled`. */
  flags: string;
}

const traceparentPattern = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * Parses a `traceparent` header value; returns undefined for anything malformed, so the caller
 * starts a new trace as the specification asks. Version ff is invalid; a later version is read
 * as version 00 (its first four fields), and version 00 allows nothing after the flags.
 */
export function parseTraceparent(value: string | undefined): TraceParent | undefined {
  if (value === undefined || value.length > 512) return undefined;
  const match = traceparentPattern.exec(value.trim());
  if (!match) return undefined;
  const [, version, traceId, parentId, flags, rest] = match as unknown as [string, string, string, string, string, string | undefined];
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (/^0+$/.test(traceId) || /^0+$/.test(parentId)) return undefined;
  return { traceId, parentId, flags };
}

/** The header value of a parsed trace parent, at version 00. */
export function formatTraceparent(trace: TraceParent): string {
  return `00-${trace.traceId}-${trace.parentId}-${trace.flags}`;
}

function hex(random: Random, digits: number): string {
  let out = '';
  while (out.length < digits) out += random.uint32().toString(16).padStart(8, '0');
  out = out.slice(0, digits);
  // An all-zero id is invalid; the odds are negligible, but the format must hold.
  return /^0+$/.test(out) ? `${out.slice(0, -1)}1` : out;
}

/**
 * The trace context tandem propagates for one request: the client's trace (or a new, sampled
 * one when the client sent none or a malformed one) with a new span id for the frontend's hop.
 * Ids come from the injected seeded Random, so a simulation replays them.
 */
export function continueTrace(header: string | undefined, random: Random): TraceParent {
  const parent = parseTraceparent(header);
  return { traceId: parent?.traceId ?? hex(random, 32), parentId: hex(random, 16), flags: parent?.flags ?? '01' };
}

/** The trace id of a `traceparent` value, or undefined when it is malformed. */
export function traceIdOf(value: string | undefined): string | undefined {
  return parseTraceparent(value)?.traceId;
}

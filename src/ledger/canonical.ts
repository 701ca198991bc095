/**
 * The ledger leaf input: the RFC 8785 (JSON Canonicalization Scheme) form of an event, as UTF-8 bytes. Serialisation
 * is done by the `canonicalize` package; this module first checks that the value is plain JSON data, because that
 * package (like JSON.stringify) silently drops, converts or mangles what JSON cannot hold, and a signed ledger must
 * never record something other than what the caller handed it.
 */
import canonicalizeModule from 'canonicalize';
import { hasLoneSurrogate } from './encoding.js';
import { LedgerError } from './errors.js';
import { leafHash } from './merkle.js';

// The package is CommonJS with ESM-style typings: at run time the default import is the function (as in
// src/audit/admin-actions.ts).
type Canonicalize = (value: unknown) => string | undefined;
const canonicalize = ((canonicalizeModule as unknown as { default?: Canonicalize }).default ??
  canonicalizeModule) as unknown as Canonicalize;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue | undefined };

/**
 * RFC 8785 canonical JSON text of `value`. Accepted: null, booleans, finite numbers, strings, arrays and plain objects
 * (prototype Object.prototype or null) of those. An object property whose value is `undefined` is omitted, as in
 * JSON, so optional fields may be left undefined. Rejected with LedgerError('NOT_CANONICAL'), naming the path:
 * undefined at the top level or in an array (JSON would turn it into null), NaN and ±Infinity, bigint, functions,
 * symbols, strings or keys with unpaired surrogates (not I-JSON, RFC 8785 §3.1 / RFC 7493 §2.1), class instances such
 * as Date, Map or Buffer (convert them first: their JSON form is a choice the caller should make), and cycles.
 */
export function canonicalJson(value: unknown): string {
  assertJsonData(value, '$', new Set());
  const text = canonicalize(value);
  // Unreachable after the check above; kept so a change in the package cannot yield a silent "undefined" leaf.
  if (text === undefined) throw new LedgerError('NOT_CANONICAL', 'value has no JSON representation');
  return text;
}

/** UTF-8 bytes of canonicalJson(value): the leaf input of the ledger. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), 'utf8');
}

/** leafHash(canonicalBytes(event)): the Merkle leaf hash of an event. */
export function eventLeafHash(event: unknown): Buffer {
  return leafHash(canonicalBytes(event));
}

function assertJsonData(value: unknown, path: string, ancestors: Set<object>): void {
  switch (typeof value) {
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value)) throw notCanonical(path, `${value} is not a finite number`);
      return;
    case 'string':
      if (hasLoneSurrogate(value)) throw notCanonical(path, 'string contains an unpaired UTF-16 surrogate');
      return;
    case 'undefined':
      throw notCanonical(path, 'undefined has no JSON representation');
    case 'object':
      break;
    default:
      throw notCanonical(path, `a ${typeof value} has no JSON representation`);
  }
  if (value === null) return;
  if (ancestors.has(value)) throw notCanonical(path, 'value is cyclic');
  ancestors.add(value);
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      // Index access (not forEach) so holes of sparse arrays are seen as undefined.
      assertJsonData(value[i], `${path}[${i}]`, ancestors);
    }
  } else {
    const prototype: unknown = Object.getPrototypeOf(value);
    if (prototype !== Object.prototype && prototype !== null) {
      const kind = (value as { constructor?: { name?: string } }).constructor?.name ?? 'non-plain object';
      throw notCanonical(path, `${kind} is not a plain object; convert it to JSON data first`);
    }
    if (Object.getOwnPropertySymbols(value).length > 0) throw notCanonical(path, 'object has symbol keys');
    for (const [key, member] of Object.entries(value)) {
      const memberPath = `${path}[${JSON.stringify(key)}]`;
      if (hasLoneSurrogate(key)) throw notCanonical(memberPath, 'key contains an unpaired UTF-16 surrogate');
      if (member !== undefined) assertJsonData(member, memberPath, ancestors);
    }
  }
  ancestors.delete(value);
}

function notCanonical(path: string, reason: string): LedgerError {
  return new LedgerError('NOT_CANONICAL', `cannot canonicalize ${path}: ${reason}`);
}

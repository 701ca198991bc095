/**
 * The ledger leaf input: the RFC 8785 (JSON Canonicalization Scheme) form of an event, as UTF-8 bytes. One pass both
 * checks that the value is plain JSON data and writes it: JSON.stringify (and packages built on it) silently drops,
 * converts or mangles what JSON cannot hold, and a signed ledger must never record something other than what the
 * caller handed it. RFC 8785 is JSON.stringify's number and string forms (ECMAScript's, which the RFC adopts) with
 * object members sorted by their UTF-16 code units (Array.prototype.sort's default order) and no whitespace; the
 * published vectors and a property test against the `canonicalize` package keep this honest.
 */
import { hasLoneSurrogate } from './encoding.js';
import { LedgerError } from './errors.js';
import { leafHash } from './merkle.js';

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
  return write(value, [], new Set());
}

/** UTF-8 bytes of canonicalJson(value): the leaf input of the ledger. */
export function canonicalBytes(value: unknown): Buffer {
  return Buffer.from(canonicalJson(value), 'utf8');
}

/** leafHash(canonicalBytes(event)): the Merkle leaf hash of an event. */
export function eventLeafHash(event: unknown): Buffer {
  return leafHash(canonicalBytes(event));
}

/**
 * The canonical text of `value`. `path` holds the keys and indexes down to it, turned into a JSONPath-like string
 * only for an error (building it for every member was most of the cost).
 */
function write(value: unknown, path: (string | number)[], ancestors: Set<object>): string {
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw notCanonical(path, `${value} is not a finite number`);
      return JSON.stringify(value);
    case 'string':
      if (hasLoneSurrogate(value)) throw notCanonical(path, 'string contains an unpaired UTF-16 surrogate');
      return JSON.stringify(value);
    case 'undefined':
      throw notCanonical(path, 'undefined has no JSON representation');
    case 'object':
      break;
    default:
      throw notCanonical(path, `a ${typeof value} has no JSON representation`);
  }
  if (value === null) return 'null';
  if (ancestors.has(value)) throw notCanonical(path, 'value is cyclic');
  ancestors.add(value);
  let text: string;
  if (Array.isArray(value)) {
    text = '[';
    for (let i = 0; i < value.length; i++) {
      // Index access (not forEach) so holes of sparse arrays are seen as undefined.
      path.push(i);
      text += (i === 0 ? '' : ',') + write(value[i], path, ancestors);
      path.pop();
    }
    text += ']';
  } else {
    const prototype: unknown = Object.getPrototypeOf(value);
    if (prototype !== Object.prototype && prototype !== null) {
      const kind = (value as { constructor?: { name?: string } }).constructor?.name ?? 'non-plain object';
      throw notCanonical(path, `${kind} is not a plain object; convert it to JSON data first`);
    }
    if (Object.getOwnPropertySymbols(value).length > 0) throw notCanonical(path, 'object has symbol keys');
    const record = value as Record<string, unknown>;
    text = '{';
    let first = true;
    for (const key of Object.keys(record).sort()) {
      path.push(key);
      if (hasLoneSurrogate(key)) throw notCanonical(path, 'key contains an unpaired UTF-16 surrogate');
      const member = record[key];
      if (member !== undefined) {
        text += (first ? '' : ',') + JSON.stringify(key) + ':' + write(member, path, ancestors);
        first = false;
      }
      path.pop();
    }
    text += '}';
  }
  ancestors.delete(value);
  return text;
}

function notCanonical(path: readonly (string | number)[], reason: string): LedgerError {
  const at = path.map((step) => `[${typeof step === 'number' ? step : JSON.stringify(step)}]`).join('');
  return new LedgerError('NOT_CANONICAL', `cannot canonicalize $${at}: ${reason}`);
}

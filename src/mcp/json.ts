/**
 * Strict JSON for the MCP proxy: UTF-8 that really is UTF-8, and documents whose meaning does not depend on which
 * parser reads them. JSON.parse keeps the last of two members with the same name where other parsers keep the first
 * (or refuse), so a message with a repeated name could be decided on one value and executed on another; `inspectJson`
 * finds such names (after unescaping: `"a"` and `"\u0061"` are the same name). It also measures nesting: JSON.parse
 * reads a million nested arrays, but JSON.stringify and every recursive walker after it (the canonical form, the
 * policy input) run out of stack on them.
 */

export type JsonObject = { [key: string]: unknown };

/** A JSON object (not an array, not null). */
export const isJsonObject = (value: unknown): value is JsonObject => typeof value === 'object' && value !== null && !Array.isArray(value);

/** Object.hasOwn, typed for JSON objects (`'constructor' in {}` is true; JSON members are own properties). */
export const hasMember = (value: JsonObject, key: string): boolean => Object.prototype.hasOwnProperty.call(value, key);

/** Nesting deeper than this (objects and arrays) is refused: well within every recursive walker's stack. */
export const MAX_JSON_DEPTH = 100;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The text of UTF-8 bytes, or null when they are not UTF-8 (Buffer#toString would substitute U+FFFD and so change
 * the document). A byte-order mark is kept, so JSON.parse refuses it (RFC 8259 §8.1: senders must not add one).
 */
export function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

export interface JsonShape {
  /** The first member name found twice in one object, or null. */
  duplicateKey: string | null;
  /** Objects and arrays nest deeper than the limit (the scan stopped there). */
  tooDeep: boolean;
}

/**
 * Member names repeated within one object, and nesting depth, of a text JSON.parse accepted. One pass, no recursion
 * (the nesting can be as deep as the text is long). On text that is not JSON the answer is meaningless but the scan
 * still ends.
 */
export function inspectJson(text: string, maxDepth: number = MAX_JSON_DEPTH): JsonShape {
  // One entry per open container: the names seen so far for an object, null for an array.
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  let duplicateKey: string | null = null;
  const length = text.length;
  for (let i = 0; i < length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i + 1;
      let escaped = false;
      for (i = start; i < length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) {
          escaped = true;
          i++; // the escaped character cannot end the string
        } else if (d === 0x22) break;
      }
      if (expectKey) {
        expectKey = false;
        const names = stack[stack.length - 1];
        if (names) {
          const raw = text.slice(start, i);
          let name = raw;
          if (escaped) {
            try {
              name = JSON.parse(`"${raw}"`) as string;
            } catch {
              return { duplicateKey: null, tooDeep: false }; // not JSON: JSON.parse said so already
            }
          }
          // The first repeated name is kept and the scan goes on: depth must be measured whatever else is wrong.
          if (names.has(name)) duplicateKey ??= name;
          names.add(name);
        }
      }
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (stack.length >= maxDepth) return { duplicateKey, tooDeep: true };
      stack.push(c === 0x7b ? new Set<string>() : null);
      expectKey = c === 0x7b;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = stack.length > 0 && stack[stack.length - 1] !== null;
    }
  }
  return { duplicateKey, tooDeep: false };
}

/** A string that is safe to record and compare: no control characters (C0, DEL, C1) and no unpaired surrogates. */
export const isCleanText = (text: string): boolean => !/[\p{Cc}\p{Cs}]/u.test(text);

/** A short, quoted, escaped rendering of a value for an error message. */
export function quote(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}…` : value);
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'a non-finite number';
  return typeof value === 'boolean' ? String(value) : `a ${typeof value}`;
}

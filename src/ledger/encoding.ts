import { LedgerError, type LedgerErrorCode } from './errors.js';

// Standard base64 (RFC 4648 §4) with mandatory padding — the encoding every C2SP format uses.
const BASE64_PATTERN = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

export function encodeBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

/**
 * Decodes standard padded base64 and rejects everything else. Buffer.from(…, 'base64') silently skips invalid
 * characters and accepts the URL alphabet, so two different texts could decode to the same bytes; signed formats
 * must be byte-exact, so the input must also be the canonical encoding of its bytes (no stray low bits).
 */
export function decodeBase64Strict(text: string, what: string, code: LedgerErrorCode): Buffer {
  if (!BASE64_PATTERN.test(text)) throw new LedgerError(code, `${what} is not valid base64`);
  const bytes = Buffer.from(text, 'base64');
  if (bytes.toString('base64') !== text) throw new LedgerError(code, `${what} is not canonical base64`);
  return bytes;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Decodes UTF-8, rejecting invalid sequences instead of substituting U+FFFD (which would change signed bytes). */
export function decodeUtf8Strict(bytes: Uint8Array, what: string, code: LedgerErrorCode): string {
  try {
    return strictUtf8.decode(bytes);
  } catch (error) {
    throw new LedgerError(code, `${what} is not valid UTF-8`, { cause: error });
  }
}

/** True when a JS string holds an unpaired surrogate, i.e. has no UTF-8 encoding (Buffer.from would emit U+FFFD). */
export function hasLoneSurrogate(text: string): boolean {
  // String.prototype.isWellFormed (Node 20) is native and several times faster than the /\p{Cs}/u scan it replaces
  // on the ledger's hot path (every string of every event); the regex stays for runtimes without it.
  const native = (text as { isWellFormed?: () => boolean }).isWellFormed;
  return native ? !native.call(text) : /\p{Cs}/u.test(text);
}

/** A decimal with no sign and no leading zeroes that fits a JS safe integer (tree sizes, indices). */
export function parseDecimal(text: string, what: string, code: LedgerErrorCode): number {
  if (!/^(?:0|[1-9][0-9]*)$/.test(text)) {
    throw new LedgerError(code, `${what} must be a decimal number without sign or leading zeroes, got ${JSON.stringify(text)}`);
  }
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new LedgerError(code, `${what} ${text} is larger than this implementation supports (2^53 - 1)`);
  return value;
}

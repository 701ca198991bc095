/**
 * One error class for the whole ledger core, so callers (the ledger writer, the CLI, the admin API) can map a
 * failure to a response by its `code` without parsing messages. Messages are for people and say what was wrong.
 */
export type LedgerErrorCode =
  /** A caller passed an argument outside the function's contract (index beyond size, hash of wrong length, …). */
  | 'INVALID_ARGUMENT'
  /** A HashReader returned something other than one 32-byte hash per requested node. */
  | 'HASH_READER'
  /** An inclusion or consistency proof does not verify. */
  | 'PROOF_INVALID'
  /** A value has no RFC 8785 (JCS) representation. */
  | 'NOT_CANONICAL'
  /** A signed note is not well formed (c2sp.org/signed-note). */
  | 'NOTE_MALFORMED'
  /** A signed note carries no valid signature by any trusted key. */
  | 'NOTE_UNTRUSTED'
  /** A signature by a trusted key (name and key id match) does not verify. */
  | 'SIGNATURE_INVALID'
  /** A verifier key string or a PEM key is malformed or of an unsupported kind. */
  | 'KEY_INVALID'
  /** A checkpoint body is not well formed (c2sp.org/tlog-checkpoint), or its origin is not the expected one. */
  | 'CHECKPOINT_INVALID'
  /** A tlog-proof text is not well formed (c2sp.org/tlog-proof). */
  | 'TLOG_PROOF_MALFORMED';

export class LedgerError extends Error {
  override readonly name = 'LedgerError';

  constructor(
    readonly code: LedgerErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isLedgerError(error: unknown, code?: LedgerErrorCode): error is LedgerError {
  return error instanceof LedgerError && (code === undefined || error.code === code);
}

/**
 * The C2SP tlog-proof text format (c2sp.org/tlog-proof@v1): an offline-verifiable proof that an entry is in the log —
 * header line, optional `extra <base64>` line, `index <n>`, the inclusion proof hashes one per line (leaf's sibling
 * first), an empty line, then the signed checkpoint verbatim. Byte layout checked against transparency-dev/formats
 * proof/tlog_proof.go (Marshal).
 */
import { decodeBase64Strict, encodeBase64, parseDecimal } from './encoding.js';
import { LedgerError } from './errors.js';
import { HASH_SIZE, verifyInclusion } from './merkle.js';
import { openCheckpoint, type Checkpoint, type NoteVerifier, type VerifiedNote } from './note.js';

export const TLOG_PROOF_HEADER = 'c2sp.org/tlog-proof@v1';

/** A tree of at most 2^53 leaves has audit paths of at most 53 hashes; more is malformed (and bounds the parse). */
const MAX_PROOF_HASHES = 64;

export interface TlogProof {
  /** Zero-based index of the entry in the log. */
  readonly index: number;
  /** RFC 6962 audit path, from the leaf's sibling up to the root's child. */
  readonly inclusionProof: readonly Buffer[];
  /** The signed checkpoint note, verbatim (with any witness cosignatures). */
  readonly signedCheckpoint: string;
  /** Optional opaque, unauthenticated application data. */
  readonly extra?: Buffer;
}

export function formatTlogProof(proof: TlogProof): string {
  const { index, inclusionProof, signedCheckpoint, extra } = proof;
  if (!Number.isSafeInteger(index) || index < 0) throw malformed(`index must be a non-negative safe integer, got ${index}`);
  if (inclusionProof.length > MAX_PROOF_HASHES) throw malformed(`inclusion proof has more than ${MAX_PROOF_HASHES} hashes`);
  const lines = [TLOG_PROOF_HEADER];
  if (extra !== undefined) lines.push(`extra ${encodeBase64(extra)}`);
  lines.push(`index ${index}`);
  for (const hash of inclusionProof) {
    if (hash.length !== HASH_SIZE) throw malformed(`inclusion proof hashes must be ${HASH_SIZE} bytes`);
    lines.push(encodeBase64(hash));
  }
  return `${lines.join('\n')}\n\n${signedCheckpoint}`;
}

/** Parses a tlog-proof strictly; the checkpoint is returned verbatim and checked only by verifyTlogProof. */
export function parseTlogProof(text: string): TlogProof {
  const lines = text.split('\n');
  let line = 0;
  if (lines[line++] !== TLOG_PROOF_HEADER) throw malformed(`the first line must be ${TLOG_PROOF_HEADER}`);
  let extra: Buffer | undefined;
  if (lines[line]?.startsWith('extra ')) {
    extra = decodeBase64Strict(lines[line++]!.slice('extra '.length), 'extra data', 'TLOG_PROOF_MALFORMED');
  }
  const indexLine = lines[line++];
  if (indexLine === undefined || !indexLine.startsWith('index ')) throw malformed('the index line is missing');
  const index = parseDecimal(indexLine.slice('index '.length), 'index', 'TLOG_PROOF_MALFORMED');
  const inclusionProof: Buffer[] = [];
  for (;;) {
    const hashLine = lines[line++];
    if (hashLine === undefined) throw malformed('the empty line before the checkpoint is missing');
    if (hashLine === '') break;
    if (inclusionProof.length === MAX_PROOF_HASHES) throw malformed(`inclusion proof has more than ${MAX_PROOF_HASHES} hashes`);
    const hash = decodeBase64Strict(hashLine, `inclusion proof hash ${inclusionProof.length}`, 'TLOG_PROOF_MALFORMED');
    if (hash.length !== HASH_SIZE) throw malformed(`inclusion proof hash ${inclusionProof.length} is ${hash.length} bytes, not ${HASH_SIZE}`);
    inclusionProof.push(hash);
  }
  const signedCheckpoint = lines.slice(line).join('\n');
  if (signedCheckpoint === '') throw malformed('the checkpoint is missing');
  return extra === undefined ? { index, inclusionProof, signedCheckpoint } : { index, inclusionProof, signedCheckpoint, extra };
}

export interface VerifiedTlogProof {
  readonly index: number;
  readonly checkpoint: Checkpoint;
  readonly note: VerifiedNote;
  /** Unauthenticated: never trust it without checking it against the entry. */
  readonly extra?: Buffer;
}

/**
 * c2sp.org/tlog-proof § "Verifying a tlog proof", steps 2 and 4: the checkpoint must be signed by one of the log's
 * `verifiers` and carry the log's `origin`, and the inclusion proof must bind `leafHash` (step 1, computed by the
 * caller from the entry, e.g. eventLeafHash(event)) at `index` to the checkpoint's root. Witness cosignatures (step 3)
 * are returned as note.unverified unless their verifiers are passed too. Throws LedgerError on any failure.
 */
export function verifyTlogProof(
  proof: string | TlogProof,
  leafHash: Uint8Array,
  log: { origin: string; verifiers: readonly NoteVerifier[] },
): VerifiedTlogProof {
  const parsed = typeof proof === 'string' ? parseTlogProof(proof) : proof;
  const { checkpoint, note } = openCheckpoint(parsed.signedCheckpoint, log.origin, log.verifiers);
  verifyInclusion(leafHash, parsed.index, checkpoint.size, parsed.inclusionProof, checkpoint.rootHash);
  const result = { index: parsed.index, checkpoint, note };
  return parsed.extra === undefined ? result : { ...result, extra: parsed.extra };
}

function malformed(reason: string): LedgerError {
  return new LedgerError('TLOG_PROOF_MALFORMED', reason);
}

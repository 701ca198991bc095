// Self-contained ledger exports: `caracal ledger export` writes the entries of a time range with, for each, an
// inclusion proof to a signed checkpoint, the checkpoints involved and the consistency proofs between them;
// `caracal ledger verify-export` checks such a file with nothing but the file and the verifier key. See README.md
// ("Commands").
import { z } from 'zod';
import type { Queryable } from '../store/db.js';
import { decodeBase64Strict, encodeBase64 } from './encoding.js';
import { HASH_SIZE, leafHash, verifyConsistency, verifyInclusion } from './merkle.js';
import { openCheckpoint, type NoteVerifier } from './note.js';
import { checkEntry, LedgerCheckFailure } from './verify.js';
import { proveConsistency, proveInclusion, readCheckpoint, readEntriesByTime, type LedgerEntry } from './store.js';
import { coveringSize } from './query.js';

export const EXPORT_FORMAT = 'caracal.dev/ledger-export@v1';
/** verify-export refuses files larger than this (the whole file is parsed in memory). */
export const MAX_EXPORT_BYTES = 512 * 1024 * 1024;
const MAX_PROOF_HASHES = 64;

export interface LedgerExport {
  format: typeof EXPORT_FORMAT;
  origin: string;
  /** The event-time range exported, [start, end). */
  range: { start: string; end: string };
  exportedAt: string;
  /** The signed checkpoints the entries are proven against, in size order (c2sp.org/tlog-checkpoint notes). */
  checkpoints: { size: number; note: string }[];
  /** RFC 9162 consistency proofs between consecutive checkpoints of `checkpoints` (base64 hashes). */
  consistency: { from: number; to: number; proof: string[] }[];
  /** Each entry: its RFC 8785 canonical bytes (base64) and an inclusion proof to `checkpoint` (a size above). */
  entries: { leafIndex: number; eventId: string; canonical: string; checkpoint: number; inclusionProof: string[] }[];
}

export interface ExportResult {
  export: LedgerExport;
  /** Entries of the range not yet covered by a checkpoint: left out. */
  unsealed: number;
}

/** Builds the export of the leaves whose event time is in [start, end) (at most `limit`, default 100,000). */
export async function buildExport(db: Queryable, origin: string, range: { start: Date; end: Date; limit?: number }): Promise<ExportResult> {
  const entries = await readEntriesByTime(db, origin, { start: range.start, end: range.end, limit: range.limit ?? 100_000 });
  const { rows } = await db.query<{ tree_size: string | number }>('SELECT tree_size FROM ledger_checkpoints WHERE origin = $1 ORDER BY tree_size', [origin]);
  const sizes = rows.map((row) => Number(row.tree_size));
  const sealed: { entry: LedgerEntry; size: number }[] = [];
  let unsealed = 0;
  for (const entry of entries) {
    const size = coveringSize(sizes, entry.leafIndex);
    if (size === null) unsealed++;
    else sealed.push({ entry, size });
  }
  const used = [...new Set(sealed.map((s) => s.size))].sort((a, b) => a - b);
  const checkpoints: LedgerExport['checkpoints'] = [];
  for (const size of used) {
    const stored = await readCheckpoint(db, origin, size);
    if (!stored) throw new Error(`checkpoint ${size} disappeared during the export`);
    checkpoints.push({ size, note: stored.note });
  }
  const consistency: LedgerExport['consistency'] = [];
  for (let i = 1; i < used.length; i++) {
    const proof = await proveConsistency(db, origin, used[i - 1]!, used[i]!);
    consistency.push({ from: used[i - 1]!, to: used[i]!, proof: proof.map(encodeBase64) });
  }
  const out: LedgerExport['entries'] = [];
  for (const { entry, size } of sealed) {
    const proof = await proveInclusion(db, origin, entry.leafIndex, size);
    out.push({ leafIndex: entry.leafIndex, eventId: entry.eventId, canonical: encodeBase64(entry.canonical), checkpoint: size, inclusionProof: proof.map(encodeBase64) });
  }
  return {
    export: { format: EXPORT_FORMAT, origin, range: { start: range.start.toISOString(), end: range.end.toISOString() }, exportedAt: new Date().toISOString(), checkpoints, consistency, entries: out },
    unsealed,
  };
}

/** The export as one JSON document, or as JSON lines: a header, then one line per checkpoint, proof and entry. */
export function serializeExport(data: LedgerExport, format: 'json' | 'jsonl'): string {
  if (format === 'json') return `${JSON.stringify(data, null, 1)}\n`;
  const { checkpoints, consistency, entries, ...header } = data;
  const lines = [
    JSON.stringify({ kind: 'header', ...header }),
    ...checkpoints.map((c) => JSON.stringify({ kind: 'checkpoint', ...c })),
    ...consistency.map((c) => JSON.stringify({ kind: 'consistency', ...c })),
    ...entries.map((e) => JSON.stringify({ kind: 'entry', ...e })),
  ];
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------------------------------
// Verification

/** The export file is malformed or does not verify; the message is one line naming what failed. */
export class ExportInvalidError extends Error {
  override readonly name = 'ExportInvalidError';
  readonly code = 'LEDGER_EXPORT_INVALID';
}

const size = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const base64Hash = z.string().max(64);
const proofList = z.array(base64Hash).max(MAX_PROOF_HASHES);
const CheckpointSchema = z.strictObject({ size: size.min(1), note: z.string().max(1024 * 1024) });
const ConsistencySchema = z.strictObject({ from: size, to: size, proof: proofList });
const EntrySchema = z.strictObject({ leafIndex: size, eventId: z.string().min(1).max(255), canonical: z.string().max(16 * 1024 * 1024), checkpoint: size, inclusionProof: proofList });
const HeaderShape = {
  format: z.literal(EXPORT_FORMAT),
  origin: z.string().min(1).max(255),
  range: z.strictObject({ start: z.string().max(64), end: z.string().max(64) }),
  exportedAt: z.string().max(64),
};
const ExportSchema = z.strictObject({ ...HeaderShape, checkpoints: z.array(CheckpointSchema), consistency: z.array(ConsistencySchema), entries: z.array(EntrySchema) });

function zodMessage(error: z.ZodError, prefix = ''): string {
  const issue = error.issues[0]!;
  const where = [prefix, ...issue.path.map(String)].filter((p) => p !== '').join('.');
  return `${where || 'the file'}: ${issue.message}`.split('\n')[0]!;
}

/** Parses an export (JSON or JSON lines) strictly; throws ExportInvalidError naming the first problem. */
export function parseExport(text: string): LedgerExport {
  const trimmed = text.trimStart();
  if (trimmed === '') throw new ExportInvalidError('the file is empty');
  let candidate: unknown;
  const firstLineEnd = trimmed.indexOf('\n');
  const firstLine = firstLineEnd < 0 ? trimmed : trimmed.slice(0, firstLineEnd);
  let isLines: boolean;
  try {
    const head = JSON.parse(firstLine) as { kind?: unknown };
    isLines = typeof head === 'object' && head !== null && head.kind === 'header';
  } catch {
    isLines = false;
  }
  if (isLines) {
    const doc: Record<string, unknown> & { checkpoints: unknown[]; consistency: unknown[]; entries: unknown[] } = { checkpoints: [], consistency: [], entries: [] };
    const lines = trimmed.split('\n');
    for (let n = 0; n < lines.length; n++) {
      const line = lines[n]!;
      if (line.trim() === '') continue;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch (err) {
        throw new ExportInvalidError(`line ${n + 1} is not JSON: ${(err as Error).message}`);
      }
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ExportInvalidError(`line ${n + 1} is not a JSON object`);
      const { kind, ...rest } = value as { kind?: unknown };
      if (kind === 'header') {
        if (n !== 0) throw new ExportInvalidError(`line ${n + 1}: a second header`);
        Object.assign(doc, rest);
      } else if (kind === 'checkpoint') doc.checkpoints.push(rest);
      else if (kind === 'consistency') doc.consistency.push(rest);
      else if (kind === 'entry') doc.entries.push(rest);
      else throw new ExportInvalidError(`line ${n + 1}: unknown kind ${JSON.stringify(kind)?.slice(0, 40)}`);
    }
    candidate = doc;
  } else {
    try {
      candidate = JSON.parse(text);
    } catch (err) {
      throw new ExportInvalidError(`the file is not JSON (truncated?): ${(err as Error).message}`);
    }
  }
  const parsed = ExportSchema.safeParse(candidate);
  if (!parsed.success) throw new ExportInvalidError(zodMessage(parsed.error));
  return parsed.data as LedgerExport;
}

function hashesOf(list: readonly string[], what: string): Buffer[] {
  return list.map((text, n) => {
    let hash: Buffer;
    try {
      hash = decodeBase64Strict(text, `${what} hash ${n}`, 'PROOF_INVALID');
    } catch (err) {
      throw new ExportInvalidError(`${what}: ${(err as Error).message}`);
    }
    if (hash.length !== HASH_SIZE) throw new ExportInvalidError(`${what}: hash ${n} is ${hash.length} bytes, not ${HASH_SIZE}`);
    return hash;
  });
}

export interface ExportVerification {
  origin: string;
  entries: number;
  checkpoints: number[];
  consistencyProofs: number;
}

/**
 * Verifies an export with the log's verifier alone: every checkpoint's signature (and origin), the consistency proof
 * between every two consecutive checkpoints, and for every entry its canonical bytes (RFC 8785 form of themselves,
 * carrying its event id), its leaf hash and its inclusion proof against the signed root of its checkpoint. Throws
 * ExportInvalidError naming the first failure.
 */
export function verifyExport(data: LedgerExport, verifier: NoteVerifier): ExportVerification {
  const roots = new Map<number, Buffer>();
  let previous = 0;
  for (const [n, cp] of data.checkpoints.entries()) {
    if (cp.size <= previous) throw new ExportInvalidError(`checkpoints[${n}] (size ${cp.size}): checkpoints must be in increasing size order`);
    let checkpoint;
    try {
      ({ checkpoint } = openCheckpoint(cp.note, data.origin, [verifier]));
    } catch (err) {
      throw new ExportInvalidError(`checkpoint ${cp.size}: the signed note does not verify: ${(err as Error).message}`);
    }
    if (checkpoint.size !== cp.size) throw new ExportInvalidError(`checkpoint ${cp.size}: the signed note is for size ${checkpoint.size}`);
    roots.set(cp.size, checkpoint.rootHash);
    previous = cp.size;
  }
  const sizes = data.checkpoints.map((c) => c.size);
  for (let i = 1; i < sizes.length; i++) {
    const from = sizes[i - 1]!;
    const to = sizes[i]!;
    const found = data.consistency.find((c) => c.from === from && c.to === to);
    if (!found) throw new ExportInvalidError(`no consistency proof from checkpoint ${from} to checkpoint ${to}`);
    try {
      verifyConsistency(from, to, hashesOf(found.proof, `consistency proof ${from}->${to}`), roots.get(from)!, roots.get(to)!);
    } catch (err) {
      if (err instanceof ExportInvalidError) throw err;
      throw new ExportInvalidError(`consistency proof ${from}->${to} does not verify: ${(err as Error).message}`);
    }
  }
  const seen = new Set<number>();
  for (const [n, entry] of data.entries.entries()) {
    const name = `entry ${n} (leaf ${entry.leafIndex}, event ${entry.eventId.slice(0, 80)})`;
    if (seen.has(entry.leafIndex)) throw new ExportInvalidError(`${name}: leaf ${entry.leafIndex} appears twice`);
    seen.add(entry.leafIndex);
    const root = roots.get(entry.checkpoint);
    if (!root) throw new ExportInvalidError(`${name}: checkpoint ${entry.checkpoint} is not among the file's checkpoints`);
    let canonical: Buffer;
    try {
      canonical = decodeBase64Strict(entry.canonical, 'canonical', 'NOT_CANONICAL');
    } catch (err) {
      throw new ExportInvalidError(`${name}: ${(err as Error).message}`);
    }
    // The canonical form and the event id are checked as for a stored entry; the leaf hash is recomputed here.
    const hash = leafHash(canonical);
    try {
      checkEntry({ leafIndex: entry.leafIndex, eventId: entry.eventId, eventType: eventTypeOf(canonical), canonical, leafHash: hash }, { canonical: true });
    } catch (err) {
      throw new ExportInvalidError(`${name}: ${err instanceof LedgerCheckFailure ? err.reason : (err as Error).message}`);
    }
    try {
      verifyInclusion(hash, entry.leafIndex, entry.checkpoint, hashesOf(entry.inclusionProof, 'inclusion proof'), root);
    } catch (err) {
      throw new ExportInvalidError(`${name}: the inclusion proof in checkpoint ${entry.checkpoint} does not verify: ${(err as Error).message}`);
    }
  }
  return { origin: data.origin, entries: data.entries.length, checkpoints: sizes, consistencyProofs: Math.max(0, sizes.length - 1) };
}

/** The `type` inside canonical bytes, so checkEntry compares the event type with itself (an export carries no column). */
function eventTypeOf(canonical: Buffer): string {
  try {
    const type = (JSON.parse(canonical.toString('utf8')) as { type?: unknown }).type;
    return typeof type === 'string' ? type : '';
  } catch {
    return '';
  }
}

// Storage of the ledger (migration 0007) through the `Db` port, on PostgreSQL and PGlite alike: the sequencer row,
// leaves, complete-subtree hashes and signed checkpoints of one RFC 6962 tree per origin. See README.md ("Storage and
// writer"). Every write function takes a transaction (`Queryable` inside `Db.transaction`) and begins by locking the
// origin's sequencer row, so writers of one tree, in one process or many, take turns.
import { isUtf8 } from 'node:buffer';
import type { Queryable } from '../store/db.js';
import { canonicalBytes } from './canonical.js';
import { isLedgerError, LedgerError } from './errors.js';
import { consistencyProof, emptyTreeRoot, inclusionProof, leafHash, MerkleFrontier, rootAt, verifyConsistency, type HashReader, type NodeId, type StoredNode } from './merkle.js';
import { signCheckpoint, type NoteSigner } from './note.js';

/** One leaf to append: the event's canonical bytes and hash, and the columns kept next to them for queries. */
export interface LedgerEntryInput {
  eventId: string;
  eventType: string;
  /** The principal id, when the event is about one. */
  subject: string | null;
  decisionId: string | null;
  requestId: string | null;
  /** The CloudEvent time (ISO 8601). */
  occurredAt: string;
  topic: string | null;
  partition: number | null;
  offset: string | null;
  /** RFC 8785 canonical JSON of the whole event: the leaf input. */
  canonical: Buffer;
  /** leafHash(canonical) = SHA-256(0x00 ‖ canonical). */
  leafHash: Buffer;
}

/** A stored leaf. */
export interface LedgerEntry extends LedgerEntryInput {
  origin: string;
  leafIndex: number;
  recordedAt: string;
}

export interface SequencerState {
  origin: string;
  treeSize: number;
  root: Buffer;
  /** Size of the newest signed checkpoint; 0 when none. */
  checkpointSize: number;
  /** When the oldest leaf not yet in a checkpoint was appended; null when every leaf is in one. */
  openSince: Date | null;
  frozenAt: Date | null;
  frozenReason: string | null;
  /** Verification failures recorded so far (recordVerificationFailure), by the writer and the commands alike. */
  verificationFailures: number;
}

export interface StoredCheckpoint {
  origin: string;
  treeSize: number;
  root: Buffer;
  /** The signed note (c2sp.org/tlog-checkpoint in c2sp.org/signed-note). */
  note: string;
  signedAt: string;
}

export type EntryOutcome = 'appended' | 'skipped' | 'conflict';

export interface AppendResult {
  /** Leaves added by this call (events already in the tree are skipped). */
  appended: number;
  /** Ids of the events that were already in the tree (or repeated in the call). */
  skipped: string[];
  /**
   * Of `skipped`, the ids whose stored leaf differs from the one given: the same event id with other content (a
   * redelivery is always identical). Nothing is appended for them; the caller decides what to do (the role
   * dead-letters them).
   */
  conflicts: string[];
  /** Per entry given, in order: added as a leaf, skipped (already stored or repeated), or a conflict. */
  outcomes: EntryOutcome[];
  /** Index of the first leaf added (= the tree size before the call). */
  firstIndex: number;
  treeSize: number;
  root: Buffer;
  checkpointSize: number;
  /** Milliseconds since the oldest leaf not in a checkpoint was appended (database clock); 0 when all are sealed. */
  openMs: number;
}

export interface SealResult {
  origin: string;
  treeSize: number;
  previousSize: number;
  root: Buffer;
  note: string;
}

/**
 * The sequencer is frozen: nothing is appended or signed until `resumeLedger`. Retriable (`retriable: true`), so the
 * consumer runner treats it like an outage: the events wait in the event log, they never go to the DLQ.
 */
export class LedgerFrozenError extends Error {
  override readonly name = 'LedgerFrozenError';
  readonly code = 'LEDGER_FROZEN';
  readonly retriable = true;

  constructor(
    readonly origin: string,
    readonly reason: string | null,
  ) {
    super(`the ledger ${origin} is frozen${reason ? `: ${reason}` : ''}; resume it once resolved`);
  }
}

/**
 * The stored tree does not verify: a root that does not match the stored hashes, or a new size that is not
 * consistent with the previous checkpoint. Nothing is signed. Retriable, like a frozen ledger (the writer freezes
 * the sequencer when `ledger.freezeOnVerificationFailure` is on).
 */
export class LedgerVerificationError extends Error {
  override readonly name = 'LedgerVerificationError';
  readonly code = 'LEDGER_VERIFICATION_FAILED';
  readonly retriable = true;

  constructor(
    readonly origin: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`ledger ${origin}: ${message}`, options);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Values

/** bytea comes back as a Buffer from `pg` and as a Uint8Array from PGlite. */
function bytes(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`expected bytea, got ${typeof value}`);
}

const iso = (value: Date | string): string => new Date(value).toISOString();
const dateOrNull = (value: Date | string | null): Date | null => (value === null ? null : new Date(value));
const text = (value: unknown): string | null => (typeof value === 'string' && value.length > 0 ? value : null);

/**
 * The largest leaf input: an event whose canonical JSON is longer cannot be carried by a c2sp.org/tlog-tiles entry
 * bundle (uint16 length prefix), so the writer refuses it (the role dead-letters it) rather than seal a leaf no tile
 * client could fetch. Decision and metering events are a few hundred bytes to a few KiB.
 */
export const MAX_LEAF_BYTES = 0xffff;

/**
 * The leaf of an event: canonical bytes (RFC 8785) of the whole event object and their leaf hash, with its id, type,
 * time, subject and the decision/request ids of its data. `event` is the event as published (the parsed message
 * value); throws LedgerError NOT_CANONICAL when it has no canonical JSON form, and INVALID_ARGUMENT when it lacks a
 * string `id`, `type` or `time` or is longer than MAX_LEAF_BYTES.
 */
export function ledgerEntryOf(event: unknown, position: { topic?: string | null; partition?: number | null; offset?: string | null } = {}): LedgerEntryInput {
  const e = event as { id?: unknown; type?: unknown; time?: unknown; subject?: unknown; data?: unknown } | null;
  if (typeof e !== 'object' || e === null || typeof e.id !== 'string' || typeof e.type !== 'string' || typeof e.time !== 'string') {
    throw new LedgerError('INVALID_ARGUMENT', 'a ledger event needs a string id, type and time');
  }
  const canonical = canonicalBytes(event);
  if (canonical.length > MAX_LEAF_BYTES) {
    throw new LedgerError('INVALID_ARGUMENT', `the event's canonical JSON has ${canonical.length} bytes; a ledger leaf holds at most ${MAX_LEAF_BYTES} (a tile entry bundle's limit)`);
  }
  const data = (typeof e.data === 'object' && e.data !== null ? e.data : {}) as Record<string, unknown>;
  return {
    eventId: e.id,
    eventType: e.type,
    subject: text(e.subject),
    decisionId: text(data.decision_id),
    requestId: text(data.request_id),
    occurredAt: e.time,
    topic: position.topic ?? null,
    partition: position.partition ?? null,
    offset: position.offset ?? null,
    canonical,
    leafHash: leafHash(canonical),
  };
}

// ---------------------------------------------------------------------------------------------------------------------
// Reading hashes

/**
 * A HashReader over `ledger_hashes`: each call is one SELECT for the whole node list (a proof or a frontier is
 * O(log n) nodes). Throws HASH_READER for a node that is not stored. Inside a transaction it sees that
 * transaction's own inserts.
 */
export class SqlHashReader implements HashReader {
  constructor(
    private readonly db: Queryable,
    private readonly origin: string,
  ) {}

  async readHashes(nodes: readonly NodeId[]): Promise<Buffer[]> {
    if (nodes.length === 0) return [];
    // The (level, idx) pairs are written into the statement as a VALUES list: the planner then probes the primary
    // key once per node. They are checked integers, never text, so nothing can be injected.
    const pairs = nodes.map(({ level, index }) => {
      if (!Number.isSafeInteger(level) || level < 0 || level > 63 || !Number.isSafeInteger(index) || index < 0) {
        throw new LedgerError('INVALID_ARGUMENT', `node ${level}/${index} is not a node of a tree`);
      }
      return `(${level}, ${index})`;
    });
    const { rows } = await this.db.query<{ level: number; idx: string | number; hash: Uint8Array }>(
      `SELECT level, idx, hash FROM ledger_hashes WHERE origin = $1 AND (level, idx) IN (VALUES ${pairs.join(', ')})`,
      [this.origin],
    );
    const found = new Map<string, Buffer>();
    for (const row of rows) found.set(`${Number(row.level)}/${String(row.idx)}`, bytes(row.hash));
    const out = nodes.map(({ level, index }) => found.get(`${level}/${index}`));
    return out.map((hash, n) => {
      if (hash === undefined) throw new LedgerError('HASH_READER', `ledger ${this.origin}: node ${nodes[n]!.level}/${nodes[n]!.index} is not stored`);
      return hash;
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Sequencer

interface SequencerRow {
  origin: string;
  tree_size: string | number;
  root: Uint8Array;
  checkpoint_size: string | number;
  open_since: Date | string | null;
  frozen_at: Date | string | null;
  frozen_reason: string | null;
  verification_failures: string | number;
  open_ms: number | null;
}

const SEQUENCER_COLUMNS = `origin, tree_size, root, checkpoint_size, open_since, frozen_at, frozen_reason, verification_failures,
  CASE WHEN open_since IS NULL THEN 0 ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - open_since)) * 1000)::float8 END AS open_ms`;

function toState(row: SequencerRow): SequencerState & { openMs: number } {
  return {
    origin: row.origin,
    treeSize: Number(row.tree_size),
    root: bytes(row.root),
    checkpointSize: Number(row.checkpoint_size),
    openSince: dateOrNull(row.open_since),
    frozenAt: dateOrNull(row.frozen_at),
    frozenReason: row.frozen_reason,
    verificationFailures: Number(row.verification_failures),
    openMs: Number(row.open_ms ?? 0),
  };
}

/**
 * Locks the origin's sequencer row for the rest of the transaction (SELECT … FOR UPDATE), creating it at size 0 on
 * first use. Every writer of the tree calls this first, so they take turns: one sequencer per tree.
 */
export async function lockSequencer(tx: Queryable, origin: string): Promise<SequencerState & { openMs: number }> {
  const select = () => tx.query<SequencerRow>(`SELECT ${SEQUENCER_COLUMNS} FROM ledger_sequencer WHERE origin = $1 FOR UPDATE`, [origin]);
  let { rows } = await select();
  if (rows.length === 0) {
    // A concurrent creator makes this wait for its commit, then do nothing; the SELECT then sees its row.
    await tx.query('INSERT INTO ledger_sequencer (origin, root) VALUES ($1, decode($2, \'hex\')) ON CONFLICT (origin) DO NOTHING', [origin, emptyTreeRoot().toString('hex')]);
    ({ rows } = await select());
  }
  return toState(rows[0]!);
}

/**
 * Throws unless the database stores text as UTF-8: appendEvents sends each event's canonical bytes as text, and
 * another server encoding could not hold every event (PGlite is always UTF-8).
 */
export async function requireUtf8Database(db: Queryable): Promise<void> {
  const { rows } = await db.query<{ encoding: string }>("SELECT current_setting('server_encoding') AS encoding");
  const encoding = rows[0]?.encoding ?? 'unknown';
  if (encoding.toUpperCase() !== 'UTF8') {
    throw new LedgerError('INVALID_ARGUMENT', `the ledger needs a UTF8 database; this one's encoding is ${encoding} (create it with ENCODING 'UTF8')`);
  }
}

/** The sequencer row as it is now (no lock), or null before the first append. */
export async function readSequencer(db: Queryable, origin: string): Promise<(SequencerState & { openMs: number }) | null> {
  const { rows } = await db.query<SequencerRow>(`SELECT ${SEQUENCER_COLUMNS} FROM ledger_sequencer WHERE origin = $1`, [origin]);
  return rows[0] ? toState(rows[0]) : null;
}

/**
 * Freezes the sequencer (creating its row if needed): appends and checkpoints are refused with LedgerFrozenError
 * until `resumeLedger`. A second freeze keeps the first time and reason. For an operator, or the writer itself on a
 * verification failure.
 */
export async function freezeLedger(db: Queryable, origin: string, reason: string): Promise<SequencerState> {
  const { rows } = await db.query<SequencerRow>(
    `INSERT INTO ledger_sequencer (origin, root, frozen_at, frozen_reason) VALUES ($1, decode($2, 'hex'), now(), $3)
     ON CONFLICT (origin) DO UPDATE SET frozen_at = COALESCE(ledger_sequencer.frozen_at, now()),
       frozen_reason = COALESCE(ledger_sequencer.frozen_reason, EXCLUDED.frozen_reason), updated_at = now()
     RETURNING ${SEQUENCER_COLUMNS}`,
    [origin, emptyTreeRoot().toString('hex'), reason.slice(0, 2_000) || 'frozen'],
  );
  return toState(rows[0]!);
}

/** Counts one verification failure of the origin's ledger (creating its row if needed); returns the new count. */
export async function recordVerificationFailure(db: Queryable, origin: string): Promise<number> {
  const { rows } = await db.query<{ verification_failures: string | number }>(
    `INSERT INTO ledger_sequencer (origin, root, verification_failures) VALUES ($1, decode($2, 'hex'), 1)
     ON CONFLICT (origin) DO UPDATE SET verification_failures = ledger_sequencer.verification_failures + 1, updated_at = now()
     RETURNING verification_failures`,
    [origin, emptyTreeRoot().toString('hex')],
  );
  return Number(rows[0]!.verification_failures);
}

/** Lifts a freeze; returns whether the sequencer was frozen. */
export async function resumeLedger(db: Queryable, origin: string): Promise<boolean> {
  const { rowCount } = await db.query(
    'UPDATE ledger_sequencer SET frozen_at = NULL, frozen_reason = NULL, updated_at = now() WHERE origin = $1 AND frozen_at IS NOT NULL',
    [origin],
  );
  return rowCount > 0;
}

// ---------------------------------------------------------------------------------------------------------------------
// Appending

/**
 * Appends the events that are not yet in the tree, in order, as leaves of `origin`'s tree. Must run inside a
 * transaction (`tx`), which it begins by locking the sequencer row: then it skips events whose id is already stored
 * (delivery is at least once) or repeated in `entries`, loads the frontier from `ledger_hashes` (one read of
 * ≤ log2 n hashes, checked against the sequencer's root), appends the leaves in memory, and writes the entries and
 * every new complete-subtree hash in one statement each, then the new size and root. A frozen sequencer refuses
 * (LedgerFrozenError); a frontier that does not give the stored root is a LedgerVerificationError.
 */
export async function appendEvents(tx: Queryable, origin: string, entries: readonly LedgerEntryInput[]): Promise<AppendResult> {
  const state = await lockSequencer(tx, origin);
  if (state.frozenAt !== null) throw new LedgerFrozenError(origin, state.frozenReason);
  const unchanged = (skipped: string[], conflicts: string[], outcomes: EntryOutcome[]): AppendResult => ({
    appended: 0,
    skipped,
    conflicts,
    outcomes,
    firstIndex: state.treeSize,
    treeSize: state.treeSize,
    root: state.root,
    checkpointSize: state.checkpointSize,
    openMs: state.openMs,
  });
  if (entries.length === 0) return unchanged([], [], []);

  // Already in the tree, or earlier in this call: skipped. The lock keeps other writers out until we commit.
  const { rows: present } = await tx.query<{ event_id: string; leaf_hash: Uint8Array }>(
    'SELECT event_id, leaf_hash FROM ledger_entries WHERE origin = $1 AND event_id IN (SELECT json_array_elements_text($2::json))',
    [origin, JSON.stringify([...new Set(entries.map((entry) => entry.eventId))])],
  );
  const seen = new Map<string, Buffer>(present.map((row) => [row.event_id, bytes(row.leaf_hash)]));
  const skipped: string[] = [];
  const conflicts: string[] = [];
  const fresh: LedgerEntryInput[] = [];
  const outcomes: EntryOutcome[] = [];
  for (const entry of entries) {
    const earlier = seen.get(entry.eventId);
    if (earlier === undefined) {
      seen.set(entry.eventId, entry.leafHash);
      fresh.push(entry);
      outcomes.push('appended');
    } else {
      skipped.push(entry.eventId);
      if (earlier.equals(entry.leafHash)) {
        outcomes.push('skipped');
      } else {
        conflicts.push(entry.eventId);
        outcomes.push('conflict');
      }
    }
  }
  if (fresh.length === 0) return unchanged(skipped, conflicts, outcomes);
  // They are sent as text below: bytes that are not UTF-8 would be stored as something other than what was hashed.
  const notUtf8 = fresh.find((entry) => !isUtf8(entry.canonical));
  if (notUtf8) throw new LedgerError('NOT_CANONICAL', `event ${notUtf8.eventId}: the leaf input is not UTF-8`);

  const frontier = await loadFrontier(tx, state);
  const nodes: StoredNode[] = [];
  for (const entry of fresh) for (const node of frontier.append(entry.leafHash)) nodes.push(node);
  const root = frontier.root();

  await tx.query(
    `INSERT INTO ledger_entries (origin, leaf_index, event_id, event_type, subject, decision_id, request_id, occurred_at, topic, partition, "offset", canonical, leaf_hash)
     SELECT $1, r.i, r.id, r.t, r.s, r.d, r.q, r.at, r.tp, r.p, r.o, convert_to(r.c, 'UTF8'), decode(r.h, 'hex')
       FROM json_to_recordset($2::json) AS r(i bigint, id text, t text, s text, d text, q text, at timestamptz, tp text, p integer, o bigint, c text, h text)`,
    [
      origin,
      JSON.stringify(
        fresh.map((entry, n) => ({
          i: state.treeSize + n,
          id: entry.eventId,
          t: entry.eventType,
          s: entry.subject,
          d: entry.decisionId,
          q: entry.requestId,
          at: entry.occurredAt,
          tp: entry.topic,
          p: entry.partition,
          o: entry.offset,
          // The canonical bytes are UTF-8 JSON text (canonicalBytes refuses lone surrogates), so they travel as text:
          // cheaper for the database than decoding base64 or hex (the role checks the database encoding is UTF8).
          c: entry.canonical.toString('utf8'),
          h: entry.leafHash.toString('hex'),
        })),
      ),
    ],
  );
  await tx.query(
    `INSERT INTO ledger_hashes (origin, level, idx, hash)
     SELECT $1, r.l, r.i, decode(r.h, 'hex') FROM json_to_recordset($2::json) AS r(l smallint, i bigint, h text)`,
    [origin, JSON.stringify(nodes.map((node) => ({ l: node.level, i: node.index, h: node.hash.toString('hex') })))],
  );
  const { rows } = await tx.query<SequencerRow>(
    `UPDATE ledger_sequencer SET tree_size = $2, root = decode($3, 'hex'), open_since = COALESCE(open_since, now()), updated_at = now()
      WHERE origin = $1 RETURNING ${SEQUENCER_COLUMNS}`,
    [origin, frontier.size, root.toString('hex')],
  );
  const after = toState(rows[0]!);
  return {
    appended: fresh.length,
    skipped,
    conflicts,
    outcomes,
    firstIndex: state.treeSize,
    treeSize: after.treeSize,
    root: after.root,
    checkpointSize: after.checkpointSize,
    openMs: after.openMs,
  };
}

async function loadFrontier(tx: Queryable, state: SequencerState): Promise<MerkleFrontier> {
  let frontier: MerkleFrontier;
  try {
    frontier = await MerkleFrontier.load(state.treeSize, new SqlHashReader(tx, state.origin));
  } catch (err) {
    if (isLedgerError(err)) throw new LedgerVerificationError(state.origin, `cannot load the frontier of size ${state.treeSize}: ${err.message}`, { cause: err });
    throw err;
  }
  if (!frontier.root().equals(state.root)) {
    throw new LedgerVerificationError(state.origin, `the stored hashes give another root at size ${state.treeSize} than the sequencer holds`);
  }
  return frontier;
}

// ---------------------------------------------------------------------------------------------------------------------
// Checkpoints

interface CheckpointRow {
  origin: string;
  tree_size: string | number;
  root: Uint8Array;
  note: string;
  signed_at: Date | string;
}

const toCheckpoint = (row: CheckpointRow): StoredCheckpoint => ({
  origin: row.origin,
  treeSize: Number(row.tree_size),
  root: bytes(row.root),
  note: row.note,
  signedAt: iso(row.signed_at),
});

/**
 * Signs a checkpoint of the current tree if it has grown since the last one; null when there is nothing new. Runs
 * inside a transaction, which it begins by locking the sequencer row. Before signing it checks, from the stored
 * hashes, that the root they give at the new size is the sequencer's, and proves the new size consistent with the
 * previous checkpoint (consistencyProof + verifyConsistency against the stored previous root) — a
 * LedgerVerificationError otherwise, and nothing is signed. Then it stores the signed note and moves the checkpoint
 * size. A frozen sequencer refuses (LedgerFrozenError).
 */
export async function sealCheckpoint(tx: Queryable, origin: string, signer: NoteSigner | readonly NoteSigner[]): Promise<SealResult | null> {
  const state = await lockSequencer(tx, origin);
  if (state.frozenAt !== null) throw new LedgerFrozenError(origin, state.frozenReason);
  if (state.treeSize <= state.checkpointSize) return null;
  const reader = new SqlHashReader(tx, origin);
  const previousSize = state.checkpointSize;
  try {
    const root = await rootAt(state.treeSize, reader);
    if (!root.equals(state.root)) throw new LedgerError('PROOF_INVALID', `the stored hashes give another root at size ${state.treeSize} than the sequencer holds`);
    if (previousSize > 0) {
      const previous = await readCheckpoint(tx, origin, previousSize);
      if (!previous) throw new LedgerError('PROOF_INVALID', `the checkpoint of size ${previousSize} is missing`);
      const proof = await consistencyProof(previousSize, state.treeSize, reader);
      verifyConsistency(previousSize, state.treeSize, proof, previous.root, state.root);
    }
  } catch (err) {
    if (isLedgerError(err)) {
      throw new LedgerVerificationError(origin, `size ${state.treeSize} is not provably consistent with the checkpoint of size ${previousSize}: ${err.message}`, { cause: err });
    }
    throw err;
  }
  const note = signCheckpoint({ origin, size: state.treeSize, rootHash: state.root }, Array.isArray(signer) ? (signer as readonly NoteSigner[]) : [signer as NoteSigner]);
  // The primary key (origin, tree_size) refuses a second root for this size. signed_at is the time of signing, not
  // of the transaction's start (now()): a writer that waited for the lock must not date its checkpoint before the
  // one it waited for.
  await tx.query('INSERT INTO ledger_checkpoints (origin, tree_size, root, note, signed_at) VALUES ($1, $2, decode($3, \'hex\'), $4, clock_timestamp())', [
    origin,
    state.treeSize,
    state.root.toString('hex'),
    note,
  ]);
  await tx.query('UPDATE ledger_sequencer SET checkpoint_size = $2, open_since = NULL, updated_at = now() WHERE origin = $1', [origin, state.treeSize]);
  return { origin, treeSize: state.treeSize, previousSize, root: state.root, note };
}

/** The checkpoint of exactly `treeSize`, or null. */
export async function readCheckpoint(db: Queryable, origin: string, treeSize: number): Promise<StoredCheckpoint | null> {
  const { rows } = await db.query<CheckpointRow>('SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 AND tree_size = $2', [origin, treeSize]);
  return rows[0] ? toCheckpoint(rows[0]) : null;
}

/** The newest checkpoint, or null before the first. */
export async function latestCheckpoint(db: Queryable, origin: string): Promise<StoredCheckpoint | null> {
  const { rows } = await db.query<CheckpointRow>(
    'SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 ORDER BY tree_size DESC LIMIT 1',
    [origin],
  );
  return rows[0] ? toCheckpoint(rows[0]) : null;
}

/** Checkpoints in size order, from `fromSize` (inclusive), at most `limit`. */
export async function listCheckpoints(db: Queryable, origin: string, options: { fromSize?: number; limit?: number } = {}): Promise<StoredCheckpoint[]> {
  const { rows } = await db.query<CheckpointRow>(
    'SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 AND tree_size >= $2 ORDER BY tree_size LIMIT $3',
    [origin, options.fromSize ?? 0, options.limit ?? 1_000],
  );
  return rows.map(toCheckpoint);
}

// ---------------------------------------------------------------------------------------------------------------------
// Entries and proofs

interface EntryRow {
  origin: string;
  leaf_index: string | number;
  event_id: string;
  event_type: string;
  subject: string | null;
  decision_id: string | null;
  request_id: string | null;
  occurred_at: Date | string;
  recorded_at: Date | string;
  topic: string | null;
  partition: number | null;
  offset: string | number | null;
  canonical: Uint8Array;
  leaf_hash: Uint8Array;
}

const ENTRY_COLUMNS = 'origin, leaf_index, event_id, event_type, subject, decision_id, request_id, occurred_at, recorded_at, topic, partition, "offset", canonical, leaf_hash';

type LeafColumns = Pick<EntryRow, 'leaf_index' | 'event_id' | 'event_type' | 'subject' | 'decision_id' | 'request_id' | 'canonical' | 'leaf_hash'>;

/** The columns every read of a leaf has, as the entry and the verification types name them. */
const leafOf = (row: LeafColumns) => ({
  leafIndex: Number(row.leaf_index),
  eventId: row.event_id,
  eventType: row.event_type,
  subject: row.subject,
  decisionId: row.decision_id,
  requestId: row.request_id,
  canonical: bytes(row.canonical),
  leafHash: bytes(row.leaf_hash),
});

const toEntry = (row: EntryRow): LedgerEntry => ({
  ...leafOf(row),
  origin: row.origin,
  occurredAt: iso(row.occurred_at),
  recordedAt: iso(row.recorded_at),
  topic: row.topic,
  partition: row.partition === null ? null : Number(row.partition),
  offset: row.offset === null ? null : String(row.offset),
});

/** Leaves in index order from `fromIndex` (inclusive) up to `fromIndex + limit` (exclusive). */
export async function readEntries(db: Queryable, origin: string, options: { fromIndex?: number; limit?: number } = {}): Promise<LedgerEntry[]> {
  // A bounded index range rather than `>= from … LIMIT`: without fresh statistics the planner may read every later
  // leaf and sort them for each page.
  const from = options.fromIndex ?? 0;
  const { rows } = await db.query<EntryRow>(`SELECT ${ENTRY_COLUMNS} FROM ledger_entries WHERE origin = $1 AND leaf_index >= $2 AND leaf_index < $3 ORDER BY leaf_index`, [
    origin,
    from,
    from + (options.limit ?? 10_000),
  ]);
  return rows.map(toEntry);
}

/** What verification reads of a leaf: the leaf input, its hash and the columns queries trust. */
export interface VerifiableLeaf {
  leafIndex: number;
  eventId: string;
  eventType: string;
  subject: string | null;
  decisionId: string | null;
  requestId: string | null;
  /** occurred_at in whole milliseconds since the epoch (exact: EXTRACT gives a numeric). */
  occurredAtMs: number;
  canonical: Buffer;
  leafHash: Buffer;
}

/**
 * Leaves with indexes in [fromIndex, fromIndex + limit), in order, with only what verification needs: no Date
 * parsing, no recorded_at or log position (a 1M-leaf run reads about 1 GB, so every column counts). A bounded index
 * range rather than `>= from … LIMIT`: without fresh statistics the planner may read and sort every later leaf per page.
 * (Letting the database parse the JSON and compare the columns was measured: jsonb parsing costs it more than
 * JSON.parse costs us.)
 */
export async function readVerifiableLeaves(db: Queryable, origin: string, fromIndex: number, limit: number): Promise<VerifiableLeaf[]> {
  const { rows } = await db.query<LeafColumns & { occurred_ms: string | number }>(
    `SELECT leaf_index, event_id, event_type, subject, decision_id, request_id,
            floor(EXTRACT(EPOCH FROM occurred_at) * 1000)::int8 AS occurred_ms, canonical, leaf_hash
       FROM ledger_entries WHERE origin = $1 AND leaf_index >= $2 AND leaf_index < $3 ORDER BY leaf_index`,
    [origin, fromIndex, fromIndex + limit],
  );
  return rows.map((row) => ({ ...leafOf(row), occurredAtMs: Number(row.occurred_ms) }));
}

/**
 * The stored hashes of whole index ranges, `[from, to)` per level, in one statement (a verification page creates
 * one contiguous range of nodes per level: range scans on the primary key, not a probe per node). Each level comes
 * back as one concatenated value rather than a row per node (parsing rows is most of the cost); a level with a gap
 * is read again row by row. Keyed `level/index`; nodes not stored are absent.
 */
export async function readHashRanges(db: Queryable, origin: string, ranges: readonly { level: number; from: number; to: number }[]): Promise<Map<string, Buffer>> {
  const found = new Map<string, Buffer>();
  if (ranges.length === 0) return found;
  const where = (list: readonly { level: number; from: number; to: number }[]) =>
    list
      .map(({ level, from, to }) => {
        for (const value of [level, from, to]) if (!Number.isSafeInteger(value) || value < 0) throw new LedgerError('INVALID_ARGUMENT', `bad hash range ${level}/${from}-${to}`);
        return `(level = ${level} AND idx >= ${from} AND idx < ${to})`;
      })
      .join(' OR ');
  const { rows } = await db.query<{ level: number; first: string | number; last: string | number; n: string | number; hashes: Uint8Array }>(
    `SELECT level, min(idx) AS first, max(idx) AS last, count(*) AS n, string_agg(hash, ''::bytea ORDER BY idx) AS hashes
       FROM ledger_hashes WHERE origin = $1 AND (${where(ranges)}) GROUP BY level`,
    [origin],
  );
  const gaps: { level: number; from: number; to: number }[] = [];
  for (const row of rows) {
    const level = Number(row.level);
    const first = Number(row.first);
    const n = Number(row.n);
    const all = bytes(row.hashes);
    if (Number(row.last) - first + 1 !== n || all.length !== n * 32) {
      gaps.push(ranges.find((range) => range.level === level)!);
      continue;
    }
    for (let k = 0; k < n; k++) found.set(`${level}/${first + k}`, all.subarray(k * 32, (k + 1) * 32));
  }
  if (gaps.length > 0) {
    const { rows: single } = await db.query<{ level: number; idx: string | number; hash: Uint8Array }>(
      `SELECT level, idx, hash FROM ledger_hashes WHERE origin = $1 AND (${where(gaps)})`,
      [origin],
    );
    for (const row of single) found.set(`${Number(row.level)}/${String(row.idx)}`, bytes(row.hash));
  }
  return found;
}

/** The leaf of an event, by its id, or null. */
export async function findEntry(db: Queryable, origin: string, eventId: string): Promise<LedgerEntry | null> {
  const { rows } = await db.query<EntryRow>(`SELECT ${ENTRY_COLUMNS} FROM ledger_entries WHERE origin = $1 AND event_id = $2`, [origin, eventId]);
  return rows[0] ? toEntry(rows[0]) : null;
}

/** Inclusion proof of leaf `index` in the tree of `treeSize` leaves (take the size from a checkpoint), one read. */
export function proveInclusion(db: Queryable, origin: string, index: number, treeSize: number): Promise<Buffer[]> {
  return inclusionProof(index, treeSize, new SqlHashReader(db, origin));
}

/** Consistency proof between two sizes (take both from checkpoints), one read. */
export function proveConsistency(db: Queryable, origin: string, oldSize: number, newSize: number): Promise<Buffer[]> {
  return consistencyProof(oldSize, newSize, new SqlHashReader(db, origin));
}

// ---------------------------------------------------------------------------------------------------------------------
// Reading for the commands (verification, queries, export)

/** The newest checkpoint smaller than `treeSize`, or null when there is none (the batch then starts at leaf 0). */
export async function previousCheckpoint(db: Queryable, origin: string, treeSize: number): Promise<StoredCheckpoint | null> {
  const { rows } = await db.query<CheckpointRow>(
    'SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 AND tree_size < $2 ORDER BY tree_size DESC LIMIT 1',
    [origin, treeSize],
  );
  return rows[0] ? toCheckpoint(rows[0]) : null;
}

/** The first checkpoint that covers leaf `leafIndex` (the smallest size above it), or null while it is unsealed. */
export async function coveringCheckpoint(db: Queryable, origin: string, leafIndex: number): Promise<StoredCheckpoint | null> {
  const { rows } = await db.query<CheckpointRow>(
    'SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 AND tree_size > $2 ORDER BY tree_size LIMIT 1',
    [origin, leafIndex],
  );
  return rows[0] ? toCheckpoint(rows[0]) : null;
}

/** Checkpoints signed in [start, end], in size order, at most `limit`. */
export async function checkpointsSignedBetween(db: Queryable, origin: string, start: Date, end: Date, limit = 1_000_000): Promise<StoredCheckpoint[]> {
  const { rows } = await db.query<CheckpointRow>(
    'SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 AND signed_at >= $2 AND signed_at <= $3 ORDER BY tree_size LIMIT $4',
    [origin, start.toISOString(), end.toISOString(), limit],
  );
  return rows.map(toCheckpoint);
}

/** Checkpoints with sizes in [fromSize, toSize], in size order. */
export async function checkpointsBetweenSizes(db: Queryable, origin: string, fromSize: number, toSize: number): Promise<StoredCheckpoint[]> {
  const { rows } = await db.query<CheckpointRow>(
    'SELECT origin, tree_size, root, note, signed_at FROM ledger_checkpoints WHERE origin = $1 AND tree_size >= $2 AND tree_size <= $3 ORDER BY tree_size',
    [origin, fromSize, toSize],
  );
  return rows.map(toCheckpoint);
}

/** Leaves whose event time is in [start, end), optionally of one subject, in index order, at most `limit`. */
export async function readEntriesByTime(
  db: Queryable,
  origin: string,
  options: { start: Date; end: Date; subject?: string; limit?: number },
): Promise<LedgerEntry[]> {
  const params: unknown[] = [origin, options.start.toISOString(), options.end.toISOString(), options.limit ?? 10_000];
  let where = 'origin = $1 AND occurred_at >= $2 AND occurred_at < $3';
  if (options.subject !== undefined) {
    params.push(options.subject);
    where += ` AND subject = $${params.length}`;
  }
  const { rows } = await db.query<EntryRow>(`SELECT ${ENTRY_COLUMNS} FROM ledger_entries WHERE ${where} ORDER BY leaf_index LIMIT $4`, params);
  return rows.map(toEntry);
}

/** Leaves stored at an index at or beyond `treeSize` (which no tree of that size has), at most `limit`. */
export async function entriesBeyond(db: Queryable, origin: string, treeSize: number, limit = 1): Promise<LedgerEntry[]> {
  const { rows } = await db.query<EntryRow>(`SELECT ${ENTRY_COLUMNS} FROM ledger_entries WHERE origin = $1 AND leaf_index >= $2 ORDER BY leaf_index LIMIT $3`, [
    origin,
    treeSize,
    limit,
  ]);
  return rows.map(toEntry);
}

/** Counts for `ledger summary`: checkpoints, the newest one's time and age (database clock), leaves per event type. */
export async function ledgerCounts(
  db: Queryable,
  origin: string,
): Promise<{ checkpoints: number; lastSignedAt: string | null; lastAgeSeconds: number | null; types: { eventType: string; count: number }[] }> {
  const { rows: cps } = await db.query<{ n: string | number; last: Date | string | null; age: number | null }>(
    'SELECT count(*) AS n, max(signed_at) AS last, EXTRACT(EPOCH FROM (now() - max(signed_at)))::float8 AS age FROM ledger_checkpoints WHERE origin = $1',
    [origin],
  );
  const { rows: types } = await db.query<{ event_type: string; n: string | number }>(
    'SELECT event_type, count(*) AS n FROM ledger_entries WHERE origin = $1 GROUP BY event_type ORDER BY event_type',
    [origin],
  );
  const row = cps[0]!;
  return {
    checkpoints: Number(row.n),
    lastSignedAt: row.last === null ? null : iso(row.last),
    lastAgeSeconds: row.age === null ? null : Math.max(0, Number(row.age)),
    types: types.map((t) => ({ eventType: t.event_type, count: Number(t.n) })),
  };
}

// ---------------------------------------------------------------------------------------------------------------------
// Reading for HTTP (receipts and c2sp.org/tlog-tiles; src/ledger/receipts.ts, tiles.ts)

/**
 * The leaf of the decision event with this decision id, or null. Decision events only (`eventType`): other events
 * (metering) may carry the same decision id in their data. One SELECT on the decision_id index.
 */
export async function findDecisionEntry(db: Queryable, origin: string, decisionId: string, eventType: string): Promise<LedgerEntry | null> {
  const { rows } = await db.query<EntryRow>(
    `SELECT ${ENTRY_COLUMNS} FROM ledger_entries WHERE decision_id = $2 AND origin = $1 AND event_type = $3 ORDER BY leaf_index LIMIT 1`,
    [origin, decisionId, eventType],
  );
  return rows[0] ? toEntry(rows[0]) : null;
}

/**
 * The hashes of nodes `(level, [from, to))` — a tile's worth — if the origin's newest checkpoint covers `covered`
 * leaves (the caller's bound: the leaves under the last node), in one statement. `checkpointSize` is the sequencer's
 * (0: no checkpoint yet, or no tree); `hashes` is empty when the checkpoint does not cover them.
 */
export async function readCoveredHashes(
  db: Queryable,
  origin: string,
  level: number,
  from: number,
  to: number,
  covered: number,
): Promise<{ checkpointSize: number; hashes: { index: number; hash: Buffer }[] }> {
  const { rows } = await db.query<{ checkpoint_size: string | number; idx: string | number | null; hash: Uint8Array | null }>(
    `SELECT s.checkpoint_size, h.idx, h.hash FROM ledger_sequencer s
       LEFT JOIN ledger_hashes h ON h.origin = s.origin AND h.level = $2 AND h.idx >= $3 AND h.idx < $4 AND s.checkpoint_size >= $5
      WHERE s.origin = $1 ORDER BY h.idx`,
    [origin, level, from, to, covered],
  );
  const checkpointSize = rows[0] ? Number(rows[0].checkpoint_size) : 0;
  const hashes = rows.filter((row) => row.idx !== null && row.hash !== null).map((row) => ({ index: Number(row.idx), hash: bytes(row.hash) }));
  return { checkpointSize, hashes };
}

/** Like `readCoveredHashes` for leaves `[from, to)`: their canonical bytes, when the newest checkpoint covers `to`. */
export async function readCoveredEntries(
  db: Queryable,
  origin: string,
  from: number,
  to: number,
): Promise<{ checkpointSize: number; entries: { index: number; canonical: Buffer }[] }> {
  const { rows } = await db.query<{ checkpoint_size: string | number; leaf_index: string | number | null; canonical: Uint8Array | null }>(
    `SELECT s.checkpoint_size, e.leaf_index, e.canonical FROM ledger_sequencer s
       LEFT JOIN ledger_entries e ON e.origin = s.origin AND e.leaf_index >= $2 AND e.leaf_index < $3 AND s.checkpoint_size >= $3
      WHERE s.origin = $1 ORDER BY e.leaf_index`,
    [origin, from, to],
  );
  const checkpointSize = rows[0] ? Number(rows[0].checkpoint_size) : 0;
  const entries = rows.filter((row) => row.leaf_index !== null && row.canonical !== null).map((row) => ({ index: Number(row.leaf_index), canonical: bytes(row.canonical) }));
  return { checkpointSize, entries };
}

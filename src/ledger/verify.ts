// Verification of the stored ledger, for `caracal merkle verify-batch|verify-range|verify-event`: every leaf hash is
// recomputed from the stored canonical bytes, every root from those leaf hashes, every stored subtree hash is checked
// against the recomputation, every checkpoint signature against the verifier key, and consecutive checkpoints are
// proven consistent. See README.md ("Commands").
import type { Queryable } from '../store/db.js';
import { canonicalBytes } from './canonical.js';
import { decodeUtf8Strict } from './encoding.js';
import { HASH_SIZE, leafHash, MerkleFrontier, verifyConsistency, verifyInclusion, type StoredNode } from './merkle.js';
import { openCheckpoint, type NoteVerifier } from './note.js';
import {
  checkpointsBetweenSizes,
  checkpointsSignedBetween,
  coveringCheckpoint,
  entriesBeyond,
  findEntry,
  freezeLedger,
  previousCheckpoint,
  proveConsistency,
  proveInclusion,
  readCheckpoint,
  readHashRanges,
  readVerifiableLeaves,
  recordVerificationFailure,
  readSequencer,
  SqlHashReader,
  type VerifiableLeaf,
  type StoredCheckpoint,
} from './store.js';

/**
 * The stored ledger does not verify. `subject` names the first bad thing found: `leaf <i> (event <id>)`,
 * `checkpoint <size>` or `node <level>/<index>`; the message is one line. Unlike a usage error (unknown batch, an
 * event not sealed yet), this is evidence of tampering or corruption: the commands count it and freeze the ledger.
 */
export class LedgerCheckFailure extends Error {
  override readonly name = 'LedgerCheckFailure';
  readonly code = 'LEDGER_VERIFICATION_FAILED';

  constructor(
    readonly subject: string,
    readonly reason: string,
  ) {
    super(`verification failed: ${subject}: ${reason}`);
  }
}

/** A request the ledger cannot answer (unknown batch or event, nothing sealed): not a verification failure. */
export class LedgerLookupError extends Error {
  override readonly name = 'LedgerLookupError';
  readonly code = 'LEDGER_NOT_FOUND';
}

export interface VerifyOptions {
  db: Queryable;
  origin: string;
  verifier: NoteVerifier;
  /** Called at most about once a second on long runs: leaves checked so far, of `total`. */
  onProgress?: (done: number, total: number) => void;
  /** Leaves read per query (default 5,000). */
  pageSize?: number;
  /** Also check that every leaf's bytes are RFC 8785 canonical (see checkEntry). */
  checkCanonical?: boolean;
}

export interface RunResult {
  /** Checkpoints verified (the batches), in size order. */
  checkpoints: { size: number; signedAt: string }[];
  /** The checkpoint the run started from (its signature and its root from the stored hashes verified), or 0. */
  fromSize: number;
  toSize: number;
  leaves: number;
  consistencyProofs: number;
}

const leafName = (index: number, eventId?: string) => (eventId === undefined ? `leaf ${index}` : `leaf ${index} (event ${eventId})`);
const reasonOf = (err: unknown) => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/** Opens a stored checkpoint with the verifier and checks that its signed size and root are the stored ones. */
export function checkStoredCheckpoint(stored: StoredCheckpoint, origin: string, verifier: NoteVerifier): { size: number; root: Buffer } {
  let checkpoint;
  try {
    ({ checkpoint } = openCheckpoint(stored.note, origin, [verifier]));
  } catch (err) {
    throw new LedgerCheckFailure(`checkpoint ${stored.treeSize}`, `the signed note does not verify: ${reasonOf(err)}`);
  }
  if (checkpoint.size !== stored.treeSize) throw new LedgerCheckFailure(`checkpoint ${stored.treeSize}`, `the signed note is for size ${checkpoint.size}`);
  if (!checkpoint.rootHash.equals(stored.root)) throw new LedgerCheckFailure(`checkpoint ${stored.treeSize}`, 'the stored root is not the signed root');
  return { size: checkpoint.size, root: checkpoint.rootHash };
}

/** A stored leaf to check: its bytes and hash, and the query columns next to it (each checked when given). */
export interface CheckedLeaf {
  leafIndex: number;
  eventId: string;
  eventType: string;
  canonical: Buffer;
  leafHash: Buffer;
  subject?: string | null;
  decisionId?: string | null;
  requestId?: string | null;
  occurredAtMs?: number;
}

const textOrNull = (value: unknown): string | null => (typeof value === 'string' && value.length > 0 ? value : null);

/**
 * The leaf hash of a stored entry, recomputed from its canonical bytes, after checking that those bytes are UTF-8
 * JSON of an event whose id, type, subject, decision id, request id and time are the columns stored next to it (the
 * columns `ledger query` and receipts trust), and that the stored leaf hash is theirs. With `canonical`, also that
 * the bytes are the RFC 8785 form of themselves: a check of the writer rather than of the stored data (tampered bytes
 * no longer give the signed hashes anyway), and most of the cost of a leaf, so verify-range leaves it to
 * `--check-canonical`; exports always do it.
 */
export function checkEntry(entry: CheckedLeaf, options: { canonical?: boolean } = {}): Buffer {
  const name = leafName(entry.leafIndex, entry.eventId);
  let parsed: unknown;
  try {
    parsed = JSON.parse(decodeUtf8Strict(entry.canonical, 'the canonical bytes', 'NOT_CANONICAL'));
  } catch (err) {
    throw new LedgerCheckFailure(name, `the stored canonical bytes are not JSON: ${reasonOf(err)}`);
  }
  if (options.canonical) {
    let again: Buffer;
    try {
      again = canonicalBytes(parsed);
    } catch (err) {
      throw new LedgerCheckFailure(name, `the stored canonical bytes have no RFC 8785 form: ${reasonOf(err)}`);
    }
    if (!again.equals(entry.canonical)) throw new LedgerCheckFailure(name, 'the stored canonical bytes are not RFC 8785 canonical JSON');
  }
  const event = parsed as { id?: unknown; type?: unknown; subject?: unknown; time?: unknown; data?: unknown } | null;
  if (typeof event !== 'object' || event === null || Array.isArray(event) || event.id !== entry.eventId || event.type !== entry.eventType) {
    throw new LedgerCheckFailure(name, 'the stored event id or type is not the one in the canonical bytes');
  }
  const data = (typeof event.data === 'object' && event.data !== null ? event.data : {}) as Record<string, unknown>;
  const columns: [string, unknown, unknown][] = [
    ['subject', entry.subject, textOrNull(event.subject)],
    ['decision id', entry.decisionId, textOrNull(data.decision_id)],
    ['request id', entry.requestId, textOrNull(data.request_id)],
  ];
  for (const [what, stored, inEvent] of columns) {
    if (stored !== undefined && stored !== inEvent) throw new LedgerCheckFailure(name, `the stored ${what} is not the one in the canonical bytes`);
  }
  return checkTimeAndHash(entry, event.time);
}

/** The last two checks of a leaf: its time column against the event's `time`, and its stored leaf hash. */
function checkTimeAndHash(entry: CheckedLeaf, eventTime: unknown): Buffer {
  if (entry.occurredAtMs !== undefined && typeof eventTime === 'string') {
    // The writer stored the time as PostgreSQL parsed it; a time JavaScript cannot parse is left to the hash.
    const ms = Date.parse(eventTime);
    if (Number.isFinite(ms) && ms !== entry.occurredAtMs) throw new LedgerCheckFailure(leafName(entry.leafIndex, entry.eventId), 'the stored event time is not the one in the canonical bytes');
  }
  const hash = leafHash(entry.canonical);
  if (!hash.equals(entry.leafHash)) throw new LedgerCheckFailure(leafName(entry.leafIndex, entry.eventId), 'the canonical bytes do not hash to the stored leaf hash');
  return hash;
}

/**
 * Verifies the consecutive checkpoints `checkpoints` (size order, none skipped) starting from `base` (the checkpoint
 * just before the first, or null for leaf 0). The base's signature is checked and its signed root must equal the
 * root of the stored hashes of its frontier (so those ≤ log2 n hashes are authenticated by the signature); then every
 * leaf up to the last checkpoint is read in order, checked (checkEntry), appended to the frontier, and every complete
 * subtree hash this recomputation creates is compared with the stored one. At each checkpoint the recomputed root must
 * be the signed one, and the consistency proof from the previous checkpoint, built from the stored hashes as a client
 * would get it, must verify. Throws LedgerCheckFailure at the first problem.
 */
export async function verifyCheckpointRun(options: VerifyOptions, base: StoredCheckpoint | null, checkpoints: readonly StoredCheckpoint[]): Promise<RunResult> {
  const { db, origin, verifier } = options;
  const pageSize = options.pageSize ?? 5_000;
  const reader = new SqlHashReader(db, origin);
  let previous = base ? checkStoredCheckpoint(base, origin, verifier) : null;
  let frontier = MerkleFrontier.empty();
  if (previous) {
    try {
      frontier = await MerkleFrontier.load(previous.size, reader);
    } catch (err) {
      throw new LedgerCheckFailure(`checkpoint ${previous.size}`, `cannot read the stored hashes of its tree: ${reasonOf(err)}`);
    }
    if (!frontier.root().equals(previous.root)) throw new LedgerCheckFailure(`checkpoint ${previous.size}`, 'the stored hashes do not give its signed root');
  }
  const fromSize = frontier.size;
  // Every signature first (cheap), in size order; then the leaves in pages that ignore batch boundaries.
  const signed: { size: number; root: Buffer }[] = [];
  for (const target of checkpoints) {
    const last = signed.at(-1)?.size ?? fromSize;
    if (target.treeSize <= last) throw new LedgerCheckFailure(`checkpoint ${target.treeSize}`, `checkpoints are not in increasing size order after ${last}`);
    signed.push(checkStoredCheckpoint(target, origin, verifier));
  }
  const toSize = signed.at(-1)?.size ?? fromSize;
  const total = toSize - fromSize;
  let consistencyProofs = 0;
  let lastProgress = Date.now();
  let next = 0; // the next checkpoint to reach
  const read = (from: number) => readVerifiableLeaves(db, origin, from, Math.min(pageSize, toSize - from));
  let pending = total > 0 ? read(fromSize) : null;
  while (pending) {
    const pageStart = frontier.size;
    const want = Math.min(pageSize, toSize - pageStart);
    const page = await pending;
    // The next page is read while this one is checked.
    pending = pageStart + want < toSize ? read(pageStart + want) : null;
    pending?.catch(() => {}); // a failure surfaces when it is awaited; never unhandled if this page fails first
    const created: { node: StoredNode; entry: VerifiableLeaf }[] = [];
    // Checkpoints this page completes, with the root recomputed there: checked after the stored hashes are compared,
    // so that a swapped or forged leaf is named rather than reported as a wrong root.
    const reached: { checkpoint: { size: number; root: Buffer }; root: Buffer }[] = [];
    for (const entry of page) {
      if (entry.leafIndex !== frontier.size) throw new LedgerCheckFailure(leafName(frontier.size), `missing (the next stored leaf is ${entry.leafIndex}, event ${entry.eventId})`);
      for (const node of frontier.append(checkEntry(entry, { canonical: options.checkCanonical === true }))) created.push({ node, entry });
      if (frontier.size === signed[next]?.size) reached.push({ checkpoint: signed[next++]!, root: frontier.root() });
    }
    if (page.length < want) throw new LedgerCheckFailure(leafName(frontier.size), `missing (checkpoint ${signed[next]!.size} covers it)`);
    await compareStoredHashes(db, origin, created);
    for (const { checkpoint: current, root } of reached) {
      if (!root.equals(current.root)) throw new LedgerCheckFailure(`checkpoint ${current.size}`, 'the root recomputed from the leaves is not the signed root');
      if (previous && previous.size > 0) {
        try {
          const proof = await proveConsistency(db, origin, previous.size, current.size);
          verifyConsistency(previous.size, current.size, proof, previous.root, current.root);
        } catch (err) {
          throw new LedgerCheckFailure(`checkpoint ${current.size}`, `not provably consistent with checkpoint ${previous.size}: ${reasonOf(err)}`);
        }
        consistencyProofs++;
      }
      previous = current;
    }
    if (options.onProgress && Date.now() - lastProgress >= 1_000) {
      lastProgress = Date.now();
      options.onProgress(frontier.size - fromSize, total);
    }
  }
  return {
    checkpoints: checkpoints.map((c) => ({ size: c.treeSize, signedAt: c.signedAt })),
    fromSize,
    toSize,
    leaves: total,
    consistencyProofs,
  };
}

/** Compares the recomputed subtree hashes with the stored ones: one range read per level, one statement. */
async function compareStoredHashes(db: Queryable, origin: string, created: readonly { node: StoredNode; entry: VerifiableLeaf }[]): Promise<void> {
  const ranges = new Map<number, { level: number; from: number; to: number }>();
  for (const { node } of created) {
    const range = ranges.get(node.level);
    if (!range) ranges.set(node.level, { level: node.level, from: node.index, to: node.index + 1 });
    else {
      range.from = Math.min(range.from, node.index);
      range.to = Math.max(range.to, node.index + 1);
    }
  }
  const stored = await readHashRanges(db, origin, [...ranges.values()]);
  for (const { node, entry } of created) {
    const hash = stored.get(`${node.level}/${node.index}`);
    if (hash === undefined) throw new LedgerCheckFailure(nodeName(node, entry), 'its hash is not stored');
    if (hash.length !== HASH_SIZE || !hash.equals(node.hash)) throw new LedgerCheckFailure(nodeName(node, entry), 'the stored tree hash differs from the one recomputed from the leaves');
  }
}

function nodeName(node: StoredNode, entry: { leafIndex: number; eventId: string }): string {
  if (node.level === 0) return leafName(node.index, entry.eventId);
  const first = node.index * 2 ** node.level;
  return `node ${node.level}/${node.index} (leaves ${first}-${first + 2 ** node.level - 1}, completed by ${leafName(entry.leafIndex, entry.eventId)})`;
}

// ---------------------------------------------------------------------------------------------------------------------
// The three verifications

/** A batch is what one checkpoint sealed; its id is the checkpoint's tree size. */
export async function verifyBatch(options: VerifyOptions, batchId: number): Promise<RunResult> {
  const checkpoint = await readCheckpoint(options.db, options.origin, batchId);
  if (!checkpoint) throw new LedgerLookupError(`no batch ${batchId} in ledger ${options.origin}: a batch id is the tree size of its checkpoint (see \`caracal ledger summary\` or \`ledger query\`)`);
  const base = await previousCheckpoint(options.db, options.origin, batchId);
  return verifyCheckpointRun(options, base, [checkpoint]);
}

/**
 * Every batch whose checkpoint was signed in [start, end], from the checkpoint before the first of them, with the
 * consistency chain between consecutive checkpoints. Leaves stored beyond the sequencer's tree size are a failure too.
 */
export async function verifyRange(options: VerifyOptions, start: Date, end: Date): Promise<RunResult> {
  const { db, origin } = options;
  const sequencer = await readSequencer(db, origin);
  const beyond = await entriesBeyond(db, origin, sequencer?.treeSize ?? 0);
  if (beyond[0]) throw new LedgerCheckFailure(leafName(beyond[0].leafIndex, beyond[0].eventId), `stored beyond the tree size ${sequencer?.treeSize ?? 0}`);
  const inRange = await checkpointsSignedBetween(db, origin, start, end);
  if (inRange.length === 0) return { checkpoints: [], fromSize: 0, toSize: 0, leaves: 0, consistencyProofs: 0 };
  const first = inRange[0]!;
  const lastSize = inRange.at(-1)!.treeSize;
  // Every checkpoint between the first and the last in range, whenever it was signed, so the chain has no gap.
  const all = await checkpointsBetweenSizes(db, origin, first.treeSize, lastSize);
  const base = await previousCheckpoint(db, origin, first.treeSize);
  return verifyCheckpointRun(options, base, all);
}

export interface EventVerification {
  leafIndex: number;
  eventId: string;
  leafHash: string;
  checkpointSize: number;
  signedAt: string;
  proofLength: number;
}

/**
 * One event: its canonical bytes and leaf hash, and an inclusion proof (from the stored hashes) to the first
 * checkpoint covering it, verified against that checkpoint's signed root; the checkpoint's signature too.
 */
export async function verifyEvent(options: VerifyOptions, eventId: string): Promise<EventVerification> {
  const { db, origin, verifier } = options;
  const entry = await findEntry(db, origin, eventId);
  if (!entry) throw new LedgerLookupError(`event ${eventId} is not in ledger ${origin}`);
  const hash = checkEntry({ ...entry, occurredAtMs: Date.parse(entry.occurredAt) }, { canonical: true });
  const stored = await coveringCheckpoint(db, origin, entry.leafIndex);
  if (!stored) throw new LedgerLookupError(`event ${eventId} (leaf ${entry.leafIndex}) is not sealed in a checkpoint yet; try again in a few seconds`);
  const signed = checkStoredCheckpoint(stored, origin, verifier);
  let proof: Buffer[];
  try {
    proof = await proveInclusion(db, origin, entry.leafIndex, signed.size);
    verifyInclusion(hash, entry.leafIndex, signed.size, proof, signed.root);
  } catch (err) {
    throw new LedgerCheckFailure(leafName(entry.leafIndex, entry.eventId), `no valid inclusion proof in checkpoint ${signed.size}: ${reasonOf(err)}`);
  }
  return { leafIndex: entry.leafIndex, eventId: entry.eventId, leafHash: hash.toString('hex'), checkpointSize: signed.size, signedAt: stored.signedAt, proofLength: proof.length };
}

/**
 * What every verification command does on a LedgerCheckFailure: count it in the database (the consumers export the
 * count as caracal_merkle_verification_failures_total: a command has no metrics endpoint of its own), and freeze the
 * ledger when `freeze` (the `ledger.freezeOnVerificationFailure` setting). Returns whether it froze.
 */
export async function handleCheckFailure(db: Queryable, origin: string, failure: LedgerCheckFailure, options: { freeze: boolean }): Promise<boolean> {
  await recordVerificationFailure(db, origin);
  if (!options.freeze) return false;
  await freezeLedger(db, origin, failure.message);
  return true;
}

// Receipts: the proof that one decision is in the signed ledger, for the agent that made it. See README.md
// ("Receipts and tiles over HTTP"). Three answers: sealed (the receipt), pending, not found — and the caller's
// principal decides between them so that nobody learns whether another principal's decision exists.
import type { Queryable } from '../store/db.js';
import { EVENT_TYPES } from '../events/cloudevents.js';
import { encodeBase64 } from './encoding.js';
import { verifyInclusion } from './merkle.js';
import { formatTlogProof } from './proof-format.js';
import { findDecisionEntry, latestCheckpoint, proveInclusion } from './store.js';

/** Decision ids are what the gateway mints: UUIDs (v7), lowercase. Anything else is malformed (→ 400). */
export const DECISION_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isDecisionId(value: string): boolean {
  return value.length === 36 && DECISION_ID_PATTERN.test(value);
}

/** The Unix milliseconds of a UUIDv7 (its first 48 bits), or null for another version. */
export function uuidV7Millis(id: string): number | null {
  if (!isDecisionId(id) || id[14] !== '7') return null;
  return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}

export interface Receipt {
  /** The CloudEvent, parsed from the canonical bytes that were hashed (leafHash(canonicalBytes(event))). */
  event: unknown;
  origin: string;
  leaf_index: number;
  tree_size: number;
  /** RFC 9162 audit path to the checkpoint's root, base64, leaf's sibling first. */
  inclusion_proof: string[];
  /** The signed checkpoint (c2sp.org/tlog-checkpoint in c2sp.org/signed-note) the proof is for. */
  checkpoint: string;
  /** The same as one c2sp.org/tlog-proof@v1 text, verifiable offline with the log's verifier key. */
  tlog_proof: string;
}

export type ReceiptLookup = { status: 'sealed'; receipt: Receipt } | { status: 'pending' } | { status: 'not_found' };

export interface ReceiptQuery {
  origin: string;
  decisionId: string;
  /** The authenticated caller: only its own decisions have receipts. */
  principalId: string;
  /**
   * How long after its id's time (UUIDv7) a decision that is not in the ledger is reported pending rather than not
   * found: the writer takes a moment to append it, and the id alone cannot tell a decision on its way from none.
   */
  pendingWindowMs: number;
  now?: number;
}

/** Ids up to this far in the future (other gateways' clocks) still count as recent. */
const CLOCK_SKEW_MS = 60_000;

/**
 * The receipt of the caller's decision once a signed checkpoint covers it. Reads: the entry (decision-id index), the
 * newest checkpoint, the ≤ log2 n hashes of the proof (one statement each).
 *
 * Not leaking existence: a decision of another principal is answered exactly as an id nobody used — `pending` while
 * the id's time is within `pendingWindowMs` (either could still be on its way to the ledger), `not_found` after.
 * Only the caller's own decision can be `pending` beyond that window (appended, not yet sealed; or the ledger is
 * behind and it will be).
 */
export async function lookupReceipt(db: Queryable, query: ReceiptQuery): Promise<ReceiptLookup> {
  const { origin, decisionId, principalId } = query;
  const now = query.now ?? Date.now();
  const entry = await findDecisionEntry(db, origin, decisionId, EVENT_TYPES.decision);
  let event: unknown;
  if (entry !== null && entry.subject === principalId) {
    event = JSON.parse(entry.canonical.toString('utf8'));
    const data = (event as { data?: { principal_id?: unknown } }).data;
    // The subject column is the event's; the data must say the same principal (defence in depth).
    if (data?.principal_id !== principalId) event = undefined;
  }
  if (entry === null || event === undefined) {
    const at = uuidV7Millis(decisionId);
    const recent = at !== null && now - at < query.pendingWindowMs && at - now < CLOCK_SKEW_MS;
    return recent ? { status: 'pending' } : { status: 'not_found' };
  }
  const checkpoint = await latestCheckpoint(db, origin);
  if (checkpoint === null || checkpoint.treeSize <= entry.leafIndex) return { status: 'pending' };
  const proof = await proveInclusion(db, origin, entry.leafIndex, checkpoint.treeSize);
  // Never hand out a proof that does not verify against the root we signed.
  verifyInclusion(entry.leafHash, entry.leafIndex, checkpoint.treeSize, proof, checkpoint.root);
  return {
    status: 'sealed',
    receipt: {
      event,
      origin,
      leaf_index: entry.leafIndex,
      tree_size: checkpoint.treeSize,
      inclusion_proof: proof.map((hash) => encodeBase64(hash)),
      checkpoint: checkpoint.note,
      tlog_proof: formatTlogProof({ index: entry.leafIndex, inclusionProof: proof, signedCheckpoint: checkpoint.note }),
    },
  };
}

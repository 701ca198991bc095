// Reading the ledger for people: `caracal ledger query` and `caracal ledger summary`. See README.md ("Commands").
import { agentSpend, type AgentSpend } from '../metering/reconcile.js';
import type { Queryable } from '../store/db.js';
import { ledgerCounts, readEntriesByTime, readSequencer, type LedgerEntry } from './store.js';

export const TIME_WINDOWS = { hourly: 3_600_000, daily: 86_400_000, weekly: 7 * 86_400_000, monthly: 30 * 86_400_000 } as const;
export type TimeWindow = keyof typeof TIME_WINDOWS;

export interface LedgerRow {
  leafIndex: number;
  eventId: string;
  eventType: string;
  decisionId: string | null;
  /** The decision's `allow`, when the event is a decision. */
  allow: boolean | null;
  occurredAt: string;
  /** The tree size of the first checkpoint covering the leaf (its batch id), or null while unsealed. */
  checkpoint: number | null;
}

function allowOf(entry: LedgerEntry): boolean | null {
  try {
    const data = (JSON.parse(entry.canonical.toString('utf8')) as { data?: { allow?: unknown } }).data;
    return typeof data?.allow === 'boolean' ? data.allow : null;
  } catch {
    return null;
  }
}

/** The sizes of every checkpoint, ascending (a few numbers per batch), for the covering-checkpoint lookup. */
async function checkpointSizes(db: Queryable, origin: string): Promise<number[]> {
  const { rows } = await db.query<{ tree_size: string | number }>('SELECT tree_size FROM ledger_checkpoints WHERE origin = $1 ORDER BY tree_size', [origin]);
  return rows.map((row) => Number(row.tree_size));
}

/** The smallest size above `index` (binary search), or null. */
export function coveringSize(sizes: readonly number[], index: number): number | null {
  let lo = 0;
  let hi = sizes.length;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (sizes[mid]! > index) hi = mid;
    else lo = mid + 1;
  }
  return lo < sizes.length ? sizes[lo]! : null;
}

/** The leaves of one subject whose event time is in [start, end), in leaf order, with the checkpoint covering each. */
export async function queryLedger(db: Queryable, origin: string, query: { subject: string; start: Date; end: Date; limit?: number }): Promise<LedgerRow[]> {
  const entries = await readEntriesByTime(db, origin, { subject: query.subject, start: query.start, end: query.end, limit: query.limit ?? 10_000 });
  const sizes = entries.length > 0 ? await checkpointSizes(db, origin) : [];
  return entries.map((entry) => ({
    leafIndex: entry.leafIndex,
    eventId: entry.eventId,
    eventType: entry.eventType,
    decisionId: entry.decisionId,
    allow: allowOf(entry),
    occurredAt: entry.occurredAt,
    checkpoint: coveringSize(sizes, entry.leafIndex),
  }));
}

/**
 * What the agent's own proxied calls in [start, end) cost, per currency, and how many there were: from the metering
 * events recorded in the audit log (by event time, as the ledger rows are), not limited to the rows shown.
 */
export function queryAgentSpend(db: Queryable, query: { subject: string; start: Date; end: Date }): Promise<AgentSpend> {
  return agentSpend(db, query.subject, query.start, query.end);
}

export interface LedgerSummary {
  origin: string;
  treeSize: number;
  checkpointSize: number;
  checkpoints: number;
  lastCheckpointAt: string | null;
  lastCheckpointAgeSeconds: number | null;
  unsealed: number;
  frozen: boolean;
  frozenAt: string | null;
  frozenReason: string | null;
  types: { eventType: string; count: number }[];
}

export async function ledgerSummary(db: Queryable, origin: string): Promise<LedgerSummary> {
  const sequencer = await readSequencer(db, origin);
  const counts = await ledgerCounts(db, origin);
  return {
    origin,
    treeSize: sequencer?.treeSize ?? 0,
    checkpointSize: sequencer?.checkpointSize ?? 0,
    checkpoints: counts.checkpoints,
    lastCheckpointAt: counts.lastSignedAt,
    lastCheckpointAgeSeconds: counts.lastAgeSeconds === null ? null : Math.round(counts.lastAgeSeconds * 10) / 10,
    unsealed: (sequencer?.treeSize ?? 0) - (sequencer?.checkpointSize ?? 0),
    frozen: sequencer?.frozenAt != null,
    frozenAt: sequencer?.frozenAt ? sequencer.frozenAt.toISOString() : null,
    frozenReason: sequencer?.frozenReason ?? null,
    types: counts.types,
  };
}

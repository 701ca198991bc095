/**
 * Replay of recorded decisions through a candidate bundle (`caracal bundle diff`): which decisions of a time range
 * would come out differently under another policy.
 *
 * The source is the signed ledger, not the audit log: its leaves are the exact canonical bytes of each decision event
 * (RFC 8785), so what is replayed is what was signed. A decision event carries the policy input it was evaluated on
 * (`data.input`, policy.recordInput); the candidate evaluates that input as it is — including `input.now`, so a rule
 * about time sees the time the original decision saw — and its verdict is compared with the recorded `allow` and the
 * sorted `reasons`.
 *
 * What a replay cannot judge is counted rather than guessed at: a decision recorded without an input
 * (`without_input`), a leaf that is not a readable decision event (`unreadable`, never a crash: the ledger is
 * append-only and old or damaged rows stay there). A decision whose input had values replaced by "[redacted]" is
 * replayed, but the candidate saw the placeholders, so its changes are flagged `redacted: true`.
 *
 * Memory is bounded by the page size: leaves are read in leaf order, one keyset page (`leaf_index > last`) at a time.
 * Only the changed decisions are kept, up to `maxChanges`; the totals count every one.
 */
import { CaracalError } from '../errors/catalog.js';
import { EVENT_TYPES } from '../events/cloudevents.js';
import type { Queryable } from '../store/db.js';
import type { BundleStore } from './bundle-store.js';
import { type Decision, type DecisionInput, PolicyEngine, smokeEvaluate } from './engine.js';
import { type BundleSigningConfig, loadBundleVerification } from './signing.js';

/** What replays a decision: a PolicyEngine, in tests anything with the same `evaluate`. */
export interface Evaluator {
  evaluate(input: DecisionInput): Decision;
  readonly revision?: string;
}

/** One stored leaf: its index and canonical bytes. */
export interface RecordedLeaf {
  leafIndex: number;
  canonical: Uint8Array;
}

/**
 * Where the recorded decisions come from: pages of decision leaves of the range, in leaf order, each after the
 * previous page's last index. The ledger (`ledgerDecisionSource`) in production; tests may drive their own.
 */
export interface DecisionSource {
  /** Decision leaves with an index above `afterLeafIndex` (-1: from the first), ascending, at most `limit`. */
  page(afterLeafIndex: number, limit: number): Promise<RecordedLeaf[]>;
}

/** Decision events of one ledger whose event time is in [start, end), read from `ledger_entries`. */
export function ledgerDecisionSource(db: Queryable, origin: string, start: Date, end: Date): DecisionSource {
  const params = [origin, EVENT_TYPES.decision, start.toISOString(), end.toISOString()];
  // The first and last leaf of the range, found through the (origin, event_type, occurred_at) index: the pages then
  // read only that stretch of the ledger, not everything before it.
  let bounds: Promise<{ first: number; last: number } | null> | undefined;
  const leafBounds = () =>
    (bounds ??= db
      .query<{ first: string | number | null; last: string | number | null }>(
        `SELECT min(leaf_index) AS first, max(leaf_index) AS last FROM ledger_entries
          WHERE origin = $1 AND event_type = $2 AND occurred_at >= $3 AND occurred_at < $4`,
        params,
      )
      .then(({ rows }) => (rows[0]?.first == null || rows[0].last == null ? null : { first: Number(rows[0].first), last: Number(rows[0].last) })));
  return {
    async page(afterLeafIndex, limit) {
      const range = await leafBounds();
      if (range === null || afterLeafIndex >= range.last) return [];
      // Keyset on the primary key (origin, leaf_index): each page resumes where the last one stopped, so a range of
      // any size is read in bounded memory and nothing is read twice. The time and type are filters on the way:
      // event time is not monotonic in leaf order (a decision may reach the writer late).
      const { rows } = await db.query<{ leaf_index: string | number; canonical: Uint8Array }>(
        `SELECT leaf_index, canonical FROM ledger_entries
          WHERE origin = $1 AND event_type = $2 AND occurred_at >= $3 AND occurred_at < $4 AND leaf_index > $5 AND leaf_index <= $6
          ORDER BY leaf_index LIMIT $7`,
        [...params, Math.max(afterLeafIndex, range.first - 1), range.last, limit],
      );
      return rows.map((row) => ({ leafIndex: Number(row.leaf_index), canonical: row.canonical }));
    },
  };
}

export type ChangeKind = 'allow_to_deny' | 'deny_to_allow' | 'reasons_changed';

/** A decision the candidate decides differently. */
export interface ReplayChange {
  decision_id: string;
  request_id: string | null;
  /** The decision's event time (ISO-8601 UTC). */
  time: string;
  principal_id: string | null;
  resource: string | null;
  action: string | null;
  /** The request path as recorded (the resource names the upstream; the path says which call). */
  path: string | null;
  leaf_index: number;
  change: ChangeKind;
  recorded: { allow: boolean; reasons: string[]; bundle_revision: string | null };
  candidate: { allow: boolean; reasons: string[] };
  /** The input had redacted values: the candidate decided on placeholders, the change may not be real. */
  redacted: boolean;
}

export interface ReplayTotals {
  /** Decision leaves in the range (every one read, readable or not). */
  decisions: number;
  /** Of them, evaluated by the candidate. */
  replayed: number;
  /** Recorded without a policy input (recording off, or refused before an input was built): not replayable. */
  without_input: number;
  /** Not a readable decision event (bytes, JSON or fields): skipped. */
  unreadable: number;
  /** Replayed on an input with redacted values. */
  redacted: number;
  unchanged: number;
  allow_to_deny: number;
  deny_to_allow: number;
  /** Same allow, other reasons. */
  reasons_changed: number;
  /** Replays where the candidate did not decide (engine error, undefined or malformed result: a deny). */
  candidate_errors: number;
}

export interface ReplayResult {
  totals: ReplayTotals;
  /** Allow flips and reason changes in leaf order, at most `maxChanges`. */
  flips: ReplayChange[];
  /** Changes counted in the totals but not kept in `flips` (beyond `maxChanges`). */
  flips_omitted: number;
}

export interface ReplayOptions {
  /** The ledger; or give `source`. */
  db?: Queryable;
  /** The ledger's origin (`ledger.origin`); default `caracal.local/ledger`. */
  origin?: string;
  start: Date;
  end: Date;
  candidate: Evaluator;
  /** Instead of the ledger. */
  source?: DecisionSource;
  /** Leaves per page (default 1,000). */
  batchSize?: number;
  /** Changes kept in the result (default 100,000); the rest are only counted. */
  maxChanges?: number;
  /** Called after each page with the totals so far. */
  onProgress?: (totals: Readonly<ReplayTotals>) => void;
}

export const DEFAULT_LEDGER_ORIGIN = 'caracal.local/ledger';
export const DEFAULT_REPLAY_BATCH = 1_000;
export const DEFAULT_MAX_CHANGES = 100_000;
const MAX_REPLAY_BATCH = 10_000;

/** What a replay needs of a decision event; null when the leaf is not one. */
interface RecordedDecision {
  decisionId: string;
  requestId: string | null;
  time: string;
  principalId: string | null;
  resource: string | null;
  action: string | null;
  path: string | null;
  allow: boolean;
  reasons: string[];
  bundleRevision: string | null;
  input: Record<string, unknown> | undefined;
  redacted: boolean;
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const stringOrNull = (value: unknown): string | null => (typeof value === 'string' ? value : null);
const isStringArray = (value: unknown): value is string[] => Array.isArray(value) && value.every((v) => typeof v === 'string');

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reads a leaf as a decision event, leniently: only what the comparison needs must be well-formed (an event written
 * by a later version with more fields still replays), but what it needs must be exactly right.
 */
export function readRecordedDecision(canonical: Uint8Array): RecordedDecision | null {
  let event: unknown;
  try {
    event = JSON.parse(utf8.decode(canonical));
  } catch {
    return null;
  }
  if (!isObject(event) || event.type !== EVENT_TYPES.decision || typeof event.time !== 'string' || !isObject(event.data)) return null;
  const data = event.data;
  if (typeof data.decision_id !== 'string' || data.decision_id === '' || typeof data.allow !== 'boolean' || !isStringArray(data.reasons)) return null;
  if (data.input !== undefined && !isObject(data.input)) return null;
  if (data.input_redactions !== undefined && !isStringArray(data.input_redactions)) return null;
  return {
    decisionId: data.decision_id,
    requestId: stringOrNull(data.request_id),
    time: event.time,
    principalId: stringOrNull(data.principal_id),
    resource: stringOrNull(data.resource),
    action: stringOrNull(data.action),
    path: stringOrNull(data.path),
    allow: data.allow,
    reasons: [...data.reasons].sort(),
    bundleRevision: stringOrNull(data.bundle_revision),
    input: data.input as Record<string, unknown> | undefined,
    redacted: Array.isArray(data.input_redactions) && data.input_redactions.length > 0,
  };
}

const sameReasons = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((reason, i) => reason === b[i]);

export async function replayDecisions(options: ReplayOptions): Promise<ReplayResult> {
  const { start, end, candidate } = options;
  if (!(start instanceof Date) || !(end instanceof Date) || Number.isNaN(start.getTime()) || Number.isNaN(end.getTime()) || end.getTime() <= start.getTime()) {
    throw new RangeError('a replay needs a time range with end after start');
  }
  const batchSize = options.batchSize ?? DEFAULT_REPLAY_BATCH;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > MAX_REPLAY_BATCH) throw new RangeError(`batchSize must be 1-${MAX_REPLAY_BATCH}`);
  const maxChanges = options.maxChanges ?? DEFAULT_MAX_CHANGES;
  let source = options.source;
  if (!source) {
    if (!options.db) throw new TypeError('replayDecisions needs a db or a source');
    source = ledgerDecisionSource(options.db, options.origin ?? DEFAULT_LEDGER_ORIGIN, start, end);
  }

  const totals: ReplayTotals = {
    decisions: 0,
    replayed: 0,
    without_input: 0,
    unreadable: 0,
    redacted: 0,
    unchanged: 0,
    allow_to_deny: 0,
    deny_to_allow: 0,
    reasons_changed: 0,
    candidate_errors: 0,
  };
  const flips: ReplayChange[] = [];
  let omitted = 0;
  let after = -1;
  for (;;) {
    const page = await source.page(after, batchSize);
    if (page.length === 0) break;
    for (const leaf of page) {
      // A source that does not move forward would loop forever: stop on it instead.
      if (!(leaf.leafIndex > after)) throw new Error(`the decision source went backwards (leaf ${leaf.leafIndex} after ${after})`);
      after = leaf.leafIndex;
      totals.decisions++;
      const recorded = readRecordedDecision(leaf.canonical);
      if (recorded === null) {
        totals.unreadable++;
        continue;
      }
      if (recorded.input === undefined) {
        totals.without_input++;
        continue;
      }
      totals.replayed++;
      if (recorded.redacted) totals.redacted++;
      // The engine never throws (it maps every failure to a deny) and serialises the input into WASM memory, so the
      // recorded object is evaluated as it is, `now` included.
      const decision = candidate.evaluate(recorded.input as DecisionInput);
      if (decision.outcome !== 'result') totals.candidate_errors++;
      const reasons = [...decision.reasons].sort();
      let change: ChangeKind | null = null;
      if (decision.allow !== recorded.allow) change = recorded.allow ? 'allow_to_deny' : 'deny_to_allow';
      else if (!sameReasons(reasons, recorded.reasons)) change = 'reasons_changed';
      if (change === null) {
        totals.unchanged++;
        continue;
      }
      totals[change]++;
      if (flips.length >= maxChanges) {
        omitted++;
        continue;
      }
      flips.push({
        decision_id: recorded.decisionId,
        request_id: recorded.requestId,
        time: recorded.time,
        principal_id: recorded.principalId,
        resource: recorded.resource,
        action: recorded.action,
        path: recorded.path,
        leaf_index: leaf.leafIndex,
        change,
        recorded: { allow: recorded.allow, reasons: recorded.reasons, bundle_revision: recorded.bundleRevision },
        candidate: { allow: decision.allow, reasons },
        redacted: recorded.redacted,
      });
    }
    options.onProgress?.(totals);
    if (page.length < batchSize) break;
  }
  return { totals, flips, flips_omitted: omitted };
}

/**
 * A candidate bundle loaded as a gateway would load it: signature check against the configured keys, the WASM, the
 * smoke evaluation. `expectRevision`: the revision it was fetched as must be the one its manifest names.
 */
export async function loadCandidateEngine(bytes: Buffer, source: string, signing: BundleSigningConfig, expectRevision?: string): Promise<PolicyEngine> {
  let engine: PolicyEngine;
  try {
    engine = await PolicyEngine.fromBundleBytes(bytes, source, { verification: await loadBundleVerification(signing) });
  } catch (err) {
    // One catalog error whatever the reader threw (a plain Error would be an internal error through the admin API).
    const message = (err as Error).message.split('\n')[0]!;
    throw new CaracalError('CARACAL_VALIDATION', `${message.includes(source) ? message : `${source}: ${message}`} — a gateway would refuse to load it`, { cause: err });
  }
  if (expectRevision !== undefined && engine.revision !== expectRevision) {
    throw new CaracalError('CARACAL_VALIDATION', `the bundle stored as revision ${expectRevision} names revision ${engine.revision} in its manifest`);
  }
  try {
    smokeEvaluate(engine);
  } catch (err) {
    throw new CaracalError('CARACAL_VALIDATION', `candidate ${source}: ${(err as Error).message} — a gateway would refuse to load it`);
  }
  return engine;
}

/** Refuses (one line) a stored revision a gateway with these signing keys would not load: before a pointer moves to it. */
export async function checkStoredRevisionLoadable(store: Pick<BundleStore, 'fetch' | 'description'>, revision: string, signing: BundleSigningConfig): Promise<void> {
  await loadCandidateEngine(await store.fetch(revision), `revision ${revision} (${store.description})`, signing, revision);
}

/**
 * Replay of recorded decisions (src/policy/replay.ts) on hand-made ledger rows in an in-memory PGlite, through the
 * real committed default bundle: what is replayed, what is only counted (no input, unreadable), what is flagged
 * (redacted input), the recorded `now`, the window's edges, and paging.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEvent, EVENT_TYPES, type DecisionData } from '../../src/events/cloudevents.js';
import { leafHash } from '../../src/ledger/merkle.js';
import { appendEvents, ledgerEntryOf, type LedgerEntryInput } from '../../src/ledger/store.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import type { DecisionInput } from '../../src/policy/engine.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { replayDecisions, type DecisionSource, type RecordedLeaf, type ReplayResult } from '../../src/policy/replay.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';

const ORIGIN = 'caracal.test/replay';
const START = new Date('2026-03-10T00:00:00Z');
const END = new Date('2026-03-11T00:00:00Z');
const at = (iso: string) => new Date(iso);

/** An input the core policy allows: an active principal, a matching grant, an allowlist match, no emergency. */
function allowedInput(overrides: Partial<DecisionInput> = {}): DecisionInput {
  return {
    principal: { id: 'p1', status: 'active', kind: 'agent' },
    policies: [{ id: 'pol1', resources: ['api:external/echo'], actions: ['read'], delegation_depth: 1 }],
    mandate: null,
    request: { upstream: 'echo', method: 'GET', path: '/a', resource: 'api:external/echo', action: 'read' },
    allowlist: { checked: true, matched: true, entry_id: 'e1' },
    emergency: { global: false, principal: false },
    auth: { method: 'caracal-token' },
    now: 1_773_100_800,
    ...overrides,
  };
}

/** A mandate valid from 999,999,000 to 1,000,000,100 (2001): only a replay at the recorded `now` finds it valid. */
function mandateInput(now: number): DecisionInput {
  return allowedInput({
    now,
    mandate: {
      id: 'm1',
      subject: 'p1',
      depth: 1,
      resources: ['api:external/echo'],
      actions: ['read'],
      not_before: 999_999_000,
      expires_at: 1_000_000_100,
      revoked: false,
      chain: [{ id: 'root', subject: 'p1', subject_status: 'active', revoked: false, allowlist: { checked: true, matched: true, entry_id: 'e1' } }],
      root_policy_id: 'pol1',
    },
  });
}

interface Recorded {
  id: string;
  time: string;
  allow: boolean;
  reasons: string[];
  input?: Record<string, unknown>;
  redactions?: string[];
}

function decision(r: Recorded): LedgerEntryInput {
  const data: DecisionData = {
    decision_id: r.id,
    request_id: `req-${r.id}`,
    principal_id: 'p1',
    token_id: null,
    upstream: 'echo',
    method: 'GET',
    path: '/a',
    resource: 'api:external/echo',
    action: 'read',
    allow: r.allow,
    reasons: r.reasons,
    policy_ids: r.allow ? ['pol1'] : [],
    bundle_revision: 'recorded-rev',
    status: r.allow ? 200 : 403,
    ...(r.input ? { input: r.input } : {}),
    ...(r.redactions ? { input_redactions: r.redactions } : {}),
  };
  return ledgerEntryOf(JSON.parse(JSON.stringify(buildEvent(EVENT_TYPES.decision, 'test', 'p1', data, at(r.time)))));
}

/** A leaf stored as a decision event whose bytes are whatever the test says. */
function rawLeaf(id: string, time: string, text: string): LedgerEntryInput {
  const canonical = Buffer.from(text, 'utf8');
  return { eventId: id, eventType: EVENT_TYPES.decision, subject: 'p1', decisionId: id, requestId: id, occurredAt: time, topic: null, partition: null, offset: null, canonical, leafHash: leafHash(canonical) };
}

describe('replayDecisions', () => {
  let db: PgliteDb;
  let engine: PolicyEngine;

  beforeAll(async () => {
    engine = await PolicyEngine.fromBundleFile(DEFAULT_BUNDLE);
    db = await PgliteDb.open();
    await migrateUp(db);
    const inDay = '2026-03-10T12:00:00.000Z';
    const suspended = allowedInput({ principal: { id: 'p1', status: 'suspended', kind: 'agent' } });
    const noAllowlist = allowedInput({ allowlist: { checked: true, matched: false, entry_id: null } });
    const entries: LedgerEntryInput[] = [
      decision({ id: 'before-window', time: '2026-03-09T23:59:59.999Z', allow: false, reasons: ['x'], input: allowedInput() }),
      decision({ id: 'at-start-unchanged', time: '2026-03-10T00:00:00.000Z', allow: true, reasons: [], input: allowedInput() }),
      decision({ id: 'deny-to-allow', time: inDay, allow: false, reasons: ['scope_resource'], input: allowedInput() }),
      decision({ id: 'allow-to-deny', time: inDay, allow: true, reasons: [], input: suspended }),
      decision({ id: 'reasons-changed', time: inDay, allow: false, reasons: ['no_policy'], input: noAllowlist }),
      // Recorded in another order than the candidate gives: the comparison sorts, so nothing changed.
      decision({ id: 'reasons-reordered', time: inDay, allow: false, reasons: ['principal_suspended', 'allowlist_no_match'], input: { ...suspended, allowlist: noAllowlist.allowlist } }),
      decision({ id: 'no-input', time: inDay, allow: true, reasons: [] }),
      decision({
        id: 'redacted-flip',
        time: inDay,
        allow: false,
        reasons: ['mcp_argument_not_allowed'],
        input: { ...allowedInput(), request: { ...allowedInput().request, arguments: { path: '[redacted]' } } },
        redactions: ['request.arguments'],
      }),
      decision({ id: 'redacted-same', time: inDay, allow: true, reasons: [], input: { ...allowedInput(), request: { ...allowedInput().request, arguments: '[redacted]' } }, redactions: ['request.arguments'] }),
      decision({ id: 'mandate-recorded-now', time: inDay, allow: true, reasons: [], input: mandateInput(1_000_000_000) }),
      decision({ id: 'mandate-expired', time: inDay, allow: true, reasons: [], input: mandateInput(1_000_000_200) }),
      rawLeaf('not-json', inDay, 'this is not JSON'),
      rawLeaf('no-allow', inDay, JSON.stringify({ type: EVENT_TYPES.decision, time: inDay, data: { decision_id: 'no-allow', reasons: [], input: allowedInput() } })),
      rawLeaf('input-array', inDay, JSON.stringify({ type: EVENT_TYPES.decision, time: inDay, data: { decision_id: 'input-array', allow: true, reasons: [], input: [1, 2] } })),
      rawLeaf('not-an-object', inDay, '[1,2,3]'),
      // A metering event in the window is no decision: not read at all.
      { ...rawLeaf('metering', inDay, JSON.stringify({ type: EVENT_TYPES.metering, data: {} })), eventType: EVENT_TYPES.metering },
      decision({ id: 'at-end', time: '2026-03-11T00:00:00.000Z', allow: false, reasons: ['x'], input: allowedInput() }),
    ];
    await db.transaction((tx) => appendEvents(tx, ORIGIN, entries));
    // Bytes that are not UTF-8 (appendEvents refuses them; a damaged row may still hold them).
    const bad = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
    const { rows } = await db.query<{ n: string | number }>('SELECT count(*) AS n FROM ledger_entries WHERE origin = $1', [ORIGIN]);
    await db.query(
      `INSERT INTO ledger_entries (origin, leaf_index, event_id, event_type, subject, decision_id, request_id, occurred_at, canonical, leaf_hash)
       VALUES ($1, $2, 'not-utf8', $3, 'p1', 'not-utf8', 'not-utf8', $4, decode($5, 'hex'), decode($6, 'hex'))`,
      [ORIGIN, Number(rows[0]!.n), EVENT_TYPES.decision, inDay, bad.toString('hex'), leafHash(bad).toString('hex')],
    );
    // Another ledger's decision in the same window is not this one's.
    await db.transaction((tx) => appendEvents(tx, 'caracal.test/other', [decision({ id: 'other-origin', time: inDay, allow: false, reasons: ['x'], input: allowedInput() })]));
  });

  afterAll(async () => {
    await db?.close();
  });

  const byId = (result: ReplayResult) => new Map(result.flips.map((f) => [f.decision_id, f]));

  it('replays decisions with an input, counts the rest, and reports exactly the changed ones', async () => {
    const result = await replayDecisions({ db, origin: ORIGIN, start: START, end: END, candidate: engine });
    expect(result.totals).toEqual({
      decisions: 15,
      replayed: 9,
      without_input: 1,
      unreadable: 5,
      redacted: 2,
      unchanged: 4,
      allow_to_deny: 2,
      deny_to_allow: 2,
      reasons_changed: 1,
      candidate_errors: 0,
    });
    expect(result.flips_omitted).toBe(0);
    const flips = byId(result);
    expect([...flips.keys()].sort()).toEqual(['allow-to-deny', 'deny-to-allow', 'mandate-expired', 'reasons-changed', 'redacted-flip'].sort());
    expect(flips.get('allow-to-deny')).toMatchObject({
      change: 'allow_to_deny',
      request_id: 'req-allow-to-deny',
      principal_id: 'p1',
      resource: 'api:external/echo',
      action: 'read',
      time: '2026-03-10T12:00:00.000Z',
      recorded: { allow: true, reasons: [], bundle_revision: 'recorded-rev' },
      candidate: { allow: false, reasons: ['principal_suspended'] },
      redacted: false,
    });
    expect(flips.get('deny-to-allow')).toMatchObject({ change: 'deny_to_allow', candidate: { allow: true, reasons: [] }, redacted: false });
    expect(flips.get('reasons-changed')).toMatchObject({ change: 'reasons_changed', recorded: { allow: false, reasons: ['no_policy'] }, candidate: { allow: false, reasons: ['allowlist_no_match'] } });
    // The candidate saw "[redacted]" where the values were: replayed, flagged.
    expect(flips.get('redacted-flip')).toMatchObject({ change: 'deny_to_allow', redacted: true });
    // The recorded `now` is used as it is: the mandate valid then is still valid in the replay, the expired one expired.
    expect(flips.has('mandate-recorded-now')).toBe(false);
    expect(flips.get('mandate-expired')).toMatchObject({ change: 'allow_to_deny', candidate: { allow: false, reasons: ['mandate_expired'] } });
    // In leaf order.
    const indexes = result.flips.map((f) => f.leaf_index);
    expect(indexes).toEqual([...indexes].sort((a, b) => a - b));
  });

  it('gives the same result one leaf per page as in one page, and reports progress per page', async () => {
    const whole = await replayDecisions({ db, origin: ORIGIN, start: START, end: END, candidate: engine });
    const pages: number[] = [];
    const paged = await replayDecisions({ db, origin: ORIGIN, start: START, end: END, candidate: engine, batchSize: 1, onProgress: (t) => pages.push(t.decisions) });
    expect(paged).toEqual(whole);
    expect(pages).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
  });

  it('keeps at most maxChanges changes and counts the rest', async () => {
    const result = await replayDecisions({ db, origin: ORIGIN, start: START, end: END, candidate: engine, maxChanges: 2 });
    expect(result.flips).toHaveLength(2);
    expect(result.flips_omitted).toBe(3);
    expect(result.totals.allow_to_deny + result.totals.deny_to_allow + result.totals.reasons_changed).toBe(5);
  });

  it('reads nothing outside the window, and nothing of an empty ledger', async () => {
    const edge = await replayDecisions({ db, origin: ORIGIN, start: END, end: new Date(END.getTime() + 1), candidate: engine });
    expect(edge.totals).toMatchObject({ decisions: 1, replayed: 1, deny_to_allow: 1 });
    expect(edge.flips.map((f) => f.decision_id)).toEqual(['at-end']);
    const none = await replayDecisions({ db, origin: 'caracal.test/nothing-here', start: START, end: END, candidate: engine });
    expect(none).toEqual({ totals: expect.objectContaining({ decisions: 0, replayed: 0 }), flips: [], flips_omitted: 0 });
  });

  it('takes any decision source, and stops on one that goes backwards', async () => {
    const leaves: RecordedLeaf[] = [
      { leafIndex: 3, canonical: decision({ id: 'a', time: '2026-03-10T01:00:00Z', allow: false, reasons: [], input: allowedInput() }).canonical },
      { leafIndex: 9, canonical: Buffer.from('{') },
    ];
    const source: DecisionSource = { page: async (after, limit) => leaves.filter((l) => l.leafIndex > after).slice(0, limit) };
    const result = await replayDecisions({ source, start: START, end: END, candidate: engine, batchSize: 1 });
    expect(result.totals).toMatchObject({ decisions: 2, replayed: 1, unreadable: 1, deny_to_allow: 1 });

    const backwards: DecisionSource = { page: async () => [leaves[1]!, leaves[0]!] };
    await expect(replayDecisions({ source: backwards, start: START, end: END, candidate: engine, batchSize: 5 })).rejects.toThrow(/went backwards/);
  });

  it('refuses a range that is empty or inverted, and a bad page size', async () => {
    await expect(replayDecisions({ db, origin: ORIGIN, start: END, end: START, candidate: engine })).rejects.toThrow(RangeError);
    await expect(replayDecisions({ db, origin: ORIGIN, start: START, end: START, candidate: engine })).rejects.toThrow(RangeError);
    await expect(replayDecisions({ db, origin: ORIGIN, start: START, end: END, candidate: engine, batchSize: 0 })).rejects.toThrow(RangeError);
  });
});

/**
 * Spend as it was recorded: the metering events (`dev.caracal.metering.call.v1`) that the audit-logger keeps in
 * `audit_log`, one per proxied call. From them:
 *
 * - `reconcileSpend` puts the budget counters back after they were lost (Redis flushed or restarted empty, a new
 *   process on the embedded default): for every budget, the cost of the calls charged to it in its current period —
 *   the calls whose `started_at` is in the period, in the budget's currency, made by its principal or by an agent
 *   below it (the principal is the event's `principal_id` or in its `chain`); for a delegated mandate's own budget,
 *   the calls made under that mandate (it is in the event's `mandate_ids`: the call's mandate and its ancestors).
 *   `SpendCounters.restore` never lowers a counter, so reconciling counters that were not lost changes nothing.
 * - `spendSummary` (`caracal spend summary`) and `agentSpend` (`caracal ledger query`) answer what was spent.
 *
 * What is not in the audit log yet (a call still in flight, an event the audit-logger has not consumed yet) is not
 * counted: run reconcile once the consumers have caught up. Every query reads the metering events of the period once
 * (one statement, PostgreSQL and PGlite alike); migration 0010 indexes the audit log by event type and time.
 */
import { EVENT_TYPES } from '../events/cloudevents.js';
import { CaracalError } from '../errors/catalog.js';
import type { Db, Queryable } from '../store/db.js';
import { BUDGET_WINDOWS, formatAmount, windowBounds, type BudgetWindow } from './money.js';
import { mandateBudgetKey } from '../gateway/budget-gate.js';
import { budgetLineKey, type RestoreEntry, type SpendCounters } from './spend-counters.js';

/** A metering event is recorded after its call started: how far before a period's start its event time may look. */
const EVENT_TIME_SLACK_MS = 3_600_000;

/** One budget line as reconciled. */
export interface ReconciledLine {
  /** The principal whose budget it is (for a mandate's budget: the mandate's holder). */
  principalId: string;
  /** A delegated mandate's own budget (set at delegation); null for a principal's budget. */
  mandateId: string | null;
  window: BudgetWindow;
  currency: string;
  limitMicros: number;
  periodStart: string;
  periodEnd: string;
  /** The recorded spend restored onto the line: the cost of the metering events counted. */
  restoredMicros: number;
  restored: string;
  /** Metering events counted. */
  events: number;
  /** What the counter holds now (at least `restoredMicros`: spend it already held beyond the record is kept). */
  spentMicros: number;
  spent: string;
}

export interface ReconcileReport {
  at: string;
  counters: 'redis' | 'memory';
  lines: ReconciledLine[];
}

interface LineRow {
  principal_id: string;
  mandate_id: string | null;
  budget_window: BudgetWindow;
  currency: string;
  limit_micros: string | number;
  spent: string | number;
  events: string | number;
}

/** The periods containing `now`, one per window, as query parameters (start, end, start, end, …). */
function periodsOf(now: Date): { bounds: Record<BudgetWindow, { start: Date; end: Date }>; params: string[]; earliest: Date } {
  const bounds = Object.fromEntries(BUDGET_WINDOWS.map((w) => [w, windowBounds(w, now)])) as Record<BudgetWindow, { start: Date; end: Date }>;
  const params = BUDGET_WINDOWS.flatMap((w) => [bounds[w].start.toISOString(), bounds[w].end.toISOString()]);
  const earliest = new Date(Math.min(...BUDGET_WINDOWS.map((w) => bounds[w].start.getTime())) - EVENT_TIME_SLACK_MS);
  return { bounds, params, earliest };
}

/**
 * The metering events of the audit log from `$n` (event time) on, as rows: id, started_at, currency, cost, the caller,
 * its chain and the mandates it was made under (arrays; anything else is read as empty); with `details`, also the
 * upstream, model and token counts.
 */
function callsSql(typeParam: string, sinceParam: string, details = false): string {
  const extra = details
    ? `,
           a.data->>'upstream' AS upstream,
           a.data->>'model' AS model,
           COALESCE((a.data->>'input_tokens')::bigint, 0) AS input_tokens,
           COALESCE((a.data->>'output_tokens')::bigint, 0) AS output_tokens`
    : '';
  return `SELECT a.event_id,
           (a.data->>'started_at')::timestamptz AS started_at,
           a.data->>'currency' AS currency,
           (a.data->>'cost_micros')::bigint AS cost,
           a.data->>'principal_id' AS caller,
           CASE WHEN jsonb_typeof(a.data->'chain') = 'array' THEN a.data->'chain' ELSE '[]'::jsonb END AS chain,
           CASE WHEN jsonb_typeof(a.data->'mandate_ids') = 'array' THEN a.data->'mandate_ids' ELSE '[]'::jsonb END AS mandate_ids${extra}
         FROM audit_log a
         WHERE a.event_type = ${typeParam} AND a.occurred_at >= ${sinceParam}`;
}

/**
 * Runs one of the aggregates below. On PostgreSQL without JIT compilation: the planner cannot estimate how many
 * elements a jsonb array has, judges the statement expensive, and compiling it would cost more than running it.
 */
async function aggregate<Row>(db: Queryable, sql: string, params: unknown[]): Promise<Row[]> {
  const full = db as Partial<Db>;
  if (full.kind === 'postgres' && typeof full.transaction === 'function') {
    return full.transaction(async (tx) => {
      await tx.query('SET LOCAL jit = off');
      return (await tx.query<Row>(sql, params)).rows;
    });
  }
  return (await db.query<Row>(sql, params)).rows;
}

/**
 * The spend and events of every budget line in the current periods, in one statement that reads the period's metering
 * events once. Each event is charged, in its currency, to its caller and each principal of its chain (each once, as
 * the gateway does), and to each mandate it was made under; it counts in each window whose current period its
 * `started_at` is in. Sums are taken per (principal or mandate, currency) first, so the budgets join a few rows.
 */
const SUM_COLUMNS = BUDGET_WINDOWS.map((w) => `s.${w}, s.${w}_events`).join(', ');
const RECORDED_SQL = `WITH calls AS (
       SELECT c.*,
         c.started_at >= $1::timestamptz AND c.started_at < $2::timestamptz AS in_hourly,
         c.started_at >= $3::timestamptz AND c.started_at < $4::timestamptz AS in_daily,
         c.started_at >= $5::timestamptz AND c.started_at < $6::timestamptz AS in_weekly,
         c.started_at >= $7::timestamptz AND c.started_at < $8::timestamptz AS in_monthly
       FROM (${callsSql('$9', '$10::timestamptz')}) c
     ),
     charged AS (
       SELECT c.caller AS holder, c.currency, c.cost, c.in_hourly, c.in_daily, c.in_weekly, c.in_monthly FROM calls c
       UNION ALL
       SELECT d.holder, c.currency, c.cost, c.in_hourly, c.in_daily, c.in_weekly, c.in_monthly
       FROM calls c CROSS JOIN LATERAL (SELECT DISTINCT x AS holder FROM jsonb_array_elements_text(c.chain) AS x WHERE x <> c.caller) d
     ),
     under AS (
       SELECT d.holder, c.currency, c.cost, c.in_hourly, c.in_daily, c.in_weekly, c.in_monthly
       FROM calls c CROSS JOIN LATERAL (SELECT DISTINCT x AS holder FROM jsonb_array_elements_text(c.mandate_ids) AS x) d
     ),
     ${sumsSql('principal_sums', 'charged', 'SELECT principal_id FROM budgets')},
     ${sumsSql('mandate_sums', 'under', 'SELECT id FROM mandates WHERE budget_limit_micros IS NOT NULL')},
     lines AS (
       SELECT b.principal_id, NULL::text AS mandate_id, b.budget_window, b.currency, b.limit_micros, ${SUM_COLUMNS}
       FROM budgets b LEFT JOIN principal_sums s ON s.holder = b.principal_id AND s.currency = b.currency
       UNION ALL
       SELECT m.principal_id, m.id, m.budget_window, m.budget_currency, m.budget_limit_micros, ${SUM_COLUMNS}
       FROM mandates m LEFT JOIN mandate_sums s ON s.holder = m.id AND s.currency = m.budget_currency
       WHERE m.budget_limit_micros IS NOT NULL AND m.expires_at > $10::timestamptz
     )
     SELECT l.principal_id, l.mandate_id, l.budget_window, l.currency, l.limit_micros,
       COALESCE(CASE l.budget_window WHEN 'hourly' THEN l.hourly WHEN 'daily' THEN l.daily WHEN 'weekly' THEN l.weekly ELSE l.monthly END, 0) AS spent,
       COALESCE(CASE l.budget_window WHEN 'hourly' THEN l.hourly_events WHEN 'daily' THEN l.daily_events WHEN 'weekly' THEN l.weekly_events ELSE l.monthly_events END, 0) AS events
     FROM lines l
     ORDER BY l.principal_id, l.mandate_id NULLS FIRST, array_position(ARRAY['hourly', 'daily', 'weekly', 'monthly']::text[], l.budget_window)`;

/** Per holder (a principal or a mandate with a budget) and currency: the spend and events in each window's period. */
function sumsSql(name: string, from: string, holders: string): string {
  const window = (w: string) => `sum(cost) FILTER (WHERE in_${w}) AS ${w}, count(*) FILTER (WHERE in_${w}) AS ${w}_events`;
  return `${name} AS (
       SELECT holder, currency, ${BUDGET_WINDOWS.map(window).join(', ')}
       FROM ${from} WHERE (in_weekly OR in_monthly) AND holder IN (${holders})
       GROUP BY holder, currency
     )`;
}

/** The recorded spend of every budget in its current period: the principals' budgets and the delegated mandates' own. */
export async function recordedSpendOfBudgets(db: Queryable, now: Date): Promise<{ row: LineRow; start: Date; end: Date }[]> {
  const { bounds, params, earliest } = periodsOf(now);
  const rows = await aggregate<LineRow>(db, RECORDED_SQL, [...params, EVENT_TYPES.metering, earliest.toISOString()]);
  return rows.map((row) => ({ row, ...bounds[row.budget_window] }));
}

/** The counter of a line: a principal's budget, or a mandate's own (the gateway's keys, src/gateway/budget-gate.ts). */
function lineKeyOf(row: LineRow, start: Date): string {
  return row.mandate_id === null ? budgetLineKey(row.principal_id, row.budget_window, start) : mandateBudgetKey(row.mandate_id, row.budget_window, start);
}

/**
 * Restores every budget's counter of the current period to at least the spend recorded for it, then marks the
 * counters ready (reserve works again). Safe on counters that were not lost: nothing that counts goes down.
 */
export async function reconcileSpend(db: Queryable, counters: SpendCounters, now: Date = new Date()): Promise<ReconcileReport> {
  const recorded = await recordedSpendOfBudgets(db, now);
  const entries: RestoreEntry[] = recorded.map(({ row, start, end }) => ({
    line: { key: lineKeyOf(row, start), limitMicros: Number(row.limit_micros), periodEndMs: end.getTime() },
    spentMicros: Number(row.spent),
  }));
  await counters.restore(entries);
  await counters.markReady();
  const lines: ReconciledLine[] = [];
  for (let i = 0; i < recorded.length; i++) {
    const { row, start, end } = recorded[i]!;
    const entry = entries[i]!;
    const spentMicros = (await counters.usage(entry.line.key)).spentMicros;
    lines.push({
      principalId: row.principal_id,
      mandateId: row.mandate_id ?? null,
      window: row.budget_window,
      currency: row.currency,
      limitMicros: entry.line.limitMicros,
      periodStart: start.toISOString(),
      periodEnd: end.toISOString(),
      restoredMicros: entry.spentMicros,
      restored: formatAmount(entry.spentMicros),
      events: Number(row.events),
      spentMicros,
      spent: formatAmount(spentMicros),
    });
  }
  return { at: now.toISOString(), counters: counters.kind, lines };
}

// --- What was spent: `caracal spend summary` and `caracal ledger query` ------------------------------------------

export const SPEND_GROUPS = ['agent', 'upstream', 'model'] as const;
export type SpendGroup = (typeof SPEND_GROUPS)[number];

export function parseSpendGroup(raw: string): SpendGroup {
  if ((SPEND_GROUPS as readonly string[]).includes(raw)) return raw as SpendGroup;
  // The start of what the operator typed, quoted; control characters shown escaped, never written to the terminal.
  // eslint-disable-next-line no-control-regex -- escaping control characters is the point
  const quoted = JSON.stringify(raw.slice(0, 20)).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  throw new CaracalError('CARACAL_VALIDATION', `by must be one of ${SPEND_GROUPS.join(', ')}, got ${quoted}`);
}

/** Spend in one currency (amounts never add across currencies). */
export interface SpendTotal {
  currency: string;
  spent_micros: number;
  spent: string;
  calls: number;
  input_tokens: number;
  output_tokens: number;
}

/** One row of a grouped summary: `key` is the agent id, upstream or model (null: calls without a model). */
export interface SpendRow extends SpendTotal {
  key: string | null;
  /** `--by agent`: the row's own spend plus every call charged to it as a principal of the call's chain (its delegated agents). */
  rolled_up_micros?: number;
  rolled_up?: string;
}

export interface SpendSummary {
  window: BudgetWindow;
  period_start: string;
  period_end: string;
  by: SpendGroup | null;
  /** Only the calls charged to this principal: its own and those of agents below it. */
  agent_id: string | null;
  totals: SpendTotal[];
  rows: SpendRow[];
}

interface TotalRow {
  key?: string | null;
  currency: string;
  spent: string | number;
  calls: string | number;
  input_tokens: string | number;
  output_tokens: string | number;
  rolled_up?: string | number;
}

function toTotal(row: TotalRow): SpendTotal {
  const spentMicros = Number(row.spent);
  return { currency: row.currency, spent_micros: spentMicros, spent: formatAmount(spentMicros), calls: Number(row.calls), input_tokens: Number(row.input_tokens), output_tokens: Number(row.output_tokens) };
}

/**
 * The spend of the calls that started in the current period of `window` (UTC calendar periods, as budgets count):
 * totals per currency, and rows per agent, upstream or model. `principalId` keeps only the calls charged to it (its
 * own and its delegated agents'); with `by: 'agent'` the rows are then its own and those of the agents below it.
 */
export async function spendSummary(db: Queryable, query: { window: BudgetWindow; by?: SpendGroup; principalId?: string; now?: Date }): Promise<SpendSummary> {
  const { start, end } = windowBounds(query.window, query.now ?? new Date());
  const params: unknown[] = [new Date(start.getTime() - EVENT_TIME_SLACK_MS).toISOString(), start.toISOString(), end.toISOString(), query.principalId ?? null, EVENT_TYPES.metering];
  const calls = `calls AS (
      SELECT * FROM (${callsSql('$5', '$1::timestamptz', true)}) c
      WHERE c.started_at >= $2::timestamptz AND c.started_at < $3::timestamptz
        AND ($4::text IS NULL OR c.caller = $4::text OR c.chain @> jsonb_build_array($4::text))
    )`;
  const sums = 'sum(cost) AS spent, count(*) AS calls, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens';
  const totals = await aggregate<TotalRow>(db, `WITH ${calls} SELECT currency, ${sums} FROM calls GROUP BY currency ORDER BY currency`, params);
  let rows: SpendRow[] = [];
  if (query.by === 'upstream' || query.by === 'model') {
    const column = query.by === 'upstream' ? 'upstream' : 'model';
    const grouped = await aggregate<TotalRow>(
      db,
      `WITH ${calls} SELECT ${column} AS key, currency, ${sums} FROM calls GROUP BY ${column}, currency ORDER BY sum(cost) DESC, ${column} NULLS LAST, currency`,
      params,
    );
    rows = grouped.map((row) => ({ key: row.key ?? null, ...toTotal(row) }));
  } else if (query.by === 'agent') {
    // A call is charged to each principal of its chain besides its caller. With an agent filter, only the principals
    // at or below that agent (before it in the chain, nearest first) get a row: those above it would show a part only.
    const grouped = await aggregate<TotalRow>(
      db,
      `WITH ${calls},
       delegated AS (
         SELECT DISTINCT c.event_id, c.currency, c.cost, x.principal_id
         FROM calls c, jsonb_array_elements_text(c.chain) WITH ORDINALITY AS x(principal_id, n)
         WHERE x.principal_id <> c.caller
           AND ($4::text IS NULL OR x.n <= (SELECT y.n FROM jsonb_array_elements_text(c.chain) WITH ORDINALITY AS y(principal_id, n) WHERE y.principal_id = $4::text ORDER BY y.n LIMIT 1))
       ),
       own AS (SELECT caller AS principal_id, currency, ${sums} FROM calls GROUP BY caller, currency),
       below AS (SELECT principal_id, currency, sum(cost) AS spent FROM delegated GROUP BY principal_id, currency)
       SELECT COALESCE(o.principal_id, b.principal_id) AS key, COALESCE(o.currency, b.currency) AS currency,
              COALESCE(o.spent, 0) AS spent, COALESCE(o.calls, 0) AS calls, COALESCE(o.input_tokens, 0) AS input_tokens, COALESCE(o.output_tokens, 0) AS output_tokens,
              COALESCE(o.spent, 0) + COALESCE(b.spent, 0) AS rolled_up
       FROM own o FULL JOIN below b ON b.principal_id = o.principal_id AND b.currency = o.currency
       ORDER BY rolled_up DESC, key, currency`,
      params,
    );
    rows = grouped.map((row) => {
      const rolledUp = Number(row.rolled_up);
      return { key: row.key ?? null, ...toTotal(row), rolled_up_micros: rolledUp, rolled_up: formatAmount(rolledUp) };
    });
  }
  return {
    window: query.window,
    period_start: start.toISOString(),
    period_end: end.toISOString(),
    by: query.by ?? null,
    agent_id: query.principalId ?? null,
    totals: totals.map(toTotal),
    rows,
  };
}

/** An agent's own proxied calls whose events are in [start, end): how many, and what they cost per currency. */
export interface AgentSpend {
  calls: number;
  spend: SpendTotal[];
}

export async function agentSpend(db: Queryable, principalId: string, start: Date, end: Date): Promise<AgentSpend> {
  const { rows } = await db.query<TotalRow>(
    `SELECT data->>'currency' AS currency, sum((data->>'cost_micros')::bigint) AS spent, count(*) AS calls,
            sum(COALESCE((data->>'input_tokens')::bigint, 0)) AS input_tokens, sum(COALESCE((data->>'output_tokens')::bigint, 0)) AS output_tokens
     FROM audit_log
     WHERE subject = $1 AND occurred_at >= $2::timestamptz AND occurred_at < $3::timestamptz AND event_type = $4
     GROUP BY data->>'currency' ORDER BY data->>'currency'`,
    [principalId, start.toISOString(), end.toISOString(), EVENT_TYPES.metering],
  );
  const spend = rows.map(toTotal);
  return { calls: spend.reduce((n, s) => n + s.calls, 0), spend };
}

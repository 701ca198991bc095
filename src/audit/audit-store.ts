import { CaracalError } from '../errors/catalog.js';
import type { Db, Queryable } from '../store/db.js';

/** One audit record as written: an event of a topic, or an admin operation (no topic position). */
export interface AuditEventRow {
  eventId: string;
  eventType: string;
  source: string;
  subject?: string | null;
  occurredAt: Date | string;
  topic?: string | null;
  partition?: number | null;
  offset?: string | number | null;
  requestId?: string | null;
  decisionId?: string | null;
  actor?: string | null;
  origin?: string | null;
  data?: unknown;
}

export interface AuditRecord {
  eventId: string;
  eventType: string;
  source: string;
  subject: string | null;
  occurredAt: string;
  recordedAt: string;
  topic: string | null;
  partition: number | null;
  /** int8 stays a string so a Kafka offset never loses precision. */
  offset: string | null;
  requestId: string | null;
  decisionId: string | null;
  actor: string | null;
  origin: string | null;
  data: unknown;
}

export interface AuditQuery {
  principalId?: string;
  start: Date;
  /** Exclusive. */
  end: Date;
  decisionId?: string;
  requestId?: string;
  limit: number;
}

export interface AuditPartition {
  name: string;
  /** 'default', or the month's bounds as ISO instants (from inclusive, to exclusive). */
  range: 'default' | { from: string; to: string };
  /** From the planner statistics; null until the partition has been analysed (autovacuum or ANALYZE). */
  approxRows: number | null;
}

export const MAX_PARTITION_MONTHS = 120;
export const MAX_QUERY_LIMIT = 10_000;

const COLUMNS = 'event_id, event_type, source, subject, occurred_at, topic, partition, "offset", request_id, decision_id, actor, origin, data';

function toIso(value: Date | string, field: string): string {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) throw new CaracalError('CARACAL_VALIDATION', `${field} is not a valid time: ${String(value)}`);
  return date.toISOString();
}

/**
 * Appends rows in one statement; returns how many were new. A row whose event id was recorded
 * before (or appears twice in `rows`) is skipped by the database itself (the claim trigger of
 * migration 0005), so a redelivered event is a no-op and a consumer can retry a batch freely.
 */
export async function appendAuditEvents(db: Queryable, rows: readonly AuditEventRow[]): Promise<number> {
  if (rows.length === 0) return 0;
  const records = rows.map((row) => ({
    event_id: row.eventId,
    event_type: row.eventType,
    source: row.source,
    subject: row.subject ?? null,
    occurred_at: toIso(row.occurredAt, 'occurredAt'),
    topic: row.topic ?? null,
    partition: row.partition ?? null,
    offset: row.offset === null || row.offset === undefined ? null : String(row.offset),
    request_id: row.requestId ?? null,
    decision_id: row.decisionId ?? null,
    actor: row.actor ?? null,
    origin: row.origin ?? null,
    data: row.data ?? {},
  }));
  // One JSON parameter instead of 13 per row: no parameter-count limit, one round trip. In order,
  // so of two rows with one id in a batch the first is kept.
  const { rowCount } = await db.query(
    `INSERT INTO audit_log (${COLUMNS})
     SELECT r->>'event_id', r->>'event_type', r->>'source', r->>'subject', (r->>'occurred_at')::timestamptz, r->>'topic', (r->>'partition')::integer,
            (r->>'offset')::bigint, r->>'request_id', r->>'decision_id', r->>'actor', r->>'origin', r->'data'
     FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(r, n)
     ORDER BY e.n`,
    [JSON.stringify(records)],
  );
  return rowCount;
}

interface RawRecord {
  event_id: string;
  event_type: string;
  source: string;
  subject: string | null;
  occurred_at: Date | string;
  recorded_at: Date | string;
  topic: string | null;
  partition: number | null;
  offset: string | number | null;
  request_id: string | null;
  decision_id: string | null;
  actor: string | null;
  origin: string | null;
  data: unknown;
}

/** Records with `start <= occurred_at < end` matching every given filter, oldest first. */
export async function queryAudit(db: Queryable, query: AuditQuery): Promise<AuditRecord[]> {
  if (!Number.isInteger(query.limit) || query.limit < 1 || query.limit > MAX_QUERY_LIMIT) {
    throw new CaracalError('CARACAL_VALIDATION', `limit must be an integer from 1 to ${MAX_QUERY_LIMIT}, got ${query.limit}`);
  }
  const params: unknown[] = [toIso(query.start, 'start'), toIso(query.end, 'end')];
  const where = ['occurred_at >= $1', 'occurred_at < $2'];
  const filter = (column: string, value: string | undefined) => {
    if (value === undefined) return;
    params.push(value);
    where.push(`${column} = $${params.length}`);
  };
  filter('subject', query.principalId);
  filter('decision_id', query.decisionId);
  filter('request_id', query.requestId);
  params.push(query.limit);
  const { rows } = await db.query<RawRecord>(
    `SELECT ${COLUMNS}, recorded_at FROM audit_log WHERE ${where.join(' AND ')} ORDER BY occurred_at, event_id LIMIT $${params.length}`,
    params,
  );
  return rows.map((row) => ({
    eventId: row.event_id,
    eventType: row.event_type,
    source: row.source,
    subject: row.subject,
    occurredAt: toIso(row.occurred_at, 'occurred_at'),
    recordedAt: toIso(row.recorded_at, 'recorded_at'),
    topic: row.topic,
    partition: row.partition === null ? null : Number(row.partition),
    offset: row.offset === null ? null : String(row.offset),
    requestId: row.request_id,
    decisionId: row.decision_id,
    actor: row.actor,
    origin: row.origin,
    data: row.data,
  }));
}

/** A calendar month in UTC. */
export interface Month {
  year: number;
  month: number; // 1–12
}

/** Parses `YYYY-MM`; throws a one-line validation error otherwise. */
export function parseMonth(raw: string): Month {
  const match = /^(\d{4})-(\d{2})$/.exec(raw);
  const month = match ? Number(match[2]) : 0;
  const year = match ? Number(match[1]) : 0;
  if (!match || month < 1 || month > 12 || year < 1970 || year > 9000) {
    throw new CaracalError('CARACAL_VALIDATION', `--from must be a month as YYYY-MM (years 1970 to 9000), got "${raw}"`);
  }
  return { year, month };
}

export function currentMonth(now = new Date()): Month {
  return { year: now.getUTCFullYear(), month: now.getUTCMonth() + 1 };
}

function addMonths({ year, month }: Month, count: number): Month {
  const index = year * 12 + (month - 1) + count;
  return { year: Math.floor(index / 12), month: (index % 12) + 1 };
}

function monthStart({ year, month }: Month): string {
  return `${year}-${String(month).padStart(2, '0')}-01T00:00:00.000Z`;
}

export function monthLabel({ year, month }: Month): string {
  return `${year}-${String(month).padStart(2, '0')}`;
}

/** Built from digits only, so it is safe to splice into DDL. */
export function partitionName(month: Month): string {
  return `audit_log_${monthLabel(month).replace('-', '_')}`;
}

export interface CreatedPartitions {
  created: string[];
  existing: string[];
}

/**
 * Creates the monthly partitions of `months` months starting at `from` (idempotent: existing ones
 * are left alone). All or nothing: when the default partition already holds rows of one of those
 * months, PostgreSQL cannot attach the month next to them, and moving them would mean deleting
 * from an append-only table, so the whole call is refused and nothing is created.
 */
export async function createMonthlyPartitions(db: Db, { from, months }: { from: Month; months: number }): Promise<CreatedPartitions> {
  if (!Number.isInteger(months) || months < 1 || months > MAX_PARTITION_MONTHS) {
    throw new CaracalError('CARACAL_VALIDATION', `--months must be an integer from 1 to ${MAX_PARTITION_MONTHS}, got ${months}`);
  }
  const wanted = Array.from({ length: months }, (_, i) => addMonths(from, i));
  return db.transaction(async (tx) => {
    // Taken first (on the parent and, recursively, every partition) so no event can reach the
    // default partition between the check and the CREATE; writers wait for the commit.
    await tx.query('LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE');
    const { rows: present } = await tx.query<{ name: string }>(
      `SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_log'::regclass`,
    );
    const existingNames = new Set(present.map((row) => row.name));
    const missing = wanted.filter((month) => !existingNames.has(partitionName(month)));
    const blocked: string[] = [];
    for (const month of missing) {
      const { rows } = await tx.query<{ n: string }>(
        'SELECT count(*) AS n FROM audit_log_default WHERE occurred_at >= $1 AND occurred_at < $2',
        [monthStart(month), monthStart(addMonths(month, 1))],
      );
      if (Number(rows[0]!.n) > 0) blocked.push(`${monthLabel(month)} (${rows[0]!.n} rows)`);
    }
    if (blocked.length > 0) {
      throw new CaracalError(
        'CARACAL_CONFLICT',
        `the default audit partition already holds events of ${blocked.join(', ')}; those months stay in the default partition — create partitions from a later month (--from)`,
      );
    }
    for (const month of missing) {
      const name = partitionName(month);
      await tx.query(
        `CREATE TABLE IF NOT EXISTS ${name} PARTITION OF audit_log FOR VALUES FROM ('${monthStart(month)}') TO ('${monthStart(addMonths(month, 1))}')`,
      );
      // Row triggers come from the parent; statement triggers and privileges do not.
      await tx.query(`CREATE TRIGGER audit_log_no_change_stmt BEFORE UPDATE OR DELETE OR TRUNCATE ON ${name} FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()`);
      await tx.query(`REVOKE UPDATE, DELETE, TRUNCATE ON ${name} FROM PUBLIC`);
    }
    return {
      created: missing.map(partitionName),
      existing: wanted.filter((month) => existingNames.has(partitionName(month))).map(partitionName),
    };
  });
}

/** Every partition of audit_log, months in order, the default last. */
export async function listPartitions(db: Queryable): Promise<AuditPartition[]> {
  // The bound is rendered in the session's time zone with its offset; casting the literal back
  // gives the instant whatever that zone is.
  const { rows } = await db.query<{ name: string; is_default: boolean; range_from: Date | string | null; range_to: Date | string | null; reltuples: number | string }>(
    `SELECT c.relname AS name,
            pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default,
            substring(pg_get_expr(c.relpartbound, c.oid) FROM $$FROM \\('([^']+)'\\)$$)::timestamptz AS range_from,
            substring(pg_get_expr(c.relpartbound, c.oid) FROM $$TO \\('([^']+)'\\)$$)::timestamptz AS range_to,
            c.reltuples
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
      WHERE i.inhparent = 'audit_log'::regclass`,
  );
  const partitions = rows.map((row): AuditPartition => {
    const tuples = Number(row.reltuples);
    return {
      name: row.name,
      range: row.is_default || row.range_from === null || row.range_to === null ? 'default' : { from: toIso(row.range_from, 'from'), to: toIso(row.range_to, 'to') },
      approxRows: tuples < 0 ? null : Math.round(tuples),
    };
  });
  const key = (p: AuditPartition) => (p.range === 'default' ? Infinity : Date.parse(p.range.from));
  return partitions.sort((a, b) => key(a) - key(b));
}

import { expect, it } from 'vitest';
import { appendAuditEvents, createMonthlyPartitions, currentMonth, listPartitions, partitionName, queryAudit, type AuditEventRow, type Month } from '../../src/audit/audit-store.js';
import type { Db } from '../../src/store/db.js';
import { expectOneLineError, type CliRun } from './cli.js';

/**
 * The audit log's contract, run on PGlite (test/unit/audit-log.test.ts) and on PostgreSQL
 * (test/integration/audit-log.test.ts): the same storage, the same rules, on both.
 * The database must be migrated, with partitions for 2031-01 … 2031-03 created.
 */

function event(id: string, occurredAt: string, extra: Partial<AuditEventRow> = {}): AuditEventRow {
  return { eventId: id, eventType: 'caracal.decision', source: 'caracal://gateway/test', occurredAt, topic: 'caracal.decisions', partition: 0, offset: 1, data: { id }, ...extra };
}

export function nextMonth(after: Month = currentMonth()): Month {
  return after.month === 12 ? { year: after.year + 1, month: 1 } : { year: after.year, month: after.month + 1 };
}

async function tableOf(db: Db, eventId: string): Promise<string[]> {
  const { rows } = await db.query<{ t: string }>('SELECT tableoid::regclass::text AS t FROM audit_log WHERE event_id = $1', [eventId]);
  return rows.map((row) => row.t);
}

export function auditStoreContract(db: () => Db): void {
  it('records an event id once: a re-insert, even with another time, and a duplicate within a batch are no-ops', async () => {
    expect(await appendAuditEvents(db(), [event('0190-a', '2031-01-10T10:00:00Z')])).toBe(1);
    expect(await appendAuditEvents(db(), [event('0190-a', '2031-01-10T10:00:00Z')])).toBe(0);
    expect(await appendAuditEvents(db(), [event('0190-a', '2031-02-10T10:00:00Z')])).toBe(0);
    expect(await appendAuditEvents(db(), [event('0190-b', '2031-01-11T00:00:00Z'), event('0190-b', '2031-01-11T00:00:00Z'), event('0190-c', '2031-01-12T00:00:00Z')])).toBe(2);
    // Plain SQL without the store module is deduplicated by the database too.
    const raw = await db().query(`INSERT INTO audit_log (event_id, event_type, source, occurred_at) VALUES ('0190-c', 't', 's', '2031-01-12T00:00:00Z')`);
    expect(raw.rowCount).toBe(0);
    const { rows } = await db().query<{ event_id: string; n: string }>(`SELECT event_id, count(*) AS n FROM audit_log WHERE event_id IN ('0190-a', '0190-b', '0190-c') GROUP BY event_id ORDER BY event_id`);
    expect(rows.map((row) => [row.event_id, Number(row.n)])).toEqual([['0190-a', 1], ['0190-b', 1], ['0190-c', 1]]);
    expect(await tableOf(db(), '0190-a')).toEqual(['audit_log_2031_01']);
  });

  it('refuses UPDATE, DELETE and TRUNCATE on the parent, on a month partition, on the default partition and on the id table', async () => {
    await appendAuditEvents(db(), [event('0190-d', '2031-01-15T00:00:00Z'), event('0190-e', '1999-01-15T00:00:00Z')]);
    for (const table of ['audit_log', 'audit_log_2031_01', 'audit_log_default']) {
      await expect(db().query(`UPDATE ${table} SET source = 'forged'`)).rejects.toThrow(/audit log is append-only: UPDATE/);
      await expect(db().query(`DELETE FROM ${table}`)).rejects.toThrow(/audit log is append-only: DELETE/);
      await expect(db().query(`TRUNCATE ${table}`)).rejects.toThrow(/audit log is append-only: TRUNCATE/);
    }
    // A statement that matches no row is refused too.
    await expect(db().query(`DELETE FROM audit_log_2031_03 WHERE event_id = 'none'`)).rejects.toThrow(/append-only: DELETE/);
    await expect(db().query(`DELETE FROM audit_event_ids`)).rejects.toThrow(/append-only: DELETE/);
    await expect(db().query(`TRUNCATE audit_event_ids`)).rejects.toThrow(/append-only: TRUNCATE/);
    const { rows } = await db().query<{ source: string }>(`SELECT source FROM audit_log WHERE event_id = '0190-d'`);
    expect(rows).toEqual([{ source: 'caracal://gateway/test' }]);
  });

  it('keeps an event of a month without a partition in the default partition', async () => {
    expect(await appendAuditEvents(db(), [event('0190-f', '2001-05-20T12:00:00Z')])).toBe(1);
    expect(await tableOf(db(), '0190-f')).toEqual(['audit_log_default']);
  });

  it('creates the next months idempotently, lists them, and refuses a month whose events sit in the default partition', async () => {
    const from = nextMonth();
    const first = await createMonthlyPartitions(db(), { from, months: 3 });
    expect(first.created).toHaveLength(3);
    expect(first.created[0]).toBe(partitionName(from));
    expect(await createMonthlyPartitions(db(), { from, months: 3 })).toEqual({ created: [], existing: first.created });
    const listed = await listPartitions(db());
    const names = listed.map((p) => p.name);
    expect(names).toEqual(expect.arrayContaining(first.created));
    expect(names.at(-1)).toBe('audit_log_default');
    const start = listed.find((p) => p.name === first.created[0]);
    expect(start?.range).toEqual({ from: `${from.year}-${String(from.month).padStart(2, '0')}-01T00:00:00.000Z`, to: expect.any(String) });
    expect(listed.find((p) => p.name === 'audit_log_2031_02')?.range).toEqual({ from: '2031-02-01T00:00:00.000Z', to: '2031-03-01T00:00:00.000Z' });

    await expect(createMonthlyPartitions(db(), { from: { year: 2001, month: 4 }, months: 2 })).rejects.toThrow(/default audit partition already holds events of 2001-05 \(1 rows\)/);
    expect((await listPartitions(db())).map((p) => p.name)).not.toContain('audit_log_2001_04');
    expect(await tableOf(db(), '0190-f')).toEqual(['audit_log_default']);

    await db().query('ANALYZE audit_log_2031_01');
    expect((await listPartitions(db())).find((p) => p.name === 'audit_log_2031_01')?.approxRows).toBeGreaterThanOrEqual(4);
  });

  it('answers queries by principal and time, by request id and by decision id', async () => {
    await appendAuditEvents(db(), [
      event('q-1', '2031-03-01T00:00:00Z', { subject: 'agent-q', requestId: 'req-q1', decisionId: 'dec-q1' }),
      event('q-2', '2031-03-02T00:00:00Z', { subject: 'agent-q', requestId: 'req-q2', decisionId: 'dec-q2' }),
      event('q-3', '2031-03-03T00:00:00Z', { subject: 'agent-other', requestId: 'req-q2', decisionId: 'dec-q3' }),
      event('q-4', '2031-03-04T00:00:00Z', { subject: 'agent-q', topic: null, partition: null, offset: null, actor: 'ops@example.com', origin: 'cli', eventType: 'caracal.admin.policy.create' }),
    ]);
    const window = { start: new Date('2031-03-01T00:00:00Z'), end: new Date('2031-03-04T00:00:00Z'), limit: 100 };
    expect((await queryAudit(db(), { ...window, principalId: 'agent-q' })).map((r) => r.eventId)).toEqual(['q-1', 'q-2']);
    expect((await queryAudit(db(), { ...window, end: new Date('2031-04-01T00:00:00Z'), principalId: 'agent-q' })).map((r) => r.eventId)).toEqual(['q-1', 'q-2', 'q-4']);
    expect((await queryAudit(db(), { ...window, requestId: 'req-q2' })).map((r) => r.eventId)).toEqual(['q-2', 'q-3']);
    const [decision, ...none] = await queryAudit(db(), { ...window, decisionId: 'dec-q2' });
    expect(none).toEqual([]);
    expect(decision).toMatchObject({ eventId: 'q-2', subject: 'agent-q', occurredAt: '2031-03-02T00:00:00.000Z', topic: 'caracal.decisions', partition: 0, offset: '1', requestId: 'req-q2', data: { id: 'q-2' } });
    const [admin] = await queryAudit(db(), { ...window, end: new Date('2031-04-01T00:00:00Z'), principalId: 'agent-q', limit: 1, start: new Date('2031-03-04T00:00:00Z') });
    expect(admin).toMatchObject({ eventId: 'q-4', topic: null, offset: null, actor: 'ops@example.com', origin: 'cli' });
    expect(await queryAudit(db(), { ...window, principalId: 'agent-q', limit: 1 })).toHaveLength(1);
    await expect(queryAudit(db(), { ...window, limit: 0 })).rejects.toThrow(/limit must be/);
  });
}

/** `caracal db partitions …` through the CLI runner of the suite's backend. */
export function partitionsCliContract(caracal: (...args: string[]) => Promise<CliRun>): void {
  it('creates months from --from, idempotently, and lists them as a table or JSON', async () => {
    const created = await caracal('db', 'partitions', 'create', '--from', '2032-11', '--months', '3');
    expect(created.err).toBe('');
    expect(created.code).toBe(0);
    expect(created.out.trimEnd().split('\n')).toEqual(['created audit_log_2032_11', 'created audit_log_2032_12', 'created audit_log_2033_01']);
    const again = await caracal('db', 'partitions', 'create', '--from', '2032-12', '--months', '2', '--json');
    expect(JSON.parse(again.out)).toEqual({ created: [], existing: ['audit_log_2032_12', 'audit_log_2033_01'] });

    const table = await caracal('db', 'partitions', 'list');
    expect(table.code).toBe(0);
    expect(table.out.split('\n')[0]).toMatch(/^PARTITION\s+FROM\s+TO\s+ROWS$/);
    expect(table.out).toMatch(/^audit_log_2032_12\s+2032-12-01T00:00:00.000Z\s+2033-01-01T00:00:00.000Z\s+/m);
    const json = JSON.parse((await caracal('db', 'partitions', 'list', '--json')).out);
    const names: string[] = json.map((p: { name: string }) => p.name);
    expect(names.filter((name) => /^audit_log_203[23]_/.test(name))).toEqual(['audit_log_2032_11', 'audit_log_2032_12', 'audit_log_2033_01']);
    expect(names.at(-1)).toBe('audit_log_default');
    expect(json.at(-1).range).toBe('default');
  });

  it('creates the current month and the two after it by default', async () => {
    const run = await caracal('db', 'partitions', 'create', '--json');
    expect(run.code).toBe(0);
    const { created, existing } = JSON.parse(run.out) as { created: string[]; existing: string[] };
    // The store suite, or the audit of an earlier command (admin actions are audited in their
    // month's partition), may already have created some of these months.
    expect([...created, ...existing].sort()).toEqual([currentMonth(), nextMonth(), nextMonth(nextMonth())].map(partitionName));
  });

  it('answers bad input with one line and a non-zero exit', async () => {
    expectOneLineError(await caracal('db', 'partitions', 'create', '--months', '0'), /--months must be a positive integer, got "0"/);
    expectOneLineError(await caracal('db', 'partitions', 'create', '--months', 'lots'), /--months must be a positive integer/);
    expectOneLineError(await caracal('db', 'partitions', 'create', '--months', '121'), /--months must be at most 120/);
    expectOneLineError(await caracal('db', 'partitions', 'create', '--from', '2026-13'), /--from must be a month as YYYY-MM.*"2026-13"/);
    expectOneLineError(await caracal('db', 'partitions', 'create', '--from', 'garbage'), /--from must be a month as YYYY-MM/);
    expectOneLineError(await caracal('db', 'partitions', 'create', '--from'), /argument missing/);
    expectOneLineError(await caracal('db', 'partitions', 'list', '--colour'), /unknown option/);
    expectOneLineError(await caracal('db', 'partitions', 'list', 'extra'), /too many arguments|excess/);
  });
}

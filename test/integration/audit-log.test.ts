import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMonthlyPartitions } from '../../src/audit/audit-store.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgDb } from '../../src/store/pg-db.js';
import { auditStoreContract, partitionsCliContract } from '../helpers/audit-log-contract.js';
import { cliRunner } from '../helpers/cli.js';
import { randomName, requireServices } from '../helpers/services.js';

// One schema for the whole file: the CLI suite below works on the same database as the store suite.
const schema = randomName('audit');
let db: PgDb;
beforeAll(async () => {
  db = new PgDb({ url: requireServices().databaseUrl, schema, poolSize: 4 });
  await db.ensureSchema();
  await migrateUp(db);
  await createMonthlyPartitions(db, { from: { year: 2031, month: 1 }, months: 3 });
});
afterAll(async () => {
  // DROP is not refused: the triggers guard the rows, not the schema's lifetime.
  await db?.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await db?.close();
});

describe('audit log on PostgreSQL', () => {
  it('gives a role that is not the owner no UPDATE, DELETE or TRUNCATE, even with INSERT granted', async () => {
    const role = randomName('audit_writer');
    await db.query(`CREATE ROLE ${role}`);
    try {
      await db.query(`GRANT USAGE ON SCHEMA "${schema}" TO ${role}`);
      await db.query(`GRANT SELECT, INSERT ON audit_log, audit_event_ids TO ${role}`);
      const asRole = (sql: string) =>
        db.transaction(async (tx) => {
          await tx.query(`SET LOCAL ROLE ${role}`);
          return tx.query(sql);
        });
      expect((await asRole(`INSERT INTO audit_log (event_id, event_type, source, occurred_at) VALUES ('role-1', 't', 's', '2031-01-02T00:00:00Z')`)).rowCount).toBe(1);
      for (const sql of [`UPDATE audit_log SET source = 'forged'`, 'DELETE FROM audit_log', 'TRUNCATE audit_log', 'DELETE FROM audit_log_default']) {
        await expect(asRole(sql), sql).rejects.toThrow(/permission denied for table audit_log/);
      }
    } finally {
      await db.query(`REVOKE ALL ON SCHEMA "${schema}" FROM ${role}`);
      await db.query(`REVOKE ALL ON audit_log, audit_event_ids FROM ${role}`);
      await db.query(`DROP ROLE ${role}`);
    }
  });

  auditStoreContract(() => db);
});

describe('caracal db partitions on PostgreSQL', () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-audit-cli-'));
  const caracal = cliRunner(() => ({ CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent', DATABASE_URL: requireServices().databaseUrl, CARACAL_DB_SCHEMA: schema }));

  partitionsCliContract(caracal);
});

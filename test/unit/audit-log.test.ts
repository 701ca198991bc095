import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMonthlyPartitions } from '../../src/audit/audit-store.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { auditStoreContract, partitionsCliContract } from '../helpers/audit-log-contract.js';
import { cliRunner } from '../helpers/cli.js';

describe('audit log on PGlite (in memory)', () => {
  let db: PgliteDb;
  beforeAll(async () => {
    db = await PgliteDb.open();
    await migrateUp(db);
    await createMonthlyPartitions(db, { from: { year: 2031, month: 1 }, months: 3 });
  });
  afterAll(async () => db.close());

  auditStoreContract(() => db);
});

describe('caracal db partitions on the embedded default', () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-audit-cli-'));
  const caracal = cliRunner(() => ({ CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' }));

  partitionsCliContract(caracal);

  it('survives `db reset`: the tables go, the migration re-applies, only the default partition is left', async () => {
    const reset = await caracal('db', 'reset', '--confirm');
    expect(reset.err).toBe('');
    expect(reset.code).toBe(0);
    const json = JSON.parse((await caracal('db', 'partitions', 'list', '--json')).out);
    expect(json).toEqual([{ name: 'audit_log_default', range: 'default', approxRows: null }]);
  });

});

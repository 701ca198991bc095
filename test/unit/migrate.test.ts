import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appliedVersions, listMigrations, migrateUp, splitStatements } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';

describe('migrations on PGlite (in memory)', () => {
  let db: PgliteDb;
  beforeAll(async () => {
    db = await PgliteDb.open();
  });
  afterAll(async () => db.close());

  it('applies every numbered migration from an empty database, then nothing the second time', async () => {
    const first = await migrateUp(db);
    expect(first.map((m) => m.version)).toEqual(listMigrations().map((m) => m.version));
    expect(await migrateUp(db)).toEqual([]);
    expect(await appliedVersions(db)).toEqual(listMigrations().map((m) => m.version));
  });

  it('keeps dollar-quoted bodies whole when splitting statements', () => {
    const sql = 'CREATE TABLE a (x int);\nCREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  RAISE EXCEPTION \'no\';\nEND;\n$$ LANGUAGE plpgsql;\n-- comment;\nSELECT 1;';
    expect(splitStatements(sql)).toHaveLength(3);
  });
});

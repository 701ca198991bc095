import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { MIGRATIONS_DIR } from '../paths.js';
import type { Db } from './db.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** Numbered SQL files `NNNN_name.sql`, in order. */
export function listMigrations(dir = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir)
    .filter((file) => /^\d{4}_[a-z0-9_]+\.sql$/.test(file))
    .sort()
    .map((file) => ({
      version: Number(file.slice(0, 4)),
      name: file.slice(5, -4),
      sql: readFileSync(path.join(dir, file), 'utf8'),
    }));
}

const LEDGER = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version integer PRIMARY KEY,
  name text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)`;

/** `db init`: creates the migrations ledger (idempotent). */
export async function initDatabase(db: Db): Promise<void> {
  await db.exec(LEDGER);
}

export async function appliedVersions(db: Db): Promise<number[]> {
  await initDatabase(db);
  const { rows } = await db.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version');
  return rows.map((row) => Number(row.version));
}

/**
 * `db migrate up`: applies every pending migration, each in its own transaction. On PostgreSQL an
 * advisory lock serialises concurrent migrators (two gateways starting at once).
 */
export async function migrateUp(db: Db): Promise<Migration[]> {
  await initDatabase(db);
  const pending = async () => {
    const done = new Set(await appliedVersions(db));
    return listMigrations().filter((m) => !done.has(m.version));
  };
  const applied: Migration[] = [];
  for (const migration of await pending()) {
    const ran = await db.transaction(async (tx) => {
      if (db.kind === 'postgres') await tx.query('SELECT pg_advisory_xact_lock(7261736361)');
      const already = await tx.query('SELECT 1 FROM schema_migrations WHERE version = $1', [migration.version]);
      if (already.rowCount > 0) return false;
      for (const statement of splitStatements(migration.sql)) await tx.query(statement);
      await tx.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [migration.version, migration.name]);
      return true;
    });
    if (ran) applied.push(migration);
  }
  return applied;
}

/**
 * Splits a migration into statements so each runs through the parameterised query path inside the
 * transaction. Statements end with `;` at end of line; `$$`-quoted bodies (functions) are kept whole.
 */
export function splitStatements(sql: string): string[] {
  const statements: string[] = [];
  let current = '';
  let inDollar = false;
  for (const line of sql.split('\n')) {
    if (/^\s*--/.test(line) && !inDollar) continue;
    current += `${line}\n`;
    const dollars = line.match(/\$\$/g)?.length ?? 0;
    if (dollars % 2 === 1) inDollar = !inDollar;
    if (!inDollar && /;\s*$/.test(line)) {
      statements.push(current.trim().replace(/;\s*$/, ''));
      current = '';
    }
  }
  if (current.trim()) statements.push(current.trim());
  return statements;
}

/** `db reset --confirm`: drops every table Caracal owns, then re-applies all migrations. */
export async function resetDatabase(db: Db, schema: string): Promise<void> {
  const { rows } = await db.query<{ tablename: string }>(
    'SELECT tablename FROM pg_tables WHERE schemaname = $1',
    [db.kind === 'pglite' ? 'public' : schema],
  );
  await db.transaction(async (tx) => {
    for (const { tablename } of rows) await tx.query(`DROP TABLE IF EXISTS "${tablename}" CASCADE`);
  });
  await migrateUp(db);
}

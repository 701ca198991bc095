import path from 'node:path';
import type { CaracalConfig } from '../config/schema.js';
import type { Db } from './db.js';
import { PgDb } from './pg-db.js';
import { PgliteDb } from './pglite-db.js';

/** Opens the database the config names: PostgreSQL when `database.url` is set, else PGlite under `home`. */
export async function openDb(config: CaracalConfig): Promise<Db> {
  if (config.database.url) {
    const db = new PgDb({ url: config.database.url, schema: config.database.schema, poolSize: config.database.poolSize });
    await db.ensureSchema();
    return db;
  }
  return PgliteDb.open(path.join(config.home, 'pgdata'));
}

import { mkdirSync } from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import { CaracalError } from '../errors/catalog.js';
import type { Db, Queryable, QueryResult } from './db.js';

function wrap(err: unknown): never {
  if ((err as { code?: string }).code === '23505') throw new CaracalError('CARACAL_CONFLICT', (err as Error).message, { cause: err });
  throw err;
}

/**
 * PGlite: real PostgreSQL compiled to WASM, in this process. One process owns a data directory
 * at a time (see src/store/home-lock.ts); other processes reach it through the admin API.
 */
export class PgliteDb implements Db {
  readonly kind = 'pglite' as const;

  private constructor(private readonly pg: PGlite) {}

  /** `dataDir` undefined = in memory (tests). */
  static async open(dataDir?: string): Promise<PgliteDb> {
    if (dataDir) mkdirSync(dataDir, { recursive: true });
    // int8 stays a string, as with `pg`, so offsets and micro-unit amounts never lose precision.
    const parsers = { 20: (value: string) => value };
    const pg = await PGlite.create(dataDir ? { dataDir, parsers } : { parsers });
    return new PgliteDb(pg);
  }

  async query<Row = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<QueryResult<Row>> {
    try {
      const result = await this.pg.query<Row>(sql, params);
      return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
    } catch (err) {
      return wrap(err);
    }
  }

  async exec(sql: string): Promise<void> {
    try {
      await this.pg.exec(sql);
    } catch (err) {
      wrap(err);
    }
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.pg.transaction(async (inner) => {
      const tx: Queryable = {
        async query<Row>(sql: string, params: unknown[] = []): Promise<QueryResult<Row>> {
          try {
            const result = await inner.query<Row>(sql, params);
            return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
          } catch (err) {
            return wrap(err);
          }
        },
      };
      return fn(tx);
    });
  }

  async ping(): Promise<void> {
    await this.pg.query('SELECT 1');
  }

  async close(): Promise<void> {
    if (!this.pg.closed) await this.pg.close();
  }
}

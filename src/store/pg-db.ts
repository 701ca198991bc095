import pg from 'pg';
import { CaracalError } from '../errors/catalog.js';
import type { Db, Queryable, QueryResult } from './db.js';

// int8 (bigint) columns come back as strings by default; offsets and money stay exact that way,
// and callers convert where a JS number is safe.

export interface PgDbOptions {
  url: string;
  schema: string;
  poolSize: number;
}

function wrap(err: unknown): never {
  const code = (err as { code?: string }).code;
  // 23505 unique_violation → conflict; connection-level failures are retriable dependency errors.
  if (code === '23505') throw new CaracalError('CARACAL_CONFLICT', (err as Error).message, { cause: err });
  if (code && /^(08|57P|53)/.test(code)) throw new CaracalError('CARACAL_DEPENDENCY', `postgres: ${(err as Error).message}`, { cause: err, retriable: true });
  if (!code || ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND'].includes(code)) {
    if (!(err as { severity?: string }).severity) {
      throw new CaracalError('CARACAL_DEPENDENCY', `postgres: ${(err as Error).message}`, { cause: err, retriable: true });
    }
  }
  throw err;
}

export class PgDb implements Db {
  readonly kind = 'postgres' as const;
  private readonly pool: pg.Pool;

  constructor(private readonly options: PgDbOptions) {
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: options.poolSize,
      connectionTimeoutMillis: 5_000,
      // Every connection works inside the configured schema (tests isolate suites this way).
      options: `-c search_path=${options.schema}`,
    });
    // An idle client losing its connection must not crash the process; the next query reconnects.
    this.pool.on('error', () => {});
  }

  /** Creates the schema when missing (it must exist before search_path can point at it). */
  async ensureSchema(): Promise<void> {
    if (this.options.schema === 'public') return;
    await this.query(`CREATE SCHEMA IF NOT EXISTS "${this.options.schema}"`);
  }

  async query<Row = Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<QueryResult<Row>> {
    try {
      const result = await this.pool.query(sql, params);
      return { rows: result.rows as Row[], rowCount: result.rowCount ?? 0 };
    } catch (err) {
      return wrap(err);
    }
  }

  async exec(sql: string): Promise<void> {
    await this.query(sql);
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      return wrap(err);
    }
    const tx: Queryable = {
      async query<Row>(sql: string, params: unknown[] = []): Promise<QueryResult<Row>> {
        try {
          const result = await client.query(sql, params);
          return { rows: result.rows as Row[], rowCount: result.rowCount ?? 0 };
        } catch (err) {
          return wrap(err);
        }
      },
    };
    try {
      await client.query('BEGIN');
      const value = await fn(tx);
      await client.query('COMMIT');
      return value;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  async ping(): Promise<void> {
    await this.query('SELECT 1');
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

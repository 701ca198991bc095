/**
 * The `Db` port: a small SQL surface implemented by PostgreSQL (`pg`) and PGlite.
 * Parameters use PostgreSQL `$1` placeholders on both.
 */
export interface QueryResult<Row> {
  rows: Row[];
  rowCount: number;
}

export interface Queryable {
  query<Row = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<Row>>;
}

export interface Db extends Queryable {
  readonly kind: 'postgres' | 'pglite';
  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Runs a script of several statements without parameters (migrations). */
  exec(sql: string): Promise<void>;
  /** Cheap liveness probe (`SELECT 1`). */
  ping(): Promise<void>;
  close(): Promise<void>;
}

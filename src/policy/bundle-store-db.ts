/**
 * The bundle store in the configured database (`db`): PostgreSQL shared by every gateway, or the embedded PGlite.
 * Tables: migration 0012. Every change is one transaction that first locks the single state row
 * (`SELECT … FOR UPDATE`), so publishes and pointer changes from any number of handles serialise, and the history
 * entry is written in the same transaction as the change it records. Reads (`pointers`, `list`) take no lock.
 */
import { CaracalError } from '../errors/catalog.js';
import type { Db, Queryable } from '../store/db.js';
import { inspectBundleForStore } from './bundle-store-open.js';
import {
  activateChange,
  type Change,
  checkRevision,
  conflictingBytes,
  HISTORY_LISTED,
  notStored,
  type PointerState,
  rollbackChange,
  shadowChange,
} from './bundle-store-state.js';
import type {
  ActivationResult,
  BundleHistoryEntry,
  BundleStore,
  BundleStoreListing,
  BundleStorePointers,
  PublishResult,
  StoredBundleInfo,
} from './bundle-store.js';

interface StateRow {
  active: string | null;
  shadow: string | null;
  stack: string[] | null;
}

interface BundleRow {
  revision: string;
  sha256: string;
  size: number | string;
  published_at: Date | string;
  build_time: string | null;
  opa_version: string | null;
  signed: boolean;
}

interface HistoryRow {
  seq: number | string;
  action: BundleHistoryEntry['action'];
  revision: string | null;
  previous: string | null;
  at: Date | string;
  actor: string | null;
}

function iso(value: Date | string): string {
  return (value instanceof Date ? value : new Date(value)).toISOString();
}

/** bytea comes back as a Buffer from `pg` and as a Uint8Array from PGlite. */
function toBuffer(value: unknown): Buffer {
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`expected bytea, got ${typeof value}`);
}

/** Before `db migrate up` the tables are missing: say what to run instead of PostgreSQL's "relation does not exist". */
async function migrated<T>(work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if ((err as { code?: string }).code === '42P01') {
      throw new CaracalError('CARACAL_NOT_READY', 'the bundle store tables are missing: run `caracal db migrate up`', { cause: err });
    }
    throw err;
  }
}

export class DatabaseBundleStore implements BundleStore {
  readonly description = 'db';

  constructor(private readonly db: Db) {}

  async publish(bytes: Buffer, options: { actor?: string | null } = {}): Promise<PublishResult> {
    const info = await inspectBundleForStore(bytes);
    return migrated(this.db.transaction(async (tx) => {
      await lockState(tx);
      const { rows } = await tx.query<{ sha256: string }>('SELECT sha256 FROM policy_bundles WHERE revision = $1', [info.revision]);
      const existing = rows[0];
      if (existing) {
        if (existing.sha256 !== info.sha256) throw conflictingBytes(info.revision, existing.sha256, info.sha256, this.description);
        return { revision: info.revision, sha256: info.sha256, size: info.size, created: false };
      }
      await tx.query(
        `INSERT INTO policy_bundles (revision, sha256, size, bytes, published_by, build_time, opa_version, signed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [info.revision, info.sha256, info.size, bytes, options.actor ?? null, info.buildTime, info.opaVersion, info.signed],
      );
      return { revision: info.revision, sha256: info.sha256, size: info.size, created: true };
    }));
  }

  async list(): Promise<BundleStoreListing> {
    const [pointers, bundles, history] = await migrated(Promise.all([
      this.pointers(),
      this.db.query<BundleRow>(
        'SELECT revision, sha256, size, published_at, build_time, opa_version, signed FROM policy_bundles ORDER BY published_seq DESC',
      ),
      this.db.query<HistoryRow>('SELECT seq, action, revision, previous, at, actor FROM policy_bundle_history ORDER BY seq DESC LIMIT $1', [HISTORY_LISTED]),
    ]));
    return {
      ...pointers,
      bundles: bundles.rows.map(
        (r): StoredBundleInfo => ({
          revision: r.revision,
          sha256: r.sha256,
          size: Number(r.size),
          publishedAt: iso(r.published_at),
          buildTime: r.build_time,
          opaVersion: r.opa_version,
          signed: r.signed,
        }),
      ),
      history: history.rows.map((r) => ({ seq: Number(r.seq), action: r.action, revision: r.revision, previous: r.previous, at: iso(r.at), actor: r.actor })),
    };
  }

  async pointers(): Promise<BundleStorePointers> {
    const { rows } = await migrated(this.db.query<{ active: string | null; active_sha256: string | null; shadow: string | null; shadow_sha256: string | null }>(
      `SELECT s.active, a.sha256 AS active_sha256, s.shadow, sh.sha256 AS shadow_sha256
         FROM policy_bundle_state s
         LEFT JOIN policy_bundles a ON a.revision = s.active
         LEFT JOIN policy_bundles sh ON sh.revision = s.shadow`,
    ));
    const row = rows[0];
    if (!row) throw new CaracalError('CARACAL_INTERNAL', 'policy_bundle_state has no row (migration 0012 inserts it)');
    return {
      active: row.active !== null && row.active_sha256 !== null ? { revision: row.active, sha256: row.active_sha256 } : null,
      shadow: row.shadow !== null && row.shadow_sha256 !== null ? { revision: row.shadow, sha256: row.shadow_sha256 } : null,
    };
  }

  async fetch(revision: string): Promise<Buffer> {
    checkRevision(revision);
    const { rows } = await migrated(this.db.query<{ bytes: unknown }>('SELECT bytes FROM policy_bundles WHERE revision = $1', [revision]));
    const row = rows[0];
    if (!row) throw notStored(revision, this.description);
    return toBuffer(row.bytes);
  }

  async activate(revision: string, options: { actor?: string | null } = {}): Promise<ActivationResult> {
    checkRevision(revision);
    return this.change(async (state, tx) => {
      if (!(await isStored(tx, revision))) throw notStored(revision, this.description);
      return activateChange(state, revision, options.actor ?? null);
    });
  }

  async rollback(options: { actor?: string | null } = {}): Promise<ActivationResult> {
    return this.change(async (state) => rollbackChange(state, options.actor ?? null, this.description));
  }

  async setShadow(revision: string | null, options: { actor?: string | null } = {}): Promise<{ shadow: string | null; previous: string | null }> {
    if (revision !== null) checkRevision(revision);
    return this.change(async (state, tx) => {
      if (revision !== null && !(await isStored(tx, revision))) throw notStored(revision, this.description);
      return shadowChange(state, revision, options.actor ?? null);
    });
  }

  /** One pointer change: lock the state row, apply, write the state and its history entry, commit. */
  private change<R>(apply: (state: PointerState, tx: Queryable) => Promise<Change<R>>): Promise<R> {
    return migrated(this.db.transaction(async (tx) => {
      const state = await lockState(tx);
      const { state: next, entry, result } = await apply(state, tx);
      if (entry === null) return result;
      await tx.query('UPDATE policy_bundle_state SET active = $1, shadow = $2, stack = $3, updated_at = now() WHERE id', [next.active, next.shadow, next.stack]);
      await tx.query(
        `INSERT INTO policy_bundle_history (seq, action, revision, previous, actor)
         SELECT coalesce(max(seq), 0) + 1, $1, $2, $3, $4 FROM policy_bundle_history`,
        [entry.action, entry.revision, entry.previous, entry.actor],
      );
      return result;
    }));
  }
}

async function lockState(tx: Queryable): Promise<PointerState> {
  const { rows } = await tx.query<StateRow>('SELECT active, shadow, stack FROM policy_bundle_state WHERE id FOR UPDATE');
  const row = rows[0];
  if (!row) throw new CaracalError('CARACAL_INTERNAL', 'policy_bundle_state has no row (migration 0012 inserts it)');
  return { active: row.active, shadow: row.shadow, stack: row.stack ?? [] };
}

async function isStored(tx: Queryable, revision: string): Promise<boolean> {
  return (await tx.query('SELECT 1 FROM policy_bundles WHERE revision = $1', [revision])).rows.length > 0;
}

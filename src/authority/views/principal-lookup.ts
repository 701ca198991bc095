import { LRUCache } from 'lru-cache';
import type { Queryable } from '../../store/db.js';
import { PrincipalId, findPrincipal } from '../stores/principals.js';

/** The one column external identities need: a principal's id by its unique name. */
export async function findPrincipalByName(db: Queryable, name: string): Promise<{ id: string } | null> {
  const { rows } = await db.query<{ id: string }>('SELECT id FROM principals WHERE name = $1', [name]);
  return rows[0] ?? null;
}

export interface PrincipalLookupOptions {
  /** How long a found name → id (or an existing id) is remembered. */
  ttlMs?: number;
  /** How long "no such principal" is remembered, so unknown names cannot hammer the database. */
  absentTtlMs?: number;
  maxEntries?: number;
}

const MAX_IDENTITY_LENGTH = 256;

/**
 * Resolves what an external identity (a token claim, a certificate SAN) names to a principal id:
 * `by: 'id'` checks that the id exists, `by: 'name'` looks the unique name up. Answers are cached
 * in memory for a short TTL (bounded; the least recently used goes first) and concurrent misses
 * for the same key share one query. Names never change in place, so a short TTL only delays seeing
 * a principal that was just registered, never a wrong mapping.
 */
export class PrincipalLookup {
  /** Null when maxEntries is 0: nothing is remembered. */
  private readonly entries: LRUCache<string, { id: string | null; until: number }> | null;
  private readonly loading = new Map<string, Promise<string | null>>();
  private readonly ttlMs: number;
  private readonly absentTtlMs: number;

  constructor(
    private readonly db: Queryable,
    options: PrincipalLookupOptions = {},
  ) {
    this.ttlMs = options.ttlMs ?? 30_000;
    this.absentTtlMs = options.absentTtlMs ?? 2_000;
    const maxEntries = options.maxEntries ?? 10_000;
    // Expiry stays the explicit `until` on Date.now(): lru-cache's own TTL arms a timer on most
    // reads of its clock, a per-lookup cost this check does not have.
    this.entries = maxEntries > 0 ? new LRUCache({ max: maxEntries }) : null;
  }

  /** The principal id, or null when no principal has that id / name. */
  async resolve(by: 'id' | 'name', value: string): Promise<string | null> {
    if (value.length === 0 || value.length > MAX_IDENTITY_LENGTH) return null;
    if (by === 'id' && !PrincipalId.safeParse(value).success) return null;
    const key = `${by}:${value}`;
    const now = Date.now();
    const hit = this.entries?.get(key);
    if (hit) {
      if (hit.until > now) return hit.id;
      this.entries?.delete(key);
    }
    const pending = this.loading.get(key);
    if (pending) return pending;
    const load = (async () => {
      const id = by === 'id' ? ((await findPrincipal(this.db, value)) ? value : null) : ((await findPrincipalByName(this.db, value))?.id ?? null);
      this.entries?.set(key, { id, until: Date.now() + (id ? this.ttlMs : this.absentTtlMs) });
      return id;
    })().finally(() => this.loading.delete(key));
    this.loading.set(key, load);
    return load;
  }
}

import type { Queryable } from '../../store/db.js';

/**
 * Revoked mandate ids, in memory on every gateway: read on every request (no database on the hot
 * path), extended by agent.lifecycle events within milliseconds, and caught up from the database
 * periodically in case an event was missed. Ids of mandates that have expired anyway are dropped.
 */
export class RevocationSet {
  private readonly revoked = new Map<string, number>(); // id → expiry (epoch s)
  private since = new Date(0);

  has(id: string): boolean {
    return this.revoked.has(id);
  }

  add(ids: readonly string[], expiresAt = Number.MAX_SAFE_INTEGER): void {
    for (const id of ids) this.revoked.set(id, expiresAt);
  }

  /** Loads revocations newer than the last load (all of them the first time). */
  async catchUp(db: Queryable): Promise<number> {
    const { rows } = await db.query<{ id: string; revoked_at: Date; expires_at: Date }>(
      'SELECT id, revoked_at, expires_at FROM mandates WHERE revoked_at IS NOT NULL AND revoked_at >= $1 AND expires_at > now()',
      [this.since.toISOString()],
    );
    for (const row of rows) {
      this.revoked.set(row.id, Math.floor(new Date(row.expires_at).getTime() / 1000));
      // Re-read from a little before the newest seen, so a transaction that committed late is not missed.
      const at = new Date(new Date(row.revoked_at).getTime() - 5_000);
      if (at > this.since) this.since = at;
    }
    const now = Math.floor(Date.now() / 1000);
    for (const [id, exp] of this.revoked) if (exp <= now) this.revoked.delete(id);
    return rows.length;
  }

  get size(): number {
    return this.revoked.size;
  }
}

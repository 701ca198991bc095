import type { Queryable } from '../../store/db.js';

/**
 * Emergency stop (docs/architecture.md, "The authority model"): global or per principal. A row in `emergency_stops` while in
 * force; every gateway keeps the set in memory (`EmergencyState`), refreshed by agent.lifecycle
 * events and by a periodic reload as a backstop.
 */
export const GLOBAL = 'global';

export interface EmergencyStop {
  scope: string;
  reason: string;
  stoppedAt: string;
}

export async function stopEmergency(db: Queryable, scope: string, reason: string): Promise<EmergencyStop> {
  const { rows } = await db.query<{ scope: string; reason: string; stopped_at: Date }>(
    `INSERT INTO emergency_stops (scope, reason) VALUES ($1, $2)
     ON CONFLICT (scope) DO UPDATE SET reason = EXCLUDED.reason RETURNING scope, reason, stopped_at`,
    [scope, reason],
  );
  const row = rows[0]!;
  return { scope: row.scope, reason: row.reason, stoppedAt: new Date(row.stopped_at).toISOString() };
}

export async function resumeEmergency(db: Queryable, scope: string): Promise<boolean> {
  return (await db.query('DELETE FROM emergency_stops WHERE scope = $1', [scope])).rowCount > 0;
}

export async function listEmergencyStops(db: Queryable): Promise<EmergencyStop[]> {
  const { rows } = await db.query<{ scope: string; reason: string; stopped_at: Date }>('SELECT scope, reason, stopped_at FROM emergency_stops ORDER BY stopped_at');
  return rows.map((row) => ({ scope: row.scope, reason: row.reason, stoppedAt: new Date(row.stopped_at).toISOString() }));
}

/** The gateway's view: read on every request, replaced wholesale on reload. */
export class EmergencyState {
  private global = false;
  private principals = new Set<string>();

  async reload(db: Queryable): Promise<void> {
    const stops = await listEmergencyStops(db);
    this.global = stops.some((s) => s.scope === GLOBAL);
    this.principals = new Set(stops.filter((s) => s.scope !== GLOBAL).map((s) => s.scope));
  }

  /** Flags for the policy input: is everything stopped, is any of these principals stopped? */
  flags(principalIds: readonly string[]): { global: boolean; principal: boolean } {
    return { global: this.global, principal: principalIds.some((id) => this.principals.has(id)) };
  }
}

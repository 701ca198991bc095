import type { Logger } from '../../logging/logger.js';
import type { Queryable } from '../../store/db.js';
import { listPolicies } from '../stores/policies.js';
import { findPrincipal } from '../stores/principals.js';
import { getBudgets } from '../../metering/budgets.js';
import type { BudgetWindow } from '../../metering/money.js';
import { InvalidatingCache } from '../../util/invalidating-cache.js';

/** What the policy sees about a principal, kept in Rego input shape so a request builds no copies. */
export interface PrincipalFacts {
  principal: { id: string; status: string; kind: string };
  policies: { id: string; resources: string[]; actions: string[]; max_validity_seconds: number; delegation_depth: number }[];
  /** The principal's budgets (src/metering/budgets.ts); calls spend against them and every ancestor's. */
  budgets: { window: BudgetWindow; limitMicros: number; currency: string }[];
}

/**
 * The gateway's in-memory view of principals and their authority policies. Read synchronously on
 * the hot path; a miss loads from the database once (concurrent misses share the load) and a
 * principal that does not exist is remembered briefly so unknown ids cannot hammer the database.
 * `agent.lifecycle` events call `invalidate` so changes reach every gateway.
 */
export class AuthorityFacts {
  private readonly cache: InvalidatingCache<PrincipalFacts | null>;

  constructor(
    private readonly db: Queryable,
    private readonly logger: Logger,
    absentTtlMs = 1_000,
    maxEntries = 1_000_000,
  ) {
    this.cache = new InvalidatingCache((principalId) => this.load(principalId), {
      maxEntries,
      // A principal that does not exist is remembered briefly; one that does, until invalidated.
      ttlMs: (facts) => (facts ? Infinity : absentTtlMs),
    });
  }

  /** Synchronous lookup: facts, `null` when known not to exist, `undefined` when not loaded. */
  peek(principalId: string): PrincipalFacts | null | undefined {
    return this.cache.peek(principalId)?.value;
  }

  get(principalId: string): Promise<PrincipalFacts | null> {
    return this.cache.get(principalId);
  }

  /** A lifecycle event changed this principal: drop what we hold; the next request reloads. */
  invalidate(principalId: string): void {
    this.cache.invalidate(principalId);
  }

  /** Forget everything (tests, or after a restore). */
  clear(): void {
    this.cache.clear();
  }

  private async load(principalId: string): Promise<PrincipalFacts | null> {
    const principal = await findPrincipal(this.db, principalId);
    if (!principal) return null;
    const policies = await listPolicies(this.db, { principalId, activeOnly: true });
    const budgets = await getBudgets(this.db, principalId);
    this.logger.debug({ agent_id: principalId, policies: policies.length, status: principal.status }, 'authority facts loaded');
    return {
      principal: { id: principal.id, status: principal.status, kind: principal.kind },
      policies: policies.map((p) => ({
        id: p.id,
        resources: p.resources,
        actions: p.actions,
        max_validity_seconds: p.maxValiditySeconds,
        delegation_depth: p.delegationDepth,
      })),
      budgets: budgets.map((b) => ({ window: b.window, limitMicros: b.limitMicros, currency: b.currency })),
    };
  }
}

import type { Logger } from '../logging/logger.js';
import type { Queryable } from '../store/db.js';
import { listPolicies } from './policies.js';
import { findPrincipal } from './principals.js';

/** What the policy sees about a principal, kept in Rego input shape so a request builds no copies. */
export interface PrincipalFacts {
  principal: { id: string; status: string; kind: string };
  policies: { id: string; resources: string[]; actions: string[]; max_validity_seconds: number; delegation_depth: number }[];
}

/**
 * The gateway's in-memory view of principals and their authority policies. Read synchronously on
 * the hot path; a miss loads from the database once (concurrent misses share the load) and a
 * principal that does not exist is remembered briefly so unknown ids cannot hammer the database.
 * `agent.lifecycle` events call `refresh` so changes reach every gateway.
 */
export class AuthorityFacts {
  private readonly known = new Map<string, PrincipalFacts>();
  private readonly absent = new Map<string, number>();
  private readonly loading = new Map<string, Promise<PrincipalFacts | null>>();
  /** Bumped by `invalidate` so a load that started before a change cannot store stale facts. */
  private readonly generations = new Map<string, number>();

  constructor(
    private readonly db: Queryable,
    private readonly logger: Logger,
    private readonly absentTtlMs = 1_000,
    private readonly maxEntries = 1_000_000,
  ) {}

  /** Synchronous lookup: facts, `null` when known not to exist, `undefined` when not loaded. */
  peek(principalId: string): PrincipalFacts | null | undefined {
    const facts = this.known.get(principalId);
    if (facts) return facts;
    const until = this.absent.get(principalId);
    if (until !== undefined) {
      if (until > Date.now()) return null;
      this.absent.delete(principalId);
    }
    return undefined;
  }

  async get(principalId: string): Promise<PrincipalFacts | null> {
    const cached = this.peek(principalId);
    return cached !== undefined ? cached : this.refresh(principalId);
  }

  /** Reloads one principal from the database (after a lifecycle event, or on a miss). */
  refresh(principalId: string): Promise<PrincipalFacts | null> {
    const pending = this.loading.get(principalId);
    if (pending) return pending;
    const load = this.load(principalId).finally(() => this.loading.delete(principalId));
    this.loading.set(principalId, load);
    return load;
  }

  /** A lifecycle event changed this principal: drop what we hold; the next request reloads. */
  invalidate(principalId: string): void {
    this.generations.set(principalId, (this.generations.get(principalId) ?? 0) + 1);
    this.known.delete(principalId);
    this.absent.delete(principalId);
    this.loading.delete(principalId);
  }

  private async load(principalId: string): Promise<PrincipalFacts | null> {
    const generation = this.generations.get(principalId);
    const changed = () => this.generations.get(principalId) !== generation;
    const principal = await findPrincipal(this.db, principalId);
    if (changed()) return this.refresh(principalId);
    if (!principal) {
      this.known.delete(principalId);
      if (this.absent.size >= this.maxEntries) this.absent.clear();
      this.absent.set(principalId, Date.now() + this.absentTtlMs);
      return null;
    }
    const policies = await listPolicies(this.db, { principalId, activeOnly: true });
    if (changed()) return this.refresh(principalId);
    const facts: PrincipalFacts = {
      principal: { id: principal.id, status: principal.status, kind: principal.kind },
      policies: policies.map((p) => ({
        id: p.id,
        resources: p.resources,
        actions: p.actions,
        max_validity_seconds: p.maxValiditySeconds,
        delegation_depth: p.delegationDepth,
      })),
    };
    this.absent.delete(principalId);
    if (this.known.size >= this.maxEntries) this.known.delete(this.known.keys().next().value!);
    this.known.set(principalId, facts);
    this.logger.debug({ agent_id: principalId, policies: policies.length, status: principal.status }, 'authority facts loaded');
    return facts;
  }

  /** Forget everything (tests, or after a restore). */
  clear(): void {
    this.known.clear();
    this.absent.clear();
  }
}

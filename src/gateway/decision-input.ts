import type { EmergencyState } from '../authority/views/emergency.js';
import type { AuthorityFacts, PrincipalFacts } from '../authority/views/facts.js';
import type { RevocationSet } from '../authority/views/revocations.js';
import type { VerifiedToken } from '../authority/tokens/tokens.js';
import type { DecisionInput, RequestFact } from '../policy/engine.js';
import type { AuthResult } from './authenticate.js';

/** The allowlist result the policy sees (docs/architecture.md, "The request path"). */
export interface AllowlistFact {
  checked: boolean;
  matched: boolean;
  entry_id: string | null;
}

/** Matches the concrete upstream URL against the principal's allowlist entries. */
export interface AllowlistChecker {
  check(principalId: string, url: string): AllowlistFact | Promise<AllowlistFact>;
}

export interface DecisionFacts {
  facts: AuthorityFacts;
  revocations: RevocationSet;
  emergency: EmergencyState;
  allowlist: AllowlistChecker;
}

function factsOf(source: AuthorityFacts, id: string): PrincipalFacts | null | Promise<PrincipalFacts | null> {
  const known = source.peek(id);
  return known !== undefined ? known : source.get(id);
}

/** One ancestor of the mandate, root first (policies/README.md, input contract). */
export interface MandateLinkFact {
  id: string;
  subject: string;
  subject_status: string;
  revoked: boolean;
  /** The concrete upstream URL against this ancestor's own allowlist. */
  allowlist: AllowlistFact;
}

export interface MandateFact {
  id: string;
  subject: string;
  depth: number;
  resources: string[];
  actions: string[];
  not_before: number;
  expires_at: number;
  revoked: boolean;
  root_policy_id: string;
  chain: MandateLinkFact[];
}

/**
 * Every fact the policy decides on (docs/architecture.md, "The request path"): the caller, the authority policies that
 * can grant (the caller's own, or under a mandate the root principal's), the mandate and its
 * chain (revocation, status and allowlist result of every link), the allowlist result and the
 * emergency flags. Reads memory only, except a first sight of a principal.
 *
 * Every ancestor's allowlist is checked as well as the caller's because delegation only narrows:
 * a delegator must not reach, through a delegate with a wider allowlist, a URL it may not call
 * itself. Each principal's check applies its own `allowlists.whenEmpty` rule.
 *
 * Without a mandate, and with the caller's facts and allowlist in memory (every request but a
 * principal's first), the input is built without a promise.
 */
export function buildDecisionInput(
  source: DecisionFacts,
  auth: AuthResult,
  mandate: VerifiedToken | null,
  request: RequestFact,
  url: string,
  now: number,
): DecisionInput | Promise<DecisionInput> {
  const own = factsOf(source.facts, auth.principalId);
  if (!mandate?.mandate && !(own instanceof Promise)) {
    const allowlist = source.allowlist.check(auth.principalId, url);
    const input = (checked: AllowlistFact) => decisionInput(source, own, own?.policies ?? [], null, [auth.principalId], request, checked, auth, now, spendFact([auth.principalId], [own]));
    return allowlist instanceof Promise ? allowlist.then(input) : input(allowlist);
  }
  return withMandate({ source, auth, mandate, request, url, now }, own);
}

/** What `buildDecisionInput` was given, for its slow path. */
interface InputSources {
  source: DecisionFacts;
  auth: AuthResult;
  mandate: VerifiedToken | null;
  request: RequestFact;
  url: string;
  now: number;
}

async function withMandate({ source, auth, mandate, request, url, now }: InputSources, ownFacts: PrincipalFacts | null | Promise<PrincipalFacts | null>): Promise<DecisionInput> {
  const own = await ownFacts;
  const subjects = [auth.principalId];
  const subjectFacts: (PrincipalFacts | null)[] = [own];
  let policies = own?.policies ?? [];
  const allowlist = await source.allowlist.check(auth.principalId, url);
  let mandateFact: MandateFact | null = null;
  if (mandate?.mandate) {
    const claims = mandate.mandate;
    // A subject may appear more than once along a chain (A → B → A): check each principal once.
    const allowlists = new Map<string, AllowlistFact>([[auth.principalId, allowlist]]);
    const chain: MandateLinkFact[] = [];
    for (const link of claims.chain) {
      const linkFacts = await factsOf(source.facts, link.sub);
      subjectFacts.push(linkFacts);
      let linkAllowlist = allowlists.get(link.sub);
      if (!linkAllowlist) {
        linkAllowlist = await source.allowlist.check(link.sub, url);
        allowlists.set(link.sub, linkAllowlist);
      }
      chain.push({ id: link.id, subject: link.sub, subject_status: linkFacts?.principal.status ?? 'unknown', revoked: source.revocations.has(link.id), allowlist: linkAllowlist });
      subjects.push(link.sub);
    }
    const rootSubject = claims.chain[0]?.sub ?? mandate.principalId;
    if (rootSubject !== auth.principalId) policies = (await factsOf(source.facts, rootSubject))?.policies ?? [];
    mandateFact = {
      id: mandate.tokenId,
      subject: mandate.principalId,
      depth: claims.depth,
      resources: claims.scope.resources,
      actions: claims.scope.actions,
      not_before: mandate.nbf,
      expires_at: mandate.exp,
      revoked: source.revocations.has(mandate.tokenId),
      root_policy_id: claims.policy,
      chain,
    };
  }
  return decisionInput(source, own, policies, mandateFact, subjects, request, allowlist, auth, now, spendFact(subjects, subjectFacts));
}

/** One budget a call spends against (the caller's or an ancestor's along its mandate chain). */
export interface BudgetFact {
  principal_id: string;
  window: string;
  limit_micros: number;
  currency: string;
}

/**
 * `input.spend`: the budgets the call will be reserved against. The running spend is not in it: it is decided by the
 * atomic reservation after the policy allows (a policy reading it would check-then-act on a stale number).
 */
export interface SpendFact {
  budgets: BudgetFact[];
}

const NO_BUDGETS: SpendFact = Object.freeze({ budgets: Object.freeze([]) as unknown as BudgetFact[] });

function spendFact(subjects: readonly string[], facts: readonly (PrincipalFacts | null)[]): SpendFact {
  let budgets: BudgetFact[] | null = null;
  const seen = new Set<string>();
  subjects.forEach((subject, n) => {
    if (seen.has(subject)) return;
    seen.add(subject);
    for (const budget of facts[n]?.budgets ?? []) (budgets ??= []).push({ principal_id: subject, window: budget.window, limit_micros: budget.limitMicros, currency: budget.currency });
  });
  return budgets ? { budgets } : NO_BUDGETS;
}

function decisionInput(
  source: DecisionFacts,
  own: PrincipalFacts | null,
  policies: PrincipalFacts['policies'],
  mandate: MandateFact | null,
  subjects: readonly string[],
  request: RequestFact,
  allowlist: AllowlistFact,
  auth: AuthResult,
  now: number,
  spend: SpendFact,
): DecisionInput {
  return {
    principal: own?.principal ?? null,
    policies,
    mandate,
    request,
    allowlist,
    emergency: source.emergency.flags(subjects),
    auth: { method: auth.method },
    spend,
    now,
  };
}

import type { EmergencyState } from '../authority/emergency.js';
import type { AuthorityFacts, PrincipalFacts } from '../authority/facts.js';
import type { RevocationSet } from '../authority/revocations.js';
import type { VerifiedToken } from '../authority/tokens.js';
import type { DecisionInput, RequestFact } from '../policy/engine.js';
import type { AuthResult } from './authenticate.js';

/** The allowlist result the policy sees (DESIGN.md §2 step 3). */
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

/**
 * Every fact the policy decides on (DESIGN.md §2 step 4): the caller, the authority policies that
 * can grant (the caller's own, or under a mandate the root principal's), the mandate and its
 * chain (revocation and status of every link), the allowlist result and the emergency flags.
 * Reads memory only, except a first sight of a principal.
 */
export async function buildDecisionInput(
  source: DecisionFacts,
  auth: AuthResult,
  mandate: VerifiedToken | null,
  request: RequestFact,
  url: string,
  now: number,
): Promise<DecisionInput> {
  const own = await factsOf(source.facts, auth.principalId);
  const subjects = [auth.principalId];
  let policies = own?.policies ?? [];
  let mandateFact: DecisionInput['mandate'] = null;
  if (mandate?.mandate) {
    const claims = mandate.mandate;
    const chain = [];
    for (const link of claims.chain) {
      const linkFacts = await factsOf(source.facts, link.sub);
      chain.push({ id: link.id, subject: link.sub, subject_status: linkFacts?.principal.status ?? 'unknown', revoked: source.revocations.has(link.id) });
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
  return {
    principal: own?.principal ?? null,
    policies,
    mandate: mandateFact,
    request,
    allowlist: await source.allowlist.check(auth.principalId, url),
    emergency: source.emergency.flags(subjects),
    auth: { method: auth.method },
    now,
  };
}

import { AllowlistMatcher, type AllowlistResult, type AllowlistWhenEmpty } from '../authority/stores/allowlists.js';
import type { Queryable } from '../store/db.js';
import type { AllowlistChecker, AllowlistFact } from './decision-input.js';

function toFact(result: AllowlistResult): AllowlistFact {
  return { checked: true, matched: result.matched, entry_id: result.entryId };
}

/**
 * The gateway's allowlist step: synchronous for a principal already loaded (the hot path), one
 * shared database read the first time a principal is seen. `invalidate` is called on
 * agent.lifecycle `allowlist` events.
 */
export function createAllowlistChecker(db: Queryable, whenEmpty: AllowlistWhenEmpty): AllowlistChecker & { invalidate(principalId: string): void } {
  const matcher = new AllowlistMatcher(db, whenEmpty);
  return {
    check: (principalId, url) => (matcher.isLoaded(principalId) ? toFact(matcher.check(principalId, url)) : matcher.checkAsync(principalId, url).then(toFact)),
    invalidate: (principalId) => matcher.invalidate(principalId),
  };
}

/**
 * Budgets on the request path: after the policy allows a priced call, its most possible cost is reserved on every
 * budget of the caller and of each principal above it in the mandate chain, atomically (SpendCounters); the call is
 * refused with `budget_exceeded` when any of them cannot cover it. When the request ends, the reservation is settled
 * at what the call cost and the rest is given back; a reservation whose request never ends lapses on its own.
 *
 * The amount reserved is the most the call can cost (src/gateway/metering.ts works it out: the per-request price, or an
 * LLM call's prompt bound and token cap at the model's prices, or a configured reservation); what it cost is worked
 * out when it ends, from the gateway's own reading of the response.
 */
import type { AuthorityFacts, PrincipalFacts } from '../authority/views/facts.js';
import type { UpstreamConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import { formatAmount, windowBounds } from '../metering/money.js';
import type { LlmRequestFacts } from './metering.js';
import type { VerifiedToken } from '../authority/tokens/tokens.js';
import { budgetLineKey, type BudgetLine, type SpendCounters } from '../metering/spend-counters.js';

/** Budget lines of a call: each subject's budgets in the current period of their window. */
export interface PricedCall {
  /** `mandateId`: a delegated mandate's own budget (set at delegation), held by `principalId`. */
  lines: (BudgetLine & { principalId: string; mandateId?: string; window: string; currency: string; periodEnd: Date })[];
  amountMicros: number;
  currency: string;
}

/**
 * The lines and reservation of a call by `subjects` (the caller first, then the mandate chain) to `upstream`, or null
 * when nothing binds it (no price table, a zero price, or no budgets). The facts were loaded for the decision, so this
 * answers without a promise; but a lifecycle event may have dropped some since (between two awaits): then they are
 * loaded again, never skipped — a budget missed here would let the call through unbounded.
 */
export function pricedCall(
  upstream: UpstreamConfig,
  facts: AuthorityFacts,
  subjects: readonly string[],
  mandate: VerifiedToken | null,
  now: Date,
  reservation: number | null,
): PricedCall | null | Promise<PricedCall | null> {
  const pricing = upstream.pricing;
  if (!pricing) return null;
  // A call that costs nothing binds no budget; one whose cost is unbounded (null) still gets its lines, to be refused.
  if (reservation === 0) return null;
  const amountMicros = reservation ?? 0;
  const unique = [...new Set(subjects)];
  const known = unique.map((subject) => facts.peek(subject));
  const build = (all: readonly (PrincipalFacts | null | undefined)[]): PricedCall | null => {
    const lines: PricedCall['lines'] = mandate?.mandate ? [...mandateLinesOf(mandate, now)] : [];
    all.forEach((subjectFacts, n) => {
      if (subjectFacts) lines.push(...linesOf(unique[n]!, subjectFacts, now));
    });
    return lines.length === 0 ? null : { lines, amountMicros, currency: pricing.currency };
  };
  if (known.every((f) => f !== undefined)) return build(known);
  return Promise.all(unique.map((subject, n) => (known[n] === undefined ? facts.get(subject) : known[n]))).then(build);
}

type Line = PricedCall['lines'][number];
/**
 * A principal's budget lines in the current periods, kept with its facts until the first of those periods ends. Facts
 * are replaced, not changed, when a budget changes, so a changed budget is never read from here.
 */
const periodLines = new WeakMap<PrincipalFacts, { until: number; lines: readonly Line[] }>();

function linesOf(principalId: string, facts: PrincipalFacts, now: Date): readonly Line[] {
  if (facts.budgets.length === 0) return [];
  const at = now.getTime();
  const kept = periodLines.get(facts);
  if (kept && at < kept.until && kept.lines[0]?.principalId === principalId) return kept.lines;
  const lines = facts.budgets.map((budget): Line => {
    const { start, end } = windowBounds(budget.window, now);
    return { key: budgetLineKey(principalId, budget.window, start), limitMicros: budget.limitMicros, periodEndMs: end.getTime(), principalId, window: budget.window, currency: budget.currency, periodEnd: end };
  });
  periodLines.set(facts, { until: Math.min(...lines.map((line) => line.periodEndMs)), lines });
  return lines;
}

const mandatePeriodLines = new WeakMap<VerifiedToken, { until: number; lines: readonly Line[] }>();

/**
 * The budgets signed into a mandate: its own (set when it was delegated) and each ancestor mandate's, copied into its
 * chain at delegation — so they bind without a database read, and no holder can change them.
 */
function mandateLinesOf(token: VerifiedToken, now: Date): readonly Line[] {
  const claims = token.mandate!;
  const at = now.getTime();
  const kept = mandatePeriodLines.get(token);
  if (kept && at < kept.until) return kept.lines;
  const budgets = [...(claims.budget ? [{ id: token.tokenId, sub: token.principalId, budget: claims.budget }] : []), ...claims.chain.filter((link) => link.budget)];
  const lines = budgets.map(({ id, sub, budget }): Line => {
    const { start, end } = windowBounds(budget!.window, now);
    return { key: mandateBudgetKey(id, budget!.window, start), limitMicros: budget!.limit_micros, periodEndMs: end.getTime(), principalId: sub, mandateId: id, window: budget!.window, currency: budget!.currency, periodEnd: end };
  });
  mandatePeriodLines.set(token, { until: lines.length === 0 ? Infinity : Math.min(...lines.map((line) => line.periodEndMs)), lines });
  return lines;
}

/** The counter key of a mandate's own budget: apart from every principal's (a principal id never starts "mandate:"). */
export function mandateBudgetKey(mandateId: string, window: string, periodStart: Date): string {
  return budgetLineKey(`mandate:${mandateId}`, window, periodStart);
}

/** The refusal the agent reads: which budget, what remains, when it resets (in the upstream's dialect). */
export function budgetExceeded(call: PricedCall, key: string, remainingMicros: number, decisionId: string): CaracalError {
  const line = call.lines.find((l) => l.key === key) ?? call.lines[0]!;
  const remaining = formatAmount(remainingMicros);
  const owner = line.mandateId ? `mandate ${line.mandateId} (held by ${line.principalId})` : line.principalId;
  return new CaracalError(
    'CARACAL_BUDGET_EXCEEDED',
    `budget_exceeded: the ${line.window} budget of ${owner} has ${remaining} ${line.currency} left, this call needs ${formatAmount(call.amountMicros)}; it resets at ${line.periodEnd.toISOString()}`,
    {
      reasons: ['budget_exceeded'],
      details: {
        decision_id: decisionId,
        budget: { principal_id: line.principalId, ...(line.mandateId ? { mandate_id: line.mandateId } : {}), window: line.window, limit: formatAmount(line.limitMicros), remaining, currency: line.currency, resets_at: line.periodEnd.toISOString() },
      },
    },
  );
}

/** A budgeted call whose most possible cost cannot be worked out is refused: a budget is not kept by hoping. */
export function unboundedCall(call: PricedCall, llm: LlmRequestFacts | null, decisionId: string): CaracalError {
  const line = call.lines[0]!;
  const cap = llm?.endpoint === 'responses' ? 'max_output_tokens' : 'max_tokens';
  const model = llm ? `model "${llm.model.slice(0, 64)}"` : 'this call';
  return new CaracalError('CARACAL_BAD_REQUEST', `budget_unbounded: the ${line.window} budget of ${line.principalId} cannot cover ${model} without a bound on its cost; set ${cap}`, {
    reasons: ['budget_unbounded'],
    details: { decision_id: decisionId },
  });
}

/** A budget in another currency than the price cannot be compared: such a call is refused, never let through. */
export function currencyMismatch(call: PricedCall, decisionId: string): CaracalError | null {
  const other = call.lines.find((line) => line.currency !== call.currency);
  if (!other) return null;
  return new CaracalError('CARACAL_BUDGET_EXCEEDED', `budget_currency_mismatch: the ${other.window} budget of ${other.principalId} is in ${other.currency}, this upstream prices in ${call.currency}`, {
    reasons: ['budget_currency_mismatch'],
    details: { decision_id: decisionId },
  });
}

/**
 * Takes the call's amount on all its lines: charged at once when it is what the call will cost (a fixed price: one
 * step, given back only if the call never happens), else reserved under the decision id until the call is settled.
 * The refusal to throw, or null when taken.
 */
export async function reserveCall(spend: SpendCounters, call: PricedCall, decisionId: string, ttlMs: number, fixedPrice: boolean): Promise<CaracalError | null> {
  const mismatch = currencyMismatch(call, decisionId);
  if (mismatch) return mismatch;
  const result = fixedPrice ? await spend.charge(call.lines, call.amountMicros) : await spend.reserve(decisionId, call.lines, call.amountMicros, ttlMs);
  return result.ok ? null : budgetExceeded(call, result.key, result.remainingMicros, decisionId);
}

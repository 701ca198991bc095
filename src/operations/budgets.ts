import { z } from 'zod';
import { PrincipalId, findPrincipal } from '../authority/stores/principals.js';
import { CaracalError } from '../errors/catalog.js';
import { deleteBudget, getBudget, getBudgets, listBudgets, setBudget, type Budget } from '../metering/budgets.js';
import { BUDGET_WINDOWS, parseAmount, parseCurrency, parseWindow, windowBounds } from '../metering/money.js';
import { reconcileSpend, type ReconcileReport } from '../metering/reconcile.js';
import type { AppContext } from '../context.js';
import { announced, op } from './define.js';

/** What `budget.set` answers: the budget, and whether it is new or replaced one for the same window. */
export interface SetBudgetReport extends Budget {
  created: boolean;
}

/** A budget with the window period it is in now (UTC): spend counts from `periodStart` and resets at `periodEnd`. */
export interface BudgetView extends Budget {
  periodStart: string;
  periodEnd: string;
}

// Amounts travel as decimal text, never as JSON numbers (binary floats: 0.1 is not 0.1). The window and currency are
// plain strings here and parsed in `run` by src/metering/money.ts, so every refusal is its one clear line.
const WindowText = z
  .string({ error: `must be one of ${BUDGET_WINDOWS.join(', ')}` })
  .max(64)
  .describe(`${BUDGET_WINDOWS.join(' | ')}: a UTC calendar period (weeks start on Monday)`);
const LimitText = z
  .string({ error: 'must be a decimal string such as "100.00" (JSON numbers are refused: they are binary floats)' })
  .max(64)
  .describe('decimal text, positive, at most 6 decimals and 1000000000.00, e.g. "100.00"');
const CurrencyText = z.string({ error: 'must be an ISO 4217 currency code such as "USD"' }).max(64).describe('ISO 4217 currency code, e.g. USD');

function view(budget: Budget, now: Date): BudgetView {
  const { start, end } = windowBounds(budget.window, now);
  return { ...budget, periodStart: start.toISOString(), periodEnd: end.toISOString() };
}

async function requirePrincipal(ctx: AppContext, principalId: string): Promise<void> {
  if (!(await findPrincipal(ctx.db, principalId))) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${principalId} not found`);
}

/** What gateways are told; amounts only, no secrets. */
function lifecycle(budget: Budget, action: 'created' | 'replaced' | 'deleted') {
  return {
    entity: 'budget' as const,
    action,
    principal_id: budget.principalId,
    entity_id: budget.window,
    attributes: { window: budget.window, limit: budget.limit, currency: budget.currency },
  };
}

/**
 * Per-principal spending limits, one per window, enforced by the gateway on every priced call (reserved on the spend
 * counters before the call, settled after it); `budget.reconcile` restores the counters from the recorded spend.
 */
export const BUDGET_OPERATIONS = {
  'budget.set': op({
    description: "Set a principal's budget for a window (hourly, daily, weekly or monthly), replacing the one it had",
    args: z.object({ principalId: PrincipalId, window: WindowText, limit: LimitText, currency: CurrencyText.default('USD') }).strict(),
    run: async (ctx, args): Promise<SetBudgetReport> => {
      // Every value is checked before the principal is looked up: a bad flag is reported as such.
      const window = parseWindow(args.window);
      const limitMicros = parseAmount(args.limit, 'limit');
      const currency = parseCurrency(args.currency);
      const { budget, created } = await setBudget(ctx.db, { principalId: args.principalId, window, limitMicros, currency });
      return announced(ctx, { ...budget, created }, lifecycle(budget, created ? 'created' : 'replaced'));
    },
  }),
  'budget.list': op({
    description: 'List budgets, of every principal or of one',
    args: z.object({ principalId: PrincipalId.optional() }).strict(),
    run: (ctx, args) => listBudgets(ctx.db, args),
  }),
  'budget.get': op({
    description: "A principal's budgets (or its budget for one window) with the current window period of each",
    args: z.object({ principalId: PrincipalId, window: WindowText.optional() }).strict(),
    run: async (ctx, args): Promise<BudgetView | BudgetView[]> => {
      const window = args.window === undefined ? undefined : parseWindow(args.window);
      await requirePrincipal(ctx, args.principalId);
      const now = new Date();
      if (window === undefined) return (await getBudgets(ctx.db, args.principalId)).map((budget) => view(budget, now));
      const budget = await getBudget(ctx.db, args.principalId, window);
      if (!budget) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${args.principalId} has no ${window} budget`);
      return view(budget, now);
    },
  }),
  'budget.reconcile': op({
    description:
      "Restore the budget spend counters from the metering events recorded in the audit log (each budget's current period, never lowering a counter), then let budgets bind again: after the counters were lost (Redis flushed or restarted empty)",
    args: z.object({}).strict(),
    // The counters as they are (not reconciled on opening): this is the reconcile.
    run: async (ctx): Promise<ReconcileReport> => reconcileSpend(ctx.db, await ctx.spendCounters({ reconcileIfLost: false }), new Date()),
  }),
  'budget.delete': op({
    description: "Remove a principal's budget for one window, or all its budgets",
    args: z.object({ principalId: PrincipalId, window: WindowText.optional() }).strict(),
    run: async (ctx, args): Promise<Budget[]> => {
      const window = args.window === undefined ? undefined : parseWindow(args.window);
      const deleted = await deleteBudget(ctx.db, args.principalId, window);
      for (const budget of deleted) await announced(ctx, budget, lifecycle(budget, 'deleted'));
      return deleted;
    },
  }),
};

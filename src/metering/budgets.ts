import { z } from 'zod';
import { PrincipalId, findPrincipal } from '../authority/stores/principals.js';
import { CaracalError } from '../errors/catalog.js';
import type { Queryable } from '../store/db.js';
import { BUDGET_WINDOWS, MAX_AMOUNT_MICROS, formatAmount, parseCurrency, type BudgetWindow } from './money.js';

/*
 * Budgets (table `budgets`, migration 0009): at most one spending limit per principal and window. A principal may
 * have several, one per window (say 10.00 an hour and 100.00 a month). Limits are integer micro-units in an ISO 4217
 * currency; windows are UTC calendar periods (src/metering/money.ts). This module stores and reads them; the
 * operator operations are in src/operations/budgets.ts. The gateway enforces them on priced upstreams (src/gateway/budget-gate.ts).
 */

export interface Budget {
  principalId: string;
  window: BudgetWindow;
  limitMicros: number;
  /** limitMicros as decimal text, e.g. "100.00". */
  limit: string;
  currency: string;
  createdAt: string;
  updatedAt: string;
}

export interface SetBudgetResult {
  budget: Budget;
  /** True when the principal had no budget for this window; false when one was replaced. */
  created: boolean;
}

export const BudgetWindowSchema = z.enum(BUDGET_WINDOWS, { error: `must be one of ${BUDGET_WINDOWS.join(', ')}` });

/** What the store accepts: already parsed (operators' text goes through parseAmount, parseCurrency, parseWindow). */
export const SetBudgetInput = z
  .object({
    principalId: PrincipalId,
    window: BudgetWindowSchema,
    limitMicros: z.number().int().positive().max(MAX_AMOUNT_MICROS),
    currency: z.string().transform((raw, ctx) => {
      try {
        return parseCurrency(raw);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
  })
  .strict();

interface BudgetRow {
  principal_id: string;
  budget_window: BudgetWindow;
  /** int8 arrives as text from both drivers. */
  limit_micros: string | number;
  currency: string;
  created_at: Date | string;
  updated_at: Date | string;
}

const COLUMNS = 'principal_id, budget_window, limit_micros, currency, created_at, updated_at';
/** Hourly before daily before weekly before monthly, as the operator thinks of them. */
const ORDER = "principal_id, array_position(ARRAY['hourly', 'daily', 'weekly', 'monthly']::text[], budget_window)";

function toBudget(row: BudgetRow): Budget {
  const limitMicros = Number(row.limit_micros);
  return {
    principalId: row.principal_id,
    window: row.budget_window,
    limitMicros,
    limit: formatAmount(limitMicros),
    currency: row.currency,
    createdAt: new Date(row.created_at).toISOString(),
    updatedAt: new Date(row.updated_at).toISOString(),
  };
}

async function requirePrincipal(db: Queryable, principalId: string): Promise<void> {
  if (!(await findPrincipal(db, principalId))) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${principalId} not found`);
}

/** Sets the principal's budget for the window: created, or replacing the limit and currency it had. */
export async function setBudget(db: Queryable, input: z.input<typeof SetBudgetInput>): Promise<SetBudgetResult> {
  const args = SetBudgetInput.parse(input);
  await requirePrincipal(db, args.principalId);
  try {
    // xmax is 0 on a row this statement inserted, and the updating transaction's id on one it replaced.
    const { rows } = await db.query<BudgetRow & { created: boolean }>(
      `INSERT INTO budgets (principal_id, budget_window, limit_micros, currency) VALUES ($1, $2, $3, $4)
       ON CONFLICT (principal_id, budget_window)
       DO UPDATE SET limit_micros = EXCLUDED.limit_micros, currency = EXCLUDED.currency, updated_at = now()
       RETURNING ${COLUMNS}, (xmax = 0) AS created`,
      [args.principalId, args.window, args.limitMicros, args.currency],
    );
    return { budget: toBudget(rows[0]!), created: rows[0]!.created === true };
  } catch (err) {
    // The principal went away between the check and the insert.
    if ((err as { code?: string }).code === '23503') throw new CaracalError('CARACAL_NOT_FOUND', `principal ${args.principalId} not found`, { cause: err });
    throw err;
  }
}

/** The principal's budgets, hourly to monthly (empty when it has none, or does not exist). */
export async function getBudgets(db: Queryable, principalId: string): Promise<Budget[]> {
  const { rows } = await db.query<BudgetRow>(`SELECT ${COLUMNS} FROM budgets WHERE principal_id = $1 ORDER BY ${ORDER}`, [PrincipalId.parse(principalId)]);
  return rows.map(toBudget);
}

/** The principal's budget for the window, or null. */
export async function getBudget(db: Queryable, principalId: string, window: BudgetWindow): Promise<Budget | null> {
  const { rows } = await db.query<BudgetRow>(`SELECT ${COLUMNS} FROM budgets WHERE principal_id = $1 AND budget_window = $2`, [
    PrincipalId.parse(principalId),
    BudgetWindowSchema.parse(window),
  ]);
  return rows[0] ? toBudget(rows[0]) : null;
}

export async function listBudgets(db: Queryable, filter: { principalId?: string } = {}): Promise<Budget[]> {
  if (filter.principalId !== undefined) return getBudgets(db, filter.principalId);
  const { rows } = await db.query<BudgetRow>(`SELECT ${COLUMNS} FROM budgets ORDER BY ${ORDER}`);
  return rows.map(toBudget);
}

/**
 * Deletes the principal's budget for the window, or all its budgets without one, and returns what was deleted.
 * CARACAL_NOT_FOUND when the principal does not exist or nothing matched.
 */
export async function deleteBudget(db: Queryable, principalId: string, window?: BudgetWindow): Promise<Budget[]> {
  const id = PrincipalId.parse(principalId);
  const { rows } =
    window === undefined
      ? await db.query<BudgetRow>(`DELETE FROM budgets WHERE principal_id = $1 RETURNING ${COLUMNS}`, [id])
      : await db.query<BudgetRow>(`DELETE FROM budgets WHERE principal_id = $1 AND budget_window = $2 RETURNING ${COLUMNS}`, [id, BudgetWindowSchema.parse(window)]);
  if (rows.length === 0) {
    await requirePrincipal(db, id);
    throw new CaracalError('CARACAL_NOT_FOUND', window === undefined ? `principal ${id} has no budget` : `principal ${id} has no ${window} budget`);
  }
  const order = (b: Budget) => BUDGET_WINDOWS.indexOf(b.window);
  return rows.map(toBudget).sort((a, b) => order(a) - order(b));
}

/**
 * The budgets of several principals in one query (the gateway needs those of a whole delegation chain): every id
 * asked for is a key, with [] when it has no budget; each list runs hourly to monthly.
 */
export async function budgetsForPrincipals(db: Queryable, principalIds: readonly string[]): Promise<Map<string, Budget[]>> {
  const ids = [...new Set(principalIds)];
  const result = new Map<string, Budget[]>(ids.map((id) => [id, []]));
  if (ids.length === 0) return result;
  const { rows } = await db.query<BudgetRow>(`SELECT ${COLUMNS} FROM budgets WHERE principal_id = ANY($1::text[]) ORDER BY ${ORDER}`, [ids]);
  for (const row of rows) result.get(row.principal_id)?.push(toBudget(row));
  return result;
}

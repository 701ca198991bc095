import { z } from 'zod';
import { PrincipalId } from '../authority/stores/principals.js';
import { BUDGET_WINDOWS, parseWindow } from '../metering/money.js';
import { parseSpendGroup, SPEND_GROUPS, spendSummary, type SpendSummary } from '../metering/reconcile.js';
import { op } from './define.js';

// The window and grouping are plain strings here and parsed in `run`, so every refusal is its one clear line.
const WindowText = z
  .string({ error: `must be one of ${BUDGET_WINDOWS.join(', ')}` })
  .max(64)
  .describe(`${BUDGET_WINDOWS.join(' | ')}: the current UTC calendar period (weeks start on Monday)`);
const GroupText = z.string({ error: `must be one of ${SPEND_GROUPS.join(', ')}` }).max(64).describe(SPEND_GROUPS.join(' | '));

/** What was spent, from the metering events recorded in the audit log (src/metering/reconcile.ts). */
export const SPEND_OPERATIONS = {
  'spend.summary': op({
    description:
      'Spend (per currency), calls and tokens of the calls that started in the current period of a window, in total and per agent, upstream or model; per agent each row also rolls up the spend of the agents it delegated to',
    args: z.object({ window: WindowText.default('daily'), by: GroupText.optional(), principalId: PrincipalId.optional() }).strict(),
    run: async (ctx, args): Promise<SpendSummary> => {
      const window = parseWindow(args.window);
      const by = args.by === undefined ? undefined : parseSpendGroup(args.by);
      return spendSummary(ctx.db, { window, ...(by ? { by } : {}), ...(args.principalId !== undefined ? { principalId: args.principalId } : {}) });
    },
  }),
};

import type { Command } from 'commander';
import type { Budget } from '../../metering/budgets.js';
import type { ReconcileReport } from '../../metering/reconcile.js';
import type { BudgetView, SetBudgetReport } from '../../operations/budgets.js';
import { formatAmount } from '../../metering/money.js';
import { printRecord } from '../output.js';
import type { CliRuntime } from '../runtime.js';

const LIST_COLUMNS = [
  { key: 'principalId', header: 'AGENT' },
  { key: 'window', header: 'WINDOW' },
  { key: 'limit', header: 'LIMIT' },
  { key: 'currency', header: 'CURRENCY' },
  { key: 'updatedAt', header: 'UPDATED' },
];

const GET_COLUMNS = [
  { key: 'window', header: 'WINDOW' },
  { key: 'limit', header: 'LIMIT' },
  { key: 'currency', header: 'CURRENCY' },
  { key: 'periodStart', header: 'PERIOD START' },
  { key: 'periodEnd', header: 'RESETS AT' },
  { key: 'updatedAt', header: 'UPDATED' },
];

const RECONCILE_COLUMNS = [
  { key: 'principalId', header: 'AGENT' },
  { key: 'mandateId', header: 'MANDATE' },
  { key: 'window', header: 'WINDOW' },
  { key: 'periodStart', header: 'PERIOD START' },
  { key: 'currency', header: 'CURRENCY' },
  { key: 'limit', header: 'LIMIT' },
  { key: 'restored', header: 'RECORDED' },
  { key: 'events', header: 'EVENTS' },
  { key: 'spent', header: 'SPENT' },
];

const WINDOWS = 'hourly | daily | weekly | monthly (UTC calendar periods; weeks start on Monday)';

export function registerBudgetCommands(program: Command, rt: () => CliRuntime): void {
  const budget = program
    .command('budget')
    .description('per-principal spending limits, one per window, enforced by the gateway on every priced call of the principal and of the agents it delegated to');

  budget
    .command('set')
    .description("set a principal's budget for a window, replacing the one it had")
    .requiredOption('--agent-id <id>', 'principal id')
    .requiredOption('--limit <amount>', 'decimal amount, at most 6 decimals, e.g. 100.00')
    .requiredOption('--window <window>', WINDOWS)
    .option('--currency <code>', 'ISO 4217 currency code', 'USD')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const report = await runtime.operation<SetBudgetReport>('budget.set', {
        principalId: options.agentId,
        window: options.window,
        limit: options.limit,
        currency: options.currency,
      });
      if (options.json) return runtime.out.json(report);
      printRecord(runtime.out, {
        principalId: report.principalId,
        window: report.window,
        limit: report.limit,
        currency: report.currency,
        status: report.created ? 'created' : 'replaced',
        createdAt: report.createdAt,
        updatedAt: report.updatedAt,
      });
    });

  budget
    .command('list')
    .description('list budgets')
    .option('--agent-id <id>', 'only this principal')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const budgets = await runtime.operation<Budget[]>('budget.list', options.agentId !== undefined ? { principalId: options.agentId } : {});
      if (options.json) runtime.out.json(budgets);
      else runtime.out.table(budgets as unknown as Record<string, unknown>[], LIST_COLUMNS);
    });

  budget
    .command('get')
    .description("a principal's budgets (or the one for --window), with the current period of each and when it resets")
    .requiredOption('--agent-id <id>', 'principal id')
    .option('--window <window>', WINDOWS)
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      if (options.window === undefined) {
        const views = await runtime.operation<BudgetView[]>('budget.get', { principalId: options.agentId });
        if (options.json) runtime.out.json(views);
        else runtime.out.table(views as unknown as Record<string, unknown>[], GET_COLUMNS);
        return;
      }
      const view = await runtime.operation<BudgetView>('budget.get', { principalId: options.agentId, window: options.window });
      if (options.json) return runtime.out.json(view);
      printRecord(runtime.out, {
        principalId: view.principalId,
        window: view.window,
        limit: view.limit,
        currency: view.currency,
        periodStart: view.periodStart,
        resetsAt: view.periodEnd,
        createdAt: view.createdAt,
        updatedAt: view.updatedAt,
      });
    });

  budget
    .command('reconcile')
    .description(
      'restore the spend counters from the metering events in the audit log (each budget\'s current period; a counter is never lowered), then let budgets bind again: run it after Redis lost its data (budgets fail closed until then)',
    )
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const report = await runtime.operation<ReconcileReport>('budget.reconcile', {});
      if (options.json) return runtime.out.json(report);
      runtime.out.table(
        report.lines.map((line) => ({ ...line, limit: formatAmount(line.limitMicros) })),
        RECONCILE_COLUMNS,
      );
      const lines = `${report.lines.length} budget line${report.lines.length === 1 ? '' : 's'}`;
      runtime.out.line(
        report.counters === 'redis'
          ? `reconciled ${lines} on the redis spend counters; budgets bind again`
          : // In-process counters belong to one process: a running embedded gateway's (through its admin API), else this command's.
            `reconciled ${lines} on in-process spend counters (a running gateway's through its admin API; a gateway on the embedded default also reconciles its own when it starts)`,
      );
    });

  budget
    .command('delete')
    .description("remove a principal's budget for --window, or all its budgets")
    .requiredOption('--agent-id <id>', 'principal id')
    .option('--window <window>', WINDOWS)
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const deleted = await runtime.operation<Budget[]>('budget.delete', options.window !== undefined ? { principalId: options.agentId, window: options.window } : { principalId: options.agentId });
      if (options.json) return runtime.out.json(deleted);
      for (const b of deleted) runtime.out.line(`deleted the ${b.window} budget of ${b.principalId} (${b.limit} ${b.currency})`);
    });
}

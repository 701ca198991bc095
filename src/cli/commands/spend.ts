import type { Command } from 'commander';
import { BUDGET_WINDOWS } from '../../metering/money.js';
import { SPEND_GROUPS, type SpendSummary } from '../../metering/reconcile.js';
import type { CliRuntime } from '../runtime.js';

const TOTAL_COLUMNS = [
  { key: 'currency', header: 'CURRENCY' },
  { key: 'spent', header: 'SPENT' },
  { key: 'calls', header: 'CALLS' },
  { key: 'input_tokens', header: 'INPUT TOKENS' },
  { key: 'output_tokens', header: 'OUTPUT TOKENS' },
];

const HEADERS = { agent: 'AGENT', upstream: 'UPSTREAM', model: 'MODEL' } as const;

export function registerSpendCommands(program: Command, rt: () => CliRuntime): void {
  const spend = program.command('spend').description('what was spent: the metering events of proxied calls, recorded in the audit log');

  spend
    .command('summary')
    .description(
      'spend (per currency), calls and tokens of the calls that started in the current period of --window; --by agent rolls each agent\'s delegated agents up into its row (ROLLED UP)',
    )
    .option('--by <group>', SPEND_GROUPS.join(' | '))
    .option('--window <window>', `${BUDGET_WINDOWS.join(' | ')} (UTC calendar periods; weeks start on Monday)`, 'daily')
    .option('--agent-id <id>', 'only the calls charged to this principal: its own and those of the agents it delegated to')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const summary = await runtime.operation<SpendSummary>('spend.summary', {
        window: options.window,
        ...(options.by !== undefined ? { by: options.by } : {}),
        ...(options.agentId !== undefined ? { principalId: options.agentId } : {}),
      });
      if (options.json) return runtime.out.json(summary);
      runtime.out.line(`${summary.window} period ${summary.period_start} .. ${summary.period_end}${summary.agent_id ? `, charged to ${summary.agent_id}` : ''}`);
      if (summary.by) {
        runtime.out.table(summary.rows as unknown as Record<string, unknown>[], [
          { key: 'key', header: HEADERS[summary.by] },
          ...TOTAL_COLUMNS,
          ...(summary.by === 'agent' ? [{ key: 'rolled_up', header: 'ROLLED UP' }] : []),
        ]);
        for (const total of summary.totals) runtime.out.line(`total ${total.spent} ${total.currency} in ${total.calls} call${total.calls === 1 ? '' : 's'}`);
        return;
      }
      runtime.out.table(summary.totals as unknown as Record<string, unknown>[], TOTAL_COLUMNS);
    });
}

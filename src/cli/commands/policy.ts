import type { Command } from 'commander';
import type { AuthorityPolicy } from '../../authority/stores/policies.js';
import { printRecord } from '../output.js';
import type { CliRuntime } from '../runtime.js';

export const POLICY_COLUMNS = [
  { key: 'id', header: 'ID' },
  { key: 'principalId', header: 'PRINCIPAL' },
  { key: 'resources', header: 'RESOURCES' },
  { key: 'actions', header: 'ACTIONS' },
  { key: 'maxValiditySeconds', header: 'MAX_VALIDITY_S' },
  { key: 'delegationDepth', header: 'DELEGATION_DEPTH' },
  { key: 'active', header: 'ACTIVE' },
];

export function registerPolicyCommands(program: Command, rt: () => CliRuntime): void {
  const policy = program.command('policy').description('authority policies');

  policy
    .command('create')
    .description("create an authority policy for a principal")
    .requiredOption('--agent-id <id>', 'principal id')
    .requiredOption('--resources <patterns...>', 'resource patterns, e.g. "api:external/*"')
    .requiredOption('--actions <actions...>', 'allowed actions, e.g. read write execute')
    .requiredOption('--max-validity <seconds>', 'longest mandate validity, seconds')
    .option('--delegation-depth <n>', 'how deep mandates may be delegated', '0')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const created = await runtime.operation<AuthorityPolicy>('policy.create', {
        principalId: options.agentId,
        resources: options.resources,
        actions: options.actions,
        maxValiditySeconds: options.maxValidity,
        delegationDepth: options.delegationDepth,
      });
      if (options.json) runtime.out.json(created);
      else printRecord(runtime.out, { ...created });
    });

  policy
    .command('list')
    .description('list authority policies')
    .option('--agent-id <id>', 'only this principal')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const policies = await runtime.operation<AuthorityPolicy[]>('policy.list', options.agentId ? { principalId: options.agentId } : {});
      if (options.json) runtime.out.json(policies);
      else runtime.out.table(policies as unknown as Record<string, unknown>[], POLICY_COLUMNS);
    });
}

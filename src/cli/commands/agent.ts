import type { Command } from 'commander';
import type { Principal } from '../../authority/stores/principals.js';
import type { AuthorityPolicy } from '../../authority/stores/policies.js';
import { printRecord } from '../output.js';
import type { CliRuntime } from '../runtime.js';
import { POLICY_COLUMNS } from './policy.js';

const PRINCIPAL_COLUMNS = [
  { key: 'id', header: 'ID' },
  { key: 'name', header: 'NAME' },
  { key: 'kind', header: 'KIND' },
  { key: 'owner', header: 'OWNER' },
  { key: 'status', header: 'STATUS' },
  { key: 'createdAt', header: 'CREATED' },
];

function idFrom(positional: string | undefined, options: { agentId?: string }): string | undefined {
  return options.agentId ?? positional;
}

export function registerAgentCommands(program: Command, rt: () => CliRuntime): void {
  const agent = program.command('agent').description('principals: agents, services, users');

  agent
    .command('register')
    .description('register a principal')
    .requiredOption('--name <name>', 'unique name')
    .requiredOption('--owner <owner>', 'who answers for it (e-mail, team)')
    .option('--description <text>', 'what it is for', '')
    .option('--kind <kind>', 'agent | service | user', 'agent')
    .option('--parent <id>', 'parent principal id')
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only the new id')
    .action(async (options) => {
      const runtime = rt();
      const principal = await runtime.operation<Principal>('agent.register', {
        name: options.name,
        owner: options.owner,
        description: options.description,
        kind: options.kind,
        ...(options.parent ? { parentId: options.parent } : {}),
      });
      if (options.json) runtime.out.json(principal);
      else if (options.quiet) runtime.out.line(principal.id);
      else printRecord(runtime.out, { ...principal });
    });

  agent
    .command('list')
    .description('list principals')
    .option('--status <status>', 'active | suspended')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const principals = await runtime.operation<Principal[]>('agent.list', options.status ? { status: options.status } : {});
      if (options.json) runtime.out.json(principals);
      else runtime.out.table(principals as unknown as Record<string, unknown>[], PRINCIPAL_COLUMNS);
    });

  agent
    .command('get [id]')
    .description('show a principal and its authority policies')
    .option('--agent-id <id>', 'principal id')
    .option('--json', 'print JSON')
    .action(async (positional, options) => {
      const runtime = rt();
      const found = await runtime.operation<Principal & { policies: AuthorityPolicy[] }>('agent.get', { id: idFrom(positional, options) });
      if (options.json) return runtime.out.json(found);
      const { policies, ...principal } = found;
      printRecord(runtime.out, principal);
      runtime.out.line('');
      runtime.out.table(policies as unknown as Record<string, unknown>[], POLICY_COLUMNS);
    });

  for (const [verb, description] of [
    ['suspend', 'suspend a principal: all its requests are denied'],
    ['resume', 'resume a suspended principal'],
  ] as const) {
    agent
      .command(`${verb} [id]`)
      .description(description)
      .option('--agent-id <id>', 'principal id')
      .option('--json', 'print JSON')
      .action(async (positional, options) => {
        const runtime = rt();
        const principal = await runtime.operation<Principal>(`agent.${verb}`, { id: idFrom(positional, options) });
        if (options.json) runtime.out.json(principal);
        else runtime.out.line(`${principal.id} ${principal.status}`);
      });
  }
}

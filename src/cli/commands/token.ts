import type { Command } from 'commander';
import type { IssuedToken } from '../../authority/tokens/tokens.js';
import type { CliRuntime } from '../runtime.js';

export function registerTokenCommands(program: Command, rt: () => CliRuntime): void {
  const token = program.command('token').description('access tokens for principals');
  token
    .command('issue')
    .description('mint a short-lived ES256 access token (prints the token)')
    .requiredOption('--agent-id <id>', 'principal id')
    .option('--ttl <seconds>', 'lifetime in seconds (default: auth.tokenTtlSeconds)')
    .option('--json', 'print the token with its id and expiry as JSON')
    .action(async (options) => {
      const runtime = rt();
      const issued = await runtime.operation<IssuedToken>('token.issue', {
        principalId: options.agentId,
        ...(options.ttl !== undefined ? { ttlSeconds: options.ttl } : {}),
      });
      if (options.json) runtime.out.json(issued);
      else runtime.out.line(issued.token);
    });
}

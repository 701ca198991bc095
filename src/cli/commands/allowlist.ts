import type { Command } from 'commander';
import type { AllowlistEntry } from '../../authority/stores/allowlists.js';
import { CaracalError } from '../../errors/catalog.js';
import type { AllowlistTestReport } from '../../operations/allowlists.js';
import { printRecord } from '../output.js';
import type { CliRuntime } from '../runtime.js';

const ENTRY_COLUMNS = [
  { key: 'id', header: 'ID' },
  { key: 'principalId', header: 'PRINCIPAL' },
  { key: 'patternType', header: 'TYPE' },
  { key: 'pattern', header: 'PATTERN' },
  { key: 'createdAt', header: 'CREATED' },
];

/** One line saying whether the URL is allowed and why (the verdict the gateway would reach). */
export function describeTest(report: AllowlistTestReport): string {
  switch (report.reason) {
    case 'matched':
      return `allowed: matches entry ${report.entryId} (${report.patternType} ${JSON.stringify(report.pattern)})`;
    case 'no_match':
      return `not allowed: matches none of the ${report.entries} entr${report.entries === 1 ? 'y' : 'ies'} of principal ${report.principalId}`;
    case 'empty_allow':
      return `allowed: principal ${report.principalId} has no allowlist entries and allowlists.whenEmpty is "allow"`;
    case 'empty_deny':
      return `not allowed: principal ${report.principalId} has no allowlist entries and allowlists.whenEmpty is "deny"`;
    case 'url_too_long':
      return 'not allowed: the URL is longer than 8192 characters, which never matches';
    case 'url_malformed':
      return 'not allowed: the URL is not of the form scheme://host/… (or has control characters, spaces, backslashes, or ?, # or @ in the host part), which never matches';
  }
}

export function registerAllowlistCommands(program: Command, rt: () => CliRuntime): void {
  const allowlist = program.command('allowlist').description('per-principal URL allowlists (regex or glob)');

  allowlist
    .command('create')
    .description("add a URL pattern to a principal's allowlist")
    .requiredOption('--agent-id <id>', 'principal id')
    .requiredOption('--pattern <pattern>', 'regex (full match of the URL) or glob, e.g. "https://api.anthropic.com/*"')
    .requiredOption('--pattern-type <type>', 'regex | glob')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const entry = await runtime.operation<AllowlistEntry>('allowlist.create', {
        principalId: options.agentId,
        pattern: options.pattern,
        patternType: options.patternType,
      });
      if (options.json) runtime.out.json(entry);
      else printRecord(runtime.out, { ...entry });
    });

  allowlist
    .command('list')
    .description('list allowlist entries')
    .option('--agent-id <id>', 'only this principal')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const entries = await runtime.operation<AllowlistEntry[]>('allowlist.list', options.agentId ? { principalId: options.agentId } : {});
      if (options.json) runtime.out.json(entries);
      else runtime.out.table(entries as unknown as Record<string, unknown>[], ENTRY_COLUMNS);
    });

  allowlist
    .command('delete [id]')
    .description('remove an allowlist entry')
    .option('--id <entry-id>', 'entry id')
    .option('--json', 'print JSON')
    .action(async (positional: string | undefined, options) => {
      const runtime = rt();
      const id = options.id ?? positional;
      if (!id) throw new CaracalError('CARACAL_USAGE', 'allowlist delete needs an entry id (--id <entry-id>)');
      if (options.id && positional && options.id !== positional) throw new CaracalError('CARACAL_USAGE', 'give the entry id once, as --id or as an argument');
      const entry = await runtime.operation<AllowlistEntry>('allowlist.delete', { id });
      if (options.json) runtime.out.json(entry);
      else runtime.out.line(`${entry.id} deleted`);
    });

  allowlist
    .command('test')
    .description("check a URL against a principal's allowlist, as the gateway would (exit 0 either way)")
    .requiredOption('--agent-id <id>', 'principal id')
    .requiredOption('--url <url>', 'the full upstream URL, e.g. https://api.openai.com/v1/chat/completions')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const report = await runtime.operation<AllowlistTestReport>('allowlist.test', { principalId: options.agentId, url: options.url });
      if (options.json) return runtime.out.json(report);
      runtime.out.line(describeTest(report));
      for (const broken of report.broken) runtime.out.line(`warning: entry ${broken.id} never matches: ${broken.problem}`);
    });
}

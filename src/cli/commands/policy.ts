import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { AuthorityPolicy } from '../../authority/stores/policies.js';
import { POLICIES_DIR } from '../../paths.js';
import { DEFAULT_COVERAGE_MIN, formatJunit, formatText, runPolicyTests } from '../../policy/policy-test.js';
import { CliExit } from '../exit.js';
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

  policy
    .command('test')
    .description(
      'Rego tests (opa test), coverage gate, and decision fixtures (fixtures/*.yaml) on the compiled WASM and through opa eval; ' +
        'exit 0 all pass, 3 a Rego test failed, 4 coverage below the gate, 5 a fixture disagrees, 6 the policies do not compile',
    )
    .option('--policies <dir>', 'policies folder', POLICIES_DIR)
    .option('--coverage-min <pct>', 'coverage gate in percent (0-100)', parsePercent, DEFAULT_COVERAGE_MIN)
    .addOption(new Option('--format <format>', 'report format').choices(['text', 'junit']).default('text'))
    .option('--out <file>', 'write the report to this file (default: stdout); with --format junit the text summary still goes to stdout')
    .option('--opa <path>', 'opa binary (default: policy.opaBin / CARACAL_OPA_BIN)')
    .action(async (options: { policies: string; coverageMin: number; format: 'text' | 'junit'; out?: string; opa?: string }) => {
      const runtime = rt();
      const report = await runPolicyTests({
        opaBin: options.opa ?? runtime.config().policy.opaBin,
        policiesDir: path.resolve(options.policies),
        coverageMin: options.coverageMin,
      });
      const text = formatText(report);
      const rendered = options.format === 'junit' ? formatJunit(report) : text;
      if (options.out !== undefined) {
        const outFile = path.resolve(options.out);
        await writeFile(outFile, rendered);
        if (options.format === 'junit') {
          runtime.out.line(`junit report: ${outFile}`);
          runtime.out.line(text.trimEnd());
        }
      } else {
        runtime.out.line(rendered.trimEnd());
      }
      if (report.exitCode !== 0) throw new CliExit(report.exitCode);
    });
}

function parsePercent(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 100) throw new InvalidArgumentError('expected a percentage between 0 and 100');
  return n;
}

import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { EmergencyStop } from '../../authority/views/emergency.js';
import { generateSigningKeyFile, signingKeyFromPem } from '../../authority/tokens/keys.js';
import type { IssuedMandate, Mandate, MandateBudget } from '../../authority/tokens/mandates.js';
import { formatAmount } from '../../metering/money.js';
import { CaracalError } from '../../errors/catalog.js';
import { printRecord } from '../output.js';
import { positiveInt } from '../parse.js';
import type { CliRuntime } from '../runtime.js';

const MANDATE_COLUMNS = [
  { key: 'id', header: 'ID' },
  { key: 'principalId', header: 'PRINCIPAL' },
  { key: 'parentId', header: 'PARENT' },
  { key: 'depth', header: 'DEPTH' },
  { key: 'resources', header: 'RESOURCES' },
  { key: 'actions', header: 'ACTIONS' },
  { key: 'budget', header: 'BUDGET' },
  { key: 'expiresAt', header: 'EXPIRES' },
  { key: 'revokedAt', header: 'REVOKED' },
];

/** "5.00 USD daily", or null (shown as "-") when the mandate has no budget of its own. */
function describeBudget(budget: MandateBudget | null | undefined): string | null {
  return budget ? `${formatAmount(budget.limitMicros)} ${budget.currency} ${budget.window}` : null;
}

/**
 * `--json`: the whole mandate; `--print-id`: `<mandate id> <token>` on one line, so a shell can
 * keep both (`read -r ID TOKEN <<< "$(caracal mandate issue … --print-id)"`); `--quiet`: the
 * token only; otherwise every field as `key value` lines.
 */
function printIssued(runtime: CliRuntime, issued: IssuedMandate, options: { json?: boolean; quiet?: boolean; printId?: boolean }): void {
  if (options.json) return runtime.out.json(issued);
  if (options.printId) return runtime.out.line(`${issued.id} ${issued.token}`);
  if (options.quiet) return runtime.out.line(issued.token);
  const { token, ...mandate } = issued;
  printRecord(runtime.out, { ...mandate, budget: describeBudget(mandate.budget), token });
}

/** The options every grant takes: who, which scope, how long, and the output form. */
function grantOptions(command: Command, help: { agent: string; within: string; validity: string }): Command {
  return command
    .requiredOption('--agent-id <id>', help.agent)
    .requiredOption('--resources <patterns...>', `resource patterns ${help.within}`)
    .requiredOption('--actions <actions...>', `actions ${help.within}`)
    .requiredOption('--validity <seconds>', help.validity)
    .option('--json', 'print JSON')
    .option('-q, --quiet', 'print only the token')
    .option('--print-id', 'print only the mandate id and the token, on one line separated by a space');
}

function grantArgs(options: { agentId: string; resources: string[]; actions: string[]; validity: string }) {
  return { principalId: options.agentId, resources: options.resources, actions: options.actions, validitySeconds: positiveInt('--validity', options.validity) };
}

/**
 * The delegate's own budget from `--budget-limit` and `--budget-window` (both or neither) and
 * `--budget-currency`; the values themselves are checked by the operation (one line naming the field).
 */
function budgetArgs(options: { budgetLimit?: string; budgetWindow?: string; budgetCurrency?: string }) {
  const { budgetLimit: limit, budgetWindow: window, budgetCurrency: currency } = options;
  if (limit === undefined && window === undefined) {
    if (currency !== undefined) throw new CaracalError('CARACAL_USAGE', '--budget-currency needs --budget-limit and --budget-window');
    return {};
  }
  if (limit === undefined || window === undefined) throw new CaracalError('CARACAL_USAGE', '--budget-limit and --budget-window go together: give both, or neither');
  return { budget: { limit, window, ...(currency !== undefined ? { currency } : {}) } };
}

export function registerMandateCommands(program: Command, rt: () => CliRuntime): void {
  const mandate = program.command('mandate').description('mandates: scoped, signed, delegable grants of authority');

  grantOptions(
    mandate.command('issue').description("issue a root mandate within the principal's authority policy"),
    { agent: 'the subject', within: 'within the policy', validity: 'lifetime, at most the policy max-validity' },
  ).action(async (options) => {
    const runtime = rt();
    printIssued(runtime, await runtime.operation<IssuedMandate>('mandate.issue', grantArgs(options)), options);
  });

  grantOptions(
    mandate
      .command('delegate')
      .description('delegate a narrower mandate; needs the parent mandate itself (only its subject holds it)')
      .requiredOption('--parent <jti>', 'the parent mandate id')
      .option('--parent-token <jwt>', 'the parent mandate (default: env CARACAL_MANDATE)')
      .option('--budget-limit <amount>', "the delegate's own spending limit, decimal (e.g. 5.00); needs --budget-window")
      .option('--budget-window <window>', 'the budget window: hourly, daily, weekly or monthly (UTC); needs --budget-limit')
      .option('--budget-currency <code>', 'the budget currency, ISO 4217 (default USD)'),
    { agent: 'the delegate', within: 'within the parent scope', validity: 'lifetime, ending no later than the parent' },
  ).action(async (options) => {
    const budget = budgetArgs(options);
    const runtime = rt();
    const parentToken = options.parentToken ?? process.env.CARACAL_MANDATE;
    if (!parentToken) {
      throw new CaracalError('CARACAL_USAGE', 'delegation needs the parent mandate (--parent-token or env CARACAL_MANDATE): only its subject may delegate');
    }
    const issued = await runtime.operation<IssuedMandate>('mandate.delegate', { parentToken, parentId: options.parent, ...grantArgs(options), ...budget });
    printIssued(runtime, issued, options);
  });

  mandate
    .command('revoke')
    .description('revoke a mandate (--cascade: and every descendant); gateways deny it within a second')
    .requiredOption('--mandate-id <jti>', 'the mandate')
    .option('--cascade', 'also revoke every mandate delegated from it')
    .option('--reason <text>', 'why', '')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const { revoked } = await runtime.operation<{ revoked: string[] }>('mandate.revoke', { mandateId: options.mandateId, cascade: Boolean(options.cascade), reason: options.reason });
      if (options.json) return runtime.out.json({ revoked });
      runtime.out.line(revoked.length ? `revoked ${revoked.length}: ${revoked.join(' ')}` : 'already revoked');
    });

  mandate
    .command('list')
    .description('list mandates')
    .option('--agent-id <id>', 'only this subject')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const mandates = await runtime.operation<Mandate[]>('mandate.list', options.agentId ? { principalId: options.agentId } : {});
      if (options.json) runtime.out.json(mandates);
      else runtime.out.table(mandates.map((m) => ({ ...m, budget: describeBudget(m.budget) })), MANDATE_COLUMNS);
    });

  const emergency = program.command('emergency').description('emergency stop: deny everything, or everything of one principal');
  emergency
    .command('stop')
    .description('stop all traffic (or one principal and its delegates) on every gateway within a second')
    .option('--agent-id <id>', 'only this principal')
    .option('--reason <text>', 'why', '')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const stop = await runtime.operation<EmergencyStop>('emergency.stop', { ...(options.agentId ? { principalId: options.agentId } : {}), reason: options.reason });
      if (options.json) runtime.out.json(stop);
      else runtime.out.line(`emergency stop in force: ${stop.scope === 'global' ? 'everything' : `principal ${stop.scope}`}`);
    });
  emergency
    .command('resume')
    .description('lift an emergency stop')
    .option('--agent-id <id>', 'only this principal')
    .action(async (options) => {
      const runtime = rt();
      await runtime.operation('emergency.resume', options.agentId ? { principalId: options.agentId } : {});
      runtime.out.line(`resumed: ${options.agentId ? `principal ${options.agentId}` : 'everything'}`);
    });
  emergency
    .command('status')
    .description('emergency stops in force')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const stops = await runtime.operation<EmergencyStop[]>('emergency.status', {});
      if (options.json) runtime.out.json(stops);
      else runtime.out.table(stops as unknown as Record<string, unknown>[], [
        { key: 'scope', header: 'SCOPE' },
        { key: 'reason', header: 'REASON' },
        { key: 'stoppedAt', header: 'SINCE' },
      ]);
    });

  const keys = program.command('keys').description('ES256 signing keys (PEM files; never stored in the database)');
  keys
    .command('generate')
    .description('write a new P-256 private key (mode 0600) and print its key id')
    .requiredOption('--out <file>', 'where to write it (refuses to overwrite)')
    .action(async (options) => {
      const runtime = rt();
      try {
        generateSigningKeyFile(options.out);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CaracalError('CARACAL_CONFLICT', `${options.out} exists; refusing to overwrite a key`);
        throw err;
      }
      const key = await signingKeyFromPem(readFileSync(options.out, 'utf8'), options.out);
      runtime.out.line(`wrote ${options.out} kid=${key.kid}`);
    });
}

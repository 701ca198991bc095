import { Command, CommanderError } from 'commander';
import { ZodError } from 'zod';
import { isCaracalError } from '../errors/catalog.js';
import { registerAgentCommands } from './commands/agent.js';
import { registerAllowlistCommands } from './commands/allowlist.js';
import { registerBudgetCommands } from './commands/budget.js';
import { registerBundleCommands } from './commands/bundle.js';
import { registerAuditCommands } from './commands/audit.js';
import { registerConsumerCommands } from './commands/consumers.js';
import { registerDbCommands } from './commands/db.js';
import { registerKafkaCommands } from './commands/kafka.js';
import { registerLedgerCommands } from './commands/ledger.js';
import { registerMandateCommands } from './commands/mandate.js';
import { registerMerkleCommands } from './commands/merkle.js';
import { registerPartitionCommands } from './commands/partitions.js';
import { registerPolicyCommands } from './commands/policy.js';
import { registerServeCommands } from './commands/serve.js';
import { registerSpendCommands } from './commands/spend.js';
import { registerTokenCommands } from './commands/token.js';
import { CliExit } from './exit.js';
import type { Output } from './output.js';
import { createRuntime, type CliRuntime } from './runtime.js';

export interface MainOptions {
  out?: Output;
  err?: (text: string) => void;
  env?: NodeJS.ProcessEnv;
}

export function buildProgram(runtime: () => CliRuntime, err: (text: string) => void): Command {
  const program = new Command('caracal')
    .description('Caracal: a policy-as-code gateway for AI agents')
    .option('-c, --config <file>', 'YAML config file (default: CARACAL_CONFIG or ./caracal.yaml)')
    .showHelpAfterError(false)
    .configureOutput({ outputError: (text) => err(`caracal: ${text.replace(/^error: /, '').trimEnd()}\n`) })
    .exitOverride();
  registerServeCommands(program, runtime);
  registerAgentCommands(program, runtime);
  registerPolicyCommands(program, runtime);
  registerAllowlistCommands(program, runtime);
  registerBudgetCommands(program, runtime);
  registerSpendCommands(program, runtime);
  registerTokenCommands(program, runtime);
  registerDbCommands(program, runtime);
  registerPartitionCommands(program, runtime);
  registerKafkaCommands(program, runtime);
  registerConsumerCommands(program, runtime);
  registerAuditCommands(program, runtime);
  registerMandateCommands(program, runtime);
  registerBundleCommands(program, runtime);
  registerLedgerCommands(program, runtime);
  registerMerkleCommands(program, runtime);
  // Subcommands inherit the strict behaviour: unknown flags and extra arguments are errors.
  const harden = (command: Command) => {
    command.exitOverride().allowExcessArguments(false).configureOutput({ outputError: (text) => err(`caracal: ${text.replace(/^error: /, '').trimEnd()}\n`) });
    command.commands.forEach(harden);
  };
  program.commands.forEach(harden);
  return program;
}

/** Entry point of the `caracal` bin: returns the exit code; every failure is one line on stderr. */
export async function main(argv: string[], options: MainOptions = {}): Promise<number> {
  const err = options.err ?? ((text: string) => process.stderr.write(text));
  let runtime: CliRuntime | undefined;
  const program = buildProgram(() => (runtime ??= createRuntime({ configPath: program.opts().config, out: options.out, env: options.env })), err);
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (thrown) {
    // The command printed its own report; only the exit code is left to pass on.
    if (thrown instanceof CliExit) return thrown.exitCode;
    if (thrown instanceof CommanderError) {
      // Help and version exit 0; commander already printed its one-line error otherwise.
      return thrown.exitCode === 0 || thrown.code === 'commander.helpDisplayed' || thrown.code === 'commander.help' ? 0 : 2;
    }
    err(`caracal: ${describe(thrown)}\n`);
    return 1;
  }
}

function describe(thrown: unknown): string {
  if (isCaracalError(thrown)) return thrown.message;
  if (thrown instanceof ZodError) return thrown.issues.map((i) => `${i.path.join('.') || 'value'}: ${i.message}`).join('; ');
  const message = thrown instanceof Error ? thrown.message : String(thrown);
  return message.split('\n')[0]!;
}

import type { Command } from 'commander';
import type { AuditPartition, CreatedPartitions } from '../../audit/audit-store.js';
import { MAX_PARTITION_MONTHS, parseMonth } from '../../audit/audit-store.js';
import { CaracalError } from '../../errors/catalog.js';
import { positiveInt } from '../parse.js';
import type { CliRuntime } from '../runtime.js';

/** `caracal db partitions …`: the audit log's monthly partitions. Attached under `db`. */
export function registerPartitionCommands(program: Command, rt: () => CliRuntime): void {
  const db = program.commands.find((command) => command.name() === 'db');
  if (!db) throw new Error('registerPartitionCommands must run after registerDbCommands');
  const partitions = db.command('partitions').description('monthly partitions of the audit log');

  partitions
    .command('create')
    .description('create the monthly audit log partitions (idempotent)')
    .option('--months <n>', `how many months, from --from on (1–${MAX_PARTITION_MONTHS})`, '3')
    .option('--from <YYYY-MM>', 'first month (default: the current month, UTC)')
    .option('--json', 'print JSON')
    .action(async (options: { months: string; from?: string; json?: boolean }) => {
      // Checked here as well as by the operation, so bad input fails before anything is opened.
      const months = positiveInt('--months', options.months);
      if (months > MAX_PARTITION_MONTHS) throw new CaracalError('CARACAL_USAGE', `--months must be at most ${MAX_PARTITION_MONTHS}, got ${months}`);
      if (options.from !== undefined) parseMonth(options.from);
      const runtime = rt();
      const result = await runtime.operation<CreatedPartitions>('audit.partitions-create', { months, ...(options.from !== undefined ? { from: options.from } : {}) });
      if (options.json) return runtime.out.json(result);
      for (const name of result.created) runtime.out.line(`created ${name}`);
      for (const name of result.existing) runtime.out.line(`exists  ${name}`);
    });

  partitions
    .command('list')
    .description('list the audit log partitions with their range and approximate row count')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }) => {
      const runtime = rt();
      const list = await runtime.operation<AuditPartition[]>('audit.partitions-list', {});
      if (options.json) return runtime.out.json(list);
      runtime.out.table(
        list.map((p) => ({
          name: p.name,
          from: p.range === 'default' ? 'default' : p.range.from,
          to: p.range === 'default' ? '' : p.range.to,
          rows: p.approxRows === null ? 'unknown' : `~${p.approxRows}`,
        })),
        [
          { key: 'name', header: 'PARTITION' },
          { key: 'from', header: 'FROM' },
          { key: 'to', header: 'TO' },
          { key: 'rows', header: 'ROWS' },
        ],
      );
    });
}

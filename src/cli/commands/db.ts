import type { Command } from 'commander';
import { CaracalError } from '../../errors/catalog.js';
import { initDatabase, migrateUp, resetDatabase } from '../../store/migrate.js';
import { printRecord } from '../output.js';
import type { CliRuntime } from '../runtime.js';

interface HealthReport {
  ok: boolean;
  backend: string;
  latencyMs: number;
  applied: number;
  pending: number[];
}

export function registerDbCommands(program: Command, rt: () => CliRuntime): void {
  const db = program.command('db').description('database schema and health');

  db.command('init')
    .description('create the migrations table (idempotent)')
    .action(async () => {
      const runtime = rt();
      const kind = await runtime.withContext(async (ctx) => {
        await initDatabase(ctx.db);
        return ctx.db.kind;
      });
      runtime.out.line(`database initialised (${kind})`);
    });

  db.command('migrate')
    .description('apply schema migrations')
    .command('up')
    .description('apply every pending migration')
    .action(async () => {
      const runtime = rt();
      const applied = await runtime.withContext((ctx) => migrateUp(ctx.db));
      if (applied.length === 0) runtime.out.line('database is up to date');
      for (const m of applied) runtime.out.line(`applied ${String(m.version).padStart(4, '0')}_${m.name}`);
    });

  db.command('health-check')
    .description('check connectivity, latency and pending migrations (exit 1 when unhealthy)')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const report = await runtime.operation<HealthReport>('db.health-check', {});
      if (options.json) runtime.out.json(report);
      else printRecord(runtime.out, { status: report.ok ? 'healthy' : 'unhealthy', backend: report.backend, latency_ms: report.latencyMs, migrations_applied: report.applied, migrations_pending: report.pending.join(' ') || 'none' });
      if (!report.ok) throw new CaracalError('CARACAL_NOT_READY', `pending migrations: ${report.pending.join(', ')} (run \`caracal db migrate up\`)`);
    });

  db.command('reset')
    .description('DROP every Caracal table and re-create the schema (requires --confirm)')
    .option('--confirm', 'yes, destroy all data in this database')
    .action(async (options) => {
      if (!options.confirm) throw new CaracalError('CARACAL_CONFIRM_REQUIRED', 'db reset destroys all data; re-run with --confirm');
      const runtime = rt();
      await runtime.withContext((ctx) => resetDatabase(ctx.db, runtime.config().database.schema));
      runtime.out.line('database reset: all tables dropped and migrations re-applied');
    });
}

import type { Command } from 'commander';
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import { CONSUMER_ROLES, resolveRoles, startConsumers, watchConsumers } from '../../consumers/index.js';
import { ConsumerMetrics } from '../../metrics/metrics.js';
import type { DlqEntry } from '../../consumers/dlq.js';
import { AppContext } from '../../context.js';
import { CaracalError } from '../../errors/catalog.js';
import { HomeLock } from '../../store/home.js';
import type { CliRuntime } from '../runtime.js';

const DLQ_COLUMNS = [
  { key: 'originalEventId', header: 'EVENT' },
  { key: 'topic', header: 'TOPIC' },
  { key: 'partition', header: 'PARTITION' },
  { key: 'offset', header: 'OFFSET' },
  { key: 'consumerGroup', header: 'GROUP' },
  { key: 'attempts', header: 'ATTEMPTS' },
  { key: 'failedAt', header: 'FAILED' },
  { key: 'redrivenAt', header: 'REDRIVEN' },
  { key: 'error', header: 'ERROR' },
];

export function registerConsumerCommands(program: Command, rt: () => CliRuntime): void {
  program
    .command('consumers')
    .description('event consumers (audit-logger, ledger-writer, metrics-aggregator)')
    .command('start')
    .description('start consumers against whatever the config names (`npm start` runs them in the gateway process)')
    .option('--only <role...>', `only these roles: ${CONSUMER_ROLES.join(', ')}`)
    .action(async (options: { only?: string[] }) => {
      const runtime = rt();
      const config = runtime.config();
      const roles = resolveRoles(options.only); // a bad --only fails before anything opens
      let lock: HomeLock | null = null;
      if (!config.database.url) {
        try {
          lock = HomeLock.acquire(config.home);
        } catch (err) {
          throw new CaracalError('CARACAL_USAGE', `the embedded database in ${config.home} is in use (a running \`npm start\` already runs the consumers): ${(err as Error).message}`);
        }
      }
      const ctx = await AppContext.fromConfig(config);
      const metrics = new ConsumerMetrics();
      let running;
      let metricsApp;
      try {
        running = await startConsumers(ctx, roles, {
          onProcessed: (role, topic) => metrics.events.inc({ role, topic, result: 'processed' }),
          onDeadLetter: (role, topic) => metrics.events.inc({ role, topic, result: 'dead_lettered' }),
        });
        metricsApp = Fastify({ logger: false });
        metricsApp.get('/metrics', async (_request, reply) => {
          reply.header('content-type', metrics.registry.contentType);
          return metrics.registry.metrics();
        });
        await metricsApp.listen({ host: config.metrics.host, port: config.metrics.consumersPort });
      } catch (err) {
        await running?.stop();
        await ctx.close();
        lock?.release();
        throw err;
      }
      const unwatch = watchConsumers(ctx, running, metrics);
      const address = metricsApp.server.address() as AddressInfo;
      runtime.out.line(`caracal consumers running: ${running.roles.join(', ')}  metrics: http://${config.metrics.host}:${address.port}/metrics  (stop with Ctrl-C)`);
      await new Promise<void>((resolve) => {
        const stop = () => {
          unwatch();
          void running
            .stop()
            .then(() => metricsApp.close())
            .then(() => ctx.close())
            .finally(() => {
              lock?.release();
              resolve();
            });
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
    });

  const dlq = program.command('dlq').description('dead-letter entries: events a consumer could not process');

  dlq
    .command('list')
    .description('list dead-letter entries not yet redriven')
    .option('--all', 'include redriven entries')
    .option('--limit <n>', 'at most this many', '1000')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const entries = await runtime.operation<DlqEntry[]>('dlq.list', { all: Boolean(options.all), limit: options.limit });
      if (options.json) return runtime.out.json(entries);
      runtime.out.table(entries.map((e) => ({ ...e, error: e.error.slice(0, 80) })) as unknown as Record<string, unknown>[], DLQ_COLUMNS);
      runtime.out.line(`${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}`);
    });

  dlq
    .command('get')
    .description("show one event's dead-letter entries, with the original message")
    .requiredOption('--event-id <id>', 'the failed event id (or the DLQ entry id)')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const entries = await runtime.operation<DlqEntry[]>('dlq.get', { eventId: options.eventId });
      if (options.json) return runtime.out.json(entries);
      for (const entry of entries) {
        for (const [key, value] of Object.entries(entry)) runtime.out.line(`${key.padEnd(16)} ${typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value)}`);
        runtime.out.line('');
      }
    });

  dlq
    .command('redrive')
    .description('publish dead-letter entries back to their original topic (idempotent)')
    .option('--event-id <id>', 'only this event (default: every pending entry)')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const result = await runtime.operation<{ redriven: number }>('dlq.redrive', options.eventId ? { eventId: options.eventId } : {});
      if (options.json) return runtime.out.json(result);
      runtime.out.line(`redriven: ${result.redriven}`);
    });
}

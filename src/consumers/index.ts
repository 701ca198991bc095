import { createMonthlyPartitions, currentMonth } from '../audit/audit-store.js';
import type { AppContext } from '../context.js';
import { CaracalError } from '../errors/catalog.js';
import { topicSpecs } from '../events/topics.js';
import type { ConsumerMetrics } from '../metrics/metrics.js';
import { migrateUp } from '../store/migrate.js';
import { auditLogger } from './audit-logger.js';
import { ledgerWriter } from './ledger-writer.js';
import { metricsAggregator } from './metrics-aggregator.js';
import { startConsumer, type ConsumerOptions, type ConsumerRole, type RunningConsumer } from './runner.js';

/** The consumer roles by name; the runbook's `--only` values. `metrics()` is the registry once there is one. */
const ROLES: Record<string, ((ctx: AppContext, metrics: () => ConsumerMetrics | undefined) => ConsumerRole) | null> = {
  'audit-logger': auditLogger,
  'ledger-writer': ledgerWriter,
  'metrics-aggregator': metricsAggregator,
};

export const CONSUMER_ROLES = Object.keys(ROLES);

/** The roles that exist, or the ones named by `only` (each must exist). */
export function resolveRoles(only: string[] | undefined): string[] {
  const built = CONSUMER_ROLES.filter((name) => ROLES[name] !== null);
  if (!only || only.length === 0) return built;
  for (const name of only) {
    if (!(name in ROLES)) throw new CaracalError('CARACAL_USAGE', `unknown consumer "${name}"; one of ${CONSUMER_ROLES.join(', ')}`);
    if (ROLES[name] === null) throw new CaracalError('CARACAL_USAGE', `consumer "${name}" is not built yet; available: ${built.join(', ')}`);
  }
  return only;
}

export interface RunningConsumers {
  roles: string[];
  /** Group ids of the running roles (for lag). */
  groups: string[];
  /** Roles that keep their own metrics (the ledger writer) report into `metrics` from now on. */
  useMetrics?(metrics: ConsumerMetrics): void;
  stop(): Promise<void>;
}

/**
 * Keeps the DLQ size and each group's lag in `metrics`, refreshed every `intervalMs`; a failed
 * refresh keeps the last values (and is logged), it never stops the consumers.
 */
export function watchConsumers(ctx: AppContext, running: RunningConsumers, metrics: ConsumerMetrics, intervalMs = 10_000): () => void {
  const log = ctx.logger.child({ component: 'consumer-metrics' });
  running.useMetrics?.(metrics);
  const refresh = async () => {
    const { rows } = await ctx.db.query<{ n: string | number }>('SELECT count(*) AS n FROM dlq_events WHERE redriven_at IS NULL');
    metrics.dlqSize.set(Number(rows[0]?.n ?? 0));
    const events = await ctx.events();
    for (const group of running.groups) {
      const perTopic = new Map<string, number>();
      for (const p of await events.consumerLag(group, Object.values(ctx.topics))) perTopic.set(p.topic, (perTopic.get(p.topic) ?? 0) + p.lag);
      for (const [topic, lag] of perTopic) metrics.lag.set({ group, topic }, lag);
    }
  };
  const tick = () => void refresh().catch((err) => log.warn({ err }, 'could not refresh consumer metrics'));
  tick();
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** Starts the named roles on the context's database and event log (topics and tables prepared first). */
export async function startConsumers(
  ctx: AppContext,
  only?: string[],
  options: ConsumerOptions & { prepare?: boolean; metrics?: ConsumerMetrics } = {},
): Promise<RunningConsumers> {
  const names = resolveRoles(only);
  let metrics = options.metrics;
  if (options.prepare ?? true) {
    await migrateUp(ctx.db);
    await (await ctx.events()).createTopics(topicSpecs(ctx.config));
    // This month's and the next two months' audit partitions, so events land in their month.
    await createMonthlyPartitions(ctx.db, { from: currentMonth(), months: 3 }).catch((err) =>
      ctx.logger.warn({ err }, 'audit log partitions not created; events go to the default partition'),
    );
  }
  const running: RunningConsumer[] = [];
  const groups: string[] = [];
  try {
    for (const name of names) {
      const role = ROLES[name]!(ctx, () => metrics);
      groups.push(role.groupId);
      running.push(await startConsumer(ctx, role, options));
    }
  } catch (err) {
    await Promise.allSettled(running.map((r) => r.stop()));
    throw err;
  }
  return {
    roles: names,
    groups,
    useMetrics: (registry) => {
      metrics = registry;
    },
    stop: async () => {
      await Promise.allSettled(running.map((r) => r.stop()));
    },
  };
}

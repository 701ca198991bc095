import { z } from 'zod';
import { topicSpecs } from '../events/topics.js';
import { appliedVersions, listMigrations } from '../store/migrate.js';
import { op } from './define.js';

/** Database and event-log housekeeping. */
export const SYSTEM_OPERATIONS = {
  'kafka.create-topics': op({
    description: 'Create the Caracal topics (idempotent)',
    args: z
      .object({
        partitions: z.coerce.number().int().min(1).max(1000).optional(),
        replicationFactor: z.coerce.number().int().min(1).max(10).optional(),
      })
      .strict(),
    run: async (ctx, { partitions, replicationFactor }) => {
      const specs = topicSpecs(ctx.config).map((spec) => ({
        ...spec,
        ...(partitions !== undefined ? { partitions } : {}),
        ...(replicationFactor !== undefined ? { replicationFactor } : {}),
      }));
      const events = await ctx.events();
      await events.createTopics(specs);
      return { backend: events.kind, topics: specs };
    },
  }),
  'kafka.consumer-lag': op({
    description: 'Committed vs end offset per partition of the Caracal topics for a consumer group',
    args: z.object({ consumerGroup: z.string().min(1).max(255).regex(/^[A-Za-z0-9._-]+$/, 'must be letters, digits, ".", "_" or "-"') }).strict(),
    run: async (ctx, { consumerGroup }) => (await ctx.events()).consumerLag(consumerGroup, Object.values(ctx.topics)),
  }),
  'db.health-check': op({
    description: 'Check the database: reachable, latency, migrations applied',
    args: z.object({}).strict(),
    run: async (ctx) => {
      const started = performance.now();
      await ctx.db.ping();
      const latencyMs = Math.round((performance.now() - started) * 100) / 100;
      const applied = await appliedVersions(ctx.db);
      const pending = listMigrations().filter((m) => !applied.includes(m.version)).map((m) => m.version);
      return { ok: pending.length === 0, backend: ctx.db.kind, latencyMs, applied: applied.length, pending };
    },
  }),
};

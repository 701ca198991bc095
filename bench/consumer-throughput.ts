/**
 * Consumer throughput: decision events/s from the event log into the append-only audit table, by
 * the real audit-logger role (parse + validate, one transaction per slice, idempotent on the id).
 *
 *   npm run build && source <statedir>/env && node dist/bench/consumer-throughput.js [events] [maxBatch ...] [--role ledger-writer]
 *
 * With DATABASE_URL and KAFKA_BROKERS set it runs on PostgreSQL + Kafka; without, on the embedded
 * default (PGlite + its table log). Each run uses a fresh schema and fresh topics: the events are
 * published first (not timed), then one consumer drains them. Two rates: from the consumer's start
 * (group join included) and from the first committed row, until the last transaction committed;
 * the row count is checked at the end. Several `maxBatch` values run one after the other in the
 * same process (1 = the one-transaction-per-event path, for comparison).
 */
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { loadConfig } from '../src/config/load.js';
import { startConsumers } from '../src/consumers/index.js';
import { AppContext } from '../src/context.js';
import { buildEvent, EVENT_TYPES } from '../src/events/cloudevents.js';
import { topicSpecs } from '../src/events/topics.js';
import { createLogger } from '../src/logging/logger.js';
import { migrateUp } from '../src/store/migrate.js';

const PRINCIPALS = 100;

/** A realistic policy.decisions message (about 700 bytes), one of 100 principals, 10 % denials. */
export function decisionMessage(i: number) {
  const principal = `agent-${i % PRINCIPALS}`;
  const event = buildEvent(EVENT_TYPES.decision, 'caracal/bench', principal, {
    decision_id: `d-${i}-${randomBytes(4).toString('hex')}`,
    request_id: `r-${i}`,
    principal_id: principal,
    token_id: `t-${i % PRINCIPALS}`,
    upstream: 'echo',
    method: 'GET',
    path: '/v1/items',
    upstream_url: 'http://127.0.0.1:9/v1/items',
    resource: 'api:external/echo',
    action: 'read',
    allow: i % 10 !== 0,
    reasons: i % 10 !== 0 ? [] : ['allowlist_denied'],
    policy_ids: ['pol-1'],
    bundle_revision: 'bench',
    status: i % 10 !== 0 ? 200 : 403,
  });
  return { key: principal, value: JSON.stringify(event), headers: { 'content-type': 'application/cloudevents+json' } };
}

export interface ConsumerRun {
  backend: string;
  /** Events/s from the consumer's start (group join included) to the last commit. */
  perSecond: number;
  /** Events/s from the first committed event to the last. */
  steady: number;
  seconds: number;
}

/** Publishes `total` decision events to fresh topics (not timed), then times one `role` consumer draining them. */
export async function measureConsumer(role: string, total: number, maxBatch: number): Promise<ConsumerRun> {
  const id = randomBytes(4).toString('hex');
  const services = Boolean(process.env.DATABASE_URL && process.env.KAFKA_BROKERS);
  const config = loadConfig({
    overrides: {
      logLevel: 'warn',
      home: `${process.env.TMPDIR ?? '/tmp'}/caracal-bench-consumers-${id}`,
      database: services ? { schema: `bench_${id}` } : {},
      kafka: { topicPrefix: `bench-${id}.`, groupPrefix: `bench-${id}.` },
    },
  });
  const ctx = await AppContext.fromConfig(config, { logger: createLogger('warn') });
  try {
    await migrateUp(ctx.db);
    const events = await ctx.events();
    await events.createTopics(topicSpecs(config));
    for (let start = 0; start < total; start += 2_000) {
      await events.publish(ctx.topics.decisions, Array.from({ length: Math.min(2_000, total - start) }, (_, k) => decisionMessage(start + k)));
    }
    // Counted in-process after each committed transaction (polling count(*) would load the database it measures).
    let processed = 0;
    let firstAt = 0;
    let done: () => void = () => {};
    const finished = new Promise<void>((resolve) => (done = resolve));
    const started = performance.now();
    const consumers = await startConsumers(ctx, [role], {
      maxBatch,
      onProcessed: () => {
        if (processed === 0) firstAt = performance.now();
        if (++processed >= total) done();
      },
    });
    let seconds = 0;
    let steady = 0;
    try {
      const timeout = setTimeout(() => done(), 600_000);
      await finished;
      clearTimeout(timeout);
      if (processed < total) throw new Error(`only ${processed} of ${total} events after 600 s`);
      const end = performance.now();
      seconds = (end - started) / 1000;
      steady = (total - 1) / ((end - firstAt) / 1000);
      const table = role === 'ledger-writer' ? 'ledger_entries' : 'audit_log';
      const { rows } = await ctx.db.query<{ n: string | number }>(`SELECT count(*) AS n FROM ${table}`);
      if (Number(rows[0]!.n) !== total) throw new Error(`${table} holds ${rows[0]!.n} rows, expected ${total}`);
    } finally {
      await consumers.stop();
    }
    if (services) await ctx.db.query(`DROP SCHEMA IF EXISTS "bench_${id}" CASCADE`).catch(() => {});
    return { backend: services ? 'PostgreSQL + Kafka' : 'embedded (PGlite + table log)', perSecond: total / seconds, steady, seconds };
  } finally {
    await ctx.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  // `--role ledger-writer` measures the ledger writer instead (events sealed into the Merkle tree).
  const roleFlag = process.argv.indexOf('--role');
  const role = roleFlag >= 0 ? process.argv[roleFlag + 1]! : 'audit-logger';
  const positional = process.argv.slice(2).filter((_, i, all) => all[i] !== '--role' && all[i - 1] !== '--role');
  const total = Number(positional[0] ?? 20_000);
  const batches = positional.slice(1).map(Number);
  for (const maxBatch of batches.length > 0 ? batches : [500, 1]) {
    const result = await measureConsumer(role, total, maxBatch);
    console.log(
      `consumer-throughput  ${role}  ${result.backend}  events=${total}  maxBatch=${maxBatch}  ${result.seconds.toFixed(2)} s  ${Math.round(result.perSecond)} events/s from the consumer's start (group join included), ${Math.round(result.steady)} events/s from the first row`,
    );
  }
}

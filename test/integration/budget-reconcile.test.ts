// Budgets after the spend counters were lost. PostgreSQL + Redis: a FLUSHALL while the gateway runs → every budgeted
// call is refused (503 budget_unavailable, fail closed) until `caracal budget reconcile`, after which each counter holds
// exactly the spend of the metering events recorded in the audit log, and budgets bind again. The embedded default: a
// new process starts with empty in-process counters and reconciles them from its database before serving, so budgets
// survive a restart; `caracal budget reconcile` reports the same sums. Metering events reach the audit log the real
// way: published on the metering topic and recorded by the audit-logger consumer.
import { meteringEvent } from '../helpers/metering-events.js';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisCache } from '../../src/cache/redis-cache.js';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import { EVENT_TYPES, type CloudEvent, type MeteringData } from '../../src/events/cloudevents.js';
import { eventMessage } from '../../src/events/publisher.js';
import { windowBounds, type BudgetWindow } from '../../src/metering/money.js';
import { mandateBudgetKey } from '../../src/gateway/budget-gate.js';
import { reconcileSpend, type ReconcileReport } from '../../src/metering/reconcile.js';
import { budgetLineKey, MemorySpendCounters, type SpendCounters } from '../../src/metering/spend-counters.js';
import type { Queryable } from '../../src/store/db.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { cliRunner } from '../helpers/cli.js';
import { BACKENDS, createHarness, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';
import { startPrivateRedis } from '../helpers/private-redis.js';
import { requireServices } from '../helpers/services.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const PRICE = '0.25';
const PRICE_MICROS = 250_000;
const pricing = { currency: 'USD', perRequest: PRICE } as unknown as NonNullable<ExtraUpstream['pricing']>;

async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(100);
  }
  return check();
}


function metering(principalId: string, chain: string[], costMicros: number, overrides: Partial<MeteringData> = {}): CloudEvent<MeteringData> {
  return meteringEvent(principalId, costMicros, { chain, ...overrides });
}

/** What the audit log says a budget line spent, computed here (not by the code under test) from every metering row. */
async function recordedInAuditLog(db: Queryable, principalId: string, window: BudgetWindow, currency: string, now = new Date()): Promise<{ micros: number; events: number }> {
  const { rows } = await db.query<{ data: MeteringData | string }>('SELECT data FROM audit_log WHERE event_type = $1', [EVENT_TYPES.metering]);
  const { start, end } = windowBounds(window, now);
  let micros = 0;
  let events = 0;
  for (const row of rows) {
    const data = typeof row.data === 'string' ? (JSON.parse(row.data) as MeteringData) : row.data;
    const started = new Date(data.started_at).getTime();
    if (data.currency !== currency || started < start.getTime() || started >= end.getTime()) continue;
    if (data.principal_id !== principalId && !data.chain.includes(principalId)) continue;
    micros += data.cost_micros;
    events++;
  }
  return { micros, events };
}

async function inAuditLog(db: Queryable, ids: string[]): Promise<boolean> {
  const { rows } = await db.query<{ n: string | number }>('SELECT count(*) AS n FROM audit_log WHERE event_id = ANY($1::text[])', [ids]);
  return Number(rows[0]!.n) === ids.length;
}

const lineKey = (principalId: string, window: BudgetWindow) => budgetLineKey(principalId, window, windowBounds(window, new Date()).start);

interface Agents {
  parent: string;
  child: string;
  other: string;
  events: CloudEvent<MeteringData>[];
}

/**
 * A parent, a child acting for it, another agent; budgets (the parent's weekly one in EUR); and metering events on the
 * topic, recorded by the audit-logger: the child's calls are charged to the parent too (chain), one is in EUR, one
 * started yesterday, one is published twice (a redelivery). The child's daily budget of 4.50 holds 3.50 of recorded spend: 1.00 left, 4 calls.
 */
async function setUp(h: Harness, paidUrl: string): Promise<Agents> {
  const agent = async () => {
    const id = await h.registerAgent();
    await h.op('policy.create', { principalId: id, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: id, pattern: `${paidUrl}/**`, patternType: 'glob' });
    return id;
  };
  const [parent, child, other] = [await agent(), await agent(), await agent()];
  await h.op('budget.set', { principalId: parent, window: 'daily', limit: '100', currency: 'USD' });
  await h.op('budget.set', { principalId: parent, window: 'monthly', limit: '1000', currency: 'USD' });
  await h.op('budget.set', { principalId: child, window: 'daily', limit: '4.50', currency: 'USD' });
  await h.op('budget.set', { principalId: parent, window: 'weekly', limit: '50', currency: 'EUR' });
  await h.op('budget.set', { principalId: other, window: 'daily', limit: '10', currency: 'USD' });
  const yesterday = new Date(windowBounds('daily', new Date()).start.getTime() - 60_000).toISOString();
  const events = [
    metering(child, [parent], 1_500_000),
    metering(child, [parent], 2_000_000, { model: 'gpt-4o-mini', input_tokens: 10, output_tokens: 5 }),
    metering(parent, [], 700_000),
    metering(child, [parent], 300_000, { currency: 'EUR' }),
    metering(child, [parent], 999_000, { started_at: yesterday }),
    metering(other, [], 5_000_000),
    // The chain names the caller's own principal again: still charged once.
    metering(child, [parent, parent], 0),
  ];
  const log = await h.ctx.events();
  const messages = events.map((e) => eventMessage(e.data.principal_id, e));
  await log.publish(h.ctx.topics.metering, [...messages, messages[0]!]);
  expect(await until(() => inAuditLog(h.ctx.db, events.map((e) => e.id)))).toBe(true);
  return { parent, child, other, events };
}

const call = (h: Harness, token: string) => h.assembled.gateway.app.inject({ url: '/proxy/paid/v1/items', headers: { authorization: `Bearer ${token}` } });

/** Every budget line of the agents holds exactly what the audit log records for it. */
async function expectCountersMatchAuditLog(db: Queryable, counters: SpendCounters, agents: Agents): Promise<void> {
  const lines: [string, BudgetWindow, string][] = [
    [agents.parent, 'daily', 'USD'],
    [agents.parent, 'monthly', 'USD'],
    [agents.child, 'daily', 'USD'],
    [agents.parent, 'weekly', 'EUR'],
    [agents.other, 'daily', 'USD'],
  ];
  for (const [principal, window, currency] of lines) {
    const recorded = await recordedInAuditLog(db, principal, window, currency);
    expect((await counters.usage(lineKey(principal, window))).spentMicros, `${principal} ${window}`).toBe(recorded.micros);
  }
  // The fixed part of the scenario, as numbers (the child's yesterday's call is outside today's period).
  expect((await counters.usage(lineKey(agents.child, 'daily'))).spentMicros).toBe(3_500_000);
  expect((await counters.usage(lineKey(agents.parent, 'daily'))).spentMicros).toBe(4_200_000);
  expect((await counters.usage(lineKey(agents.parent, 'weekly'))).spentMicros).toBe(300_000);
  expect((await counters.usage(lineKey(agents.other, 'daily'))).spentMicros).toBe(5_000_000);
}

function expectReport(report: ReconcileReport, agents: Agents): void {
  const line = (principal: string, window: string) => report.lines.find((l) => l.principalId === principal && l.window === window);
  expect(line(agents.child, 'daily')).toMatchObject({ currency: 'USD', restoredMicros: 3_500_000, restored: '3.50', events: 3, limitMicros: 4_500_000, periodStart: windowBounds('daily', new Date()).start.toISOString() });
  expect(line(agents.parent, 'daily')).toMatchObject({ restoredMicros: 4_200_000, events: 4 });
  expect(line(agents.parent, 'weekly')).toMatchObject({ currency: 'EUR', restoredMicros: 300_000, events: 1 });
  expect(line(agents.other, 'daily')).toMatchObject({ restoredMicros: 5_000_000, events: 1 });
}

/** The child's 1.00 left: exactly 4 calls of 0.25, then budget_exceeded. */
async function expectBudgetBinds(h: Harness, child: string): Promise<void> {
  const token = await h.token(child);
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) statuses.push((await call(h, token)).statusCode);
  expect(statuses).toEqual([200, 200, 200, 200, 429]);
  const refused = await call(h, token);
  expect(refused.json()).toMatchObject({ reasons: ['budget_exceeded'], budget: { principal_id: child, window: 'daily', remaining: '0.00' } });
}

describe('budget counters lost on PostgreSQL + Redis (FLUSHALL mid-run)', () => {
  let redis: Awaited<ReturnType<typeof startPrivateRedis>> | undefined;
  let cache: RedisCache | undefined;
  let h: Harness | undefined;
  let consumers: RunningConsumers | undefined;
  let paid: EchoUpstream | undefined;
  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
    await cache?.close();
    await redis?.stop();
    await paid?.close();
  });

  it('refuses budgeted calls until `caracal budget reconcile`, which restores exactly the recorded spend; then budgets bind', async () => {
    redis = await startPrivateRedis();
    const keyPrefix = `reconcile-${randomBytes(4).toString('hex')}:`;
    cache = new RedisCache({ url: redis.url, keyPrefix });
    await cache.connect();
    paid = await startEchoUpstream();
    h = await createHarness({ backend: 'services', cache, extraUpstreams: [{ name: 'paid', url: paid.url, pricing }] });
    consumers = await startConsumers(h.ctx, ['audit-logger'], { prepare: false, baseDelayMs: 10, maxDelayMs: 50 });
    const counters = await h.ctx.spendCounters();
    // A fresh Redis: the counters were reconciled (from nothing) when the gateway opened them.
    expect(await counters.isReady()).toBe(true);
    const agents = await setUp(h, paid.url);
    // Before the flush budgets work: a probe agent of its own (its call is on the live counters only).
    const probe = await h.registerAgent();
    await h.op('policy.create', { principalId: probe, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: probe, pattern: `${paid.url}/**`, patternType: 'glob' });
    await h.op('budget.set', { principalId: probe, window: 'daily', limit: '10', currency: 'USD' });
    const probeToken = await h.token(probe);
    for (let i = 0; i < 3; i++) expect((await call(h, probeToken)).statusCode).toBe(200);
    // The gateway's own metering events of those calls reach the audit log too: after the reconcile the probe's
    // counter holds again exactly what it held before the flush.
    const probeLine = lineKey(probe, 'daily');
    expect(await until(async () => (await counters.usage(probeLine)).reservedMicros === 0)).toBe(true);
    const probeBefore = (await counters.usage(probeLine)).spentMicros;
    expect(probeBefore).toBe(3 * PRICE_MICROS);
    expect(await until(async () => (await recordedInAuditLog(h!.ctx.db, probe, 'daily', 'USD')).events === 3)).toBe(true);

    await redis.flushAll();
    const before = paid.requests;
    const refused = await call(h, await h.token(agents.child));
    expect(refused.statusCode).toBe(503);
    expect(refused.json()).toMatchObject({ error: 'CARACAL_DEPENDENCY', reasons: ['budget_unavailable'] });
    expect((await call(h, probeToken)).statusCode).toBe(503);
    expect(paid.requests).toBe(before);
    const direct = await counters.reserve('after-flush', [{ key: lineKey(agents.child, 'daily'), limitMicros: 4_500_000, periodEndMs: Date.now() + 3_600_000 }], 1, 60_000).catch((e: unknown) => e);
    expect(direct).toMatchObject({ code: 'CARACAL_DEPENDENCY', message: expect.stringMatching(/counters were lost.*caracal budget reconcile/) });
    // Not repaired behind the operator's back: still refused a moment later.
    await sleep(300);
    expect((await call(h, probeToken)).statusCode).toBe(503);
    // /ready says why (advisory: unpriced calls still go through).
    const ready = async () => (await h!.assembled.gateway.app.inject({ url: '/ready' })).json() as { checks: Record<string, { ok: boolean; error?: string; advisory?: boolean }> };
    expect((await ready()).checks.budgets).toMatchObject({ ok: false, advisory: true, error: expect.stringContaining('caracal budget reconcile') });

    const services = requireServices();
    const caracal = cliRunner(() => ({
      CARACAL_HOME: mkdtempSync(path.join(tmpdir(), 'caracal-reconcile-cli-')),
      CARACAL_LOG_LEVEL: 'silent',
      DATABASE_URL: services.databaseUrl,
      CARACAL_DB_SCHEMA: h!.ctx.config.database.schema,
      KAFKA_BROKERS: services.kafkaBrokers.join(','),
      CARACAL_TOPIC_PREFIX: h!.ctx.config.kafka.topicPrefix,
      REDIS_URL: redis!.url,
      CARACAL_REDIS_KEY_PREFIX: keyPrefix,
    }));
    const run = await caracal('budget', 'reconcile', '--json');
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    const report = JSON.parse(run.out) as ReconcileReport;
    expect(report.counters).toBe('redis');
    expectReport(report, agents);
    expect(await counters.isReady()).toBe(true);
    expect((await ready()).checks.budgets).toMatchObject({ ok: true });
    await expectCountersMatchAuditLog(h.ctx.db, counters, agents);
    expect((await counters.usage(probeLine)).spentMicros).toBe(probeBefore);
    await expectBudgetBinds(h, agents.child);

    // A reconcile on counters that were not lost changes nothing that counts: the four calls stay counted.
    const table = await caracal('budget', 'reconcile');
    expect(table.code).toBe(0);
    const lines = table.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^AGENT\s+MANDATE\s+WINDOW\s+PERIOD START\s+CURRENCY\s+LIMIT\s+RECORDED\s+EVENTS\s+SPENT$/);
    // LIMIT 4.50, RECORDED (3.50, or more once the gateway's own calls are recorded too), SPENT 4.50.
    expect(lines.find((l) => l.startsWith(`${agents.child}  -`) && /\sdaily\s/.test(l))).toMatch(/\sUSD\s+4\.50\s+\d+\.\d+\s+\d+\s+4\.50$/);
    expect(lines.at(-1)).toMatch(/^reconciled \d+ budget lines on the redis spend counters; budgets bind again$/);
    expect((await counters.usage(lineKey(agents.child, 'daily'))).spentMicros).toBe(3_500_000 + 4 * PRICE_MICROS);
    expect((await call(h, await h.token(agents.child))).statusCode).toBe(429);
  }, 60_000);
});

describe('budget counters on the embedded default (in-process: lost with the process)', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  });

  it('a new process reconciles from its database before serving; `caracal budget reconcile` reports the same sums', async () => {
    const paid = await startEchoUpstream();
    cleanups.push(() => paid.close());
    const first = await createHarness({ backend: 'embedded', extraUpstreams: [{ name: 'paid', url: paid.url, pricing }] });
    cleanups.push(() => first.close());
    const consumers = await startConsumers(first.ctx, ['audit-logger'], { prepare: false, baseDelayMs: 10, maxDelayMs: 50 });
    let consumersStopped = false;
    const stopConsumers = async () => {
      if (!consumersStopped) await consumers.stop();
      consumersStopped = true;
    };
    cleanups.push(stopConsumers);
    const home = first.ctx.config.home;
    const agents = await setUp(first, paid.url);
    expect(await (await first.ctx.spendCounters()).isReady()).toBe(true);
    await stopConsumers();
    await first.close(); // the process ends: its in-process counters are gone

    const caracal = cliRunner(() => ({ CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' }));
    const run = await caracal('budget', 'reconcile', '--json');
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    const report = JSON.parse(run.out) as ReconcileReport;
    expect(report.counters).toBe('memory');
    expectReport(report, agents);

    // The next process on the same database: its counters start empty and are reconciled before it serves.
    const db = await PgliteDb.open(path.join(home, 'pgdata'));
    cleanups.push(() => db.close());
    const second = await createHarness({ backend: 'embedded', db, extraUpstreams: [{ name: 'paid', url: paid.url, pricing }] });
    cleanups.push(() => second.close());
    const counters = await second.ctx.spendCounters();
    expect(counters.kind).toBe('memory');
    expect(await counters.isReady()).toBe(true);
    await expectCountersMatchAuditLog(db, counters, agents);
    await expectBudgetBinds(second, agents.child);
  }, 60_000);
});

describe.each(BACKENDS)("a delegated mandate's own budget, reconciled on the %s backend", (backend) => {
  let h: Harness | undefined;
  let consumers: RunningConsumers | undefined;
  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
  });

  it('counts the calls made under the mandate (its own or delegated from it), in its currency and period', async () => {
    h = await createHarness({ backend });
    consumers = await startConsumers(h.ctx, ['audit-logger'], { prepare: false, baseDelayMs: 10, maxDelayMs: 50 });
    const [parent, child] = [await h.registerAgent(), await h.registerAgent()];
    await h.op('policy.create', { principalId: parent, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600, delegationDepth: 2 });
    const root = (await h.op('mandate.issue', { principalId: parent, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 })) as { id: string; token: string };
    const delegated = (await h.op('mandate.delegate', {
      parentToken: root.token,
      parentId: root.id,
      principalId: child,
      resources: ['api:external/*'],
      actions: ['read'],
      validitySeconds: 300,
      budget: { limit: '2.00', window: 'daily', currency: 'USD' },
    })) as { id: string };
    const under = [delegated.id, root.id];
    const events = [
      metering(child, [parent], 700_000, { mandate_ids: under, token_id: delegated.id }),
      metering(child, [parent], 300_000, { mandate_ids: under, token_id: delegated.id }),
      metering(child, [parent], 100, { mandate_ids: under, token_id: delegated.id, currency: 'EUR' }),
      // The child's own calls without the mandate are not the mandate's.
      metering(child, [], 5_000_000),
    ];
    await (await h.ctx.events()).publish(
      h.ctx.topics.metering,
      events.map((e) => eventMessage(e.data.principal_id, e)),
    );
    expect(await until(() => inAuditLog(h!.ctx.db, events.map((e) => e.id)))).toBe(true);

    const counters = new MemorySpendCounters();
    const report = await reconcileSpend(h.ctx.db, counters);
    const line = report.lines.find((l) => l.mandateId === delegated.id);
    expect(line).toMatchObject({ principalId: child, window: 'daily', currency: 'USD', limitMicros: 2_000_000, restoredMicros: 1_000_000, events: 2 });
    expect(report.lines.some((l) => l.mandateId === root.id)).toBe(false); // no budget of its own
    expect((await counters.usage(mandateBudgetKey(delegated.id, 'daily', windowBounds('daily', new Date()).start))).spentMicros).toBe(1_000_000);
    expect(await counters.isReady()).toBe(true);
  }, 60_000);
});

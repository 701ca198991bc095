import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queryAudit } from '../../src/audit/audit-store.js';
import { listDlqEntries, redriveDlq } from '../../src/consumers/dlq.js';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { startConsumer, type ConsumerRole, type RunningConsumer } from '../../src/consumers/runner.js';
import { buildEvent, EVENT_TYPES, parseEvent } from '../../src/events/cloudevents.js';
import { decisionEvent } from '../helpers/fixtures.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { startCli } from '../helpers/processes.js';
import { randomName } from '../helpers/services.js';

/** Polls `check` until it returns true or `timeoutMs` passes. */
async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

const ALL_TIME = { start: new Date('2000-01-01T00:00:00Z'), end: new Date('2100-01-01T00:00:00Z') };

describe.each(BACKENDS)('consumers on the %s backend', (backend) => {
  let h: Harness;
  let consumers: RunningConsumers;
  let agent: string;
  let token: string;

  beforeAll(async () => {
    h = await createHarness({ backend });
    consumers = await startConsumers(h.ctx, ['audit-logger'], { baseDelayMs: 10, maxDelayMs: 50, maxAttempts: 3, prepare: false });
    agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
    token = await h.token(agent);
  });

  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
  });

  it('writes every decision (allow and deny) into the audit log once, with its request and decision ids', async () => {
    const replies = [
      await h.assembled.gateway.app.inject({ url: '/proxy/echo/a', headers: { authorization: `Bearer ${token}` } }),
      await h.assembled.gateway.app.inject({ method: 'POST', url: '/proxy/echo/a', headers: { authorization: `Bearer ${token}` }, payload: {} }),
      await h.assembled.gateway.app.inject({ url: '/proxy/echo/a', headers: { authorization: 'Bearer nope' } }),
    ];
    expect(replies.map((r) => r.statusCode)).toEqual([200, 403, 401]);
    for (const reply of replies) {
      const decisionId = reply.headers['x-caracal-decision-id'] as string;
      const found = await until(async () => (await queryAudit(h.ctx.db, { ...ALL_TIME, decisionId, limit: 10 })).length > 0);
      expect(found, decisionId).toBe(true);
      const rows = await queryAudit(h.ctx.db, { ...ALL_TIME, decisionId, limit: 10 });
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ eventType: EVENT_TYPES.decision, topic: h.ctx.topics.decisions, requestId: reply.headers['x-request-id'] });
    }
    // Lifecycle events (the agent's registration) are recorded too.
    expect(await until(async () => (await queryAudit(h.ctx.db, { ...ALL_TIME, principalId: agent, limit: 100 })).some((r) => r.topic === h.ctx.topics.lifecycle))).toBe(true);
  });

  it('sends a poison event of each topic to the DLQ with its coordinates and keeps going', async () => {
    const events = await h.ctx.events();
    const key = randomName('poison');
    // The poison decision sits between two good ones of its key (one partition, one slice): the
    // slice's transaction fails, and the one-by-one pass records both good ones and dead-letters it.
    const decision = (suffix: string) => decisionEvent(key, suffix);
    await events.publish(h.ctx.topics.decisions, [
      { key, value: JSON.stringify(decision('before')) },
      { key, value: 'this is not json' },
      { key, value: JSON.stringify(decision('behind')) },
    ]);
    await events.publish(h.ctx.topics.lifecycle, [{ key, value: JSON.stringify({ specversion: '1.0', id: `${key}-lifecycle`, type: EVENT_TYPES.lifecycle, source: 'test', time: new Date().toISOString(), datacontenttype: 'application/json', data: { entity: 'nonsense' } }) }]);
    await events.publish(h.ctx.topics.metering, [{ key, value: JSON.stringify({ specversion: '1.0', id: `${key}-metering`, type: 'dev.caracal.unknown.v9', source: 'test', time: new Date().toISOString(), datacontenttype: 'application/json', data: {} }) }]);
    // A good event after the poison ones is still processed.
    const after = await h.assembled.gateway.app.inject({ url: '/proxy/echo/after', headers: { authorization: `Bearer ${token}` } });
    const afterId = after.headers['x-caracal-decision-id'] as string;

    const poisoned = async () => (await listDlqEntries(h.ctx.db)).filter((e) => e.key === key);
    expect(await until(async () => (await poisoned()).length === 3)).toBe(true);
    const entries = await poisoned();
    expect(new Set(entries.map((e) => e.topic))).toEqual(new Set([h.ctx.topics.decisions, h.ctx.topics.lifecycle, h.ctx.topics.metering]));
    for (const entry of entries) {
      expect(entry.consumerGroup).toBe(`${h.ctx.config.kafka.groupPrefix}audit-logger-group`);
      expect(entry.offset).toMatch(/^\d+$/);
      expect(entry.partition).toBeGreaterThanOrEqual(0);
      expect(entry.error).toMatch(/EventSchemaError|not valid JSON|invalid|unknown event type/);
      expect(entry.attempts).toBe(1);
    }
    expect(entries.find((e) => e.topic === h.ctx.topics.lifecycle)!.originalEventId).toBe(`${key}-lifecycle`);
    expect(await until(async () => (await queryAudit(h.ctx.db, { ...ALL_TIME, decisionId: afterId, limit: 10 })).length === 1)).toBe(true);
    for (const neighbour of ['before', 'behind']) {
      expect(await until(async () => (await queryAudit(h.ctx.db, { ...ALL_TIME, decisionId: `${key}-${neighbour}`, limit: 10 })).length === 1), neighbour).toBe(true);
    }
    expect(await poisoned()).toHaveLength(3);
  });

  it('redrives a dead-lettered event after the fix: processed exactly once, redrive is idempotent', async () => {
    // A consumer that fails on one event until it is "fixed".
    const broken = new Set<string>();
    const processed: string[] = [];
    const role: ConsumerRole = {
      name: 'fussy',
      groupId: randomName('fussy-group'),
      topics: (ctx) => [ctx.topics.metering],
      handle: async (message) => {
        const event = parseEvent(message.value);
        if (broken.has(event.id)) throw new Error(`cannot handle ${event.id} yet`);
        processed.push(event.id);
      },
    };
    const fussy: RunningConsumer = await startConsumer(h.ctx, role, { baseDelayMs: 10, maxDelayMs: 20, maxAttempts: 3 });
    try {
      const event = buildEvent(EVENT_TYPES.lifecycle, 'test', agent, { entity: 'budget', action: 'set', principal_id: agent, entity_id: null, attributes: {} });
      broken.add(event.id);
      await (await h.ctx.events()).publish(h.ctx.topics.metering, [{ key: agent, value: JSON.stringify(event) }]);
      const entryOf = async () => (await listDlqEntries(h.ctx.db, { includeRedriven: true })).filter((e) => e.originalEventId === event.id && e.consumerGroup === role.groupId);
      expect(await until(async () => (await entryOf()).length === 1)).toBe(true);
      expect((await entryOf())[0]!.attempts).toBe(3);
      expect(processed).not.toContain(event.id);

      broken.delete(event.id); // the fix
      const first = await redriveDlq(h.ctx.db, await h.ctx.events(), event.id);
      expect(first).toHaveLength(1);
      expect(await until(async () => processed.includes(event.id))).toBe(true);
      const second = await redriveDlq(h.ctx.db, await h.ctx.events(), event.id);
      expect(second).toHaveLength(0);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(processed.filter((id) => id === event.id)).toHaveLength(1);
      expect((await entryOf())[0]!.redrivenAt).not.toBeNull();
      // The audit log saw the event on its first pass and again after the redrive: still one row.
      expect(await until(async () => (await queryAudit(h.ctx.db, { ...ALL_TIME, principalId: agent, limit: 1000 })).filter((r) => r.eventId === event.id).length === 1)).toBe(true);
    } finally {
      await fussy.stop();
    }
  });
});

describe('caracal consumers start, as a process on PostgreSQL + Kafka', () => {
  it('consumes into the audit log, serves its metrics, and stops cleanly on SIGTERM', async () => {
    const h = await createHarness({ backend: 'services' });
    const { config } = h.ctx;
    const proc = startCli(['consumers', 'start', '--only', 'audit-logger'], {
      ...process.env,
      DATABASE_URL: config.database.url!,
      CARACAL_DB_SCHEMA: config.database.schema,
      KAFKA_BROKERS: config.kafka.brokers!.join(','),
      CARACAL_TOPIC_PREFIX: config.kafka.topicPrefix,
      CARACAL_GROUP_PREFIX: config.kafka.groupPrefix,
      CARACAL_CONSUMERS_METRICS_PORT: '0',
      CARACAL_LOG_LEVEL: 'warn',
    });
    try {
      const [, metricsUrl] = await proc.waitFor(/metrics: (http:\/\/\S+\/metrics)/, 90_000);
      const agent = await h.registerAgent();
      await h.grant(agent, ['api:external/echo'], ['read']);
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/echo/p', headers: { authorization: `Bearer ${await h.token(agent)}` } });
      const decisionId = reply.headers['x-caracal-decision-id'] as string;
      expect(await until(async () => (await queryAudit(h.ctx.db, { ...ALL_TIME, decisionId, limit: 10 })).length === 1, 60_000), proc.output()).toBe(true);
      expect(await until(async () => /caracal_consumer_events_total\{role="audit-logger",topic="[^"]+policy\.decisions",result="processed"\} [1-9]/.test(await (await fetch(metricsUrl!)).text()), 30_000)).toBe(true);
      const text = await (await fetch(metricsUrl!)).text();
      expect(text).toMatch(/caracal_dlq_size \d+/);
      expect(text).toMatch(/caracal_kafka_consumer_lag\{group="[^"]*audit-logger-group",topic="[^"]+"\} \d+/);
      expect(await proc.stop()).toBe(0);
    } finally {
      await proc.stop();
      await h.close();
    }
  });
});

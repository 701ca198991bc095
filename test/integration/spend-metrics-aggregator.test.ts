// The metrics-aggregator consumer on both backends (Redis + Kafka + PostgreSQL; the embedded default's in-process
// cache and local log): metering events become recorded-spend counters per principal (the caller and its chain),
// window and currency, and `caracal_spending_total{currency,upstream}` in micro-units — each event once, however often
// it is delivered; a malformed event goes to the DLQ and the consumer goes on.
import { meteringEvent } from '../helpers/metering-events.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listDlqEntries } from '../../src/consumers/dlq.js';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { metricsAggregator, readRecordedSpend } from '../../src/consumers/metrics-aggregator.js';
import { buildEvent, EVENT_TYPES, type CloudEvent, type MeteringData } from '../../src/events/cloudevents.js';
import type { LogMessage } from '../../src/events/event-log.js';
import { eventMessage } from '../../src/events/publisher.js';
import { BUDGET_WINDOWS } from '../../src/metering/money.js';
import { ConsumerMetrics } from '../../src/metrics/metrics.js';
import { newId } from '../../src/util/ids.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';

async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

const agentId = () => newId().replace(/[^A-Za-z0-9-]/g, '');

function metering(principalId: string, chain: string[], costMicros: number, currency = 'USD', upstream = 'echo'): CloudEvent<MeteringData> {
  return meteringEvent(principalId, costMicros, { chain, currency, upstream, model: 'gpt-4o-mini', input_tokens: 12, output_tokens: 34, cached_input_tokens: 0 });
}

/** The counter's value for these labels (0 when it has none). */
async function spending(metrics: ConsumerMetrics, labels: { currency: string; upstream: string }): Promise<number> {
  const metric = await metrics.registry.getSingleMetric('caracal_spending_total')!.get();
  return metric.values.find((v) => v.labels.currency === labels.currency && v.labels.upstream === labels.upstream)?.value ?? 0;
}

describe.each(BACKENDS)('metrics-aggregator on the %s backend', (backend) => {
  let h: Harness;
  let consumers: RunningConsumers;
  const metrics = new ConsumerMetrics(false);

  beforeAll(async () => {
    h = await createHarness({ backend });
    consumers = await startConsumers(h.ctx, ['audit-logger', 'metrics-aggregator'], { prepare: false, metrics, baseDelayMs: 10, maxDelayMs: 50, maxAttempts: 3 });
  }, 120_000);
  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
  });

  it('counts each event once per charged principal and window, and in caracal_spending_total; poison goes to the DLQ', async () => {
    const [parent, child] = [agentId(), agentId()];
    const first = metering(child, [parent], 1_234_567);
    const second = metering(child, [parent], 765_433);
    const euro = metering(parent, [], 100, 'EUR');
    const key = child;
    const events = await h.ctx.events();
    await events.publish(h.ctx.topics.metering, [
      eventMessage(key, first),
      // Delivered twice (a producer retry): the same event, counted once.
      eventMessage(key, first),
      { key, value: 'this is not json {' },
      // A valid event of another type on the metering topic: not a metering event.
      { key, value: JSON.stringify(buildEvent(EVENT_TYPES.lifecycle, 'caracal/test', child, { entity: 'budget', action: 'set', principal_id: child, entity_id: null, attributes: {} })) },
      eventMessage(key, second),
      eventMessage(parent, euro),
    ]);
    const cache = await h.ctx.cache();
    const at = new Date(first.data.started_at);
    expect(await until(async () => (await readRecordedSpend(cache, child, 'daily', 'USD', at)) === 2_000_000 && (await readRecordedSpend(cache, parent, 'daily', 'EUR', at)) === 100)).toBe(true);
    for (const window of BUDGET_WINDOWS) {
      expect(await readRecordedSpend(cache, child, window, 'USD', at), `child ${window}`).toBe(2_000_000);
      // The parent's counters hold its delegated child's calls (as its budgets are charged) and its own.
      expect(await readRecordedSpend(cache, parent, window, 'USD', at), `parent ${window}`).toBe(2_000_000);
      expect(await readRecordedSpend(cache, parent, window, 'EUR', at), `parent ${window} EUR`).toBe(100);
      expect(await readRecordedSpend(cache, child, window, 'EUR', at)).toBe(0);
    }
    expect(await spending(metrics, { currency: 'USD', upstream: 'echo' })).toBe(2_000_000);
    expect(await spending(metrics, { currency: 'EUR', upstream: 'echo' })).toBe(100);
    const text = await metrics.registry.metrics();
    expect(text).toContain('caracal_spending_total{currency="USD",upstream="echo"} 2000000');
    expect(text).not.toMatch(/caracal_spending_total\{[^}]*principal/);

    const group = `${h.ctx.config.kafka.groupPrefix}metrics-aggregator-group`;
    const dead = async () => (await listDlqEntries(h.ctx.db)).filter((e) => e.consumerGroup === group && e.key === key);
    expect(await until(async () => (await dead()).length === 2)).toBe(true);
    const entries = await dead();
    expect(entries.map((e) => e.error).sort()).toEqual([expect.stringMatching(/EventSchemaError: event is not valid JSON/), expect.stringMatching(/PoisonMessage: not a metering event: dev\.caracal\.agent\.lifecycle\.v1/)].sort());
    for (const entry of entries) expect(entry).toMatchObject({ topic: h.ctx.topics.metering, attempts: 1 });

    // Redelivered to a role started again (after a crash before the offset was committed): still counted once.
    const again = metricsAggregator(h.ctx, () => metrics);
    await again.start?.();
    const message: LogMessage = { topic: h.ctx.topics.metering, partition: 0, offset: '0', key, value: JSON.stringify(first), headers: {}, timestamp: Date.now() };
    await again.handle(message);
    await again.handle(message);
    expect(await readRecordedSpend(cache, child, 'daily', 'USD', at)).toBe(2_000_000);
    expect(await spending(metrics, { currency: 'USD', upstream: 'echo' })).toBe(2_000_000);
    // A new event through that role counts, by its exact micro-units.
    const third = metering(child, [], 1);
    await again.handle({ ...message, value: JSON.stringify(third) });
    expect(await readRecordedSpend(cache, child, 'daily', 'USD', at)).toBe(2_000_001);
    expect(await readRecordedSpend(cache, parent, 'daily', 'USD', at)).toBe(2_000_000);
    expect(await spending(metrics, { currency: 'USD', upstream: 'echo' })).toBe(2_000_001);
    await again.stop?.();
  });

  it('is a consumer role the runbook can name', async () => {
    const { resolveRoles } = await import('../../src/consumers/index.js');
    expect(resolveRoles(['metrics-aggregator'])).toEqual(['metrics-aggregator']);
    expect(resolveRoles(undefined)).toContain('metrics-aggregator');
  });
});

import { LRUCache } from 'lru-cache';
import type { Cache } from '../cache/cache.js';
import { RedisCache } from '../cache/redis-cache.js';
import type { AppContext } from '../context.js';
import { EVENT_TYPES, parseEvent, type CloudEvent, type MeteringData } from '../events/cloudevents.js';
import type { LogMessage } from '../events/event-log.js';
import { BUDGET_WINDOWS, windowBounds, type BudgetWindow } from '../metering/money.js';
import { COUNTER_GRACE_MS } from '../metering/spend-counters.js';
import type { ConsumerMetrics } from '../metrics/metrics.js';
import { PoisonMessage, type ConsumerRole } from './runner.js';

/**
 * Recorded spend per principal and window, in the cache's store: for each metering event, its cost is added to the
 * counter of every principal the call was charged to (its caller and each principal of its chain, as budgets are) in
 * the UTC calendar periods (hour, day, ISO week, month) its call started in, per currency. Each event counts once:
 * a redelivered one is recognised by its id. The counters expire COUNTER_GRACE_MS after their period.
 *
 * Redis: one Lua script per event claims the event id (SET NX, kept as long as the longest counter it added to) and
 * adds to the counters, atomically, so any number of aggregator processes can share the work. In-process: the cache's
 * counters, and the ids of the last MEMORY_DEDUPE_IDS events counted into that cache (a bounded dedupe: one process,
 * one cache; an event redelivered after that many others would count again).
 */
export const MEMORY_DEDUPE_IDS = 200_000;

/** The counter of `principalId`'s recorded spend in `currency` in the period of `window` starting at `periodStart`. */
export function recordedSpendKey(principalId: string, window: BudgetWindow, periodStart: Date, currency: string): string {
  return `spend-recorded:${principalId}:${window}:${periodStart.toISOString()}:${currency}`;
}

const seenKey = (eventId: string) => `spend-recorded-seen:${eventId}`;

/** What is recorded now for a principal, window and currency in the period containing `at` (micro-units). */
export async function readRecordedSpend(cache: Cache, principalId: string, window: BudgetWindow, currency: string, at: Date = new Date()): Promise<number> {
  const value = await cache.get(recordedSpendKey(principalId, window, windowBounds(window, at).start, currency));
  return value === null ? 0 : Number(value);
}

/** KEYS: the event's id marker, then the counters. ARGV: amount, marker ttl (ms), then each counter's expiry (epoch ms). */
const RECORD = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[2]) then return 0 end
for i = 2, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[1])
  redis.call('PEXPIREAT', KEYS[i], ARGV[i + 1])
end
return 1
`;

interface CounterUpdate {
  key: string;
  expireAtMs: number;
}

/** The counters one event adds to: every charged principal × every window whose period (and grace) is not over. */
function updatesOf(data: MeteringData, nowMs: number): CounterUpdate[] {
  const started = new Date(data.started_at);
  const principals = [...new Set([data.principal_id, ...data.chain])];
  const updates: CounterUpdate[] = [];
  for (const window of BUDGET_WINDOWS) {
    const { start, end } = windowBounds(window, started);
    const expireAtMs = end.getTime() + COUNTER_GRACE_MS;
    if (expireAtMs <= nowMs) continue;
    for (const principal of principals) updates.push({ key: recordedSpendKey(principal, window, start, data.currency), expireAtMs });
  }
  return updates;
}

/** Adds one event to the counters; true when it had not been counted before. */
export interface SpendRecorder {
  record(event: CloudEvent<MeteringData>, nowMs: number): Promise<boolean>;
}

/** How long an event's id is remembered: as long as the longest-lived counter it added to (at least the grace). */
function markerTtlMs(updates: readonly CounterUpdate[], nowMs: number): number {
  return Math.max(COUNTER_GRACE_MS, ...updates.map((u) => u.expireAtMs - nowMs));
}

const dedupes = new WeakMap<Cache, LRUCache<string, true>>();

function memoryDedupe(cache: Cache): LRUCache<string, true> {
  let seen = dedupes.get(cache);
  if (!seen) {
    seen = new LRUCache<string, true>({ max: MEMORY_DEDUPE_IDS });
    dedupes.set(cache, seen);
  }
  return seen;
}

export function spendRecorder(cache: Cache): SpendRecorder {
  if (cache instanceof RedisCache) {
    return {
      record: async (event, nowMs) => {
        const updates = updatesOf(event.data, nowMs);
        const reply = await cache.evalScript(
          'spend_recorded',
          RECORD,
          [seenKey(event.id), ...updates.map((u) => u.key)],
          [event.data.cost_micros, markerTtlMs(updates, nowMs), ...updates.map((u) => u.expireAtMs)],
        );
        return Number(reply) === 1;
      },
    };
  }
  // In-process: every step below runs without another handler in between the check and the claim. The ids go with
  // the cache that holds the counters (a role restarted in the process still knows what it counted).
  const seen = memoryDedupe(cache);
  return {
    record: async (event, nowMs) => {
      if (seen.has(event.id)) return false;
      seen.set(event.id, true);
      try {
        for (const update of updatesOf(event.data, nowMs)) {
          // Created with its expiry; INCRBY keeps it.
          const ttl = update.expireAtMs - nowMs;
          await cache.setIfAbsent(update.key, '0', ttl);
          await cache.incrBy(update.key, event.data.cost_micros);
        }
      } catch (err) {
        seen.delete(event.id); // not counted in full: a retry may count it (the runner retries, then the DLQ)
        throw err;
      }
      return true;
    },
  };
}

/** Upstream names are a closed set in the config; anything else is labelled `other` past a small bound. */
function upstreamLabeller(ctx: AppContext): (upstream: string) => string {
  const configured = new Set(ctx.config.gateway.upstreams.map((u) => u.name));
  const others = new Set<string>();
  return (upstream) => {
    if (configured.has(upstream) || others.has(upstream)) return upstream;
    if (others.size < 32 && /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(upstream)) {
      others.add(upstream);
      return upstream;
    }
    return 'other';
  };
}

/**
 * `metrics-aggregator-group`: the metering topic into recorded-spend counters (per principal, window and currency, in
 * the cache's store) and the Prometheus counter `caracal_spending_total{currency,upstream}` (micro-units, no principal
 * label). Idempotent on the event id. An event that is not a valid metering event goes to the DLQ.
 */
export function metricsAggregator(ctx: AppContext, metrics: () => ConsumerMetrics | undefined = () => undefined): ConsumerRole {
  let recorder: SpendRecorder | undefined;
  const label = upstreamLabeller(ctx);
  const recorderOf = async () => (recorder ??= spendRecorder(await ctx.cache()));
  return {
    name: 'metrics-aggregator',
    groupId: `${ctx.config.kafka.groupPrefix}metrics-aggregator-group`,
    topics: (c) => [c.topics.metering],
    start: async () => {
      await recorderOf(); // a cache that cannot be opened fails the start
    },
    handle: async (message: LogMessage) => {
      const event = parseEvent(message.value); // EventSchemaError → DLQ
      if (event.type !== EVENT_TYPES.metering) throw new PoisonMessage(`not a metering event: ${event.type}`);
      const metering = event as CloudEvent<MeteringData>;
      const counted = await (await recorderOf()).record(metering, Date.now());
      if (counted) metrics()?.spending.inc({ currency: metering.data.currency, upstream: label(metering.data.upstream) }, metering.data.cost_micros);
    },
  };
}

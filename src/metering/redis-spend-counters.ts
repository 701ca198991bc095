/**
 * `SpendCounters` on Redis: each reserve and settle is one Lua script, so it is atomic across every gateway process
 * sharing the Redis. Per budget line `K` (the line key, with the cache's key prefix):
 *
 *   K:spent  integer  micro-units settled in the period
 *   K:rsum   integer  micro-units held by live reservations
 *   K:res    zset     reservation id → when it lapses (epoch ms, Redis' clock)
 *   K:amt    hash     reservation id → its amount
 *
 * plus `spend-reservation:<id>` (a live reservation) and `spend-settled:<id>` (settled: a second settle is a no-op).
 * Lapsed reservations are given back lazily, by the next script that touches the line. All keys of a line expire
 * COUNTER_GRACE_MS after its period. The scripts build the derived keys from the line keys: one Redis (or one
 * cluster slot per call), which is what Caracal runs.
 */
import type { RedisCache } from '../cache/redis-cache.js';
import { CaracalError } from '../errors/catalog.js';
import { checkReservation, COUNTER_GRACE_MS, SETTLED_MEMORY_MS, type BudgetLine, type LineUsage, type ReserveResult, type SpendCounters } from './spend-counters.js';

const NOW_AND_SWEEP = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(k)
  local lapsed = redis.call('ZRANGEBYSCORE', k .. ':res', '-inf', now)
  for _, rid in ipairs(lapsed) do
    local a = redis.call('HGET', k .. ':amt', rid)
    if a then redis.call('DECRBY', k .. ':rsum', tonumber(a)) end
    redis.call('HDEL', k .. ':amt', rid)
  end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', k .. ':res', '-inf', now) end
end
`;

/** KEYS: n lines, then the reservation and settled markers. ARGV: id, amount, ttl, grace, then limit and period end per line. */
const RESERVE = `${NOW_AND_SWEEP}
local n = #KEYS - 2
local id, amount, ttl, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[n + 1]) == 1 or redis.call('EXISTS', KEYS[n + 2]) == 1 then return {-1} end
for i = 1, n do
  local k = KEYS[i]
  sweep(k)
  local limit = tonumber(ARGV[3 + 2 * i])
  local spent = tonumber(redis.call('GET', k .. ':spent') or '0')
  local reserved = tonumber(redis.call('GET', k .. ':rsum') or '0')
  if spent + reserved + amount > limit then return {0, i, spent, reserved} end
end
for i = 1, n do
  local k = KEYS[i]
  local keep = tonumber(ARGV[4 + 2 * i]) + grace
  redis.call('ZADD', k .. ':res', now + ttl, id)
  redis.call('HSET', k .. ':amt', id, amount)
  redis.call('INCRBY', k .. ':rsum', amount)
  redis.call('PEXPIREAT', k .. ':res', keep)
  redis.call('PEXPIREAT', k .. ':amt', keep)
  redis.call('PEXPIREAT', k .. ':rsum', keep)
end
redis.call('SET', KEYS[n + 1], '1', 'PX', ttl)
return {1}
`;

/** KEYS: n lines, then the reservation and settled markers. ARGV: id, actual, settled ttl, grace, then period end per line. */
const SETTLE = `${NOW_AND_SWEEP}
local n = #KEYS - 2
local id, actual, settledTtl, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if not redis.call('SET', KEYS[n + 2], '1', 'NX', 'PX', settledTtl) then return 0 end
for i = 1, n do
  local k = KEYS[i]
  sweep(k)
  local a = redis.call('HGET', k .. ':amt', id)
  if a then
    redis.call('DECRBY', k .. ':rsum', tonumber(a))
    redis.call('HDEL', k .. ':amt', id)
    redis.call('ZREM', k .. ':res', id)
  end
  redis.call('INCRBY', k .. ':spent', actual)
  redis.call('PEXPIREAT', k .. ':spent', tonumber(ARGV[4 + i]) + grace)
end
redis.call('DEL', KEYS[n + 1])
return 1
`;

/** KEYS: the line. */
const USAGE = `${NOW_AND_SWEEP}
sweep(KEYS[1])
return {tonumber(redis.call('GET', KEYS[1] .. ':spent') or '0'), tonumber(redis.call('GET', KEYS[1] .. ':rsum') or '0')}
`;

const markers = (reservationId: string) => [`spend-reservation:${reservationId}`, `spend-settled:${reservationId}`];

export class RedisSpendCounters implements SpendCounters {
  readonly kind = 'redis' as const;

  /** On the cache's connection (its key prefix, fail-fast behaviour and timeouts). */
  constructor(private readonly redis: RedisCache) {}

  async reserve(reservationId: string, lines: readonly BudgetLine[], amountMicros: number, ttlMs: number): Promise<ReserveResult> {
    checkReservation(reservationId, lines, amountMicros, ttlMs);
    const args: (string | number)[] = [reservationId, amountMicros, ttlMs, COUNTER_GRACE_MS];
    for (const line of lines) args.push(line.limitMicros, line.periodEndMs);
    const reply = (await this.redis.evalScript('spend_reserve', RESERVE, [...lines.map((line) => line.key), ...markers(reservationId)], args)) as number[];
    if (reply[0] === 1) return { ok: true };
    if (reply[0] === -1) throw new CaracalError('CARACAL_CONFLICT', `reservation ${reservationId} exists already`);
    const line = lines[Number(reply[1]) - 1]!;
    const spentMicros = Number(reply[2]);
    const reservedMicros = Number(reply[3]);
    return { ok: false, key: line.key, limitMicros: line.limitMicros, spentMicros, reservedMicros, remainingMicros: Math.max(0, line.limitMicros - spentMicros - reservedMicros) };
  }

  async settle(reservationId: string, lines: readonly BudgetLine[], actualMicros: number): Promise<void> {
    checkReservation(reservationId, lines, actualMicros);
    const args: (string | number)[] = [reservationId, actualMicros, SETTLED_MEMORY_MS, COUNTER_GRACE_MS, ...lines.map((line) => line.periodEndMs)];
    await this.redis.evalScript('spend_settle', SETTLE, [...lines.map((line) => line.key), ...markers(reservationId)], args);
  }

  async usage(key: string): Promise<LineUsage> {
    const [spent, reserved] = (await this.redis.evalScript('spend_usage', USAGE, [key], [])) as number[];
    return { spentMicros: Number(spent), reservedMicros: Number(reserved) };
  }

  /** The connection is the cache's: closing the cache closes it. */
  async close(): Promise<void> {}
}

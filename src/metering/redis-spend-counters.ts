/**
 * `SpendCounters` on Redis: each reserve and settle is one Lua script, so it is atomic across every gateway process
 * sharing the Redis. Per budget line `K` (the line key, with the cache's key prefix):
 *
 *   K:spent   integer  micro-units settled in the period
 *   K:rsum    integer  micro-units held by live reservations
 *   K:res     zset     reservation id → when it lapses (epoch ms, Redis' clock)
 *   K:amt     hash     reservation id → its amount
 *   K:lapsed  hash     reservations that lapsed unsettled (a late settlement still counts, once)
 *
 * Lapsed reservations are given back lazily, by the next script that touches the line. A settled reservation leaves
 * nothing behind — settling again finds nothing to settle — so Redis holds the calls in flight and the lines, not
 * every call made. All keys of a line expire COUNTER_GRACE_MS after its period. The scripts derive keys from the line
 * keys they are given: one Redis (or one cluster slot per call), which is what Caracal runs.
 *
 * Readiness: `spend:ready` (with the cache's prefix) is set by `markReady` once the counters hold what was spent, and
 * has no expiry. A Redis that lost its data (FLUSHALL, a restart without persistence) lost it too, so RESERVE, which
 * checks it in the same script, refuses every call (CARACAL_DEPENDENCY) until `caracal budget reconcile` restores the
 * spend from the recorded metering events and sets it again. SETTLE does not check it: a settlement only ever adds.
 */
import type { RedisCache } from '../cache/redis-cache.js';
import { CaracalError } from '../errors/catalog.js';
import {
  checkReservation,
  checkRestore,
  COUNTER_GRACE_MS,
  countersLostError,
  type BudgetLine,
  type LineUsage,
  type ReserveResult,
  type RestoreEntry,
  type SpendCounters,
} from './spend-counters.js';

/** The readiness mark (the cache's prefix is added like on every key). */
export const READY_KEY = 'spend:ready';

const NOW_AND_SWEEP = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(k)
  local lapsed = redis.call('ZRANGEBYSCORE', k .. ':res', '-inf', now)
  if #lapsed == 0 then return end
  local keepMs = redis.call('PTTL', k .. ':res')
  for _, rid in ipairs(lapsed) do
    local a = redis.call('HGET', k .. ':amt', rid)
    if a then redis.call('DECRBY', k .. ':rsum', tonumber(a)) end
    redis.call('HDEL', k .. ':amt', rid)
    redis.call('HSET', k .. ':lapsed', rid, '1')
  end
  redis.call('ZREMRANGEBYSCORE', k .. ':res', '-inf', now)
  if keepMs > 0 then redis.call('PEXPIRE', k .. ':lapsed', keepMs) end
end
`;

/** KEYS: the readiness mark, then the lines. ARGV: id, amount, ttl, grace, then limit and period end per line. */
const RESERVE = `${NOW_AND_SWEEP}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local n = #KEYS - 1
local id, amount, ttl, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, n do
  local k = KEYS[i + 1]
  sweep(k)
  if i == 1 and (redis.call('HEXISTS', k .. ':amt', id) == 1 or redis.call('HEXISTS', k .. ':lapsed', id) == 1) then return {-1} end
  local limit = tonumber(ARGV[3 + 2 * i])
  local spent = tonumber(redis.call('GET', k .. ':spent') or '0')
  local reserved = tonumber(redis.call('GET', k .. ':rsum') or '0')
  if spent + reserved + amount > limit then return {0, i, spent, reserved} end
end
for i = 1, n do
  local k = KEYS[i + 1]
  local keep = tonumber(ARGV[4 + 2 * i]) + grace
  redis.call('ZADD', k .. ':res', now + ttl, id)
  redis.call('HSET', k .. ':amt', id, amount)
  redis.call('INCRBY', k .. ':rsum', amount)
  redis.call('PEXPIREAT', k .. ':res', keep)
  redis.call('PEXPIREAT', k .. ':amt', keep)
  redis.call('PEXPIREAT', k .. ':rsum', keep)
end
return {1}
`;

/** KEYS: the readiness mark, then the lines. ARGV: amount, grace, then limit and period end per line. */
const CHARGE = `${NOW_AND_SWEEP}
if redis.call('EXISTS', KEYS[1]) == 0 then return {-2} end
local n = #KEYS - 1
local amount, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, n do
  local k = KEYS[i + 1]
  sweep(k)
  local limit = tonumber(ARGV[1 + 2 * i])
  local spent = tonumber(redis.call('GET', k .. ':spent') or '0')
  local reserved = tonumber(redis.call('GET', k .. ':rsum') or '0')
  if spent + reserved + amount > limit then return {0, i, spent, reserved} end
end
for i = 1, n do
  local k = KEYS[i + 1]
  redis.call('INCRBY', k .. ':spent', amount)
  redis.call('PEXPIREAT', k .. ':spent', tonumber(ARGV[2 + 2 * i]) + grace)
end
return {1}
`;

/** KEYS: the lines. ARGV: amount. */
const REFUND = `
for i = 1, #KEYS do
  local k = KEYS[i] .. ':spent'
  local spent = tonumber(redis.call('GET', k) or '0')
  if spent > 0 then redis.call('DECRBY', k, math.min(spent, tonumber(ARGV[1]))) end
end
return 1
`;

/** KEYS: the lines. ARGV: id, actual, grace, then period end per line. */
const SETTLE = `${NOW_AND_SWEEP}
local id, actual, grace = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, #KEYS do
  local k = KEYS[i]
  sweep(k)
  local a = redis.call('HGET', k .. ':amt', id)
  local counts = false
  if a then
    redis.call('DECRBY', k .. ':rsum', tonumber(a))
    redis.call('HDEL', k .. ':amt', id)
    redis.call('ZREM', k .. ':res', id)
    counts = true
  elseif redis.call('HDEL', k .. ':lapsed', id) == 1 then
    counts = true
  end
  if counts then
    redis.call('INCRBY', k .. ':spent', actual)
    redis.call('PEXPIREAT', k .. ':spent', tonumber(ARGV[3 + i]) + grace)
  end
end
return 1
`;

/** KEYS: the lines. ARGV: grace, then spent and period end per line. Spent only ever rises here. */
const RESTORE = `
local grace = tonumber(ARGV[1])
for i = 1, #KEYS do
  local k = KEYS[i]
  local spent = tonumber(ARGV[2 * i])
  local current = tonumber(redis.call('GET', k .. ':spent') or '0')
  if spent > current then
    redis.call('SET', k .. ':spent', spent)
    redis.call('PEXPIREAT', k .. ':spent', tonumber(ARGV[2 * i + 1]) + grace)
  end
end
return 1
`;

/** Lines per RESTORE script: a reconcile restores every budget, in slices that keep each script short. */
const RESTORE_SLICE = 256;

/** KEYS: the line. */
const USAGE = `${NOW_AND_SWEEP}
sweep(KEYS[1])
return {tonumber(redis.call('GET', KEYS[1] .. ':spent') or '0'), tonumber(redis.call('GET', KEYS[1] .. ':rsum') or '0')}
`;

export class RedisSpendCounters implements SpendCounters {
  readonly kind = 'redis' as const;

  /** On the cache's connection (its key prefix, fail-fast behaviour and timeouts). */
  constructor(private readonly redis: RedisCache) {}

  async reserve(reservationId: string, lines: readonly BudgetLine[], amountMicros: number, ttlMs: number): Promise<ReserveResult> {
    checkReservation(reservationId, lines, amountMicros, ttlMs);
    const args: (string | number)[] = [reservationId, amountMicros, ttlMs, COUNTER_GRACE_MS];
    for (const line of lines) args.push(line.limitMicros, line.periodEndMs);
    const reply = (await this.redis.evalScript('spend_reserve', RESERVE, [READY_KEY, ...lines.map((line) => line.key)], args)) as number[];
    if (reply[0] === -1) throw new CaracalError('CARACAL_CONFLICT', `reservation ${reservationId} exists already`);
    return this.result(lines, reply);
  }

  /** A reserve or charge script's reply: {1}, {-2} (counters lost) or {0, line, spent, reserved}. */
  private result(lines: readonly BudgetLine[], reply: number[]): ReserveResult {
    if (reply[0] === 1) return { ok: true };
    if (reply[0] === -2) throw countersLostError();
    const line = lines[Number(reply[1]) - 1]!;
    const spentMicros = Number(reply[2]);
    const reservedMicros = Number(reply[3]);
    return { ok: false, key: line.key, limitMicros: line.limitMicros, spentMicros, reservedMicros, remainingMicros: Math.max(0, line.limitMicros - spentMicros - reservedMicros) };
  }

  async charge(lines: readonly BudgetLine[], amountMicros: number): Promise<ReserveResult> {
    checkReservation('charge', lines, amountMicros);
    const args: (string | number)[] = [amountMicros, COUNTER_GRACE_MS];
    for (const line of lines) args.push(line.limitMicros, line.periodEndMs);
    const reply = (await this.redis.evalScript('spend_charge', CHARGE, [READY_KEY, ...lines.map((line) => line.key)], args)) as number[];
    return this.result(lines, reply);
  }

  async refund(lines: readonly BudgetLine[], amountMicros: number): Promise<void> {
    checkReservation('refund', lines, amountMicros);
    await this.redis.evalScript('spend_refund', REFUND, lines.map((line) => line.key), [amountMicros]);
  }

  async settle(reservationId: string, lines: readonly BudgetLine[], actualMicros: number): Promise<void> {
    checkReservation(reservationId, lines, actualMicros);
    const args: (string | number)[] = [reservationId, actualMicros, COUNTER_GRACE_MS, ...lines.map((line) => line.periodEndMs)];
    await this.redis.evalScript('spend_settle', SETTLE, lines.map((line) => line.key), args);
  }

  async usage(key: string): Promise<LineUsage> {
    const [spent, reserved] = (await this.redis.evalScript('spend_usage', USAGE, [key], [])) as number[];
    return { spentMicros: Number(spent), reservedMicros: Number(reserved) };
  }

  async restore(entries: readonly RestoreEntry[]): Promise<void> {
    checkRestore(entries);
    for (let i = 0; i < entries.length; i += RESTORE_SLICE) {
      const slice = entries.slice(i, i + RESTORE_SLICE);
      const args: (string | number)[] = [COUNTER_GRACE_MS];
      for (const { line, spentMicros } of slice) args.push(spentMicros, line.periodEndMs);
      await this.redis.evalScript('spend_restore', RESTORE, slice.map(({ line }) => line.key), args);
    }
  }

  async markReady(): Promise<void> {
    await this.redis.set(READY_KEY, new Date().toISOString());
  }

  async isReady(): Promise<boolean> {
    return (await this.redis.get(READY_KEY)) !== null;
  }

  /** The connection is the cache's: closing the cache closes it. */
  async close(): Promise<void> {}
}

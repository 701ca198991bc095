// The SpendCounters contract, run on both implementations: Redis (a Lua script per call, shared by gateway
// processes) and in-process (the embedded default). Reserve → settle across every budget line of a call, all or
// nothing; exactly as many calls fit as the limit allows, however many race for it.
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisCache } from '../../src/cache/redis-cache.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { RedisSpendCounters } from '../../src/metering/redis-spend-counters.js';
import { budgetLineKey, MemorySpendCounters, type BudgetLine, type SpendCounters } from '../../src/metering/spend-counters.js';
import { requireServices } from '../helpers/services.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const HOUR = 3_600_000;

interface Implementation {
  /** Two handles on the same counters: two gateway processes on one Redis, or one process' counters twice. */
  open(): Promise<[SpendCounters, SpendCounters]>;
  close(): Promise<void>;
}

function redisImplementation(): Implementation {
  const caches: RedisCache[] = [];
  return {
    open: async () => {
      const keyPrefix = `test-spend-${randomBytes(4).toString('hex')}:`;
      const a = new RedisCache({ url: requireServices().redisUrl, keyPrefix });
      const b = new RedisCache({ url: requireServices().redisUrl, keyPrefix });
      caches.push(a, b);
      await Promise.all([a.connect(), b.connect()]);
      const counters: [SpendCounters, SpendCounters] = [new RedisSpendCounters(a), new RedisSpendCounters(b)];
      // Fresh counters are not ready until restored (test/integration/spend-counters-reconcile.test.ts): nothing to restore here.
      await counters[0].markReady();
      return counters;
    },
    close: async () => {
      await Promise.all(caches.map((c) => c.close()));
    },
  };
}

function memoryImplementation(): Implementation {
  return {
    open: async () => {
      const counters = new MemorySpendCounters();
      await counters.markReady();
      return [counters, counters];
    },
    close: async () => {},
  };
}

describe.each([
  ['RedisSpendCounters', redisImplementation],
  ['MemorySpendCounters', memoryImplementation],
] as const)('%s', (_name, make) => {
  const implementation = make();
  afterAll(() => implementation.close());
  let n = 0;
  const line = (limitMicros: number, name = `agent-${++n}`): BudgetLine => ({
    key: budgetLineKey(name, 'daily', new Date(Date.UTC(2026, 11, 2))),
    limitMicros,
    periodEndMs: Date.now() + HOUR,
  });
  const id = () => `r-${randomBytes(6).toString('hex')}`;

  it('reserves what fits, holds it until settled, then counts what was spent', async () => {
    const [counters] = await implementation.open();
    const budget = line(1_000_000);
    const reservation = id();
    expect(await counters.reserve(reservation, [budget], 400_000, 60_000)).toEqual({ ok: true });
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 400_000 });
    // A live reservation's id cannot be taken twice (ids are decision ids: unique).
    await expect(counters.reserve(reservation, [budget], 1, 60_000)).rejects.toMatchObject({ code: 'CARACAL_CONFLICT' });
    await counters.settle(reservation, [budget], 123_456);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 123_456, reservedMicros: 0 });
    // Settling again changes nothing: a retried settlement never double-counts.
    await counters.settle(reservation, [budget], 123_456);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 123_456, reservedMicros: 0 });
    // So does settling an id that was never reserved.
    await counters.settle(id(), [budget], 999);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 123_456, reservedMicros: 0 });
  });

  it('refuses an amount that does not fit, naming the line and what remains, and takes nothing', async () => {
    const [counters] = await implementation.open();
    const budget = line(1_000_000);
    expect(await counters.reserve(id(), [budget], 700_000, 60_000)).toEqual({ ok: true });
    expect(await counters.reserve(id(), [budget], 300_001, 60_000)).toEqual({
      ok: false,
      key: budget.key,
      limitMicros: 1_000_000,
      spentMicros: 0,
      reservedMicros: 700_000,
      remainingMicros: 300_000,
    });
    expect(await counters.reserve(id(), [budget], 300_000, 60_000)).toEqual({ ok: true });
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 1_000_000 });
  });

  it('takes a reservation on every line of a delegation chain or on none', async () => {
    const [counters] = await implementation.open();
    const own = line(5_000_000);
    const parent = line(1_000_000);
    const root = line(10_000_000);
    const refused = await counters.reserve(id(), [own, parent, root], 2_000_000, 60_000);
    expect(refused).toMatchObject({ ok: false, key: parent.key, remainingMicros: 1_000_000 });
    for (const l of [own, parent, root]) expect(await counters.usage(l.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
    const reservation = id();
    expect(await counters.reserve(reservation, [own, parent, root], 1_000_000, 60_000)).toEqual({ ok: true });
    await counters.settle(reservation, [own, parent, root], 250_000);
    for (const l of [own, parent, root]) expect(await counters.usage(l.key)).toEqual({ spentMicros: 250_000, reservedMicros: 0 });
  });

  it("gives back a crashed request's hold when its reservation lapses, and still counts a late settlement once", async () => {
    const [counters] = await implementation.open();
    const budget = line(1_000_000);
    const crashed = id();
    expect(await counters.reserve(crashed, [budget], 1_000_000, 300)).toEqual({ ok: true });
    expect(await counters.reserve(id(), [budget], 1, 60_000)).toMatchObject({ ok: false });
    await sleep(450);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
    const next = id();
    expect(await counters.reserve(next, [budget], 600_000, 60_000)).toEqual({ ok: true });
    // The lapsed call did happen after all: its cost lands, once, and the live reservation is untouched.
    await counters.settle(crashed, [budget], 300_000);
    await counters.settle(crashed, [budget], 300_000);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 300_000, reservedMicros: 600_000 });
  });

  it.each<[string, (c: SpendCounters, l: BudgetLine) => Promise<unknown>]>([
    ['a negative amount', (c, l) => c.reserve(id(), [l], -1, 1_000)],
    ['a fractional amount', (c, l) => c.reserve(id(), [l], 0.5, 1_000)],
    ['NaN', (c, l) => c.reserve(id(), [l], NaN, 1_000)],
    ['an unsafe integer', (c, l) => c.reserve(id(), [l], 2 ** 60, 1_000)],
    ['a zero ttl', (c, l) => c.reserve(id(), [l], 1, 0)],
    ['no line', (c) => c.reserve(id(), [], 1, 1_000)],
    ['a line twice', (c, l) => c.reserve(id(), [l, l], 1, 1_000)],
    ['a zero limit', (c, l) => c.reserve(id(), [{ ...l, limitMicros: 0 }], 1, 1_000)],
    ['a hostile reservation id', (c, l) => c.reserve("x' OR 1=1 --", [l], 1, 1_000)],
    ['a negative settlement', (c, l) => c.settle(id(), [l], -5)],
  ])('refuses %s with a validation error and changes nothing', async (_what, call) => {
    const [counters] = await implementation.open();
    const budget = line(1_000_000);
    const err = await call(counters, budget).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CaracalError);
    expect((err as CaracalError).code).toBe('CARACAL_VALIDATION');
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
  });

  it('lets exactly N of 1,000 concurrent calls through a budget for N, from two handles at once', async () => {
    const [first, second] = await implementation.open();
    const price = 2_500;
    const allowed = 137;
    const budget = line(price * allowed);
    const parent = line(price * 10_000);
    const results = await Promise.all(
      Array.from({ length: 1_000 }, async (_, i) => {
        const counters = i % 2 === 0 ? first : second;
        const reservation = id();
        const result = await counters.reserve(reservation, [budget, parent], price, 60_000);
        if (result.ok) await counters.settle(reservation, [budget, parent], price);
        return result.ok;
      }),
    );
    expect(results.filter(Boolean)).toHaveLength(allowed);
    expect(await second.usage(budget.key)).toEqual({ spentMicros: price * allowed, reservedMicros: 0 });
    expect(await first.usage(parent.key)).toEqual({ spentMicros: price * allowed, reservedMicros: 0 });
  }, 60_000);

  it('charges a fixed price in one step on every line or none, counting live reservations, and refunds it', async () => {
    const [counters] = await implementation.open();
    const own = line(1_000_000);
    const parent = line(600_000);
    const hold = id();
    expect(await counters.reserve(hold, [parent], 100_000, 60_000)).toEqual({ ok: true });
    expect(await counters.charge([own, parent], 400_000)).toEqual({ ok: true });
    expect(await counters.usage(own.key)).toEqual({ spentMicros: 400_000, reservedMicros: 0 });
    expect(await counters.usage(parent.key)).toEqual({ spentMicros: 400_000, reservedMicros: 100_000 });
    // 400,000 spent + 100,000 held: 100,001 more does not fit on the parent, and the own line is left alone.
    expect(await counters.charge([own, parent], 100_001)).toEqual({ ok: false, key: parent.key, limitMicros: 600_000, spentMicros: 400_000, reservedMicros: 100_000, remainingMicros: 100_000 });
    expect(await counters.usage(own.key)).toEqual({ spentMicros: 400_000, reservedMicros: 0 });
    // The call never happened: given back, and a refund never takes a line below zero.
    await counters.refund([own, parent], 400_000);
    expect(await counters.usage(parent.key)).toEqual({ spentMicros: 0, reservedMicros: 100_000 });
    await counters.refund([own], 5);
    expect(await counters.usage(own.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
    await expect(counters.charge([own], -1)).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
    await expect(counters.charge([own], Number.NaN)).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
    await expect(counters.refund([], 1)).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
  });

  it('lets exactly N of 1,000 concurrent fixed-price charges through a budget for N, from two handles at once', async () => {
    const [first, second] = await implementation.open();
    const price = 1_000;
    const allowed = 211;
    const budget = line(price * allowed);
    const results = await Promise.all(Array.from({ length: 1_000 }, async (_, i) => (await (i % 2 === 0 ? first : second).charge([budget], price)).ok));
    expect(results.filter(Boolean)).toHaveLength(allowed);
    expect(await first.usage(budget.key)).toEqual({ spentMicros: price * allowed, reservedMicros: 0 });
  }, 60_000);
});

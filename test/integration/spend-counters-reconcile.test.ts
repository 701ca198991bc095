// The SpendCounters readiness contract, on both implementations: counters that lost their data (a FLUSHALL on Redis;
// a new process on the embedded default) refuse every reservation — budgets fail closed — until the recorded spend is
// restored and they are marked ready. `restore` never lowers a counter, so restoring onto live counters is harmless.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisCache } from '../../src/cache/redis-cache.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { RedisSpendCounters } from '../../src/metering/redis-spend-counters.js';
import { budgetLineKey, COUNTER_GRACE_MS, MemorySpendCounters, type BudgetLine, type SpendCounters } from '../../src/metering/spend-counters.js';
import { startPrivateRedis } from '../helpers/private-redis.js';

const HOUR = 3_600_000;


interface Implementation {
  /** The counters, as a process opens them (not ready unless something marked them). */
  open(): Promise<SpendCounters>;
  /** Loses every counter: FLUSHALL on Redis; a new process (new counters) in-process. Returns the counters to use next. */
  lose(counters: SpendCounters): Promise<SpendCounters>;
  close(): Promise<void>;
}

describe.each(['RedisSpendCounters', 'MemorySpendCounters'] as const)('%s readiness and restore', (name) => {
  let implementation: Implementation;
  let redis: Awaited<ReturnType<typeof startPrivateRedis>> | undefined;

  beforeAll(async () => {
    if (name === 'MemorySpendCounters') {
      implementation = { open: async () => new MemorySpendCounters(), lose: async () => new MemorySpendCounters(), close: async () => {} };
      return;
    }
    const server = await startPrivateRedis();
    redis = server;
    const caches: RedisCache[] = [];
    implementation = {
      // Each test on its own key prefix: its own counters, as a deployment of its own.
      open: async () => {
        const cache = new RedisCache({ url: server.url, keyPrefix: `spend-ready-${randomBytes(4).toString('hex')}:` });
        caches.push(cache);
        await cache.connect();
        return new RedisSpendCounters(cache);
      },
      lose: async (counters) => {
        await server.flushAll();
        return counters;
      },
      close: async () => {
        await Promise.all(caches.map((c) => c.close()));
      },
    };
  }, 30_000);
  afterAll(async () => {
    await implementation?.close();
    await redis?.stop();
  });

  let n = 0;
  const line = (limitMicros: number): BudgetLine => ({
    key: budgetLineKey(`agent-${name}-${++n}`, 'daily', new Date(Date.UTC(2026, 11, 2))),
    limitMicros,
    periodEndMs: Date.now() + HOUR,
  });
  const id = () => `r-${randomBytes(6).toString('hex')}`;

  it('starts not ready and refuses every reservation with the counters-lost error, taking nothing', async () => {
    const counters = await implementation.open();
    const budget = line(1_000_000);
    expect(await counters.isReady()).toBe(false);
    const err = await counters.reserve(id(), [budget], 1, 60_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CaracalError);
    expect((err as CaracalError).code).toBe('CARACAL_DEPENDENCY');
    expect((err as CaracalError).message).toMatch(/counters were lost.*caracal budget reconcile/);
    // A fixed-price charge is refused the same way.
    await expect(counters.charge([budget], 1)).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY', message: expect.stringMatching(/caracal budget reconcile/) });
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
    // Settling changes nothing that was never reserved, ready or not.
    await counters.settle(id(), [budget], 5);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
  });

  it('restores spend (never lowering it), then binds with it once marked ready', async () => {
    const counters = await implementation.open();
    const budget = line(1_000_000);
    const other = line(5_000_000);
    await counters.restore([
      { line: budget, spentMicros: 600_000 },
      { line: other, spentMicros: 0 },
    ]);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 600_000, reservedMicros: 0 });
    expect(await counters.isReady()).toBe(false);
    await counters.markReady();
    expect(await counters.isReady()).toBe(true);
    // 400,000 remain.
    expect(await counters.reserve(id(), [budget, other], 400_001, 60_000)).toMatchObject({ ok: false, key: budget.key, spentMicros: 600_000, remainingMicros: 400_000 });
    const held = id();
    expect(await counters.reserve(held, [budget, other], 300_000, 60_000)).toEqual({ ok: true });
    await counters.settle(held, [budget, other], 300_000);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 900_000, reservedMicros: 0 });
    // A restore below what a live counter holds changes nothing (a reconcile on a healthy store cannot under-count);
    // one above it raises it to exactly that (restoring twice is restoring once: it never adds).
    await counters.restore([{ line: budget, spentMicros: 600_000 }]);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 900_000, reservedMicros: 0 });
    await counters.restore([{ line: budget, spentMicros: 950_000 }]);
    await counters.restore([{ line: budget, spentMicros: 950_000 }]);
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 950_000, reservedMicros: 0 });
    expect(await counters.usage(other.key)).toEqual({ spentMicros: 300_000, reservedMicros: 0 });
    // A live reservation is left alone by a restore.
    const live = id();
    expect(await counters.reserve(live, [other], 1_000_000, 60_000)).toEqual({ ok: true });
    await counters.restore([{ line: other, spentMicros: 400_000 }]);
    expect(await counters.usage(other.key)).toEqual({ spentMicros: 400_000, reservedMicros: 1_000_000 });
  });

  it('loses readiness with its data: refuses until restored and marked again (fail closed)', async () => {
    let counters = await implementation.open();
    await counters.markReady();
    const budget = line(1_000_000);
    const call = id();
    expect(await counters.reserve(call, [budget], 250_000, 60_000)).toEqual({ ok: true });
    await counters.settle(call, [budget], 250_000);

    counters = await implementation.lose(counters);
    expect(await counters.isReady()).toBe(false);
    await expect(counters.reserve(id(), [budget], 1, 60_000)).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY', message: expect.stringMatching(/caracal budget reconcile/) });
    await expect(counters.charge([budget], 1)).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY' });
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });

    await counters.restore([{ line: budget, spentMicros: 250_000 }]);
    await counters.markReady();
    expect(await counters.reserve(id(), [budget], 750_001, 60_000)).toMatchObject({ ok: false, remainingMicros: 750_000 });
    expect(await counters.reserve(id(), [budget], 750_000, 60_000)).toEqual({ ok: true });
  });

  it('keeps a restored line only until its period and grace are over', async () => {
    const counters = await implementation.open();
    const old = { ...line(1_000_000), periodEndMs: Date.now() - COUNTER_GRACE_MS - 1_000 };
    await counters.restore([{ line: old, spentMicros: 500_000 }]);
    expect(await counters.usage(old.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
  });

  it.each<[string, (b: BudgetLine) => Parameters<SpendCounters['restore']>[0]]>([
    ['a negative spend', (b) => [{ line: b, spentMicros: -1 }]],
    ['a fractional spend', (b) => [{ line: b, spentMicros: 0.5 }]],
    ['an unsafe integer', (b) => [{ line: b, spentMicros: 2 ** 60 }]],
    ['a line twice', (b) => [{ line: b, spentMicros: 1 }, { line: b, spentMicros: 2 }]],
    ['a zero limit', (b) => [{ line: { ...b, limitMicros: 0 }, spentMicros: 1 }]],
    ['an empty key', (b) => [{ line: { ...b, key: '' }, spentMicros: 1 }]],
  ])('refuses to restore %s, changing nothing', async (_what, entries) => {
    const counters = await implementation.open();
    const budget = line(1_000_000);
    const err = await counters.restore(entries(budget)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CaracalError);
    expect((err as CaracalError).code).toBe('CARACAL_VALIDATION');
    expect(await counters.usage(budget.key)).toEqual({ spentMicros: 0, reservedMicros: 0 });
  });

  it('restores many lines at once (a reconcile restores every budget)', async () => {
    const counters = await implementation.open();
    const lines = Array.from({ length: 700 }, () => line(10_000_000));
    await counters.restore(lines.map((l, i) => ({ line: l, spentMicros: i * 7 })));
    for (const i of [0, 1, 255, 256, 511, 699]) expect((await counters.usage(lines[i]!.key)).spentMicros).toBe(i * 7);
  });
});

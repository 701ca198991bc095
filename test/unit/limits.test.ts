import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  normaliseSourceAddress,
  PrincipalLimiter,
  SourceLimiter,
  TokenBucket,
  type AcquireResult,
  type LimitLease,
  type LimitRefusal,
} from '../../src/gateway/limits.js';

/** A clock that only moves when the test says so. */
function fakeClock(start = 1_000) {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

function admitted(result: AcquireResult): LimitLease {
  if (!result.ok) throw new Error(`expected admission, got ${result.reason}`);
  return result;
}

function refused(result: AcquireResult): LimitRefusal {
  if (result.ok) throw new Error('expected a refusal, got admission');
  return result;
}

function limiter(maxConcurrent: number, ratePerSecond: number, burst: number, maxEntries?: number) {
  const clock = fakeClock();
  const limits = new PrincipalLimiter({ maxConcurrent, rate: { ratePerSecond, burst } }, { now: clock.now, maxEntries });
  return { limits, clock };
}

describe('TokenBucket', () => {
  it('gives its burst at once, then refuses until a token has refilled', () => {
    const clock = fakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 0.25, burst: 3 }, clock.now);
    expect([bucket.tryTake(), bucket.tryTake(), bucket.tryTake()]).toEqual([true, true, true]);
    expect(bucket.tryTake()).toBe(false);
    expect(bucket.retryAfterSeconds()).toBe(4);
    clock.advance(3_999);
    expect(bucket.tryTake()).toBe(false);
    expect(bucket.retryAfterSeconds()).toBe(1);
    clock.advance(1);
    expect(bucket.tryTake()).toBe(true);
    expect(bucket.tryTake()).toBe(false);
  });

  it('refills continuously and never above its burst', () => {
    const clock = fakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 5 }, clock.now);
    for (let i = 0; i < 5; i++) expect(bucket.tryTake()).toBe(true);
    expect(bucket.remaining()).toBe(0);
    clock.advance(250);
    expect(bucket.remaining()).toBe(2);
    clock.advance(3_600_000);
    expect(bucket.remaining()).toBe(5);
    let taken = 0;
    while (bucket.tryTake()) taken++;
    expect(taken).toBe(5);
  });

  it('neither refills nor drains when the clock steps back', () => {
    const clock = fakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 1, burst: 2 }, clock.now);
    bucket.tryTake();
    bucket.tryTake();
    clock.advance(-10_000);
    expect(bucket.remaining()).toBe(0);
    clock.advance(10_000);
    expect(bucket.remaining()).toBe(0);
    clock.advance(1_000);
    expect(bucket.remaining()).toBe(1);
  });

  it('admits a client that waited exactly the Retry-After it was told, despite float error', () => {
    const clock = fakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 0.1, burst: 3 }, clock.now);
    for (let i = 0; i < 3; i++) bucket.tryTake();
    clock.advance(24_000); // 2.4 tokens, 0.4 after two takes: (1 - 0.4) / 0.1 is 6.000000000000001 in floating point
    expect([bucket.tryTake(), bucket.tryTake(), bucket.tryTake()]).toEqual([true, true, false]);
    expect(bucket.retryAfterSeconds()).toBe(6);
    clock.advance(5_999);
    expect(bucket.tryTake()).toBe(false);
    clock.advance(1);
    expect(bucket.remaining()).toBe(1);
    expect(bucket.tryTake()).toBe(true);
  });

  it('property: remaining() agrees with tryTake(), and Retry-After is exactly the whole seconds until the next admission', () => {
    fc.assert(
      fc.property(
        fc.double({ min: 0.01, max: 1_000, noNaN: true }),
        fc.integer({ min: 1, max: 20 }),
        fc.array(fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 30_000 })), { maxLength: 100 }),
        (ratePerSecond, burst, steps) => {
          const clock = fakeClock(0);
          const bucket = new TokenBucket({ ratePerSecond, burst }, clock.now);
          for (const step of steps) {
            if (step >= 0) {
              clock.advance(step);
              continue;
            }
            const whole = bucket.remaining();
            const taken = bucket.tryTake();
            expect(taken).toBe(whole >= 1);
            if (taken) continue;
            const wait = bucket.retryAfterSeconds();
            expect(Number.isInteger(wait) && wait >= 1).toBe(true);
            clock.advance((wait - 1) * 1000);
            if (wait > 1) expect(bucket.tryTake()).toBe(false);
            clock.advance(1000);
            expect(bucket.tryTake()).toBe(true);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('rejects a rate that could never admit anything', () => {
    expect(() => new TokenBucket({ ratePerSecond: 0, burst: 1 })).toThrow(RangeError);
    expect(() => new TokenBucket({ ratePerSecond: 1, burst: 0 })).toThrow(RangeError);
    expect(() => new TokenBucket({ ratePerSecond: Number.NaN, burst: 1 })).toThrow(RangeError);
  });
});

describe('PrincipalLimiter', () => {
  it('admits the burst, then refuses for rate with the wait until one token', () => {
    const { limits, clock } = limiter(100, 0.5, 3);
    for (let i = 0; i < 3; i++) admitted(limits.acquire('a')).release();
    const refusal = refused(limits.acquire('a'));
    expect(refusal.reason).toBe('rate_limited');
    expect(refusal.retryAfterSeconds).toBe(2);
    expect(refusal.facts).toEqual({ in_flight: 0, max_concurrent: 100, rate_remaining: 0, rate_per_second: 0.5 });
    clock.advance(1_500);
    expect(refused(limits.acquire('a')).retryAfterSeconds).toBe(1);
    clock.advance(500);
    admitted(limits.acquire('a')).release();
  });

  it('refills over time: partly, then up to the burst and no more', () => {
    const { limits, clock } = limiter(100, 4, 8);
    for (let i = 0; i < 8; i++) admitted(limits.acquire('a')).release();
    refused(limits.acquire('a'));
    clock.advance(500); // 2 tokens
    admitted(limits.acquire('a')).release();
    admitted(limits.acquire('a')).release();
    expect(refused(limits.acquire('a')).reason).toBe('rate_limited');
    clock.advance(60_000);
    let admittedCount = 0;
    for (let i = 0; i < 20; i++) {
      const result = limits.acquire('a');
      if (result.ok) {
        admittedCount++;
        result.release();
      }
    }
    expect(admittedCount).toBe(8);
  });

  it('reports facts: in flight counting this request, and whole tokens left after it', () => {
    const { limits } = limiter(4, 200, 400);
    const first = admitted(limits.acquire('a'));
    expect(first.facts).toEqual({ in_flight: 1, max_concurrent: 4, rate_remaining: 399, rate_per_second: 200 });
    const second = admitted(limits.acquire('a'));
    expect(second.facts).toEqual({ in_flight: 2, max_concurrent: 4, rate_remaining: 398, rate_per_second: 200 });
    first.release();
    expect(limits.peek('a')).toEqual({ in_flight: 1, max_concurrent: 4, rate_remaining: 398, rate_per_second: 200 });
    expect(limits.peek('nobody')).toBeUndefined();
  });

  it('caps requests in flight and frees a slot on release', () => {
    const { limits } = limiter(2, 1_000, 1_000);
    const a = admitted(limits.acquire('p'));
    const b = admitted(limits.acquire('p'));
    const refusal = refused(limits.acquire('p'));
    expect(refusal.reason).toBe('concurrency_limited');
    expect(refusal.retryAfterSeconds).toBe(1);
    expect(refusal.facts.in_flight).toBe(2);
    a.release();
    const c = admitted(limits.acquire('p'));
    expect(c.facts.in_flight).toBe(2);
    expect(refused(limits.acquire('p')).reason).toBe('concurrency_limited');
    b.release();
    c.release();
    expect(limits.peek('p')?.in_flight).toBe(0);
  });

  it('frees one slot however many times a lease is released', () => {
    const { limits } = limiter(2, 1_000, 1_000);
    const a = admitted(limits.acquire('p'));
    const b = admitted(limits.acquire('p'));
    a.release();
    a.release();
    a.release();
    expect(limits.peek('p')?.in_flight).toBe(1);
    admitted(limits.acquire('p'));
    expect(refused(limits.acquire('p')).reason).toBe('concurrency_limited');
    b.release();
    b.release();
    expect(limits.peek('p')?.in_flight).toBe(1);
  });

  it('gives the token back when refusing for concurrency', () => {
    const { limits } = limiter(1, 1, 3);
    const held = admitted(limits.acquire('p'));
    for (let i = 0; i < 10; i++) {
      const refusal = refused(limits.acquire('p'));
      expect(refusal.reason).toBe('concurrency_limited');
      expect(refusal.facts.rate_remaining).toBe(2);
    }
    held.release();
    // The clock has not moved: only the 2 tokens left after the first request can be spent.
    admitted(limits.acquire('p')).release();
    admitted(limits.acquire('p')).release();
    expect(refused(limits.acquire('p')).reason).toBe('rate_limited');
  });

  it('keeps principals independent: one flooding agent does not touch another', () => {
    const { limits } = limiter(64, 200, 400);
    const flood = Array.from({ length: 300 }, () => limits.acquire('greedy'));
    expect(flood.filter((r) => r.ok)).toHaveLength(64);
    expect(flood.filter((r) => !r.ok && r.reason === 'concurrency_limited')).toHaveLength(236);
    const quiet = admitted(limits.acquire('quiet'));
    expect(quiet.facts).toEqual({ in_flight: 1, max_concurrent: 64, rate_remaining: 399, rate_per_second: 200 });
    quiet.release();

    for (const r of flood) if (r.ok) r.release();
    let spent = 64;
    for (let r = limits.acquire('greedy'); r.ok; r = limits.acquire('greedy')) {
      r.release();
      spent++;
    }
    expect(spent).toBe(400);
    expect(refused(limits.acquire('greedy')).reason).toBe('rate_limited');
    expect(admitted(limits.acquire('quiet')).facts).toEqual({ in_flight: 1, max_concurrent: 64, rate_remaining: 398, rate_per_second: 200 });
  });

  it('keeps an evicted principal’s in-flight count until its requests finish, and then its bucket too', () => {
    const { limits } = limiter(1, 1, 3, 2);
    const held = admitted(limits.acquire('a'));
    admitted(limits.acquire('b')).release();
    admitted(limits.acquire('c')).release(); // 'a' is least recently used and gets pushed out
    expect(limits.stats()).toEqual({ principals: 3, evictedInFlight: 1 });

    // Forgetting 'a' would admit a second request of it while the first is still in flight.
    const again = refused(limits.acquire('a'));
    expect(again.reason).toBe('concurrency_limited');
    expect(again.facts.in_flight).toBe(1);

    admitted(limits.acquire('b')).release();
    admitted(limits.acquire('c')).release(); // pushes 'a' out again
    expect(limits.stats().evictedInFlight).toBe(1);
    held.release();
    held.release();
    expect(limits.stats()).toEqual({ principals: 2, evictedInFlight: 0 });
    expect(limits.peek('a')?.in_flight).toBe(0);

    // 'a' spent one of its 3 tokens; keeping its state means it now has 2, not a fresh 3.
    const next = admitted(limits.acquire('a'));
    expect(next.facts).toEqual({ in_flight: 1, max_concurrent: 1, rate_remaining: 1, rate_per_second: 1 });
    expect(refused(limits.acquire('a')).reason).toBe('concurrency_limited');
    next.release();
    admitted(limits.acquire('a')).release();
    expect(refused(limits.acquire('a')).reason).toBe('rate_limited');
  });

  it('holds no more state than the bound plus principals with requests in flight', () => {
    const { limits } = limiter(3, 1_000, 1_000, 4);
    const leases = [];
    for (let p = 0; p < 50; p++) {
      for (let i = 0; i < 3; i++) leases.push(admitted(limits.acquire(`p${p}`)));
      expect(refused(limits.acquire(`p${p}`)).reason).toBe('concurrency_limited');
    }
    expect(limits.stats()).toEqual({ principals: 50, evictedInFlight: 46 });
    for (const lease of leases) {
      lease.release();
      lease.release();
    }
    expect(limits.stats()).toEqual({ principals: 4, evictedInFlight: 0 });
    for (let p = 0; p < 50; p++) {
      expect(limits.peek(`p${p}`)?.in_flight ?? 0).toBe(0);
    }
    for (let p = 0; p < 200; p++) admitted(limits.acquire(`idle${p}`)).release();
    expect(limits.stats()).toEqual({ principals: 4, evictedInFlight: 0 });
  });

  it('rejects limits that could never admit anything', () => {
    expect(() => new PrincipalLimiter({ maxConcurrent: 0, rate: { ratePerSecond: 1, burst: 1 } })).toThrow(RangeError);
    expect(() => new PrincipalLimiter({ maxConcurrent: 1, rate: { ratePerSecond: 1, burst: 1 } }, { maxEntries: 0 })).toThrow(RangeError);
  });

  type Op = { kind: 'acquire'; principal: number } | { kind: 'release'; lease: number } | { kind: 'advance'; ms: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('acquire' as const), principal: fc.nat(3) }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('release' as const), lease: fc.nat(1_000) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('advance' as const), ms: fc.oneof(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 5_000 })) }) },
  );

  it('property: in flight stays within [0, maxConcurrent], matches unreleased leases, and the rate bound holds over every window', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 5 }),
        fc.constantFrom(0.3, 1, 2.5, 10, 100),
        fc.constantFrom(1, 2, 3, 1_000),
        fc.array(op, { maxLength: 300 }),
        (maxConcurrent, burst, ratePerSecond, maxEntries, ops) => {
          const clock = fakeClock(0);
          const limits = new PrincipalLimiter({ maxConcurrent, rate: { ratePerSecond, burst } }, { now: clock.now, maxEntries });
          const leases: { principal: number; lease: LimitLease; released: boolean }[] = [];
          const admittedAt: number[][] = [[], [], [], []];
          const outstanding = (p: number) => leases.filter((l) => l.principal === p && !l.released).length;
          let t = 0;

          for (const o of ops) {
            if (o.kind === 'advance') {
              clock.advance(o.ms);
              t += o.ms;
            } else if (o.kind === 'release') {
              if (leases.length === 0) continue;
              const l = leases[o.lease % leases.length]!;
              l.lease.release(); // sometimes a second time
              l.released = true;
            } else {
              const result = limits.acquire(`p${o.principal}`);
              if (result.ok) {
                leases.push({ principal: o.principal, lease: result, released: false });
                admittedAt[o.principal]!.push(t);
                expect(result.facts.in_flight).toBe(outstanding(o.principal));
              } else {
                expect(Number.isInteger(result.retryAfterSeconds) && result.retryAfterSeconds >= 1).toBe(true);
                if (result.reason === 'concurrency_limited') expect(outstanding(o.principal)).toBe(maxConcurrent);
              }
            }
            for (let p = 0; p < 4; p++) {
              const inFlight = limits.peek(`p${p}`)?.in_flight ?? 0;
              expect(inFlight).toBeGreaterThanOrEqual(0);
              expect(inFlight).toBeLessThanOrEqual(maxConcurrent);
              expect(inFlight).toBe(outstanding(p));
            }
          }

          // An idle principal pushed out of a tiny LRU comes back with a full bucket (the price of bounded
          // memory), so the rate bound is only promised when every principal fits.
          if (maxEntries >= 4) {
            for (const times of admittedAt) {
              for (let i = 0; i < times.length; i++) {
                for (let j = i; j < times.length; j++) {
                  const windowSeconds = (times[j]! - times[i]!) / 1000;
                  expect(j - i + 1).toBeLessThanOrEqual(burst + ratePerSecond * windowSeconds + 1e-6);
                }
              }
            }
          }

          // Once everything is released and the buckets refilled, every principal has all its slots back.
          for (const l of leases) l.lease.release();
          expect(limits.stats().evictedInFlight).toBe(0);
          clock.advance((burst / ratePerSecond) * 1000 + 1);
          for (let p = 0; p < 4; p++) {
            const slots = Math.min(burst, maxConcurrent);
            for (let i = 0; i < slots; i++) admitted(limits.acquire(`p${p}`));
            if (burst > maxConcurrent) expect(refused(limits.acquire(`p${p}`)).reason).toBe('concurrency_limited');
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('SourceLimiter', () => {
  it('cuts off one address after its burst without touching another', () => {
    const clock = fakeClock();
    const sources = new SourceLimiter({ ratePerSecond: 0.5, burst: 2 }, { now: clock.now });
    expect(sources.take('203.0.113.9')).toEqual({ ok: true });
    expect(sources.take('203.0.113.9')).toEqual({ ok: true });
    expect(sources.take('203.0.113.9')).toEqual({ ok: false, retryAfterSeconds: 2 });
    expect(sources.take('198.51.100.7')).toEqual({ ok: true });
    expect(sources.take('2001:db8::1')).toEqual({ ok: true });
    clock.advance(2_000);
    expect(sources.take('203.0.113.9')).toEqual({ ok: true });
    expect(sources.take('203.0.113.9').ok).toBe(false);
  });

  it('counts an IPv4 client the same whether it arrived as IPv4 or IPv4-mapped IPv6', () => {
    const sources = new SourceLimiter({ ratePerSecond: 1, burst: 3 }, { now: fakeClock().now });
    expect(sources.take('::ffff:192.0.2.1').ok).toBe(true);
    expect(sources.take('192.0.2.1').ok).toBe(true);
    expect(sources.take('::FFFF:192.0.2.1').ok).toBe(true);
    expect(sources.take('192.0.2.1')).toEqual({ ok: false, retryAfterSeconds: 1 });
    expect(sources.size).toBe(1);
  });

  it('normalises only IPv4-mapped addresses', () => {
    expect(normaliseSourceAddress('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(normaliseSourceAddress('::FFFF:10.1.2.3')).toBe('10.1.2.3');
    expect(normaliseSourceAddress('10.1.2.3')).toBe('10.1.2.3');
    expect(normaliseSourceAddress('::ffff:')).toBe('::ffff:');
    expect(normaliseSourceAddress('::ffff:abcd')).toBe('::ffff:abcd');
    expect(normaliseSourceAddress('2001:db8::ffff:10.1.2.3')).toBe('2001:db8::ffff:10.1.2.3');
    expect(normaliseSourceAddress('::1')).toBe('::1');
  });

  it('holds at most its bound of addresses', () => {
    const sources = new SourceLimiter({ ratePerSecond: 1, burst: 1 }, { now: fakeClock().now, maxEntries: 10 });
    for (let i = 0; i < 1_000; i++) sources.take(`10.0.${i >> 8}.${i & 255}`);
    expect(sources.size).toBe(10);
    // The most recent addresses are still remembered as spent.
    expect(sources.take('10.0.3.231').ok).toBe(false);
  });
});

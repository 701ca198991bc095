import { describe, expect, it } from 'vitest';
import { attemptsOf, backoffDelay, retry, sleep, type RetryOptions } from '../../src/util/retry.js';

/** A clock that only the fake sleep moves, and the waits it was asked for. */
function fakeTime() {
  let now = 1_000_000;
  const waits: number[] = [];
  return {
    waits,
    now: () => now,
    sleep: async (ms: number, signal?: AbortSignal) => {
      signal?.throwIfAborted();
      waits.push(ms);
      now += ms;
    },
  };
}

/** A function failing with the given errors in turn, then resolving with 'ok'. */
function failing(...errors: unknown[]) {
  const calls: number[] = [];
  const fn = async (attempt: number) => {
    calls.push(attempt);
    if (calls.length <= errors.length) throw errors[calls.length - 1];
    return 'ok';
  };
  return { calls, fn };
}

const base = { baseDelayMs: 100, maxDelayMs: 1_500, jitter: 'none' } satisfies Partial<RetryOptions>;

describe('retry', () => {
  it('returns the first success, waiting with doubling delays capped at maxDelayMs', async () => {
    const time = fakeTime();
    const { calls, fn } = failing(...Array.from({ length: 6 }, (_, i) => new Error(`e${i}`)));
    expect(await retry(fn, { ...base, attempts: 10, sleep: time.sleep, now: time.now })).toBe('ok');
    expect(calls).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(time.waits).toEqual([100, 200, 400, 800, 1_500, 1_500]);
  });

  it('stops at the attempts bound and rethrows the last error with the attempt count', async () => {
    const time = fakeTime();
    const errors = Array.from({ length: 10 }, (_, i) => new Error(`e${i}`));
    const { calls, fn } = failing(...errors);
    const error = await retry(fn, { ...base, attempts: 4, sleep: time.sleep, now: time.now }).catch((err: unknown) => err);
    expect(error).toBe(errors[3]);
    expect(attemptsOf(error)).toBe(4);
    expect(calls).toHaveLength(4);
    expect(time.waits).toHaveLength(3);
  });

  it('does not start a wait that would end past maxElapsedMs', async () => {
    const time = fakeTime();
    const errors = Array.from({ length: 20 }, (_, i) => new Error(`e${i}`));
    const { calls, fn } = failing(...errors);
    // Waits 100 + 200 + 400 = 700 fit in 1000; the next (800) would end at 1500.
    const error = await retry(fn, { ...base, maxElapsedMs: 1_000, sleep: time.sleep, now: time.now }).catch((err: unknown) => err);
    expect(time.waits).toEqual([100, 200, 400]);
    expect(calls).toHaveLength(4);
    expect(error).toBe(errors[3]);
    expect(attemptsOf(error)).toBe(4);
  });

  it('counts the time spent inside fn against maxElapsedMs', async () => {
    const time = fakeTime();
    let calls = 0;
    const fn = async () => {
      calls++;
      await time.sleep(400); // a slow call
      throw new Error('slow failure');
    };
    await expect(retry(fn, { ...base, maxElapsedMs: 1_000, sleep: time.sleep, now: time.now })).rejects.toThrow('slow failure');
    // 400 (call) + 100 (wait) + 400 (call) = 900; a 200 wait would pass 1000.
    expect(calls).toBe(2);
  });

  it('with both bounds, the first one reached wins', async () => {
    const time = fakeTime();
    const { calls, fn } = failing(...Array.from({ length: 20 }, () => new Error('x')));
    await expect(retry(fn, { ...base, attempts: 2, maxElapsedMs: 60_000, sleep: time.sleep, now: time.now })).rejects.toThrow('x');
    expect(calls).toHaveLength(2);
  });

  it('throws a non-retriable error at once, without waiting', async () => {
    const time = fakeTime();
    const fatal = new TypeError('fatal');
    const { calls, fn } = failing(new Error('transient'), fatal, new Error('never reached'));
    const error = await retry(fn, { ...base, attempts: 10, isRetriable: (err) => !(err instanceof TypeError), sleep: time.sleep, now: time.now }).catch(
      (err: unknown) => err,
    );
    expect(error).toBe(fatal);
    expect(attemptsOf(error)).toBe(2);
    expect(calls).toEqual([1, 2]);
    expect(time.waits).toEqual([100]);
  });

  it('tells onRetry about each failure before its wait', async () => {
    const time = fakeTime();
    const seen: [string, number, number][] = [];
    const { fn } = failing(new Error('a'), new Error('b'));
    await retry(fn, { ...base, attempts: 3, sleep: time.sleep, now: time.now, onRetry: (err, attempt, delay) => seen.push([(err as Error).message, attempt, delay]) });
    expect(seen).toEqual([
      ['a', 1, 100],
      ['b', 2, 200],
    ]);
  });

  it('turns a synchronous throw into a retriable failure', async () => {
    const time = fakeTime();
    let calls = 0;
    const fn = (() => {
      calls++;
      if (calls === 1) throw new Error('sync');
      return Promise.resolve('ok');
    }) as (attempt: number) => Promise<string>;
    expect(await retry(fn, { ...base, attempts: 2, sleep: time.sleep, now: time.now })).toBe('ok');
  });

  it('rethrows primitives unchanged (they cannot carry the count)', async () => {
    const time = fakeTime();
    const error = await retry(() => Promise.reject('plain'), { ...base, attempts: 2, sleep: time.sleep, now: time.now }).catch((err: unknown) => err);
    expect(error).toBe('plain');
    expect(attemptsOf(error)).toBeUndefined();
  });

  it('keeps the annotation out of enumerable properties', async () => {
    const time = fakeTime();
    const error = await retry(() => Promise.reject(new Error('x')), { ...base, attempts: 1, sleep: time.sleep, now: time.now }).catch((err: unknown) => err);
    expect(attemptsOf(error)).toBe(1);
    expect(Object.keys(error as object)).toEqual([]);
  });

  it('refuses options without a bound or with nonsense values', async () => {
    const fn = async () => 'ok';
    await expect(retry(fn, { ...base })).rejects.toThrow(RangeError);
    await expect(retry(fn, { ...base, attempts: 0 })).rejects.toThrow(RangeError);
    await expect(retry(fn, { ...base, attempts: 1.5 })).rejects.toThrow(RangeError);
    await expect(retry(fn, { ...base, maxElapsedMs: Number.POSITIVE_INFINITY })).rejects.toThrow(RangeError);
    await expect(retry(fn, { ...base, attempts: 3, maxDelayMs: 50 })).rejects.toThrow(RangeError);
    await expect(retry(fn, { ...base, attempts: 3, baseDelayMs: -1 })).rejects.toThrow(RangeError);
  });

  describe('abort', () => {
    it('rejects with the reason before the first call when already aborted', async () => {
      const controller = new AbortController();
      const reason = new Error('shutting down');
      controller.abort(reason);
      let calls = 0;
      const error = await retry(
        async () => {
          calls++;
          return 'ok';
        },
        { ...base, attempts: 3, signal: controller.signal },
      ).catch((err: unknown) => err);
      expect(error).toBe(reason);
      expect(calls).toBe(0);
    });

    it('rejects promptly with the reason during a wait (real sleep, long delay)', async () => {
      const controller = new AbortController();
      const reason = new Error('stop');
      const started = Date.now();
      const pending = retry(() => Promise.reject(new Error('transient')), {
        baseDelayMs: 60_000,
        maxDelayMs: 60_000,
        jitter: 'none',
        attempts: 5,
        signal: controller.signal,
        onRetry: () => queueMicrotask(() => controller.abort(reason)),
      });
      await expect(pending).rejects.toBe(reason);
      expect(Date.now() - started).toBeLessThan(5_000);
    });

    it('rejects promptly with the reason while fn is still running, without retrying', async () => {
      const controller = new AbortController();
      const reason = new Error('stop');
      let calls = 0;
      let release!: () => void;
      const pending = retry(
        () => {
          calls++;
          return new Promise<string>((_, reject) => (release = () => reject(new Error('late'))));
        },
        { ...base, attempts: 5, signal: controller.signal },
      );
      await Promise.resolve();
      controller.abort(reason);
      await expect(pending).rejects.toBe(reason);
      release(); // fn's own late failure goes nowhere
      await Promise.resolve();
      expect(calls).toBe(1);
    });
  });
});

describe('backoffDelay', () => {
  const options = { baseDelayMs: 100, maxDelayMs: 1_000 };

  it('doubles from baseDelayMs and stays at maxDelayMs, also for huge attempt numbers', () => {
    expect([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, { ...options, jitter: 'none' }))).toEqual([100, 200, 400, 800, 1_000, 1_000]);
    expect(backoffDelay(5_000, { ...options, jitter: 'none' })).toBe(1_000);
    expect(backoffDelay(5_000, { baseDelayMs: 0, maxDelayMs: 0, jitter: 'none' })).toBe(0);
  });

  it('full jitter spans [0, delay)', () => {
    expect(backoffDelay(3, { ...options, jitter: 'full' }, () => 0)).toBe(0);
    expect(backoffDelay(3, { ...options, jitter: 'full' }, () => 0.5)).toBe(200);
    expect(backoffDelay(3, { ...options, jitter: 'full' }, () => 0.999_999)).toBeLessThan(400);
    for (let i = 0; i < 1_000; i++) {
      const delay = backoffDelay(6, { ...options, jitter: 'full' });
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(1_000);
    }
  });

  it('equal jitter spans [delay / 2, delay)', () => {
    expect(backoffDelay(3, { ...options, jitter: 'equal' }, () => 0)).toBe(200);
    expect(backoffDelay(3, { ...options, jitter: 'equal' }, () => 0.5)).toBe(300);
    expect(backoffDelay(3, { ...options, jitter: 'equal' }, () => 0.999_999)).toBeLessThan(400);
    for (let i = 0; i < 1_000; i++) {
      const delay = backoffDelay(6, { ...options, jitter: 'equal' });
      expect(delay).toBeGreaterThanOrEqual(500);
      expect(delay).toBeLessThan(1_000);
    }
  });

  it('retry passes the jittered delay to sleep', async () => {
    const time = fakeTime();
    const { fn } = failing(new Error('a'), new Error('b'));
    await retry(fn, { baseDelayMs: 100, maxDelayMs: 1_000, jitter: 'equal', attempts: 3, random: () => 0.5, sleep: time.sleep, now: time.now });
    expect(time.waits).toEqual([75, 150]);
  });
});

describe('sleep', () => {
  it('resolves after the delay', async () => {
    await expect(sleep(1)).resolves.toBeUndefined();
  });

  it('rejects at once with the reason when the signal aborts, and when it already has', async () => {
    const controller = new AbortController();
    const reason = new Error('stop');
    const started = Date.now();
    const pending = sleep(60_000, controller.signal);
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    expect(Date.now() - started).toBeLessThan(5_000);
    await expect(sleep(60_000, controller.signal)).rejects.toBe(reason);
  });

  it('removes its abort listener once it resolved', async () => {
    const controller = new AbortController();
    let added = 0;
    let removed = 0;
    const signal = controller.signal;
    const add = signal.addEventListener.bind(signal);
    const remove = signal.removeEventListener.bind(signal);
    signal.addEventListener = ((...args: Parameters<typeof add>) => (added++, add(...args))) as typeof add;
    signal.removeEventListener = ((...args: Parameters<typeof remove>) => (removed++, remove(...args))) as typeof remove;
    await sleep(1, signal);
    expect([added, removed]).toEqual([1, 1]);
  });
});

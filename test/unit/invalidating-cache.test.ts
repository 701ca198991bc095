import { describe, expect, it } from 'vitest';
import { InvalidatingCache } from '../../src/util/invalidating-cache.js';

/** A loader whose calls are released by hand, to stage races. */
function staged<V>() {
  const calls: { key: string; resolve: (v: V) => void }[] = [];
  const loader = (key: string) => new Promise<V>((resolve) => calls.push({ key, resolve }));
  return { calls, loader };
}
const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('InvalidatingCache', () => {
  it('shares one load between concurrent misses and then answers synchronously', async () => {
    const { calls, loader } = staged<string>();
    const cache = new InvalidatingCache(loader);
    const a = cache.get('k');
    const b = cache.get('k');
    expect(calls).toHaveLength(1);
    calls[0]!.resolve('v1');
    expect(await Promise.all([a, b])).toEqual(['v1', 'v1']);
    expect(cache.peek('k')?.value).toBe('v1');
  });

  it('redoes a load that started before an invalidation instead of storing stale data', async () => {
    const { calls, loader } = staged<string>();
    const cache = new InvalidatingCache(loader);
    const first = cache.get('k');
    cache.invalidate('k');
    calls[0]!.resolve('stale');
    await tick();
    expect(calls).toHaveLength(2);
    calls[1]!.resolve('fresh');
    expect(await first).toBe('fresh');
    expect(cache.peek('k')?.value).toBe('fresh');
  });

  it('keeps an orphaned old load stale across repeated invalidations', async () => {
    const { calls, loader } = staged<string>();
    const cache = new InvalidatingCache(loader);
    const orphan = cache.get('k'); // load A
    cache.invalidate('k');
    const second = cache.get('k'); // load B
    calls[1]!.resolve('b');
    expect(await second).toBe('b');
    cache.invalidate('k'); // no load in flight now, but A still is
    calls[0]!.resolve('stale-a');
    await tick();
    expect(cache.peek('k')).toBeUndefined();
    calls[2]!.resolve('c');
    expect(await orphan).toBe('c');
  });

  it('does not let a finished old load remove a newer one from the in-flight map', async () => {
    const { calls, loader } = staged<string>();
    const cache = new InvalidatingCache(loader);
    void cache.get('k');
    cache.invalidate('k');
    const newer = cache.get('k');
    calls[0]!.resolve('old'); // stale: retries through the newer in-flight load, no third load
    await tick();
    expect(calls).toHaveLength(2);
    calls[1]!.resolve('new');
    expect(await newer).toBe('new');
  });

  it('expires values by their ttl and stays within maxEntries', async () => {
    const cache = new InvalidatingCache<string | null>(async (key) => (key.startsWith('x') ? null : key), { maxEntries: 2, ttlMs: (v) => (v === null ? 20 : Infinity) });
    expect(await cache.get('x1')).toBeNull();
    expect(cache.peek('x1')).toBeDefined();
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(cache.peek('x1')).toBeUndefined();
    await cache.get('a');
    await cache.get('b');
    await cache.get('c');
    expect(cache.size).toBe(2);
    expect(cache.peek('a')).toBeUndefined();
  });

  it('clear() drops values and makes loads in flight start again', async () => {
    const { calls, loader } = staged<string>();
    const cache = new InvalidatingCache(loader);
    const pending = cache.get('k');
    cache.clear();
    calls[0]!.resolve('before-clear');
    await tick();
    calls[1]!.resolve('after-clear');
    expect(await pending).toBe('after-clear');
  });
});

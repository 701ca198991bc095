import { afterAll, describe, expect, it } from 'vitest';
import type { Cache } from '../../src/cache/cache.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { randomName } from '../helpers/services.js';

/**
 * The `Cache` contract (src/cache/cache.ts, Redis semantics), run against every implementation by
 * test/integration/cache.test.ts. `factory(prefix)` opens a cache whose keys live under `prefix`;
 * each suite uses random prefixes so suites sharing one Redis never see each other's keys.
 */
export function cacheContract(name: string, factory: (keyPrefix: string) => Promise<Cache>): void {
  describe(`Cache contract: ${name}`, () => {
    const opened: Cache[] = [];
    const open = async (prefix = `${randomName('cache')}:`) => {
      const cache = await factory(prefix);
      opened.push(cache);
      return cache;
    };
    afterAll(async () => {
      for (const cache of opened) await cache.close();
    });
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

    it('gets what was set, null for a missing key, and overwrites', async () => {
      const cache = await open();
      expect(await cache.get('missing')).toBeNull();
      await cache.set('k', 'v1');
      expect(await cache.get('k')).toBe('v1');
      await cache.set('k', 'v2');
      expect(await cache.get('k')).toBe('v2');
      await cache.ping();
    });

    it('expires a key after its ttl', async () => {
      const cache = await open();
      await cache.set('short', 'v', 80);
      expect(await cache.get('short')).toBe('v');
      await sleep(200);
      expect(await cache.get('short')).toBeNull();
      expect(await cache.ttl('short')).toBe(-2);
    });

    it('reports ttl with PTTL semantics: remaining ms, -1 without expiry, -2 when missing', async () => {
      const cache = await open();
      expect(await cache.ttl('nothing')).toBe(-2);
      await cache.set('forever', 'v');
      expect(await cache.ttl('forever')).toBe(-1);
      await cache.set('timed', 'v', 10_000);
      const remaining = await cache.ttl('timed');
      expect(remaining).toBeGreaterThan(9_000);
      expect(remaining).toBeLessThanOrEqual(10_000);
      // A plain set clears the expiry, as Redis SET does.
      await cache.set('timed', 'v2');
      expect(await cache.ttl('timed')).toBe(-1);
    });

    it('sets only when absent', async () => {
      const cache = await open();
      expect(await cache.setIfAbsent('once', 'first')).toBe(true);
      expect(await cache.setIfAbsent('once', 'second')).toBe(false);
      expect(await cache.get('once')).toBe('first');
      expect(await cache.setIfAbsent('lease', 'a', 80)).toBe(true);
      expect(await cache.ttl('lease')).toBeGreaterThan(0);
      expect(await cache.setIfAbsent('lease', 'b', 80)).toBe(false);
      await sleep(200);
      expect(await cache.setIfAbsent('lease', 'c')).toBe(true);
      expect(await cache.get('lease')).toBe('c');
      expect(await cache.ttl('lease')).toBe(-1);
    });

    it('deletes and reports how many keys it removed', async () => {
      const cache = await open();
      await cache.set('gone', 'v');
      expect(await cache.del('gone')).toBe(1);
      expect(await cache.del('gone')).toBe(0);
      expect(await cache.get('gone')).toBeNull();
    });

    it('increments counters atomically under 1,000 concurrent increments', async () => {
      const cache = await open();
      expect(await cache.incrBy('fresh', 5)).toBe(5);
      expect(await cache.incrBy('fresh', -7)).toBe(-2);
      const results = await Promise.all(Array.from({ length: 1_000 }, () => cache.incrBy('spend', 1)));
      expect(await cache.get('spend')).toBe('1000');
      // Every increment saw a distinct value: no lost update.
      expect(new Set(results).size).toBe(1_000);
      expect(Math.max(...results)).toBe(1_000);
      // Micro-units beyond 32 bits stay exact.
      expect(await cache.incrBy('big', 4_000_000_000_000)).toBe(4_000_000_000_000);
      expect(await cache.incrBy('big', 1)).toBe(4_000_000_000_001);
    });

    it('keeps a counter’s expiry across increments, and refuses to increment a non-integer', async () => {
      const cache = await open();
      await cache.set('windowed', '10', 10_000);
      expect(await cache.incrBy('windowed', 5)).toBe(15);
      expect(await cache.ttl('windowed')).toBeGreaterThan(9_000);
      await cache.set('text', 'not a number');
      const error = await cache.incrBy('text', 1).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(CaracalError);
      expect((error as CaracalError).code).toBe('CARACAL_VALIDATION');
      expect(await cache.get('text')).toBe('not a number');
    });

    it('rejects a ttl that is not a positive integer', async () => {
      const cache = await open();
      for (const ttl of [0, -5, 1.5]) {
        const error = await cache.set('k', 'v', ttl).catch((err: unknown) => err);
        expect((error as CaracalError).code).toBe('CARACAL_VALIDATION');
      }
    });

    it('isolates caches with different key prefixes', async () => {
      const suite = randomName('iso');
      const a = await open(`${suite}:a:`);
      const b = await open(`${suite}:b:`);
      await a.set('shared-name', 'from a');
      await b.set('shared-name', 'from b');
      expect(await a.get('shared-name')).toBe('from a');
      expect(await b.get('shared-name')).toBe('from b');
      expect(await a.del('shared-name')).toBe(1);
      expect(await b.get('shared-name')).toBe('from b');
      await a.incrBy('n', 3);
      expect(await b.get('n')).toBeNull();
    });

    it('round-trips hostile keys and values intact (unicode, glob characters, empty, 512 KiB)', async () => {
      const cache = await open();
      const big = Array.from({ length: 512 * 1024 / 8 }, (_, i) => (i % 2 ? 'é🙂\u0000\n' : 'abcdefgh')).join('').slice(0, 512 * 1024);
      const pairs: [string, string][] = [
        ['', 'empty key'],
        [' ', 'space'],
        ['a:b:c', 'colons'],
        ['*?[]{}\\', 'glob characters'],
        ['主体 🙂 ключ\n\t\r', 'ünïcödé ☃ \u2028'],
        ['k'.repeat(1_024), 'long key'],
        ['empty-value', ''],
        ['nul\u0000key', 'nul\u0000value'],
        ['big', big],
      ];
      for (const [key, value] of pairs) await cache.set(key, value);
      for (const [key, value] of pairs) {
        const got = await cache.get(key);
        expect(got?.length, JSON.stringify(key.slice(0, 20))).toBe(value.length);
        expect(got === value).toBe(true);
      }
      expect(await cache.get('*')).toBeNull();
    });
  });
}

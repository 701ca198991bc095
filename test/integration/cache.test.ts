import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { MemoryCache } from '../../src/cache/memory-cache.js';
import { openCache } from '../../src/cache/open.js';
import { RedisCache } from '../../src/cache/redis-cache.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { closedPort } from '../helpers/ports.js';
import { requireServices } from '../helpers/services.js';
import { cacheContract } from './cache.contract.js';

cacheContract('RedisCache', async (keyPrefix) => {
  const cache = new RedisCache({ url: requireServices().redisUrl, keyPrefix });
  await cache.connect();
  return cache;
});

cacheContract('MemoryCache', async () => new MemoryCache());

/** A TCP proxy in front of the real Redis that the test can cut and restore. */
async function cuttableProxy(target: URL) {
  const sockets = new Set<net.Socket>();
  const make = () =>
    net.createServer((client) => {
      const upstream = net.connect(Number(target.port), target.hostname);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
    });
  let server = make();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    async cut() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
    async restore() {
      server = make();
      await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('RedisCache failure mode: fail fast, never hang', () => {
  it('fails within 2 s with a retriable CARACAL_DEPENDENCY when Redis is not there', async () => {
    const port = await closedPort();
    const cache = new RedisCache({ url: `redis://127.0.0.1:${port}`, keyPrefix: 'x:' });
    try {
      for (const op of [() => cache.get('k'), () => cache.incrBy('k', 1), () => cache.ping()]) {
        const started = Date.now();
        const error = await op().catch((err: unknown) => err);
        expect(Date.now() - started).toBeLessThan(2_000);
        expect(error).toBeInstanceOf(CaracalError);
        expect((error as CaracalError).code).toBe('CARACAL_DEPENDENCY');
        expect((error as CaracalError).retriable).toBe(true);
      }
    } finally {
      const started = Date.now();
      await cache.close();
      expect(Date.now() - started).toBeLessThan(1_000);
    }
  });

  it('openCache rejects at start when the configured Redis is unreachable', async () => {
    const port = await closedPort();
    const started = Date.now();
    const error = await openCache({ redis: { url: `redis://127.0.0.1:${port}`, keyPrefix: 'x:' } }).catch((err: unknown) => err);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect((error as CaracalError).code).toBe('CARACAL_DEPENDENCY');
  });

  it('fails fast while a connected Redis is unreachable, and recovers when it is back', async () => {
    const proxy = await cuttableProxy(new URL(requireServices().redisUrl));
    const cache = new RedisCache({ url: `redis://127.0.0.1:${proxy.port}`, keyPrefix: `${Date.now()}:` });
    try {
      await cache.set('k', 'v');
      await proxy.cut();
      const started = Date.now();
      const error = await cache.get('k').catch((err: unknown) => err);
      expect(Date.now() - started).toBeLessThan(2_000);
      expect((error as CaracalError).code).toBe('CARACAL_DEPENDENCY');
      await proxy.restore();
      const deadline = Date.now() + 10_000;
      let value: string | null | undefined;
      while (Date.now() < deadline) {
        value = await cache.get('k').catch(() => undefined);
        if (value !== undefined) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(value).toBe('v');
    } finally {
      await cache.close();
      await proxy.close();
    }
  });
});

describe('MemoryCache specifics', () => {
  it('stays bounded: the oldest write is evicted first, expired entries before live ones', async () => {
    let now = 1_000;
    const cache = new MemoryCache({ maxEntries: 3, now: () => now });
    await cache.set('a', '1');
    await cache.set('b', '2', 50);
    await cache.set('c', '3');
    now += 100; // b expired
    await cache.set('d', '4');
    expect(await cache.get('a')).toBe('1');
    expect(await cache.get('b')).toBeNull();
    await cache.set('e', '5');
    expect(await cache.get('a')).toBeNull();
    expect([await cache.get('c'), await cache.get('d'), await cache.get('e')]).toEqual(['3', '4', '5']);
    expect(cache.size).toBe(3);
    await cache.close();
  });

  it('sweeps expired entries in the background', async () => {
    let now = 0;
    const cache = new MemoryCache({ sweepIntervalMs: 20, now: () => now });
    for (let i = 0; i < 100; i++) await cache.set(`k${i}`, 'v', 10);
    expect(cache.size).toBe(100);
    now = 50;
    await new Promise((resolve) => setTimeout(resolve, 80));
    expect(cache.size).toBe(0);
    await cache.close();
  });
});

describe('RedisCache Lua scripts', () => {
  const SET_AND_READ = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])";

  it('runs a script first used in the same tick as other commands (ioredis automatic pipelining) without an uncaught error', async () => {
    // With a command defined on first use, the pipeline the GET started lacked it and ioredis threw "results[i] is
    // not iterable" outside any promise: vitest reports such an error as a failed run.
    const cache = new RedisCache({ url: requireServices().redisUrl, keyPrefix: `lua-${Date.now()}:` });
    await cache.connect();
    try {
      const results = await Promise.all([cache.get('before'), cache.evalScript('set_and_read', SET_AND_READ, ['k1'], ['v1']), cache.get('k1'), cache.evalScript('set_and_read', SET_AND_READ, ['k2'], ['v2'])]);
      expect(results).toEqual([null, 'v1', null, 'v2']);
      // The key prefix applies to a script's keys as to every other command's.
      expect(await cache.get('k1')).toBe('v1');
      expect(await cache.get('k2')).toBe('v2');
    } finally {
      await cache.close();
    }
  });

  it('runs a script again after Redis forgot its scripts (SCRIPT FLUSH)', async () => {
    const prefix = `lua-flush-${Date.now()}:`;
    const cache = new RedisCache({ url: requireServices().redisUrl, keyPrefix: prefix });
    const admin = new Redis(requireServices().redisUrl);
    await cache.connect();
    try {
      expect(await cache.evalScript('set_and_read', SET_AND_READ, ['k'], ['one'])).toBe('one');
      await admin.script('FLUSH');
      expect(await cache.evalScript('set_and_read', SET_AND_READ, ['k'], ['two'])).toBe('two');
      expect(await admin.get(`${prefix}k`)).toBe('two');
    } finally {
      await cache.close();
      admin.disconnect();
    }
  });
});

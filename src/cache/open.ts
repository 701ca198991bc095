import type { CaracalConfig } from '../config/schema.js';
import type { Cache } from './cache.js';
import { MemoryCache } from './memory-cache.js';
import { RedisCache } from './redis-cache.js';

/**
 * The cache the config names: Redis when `redis.url` is set (connected now, so a wrong URL fails at
 * start with CARACAL_DEPENDENCY), else the in-process cache.
 */
export async function openCache(config: Pick<CaracalConfig, 'redis'>): Promise<Cache> {
  if (!config.redis.url) return new MemoryCache();
  const cache = new RedisCache({ url: config.redis.url, keyPrefix: config.redis.keyPrefix });
  try {
    await cache.connect();
  } catch (err) {
    await cache.close();
    throw err;
  }
  return cache;
}

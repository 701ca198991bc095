import { LRUCache } from 'lru-cache';
import { CaracalError } from '../errors/catalog.js';
import type { Cache } from './cache.js';

export interface MemoryCacheOptions {
  /** Most entries kept; when full, the oldest written entry is evicted (after dropping expired ones). Default 100 000. */
  maxEntries?: number;
  /** Period of the background sweep of expired entries. Default 30 s. */
  sweepIntervalMs?: number;
  /** Clock, for tests. */
  now?: () => number;
}

interface Entry {
  value: string;
  /** Epoch ms, or null for no expiry. */
  expiresAt: number | null;
}

function checkTtl(ttlMs: number | undefined): void {
  if (ttlMs !== undefined && (!Number.isInteger(ttlMs) || ttlMs <= 0)) {
    throw new CaracalError('CARACAL_VALIDATION', `ttlMs must be a positive integer, got ${ttlMs}`);
  }
}

const INTEGER = /^-?\d+$/;

/**
 * The in-process `Cache` of the embedded default. Same semantics as `RedisCache` (Redis commands
 * SET/SET NX/DEL/INCRBY/PTTL), atomic because every operation runs to completion on the event loop.
 * Expired entries are dropped when touched and by a periodic sweep that never keeps the process alive.
 *
 * Bounded by lru-cache in write order: reads use `peek`, which leaves the order alone, so the entry
 * evicted when full is the one written longest ago. Expiry is the explicit `expiresAt` on the
 * injectable clock, not lru-cache's TTL: that one treats a start time of 0 as "no TTL" and
 * caches its clock reading, both wrong for a test clock that starts at 0 and jumps.
 */
export class MemoryCache implements Cache {
  readonly kind = 'memory' as const;
  private readonly entries: LRUCache<string, Entry>;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly sweeper: NodeJS.Timeout;

  constructor(options: MemoryCacheOptions = {}) {
    // At least 1: with 0 the map kept the entry just written too, and lru-cache needs a bound.
    this.maxEntries = Math.max(options.maxEntries ?? 100_000, 1);
    // Counted through maxSize (every entry weighs 1) rather than `max`, which would allocate its
    // arrays for the whole bound when the cache is created.
    this.entries = new LRUCache<string, Entry>({ maxSize: this.maxEntries, sizeCalculation: () => 1 });
    this.now = options.now ?? Date.now;
    this.sweeper = setInterval(() => this.sweep(), options.sweepIntervalMs ?? 30_000);
    this.sweeper.unref();
  }

  get size(): number {
    return this.entries.size;
  }

  /** The live entry, dropping it when expired. */
  private live(key: string): Entry | undefined {
    const entry = this.entries.peek(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== null && entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  private write(key: string, entry: Entry): void {
    // Writing makes the key the newest; when full, expired entries go before lru-cache evicts the
    // oldest write.
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) this.sweep();
    this.entries.set(key, entry);
  }

  /** Drops every expired entry. */
  sweep(): void {
    const now = this.now();
    // Collected first: deleting the oldest entry during lru-cache's own walk makes the walk visit
    // entries again.
    const expired: string[] = [];
    this.entries.forEach((entry, key) => {
      if (entry.expiresAt !== null && entry.expiresAt <= now) expired.push(key);
    });
    for (const key of expired) this.entries.delete(key);
  }

  async get(key: string): Promise<string | null> {
    return this.live(key)?.value ?? null;
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    checkTtl(ttlMs);
    this.write(key, { value, expiresAt: ttlMs === undefined ? null : this.now() + ttlMs });
  }

  async setIfAbsent(key: string, value: string, ttlMs?: number): Promise<boolean> {
    checkTtl(ttlMs);
    if (this.live(key)) return false;
    this.write(key, { value, expiresAt: ttlMs === undefined ? null : this.now() + ttlMs });
    return true;
  }

  async del(key: string): Promise<number> {
    const existed = this.live(key) !== undefined;
    this.entries.delete(key);
    return existed ? 1 : 0;
  }

  async incrBy(key: string, delta: number): Promise<number> {
    if (!Number.isSafeInteger(delta)) throw new CaracalError('CARACAL_VALIDATION', `delta must be a safe integer, got ${delta}`);
    const entry = this.live(key);
    if (entry && !INTEGER.test(entry.value)) {
      throw new CaracalError('CARACAL_VALIDATION', `value of "${key}" is not an integer`);
    }
    const next = (entry ? Number(entry.value) : 0) + delta;
    if (!Number.isSafeInteger(next)) throw new CaracalError('CARACAL_VALIDATION', `counter "${key}" would overflow`);
    // Like Redis INCRBY, the counter keeps its expiry.
    if (entry) entry.value = String(next);
    else this.write(key, { value: String(next), expiresAt: null });
    return next;
  }

  async ttl(key: string): Promise<number> {
    const entry = this.live(key);
    if (!entry) return -2;
    if (entry.expiresAt === null) return -1;
    return Math.max(0, entry.expiresAt - this.now());
  }

  async ping(): Promise<void> {}

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.entries.clear();
  }
}

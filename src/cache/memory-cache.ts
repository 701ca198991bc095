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
 */
export class MemoryCache implements Cache {
  readonly kind = 'memory' as const;
  private readonly entries = new Map<string, Entry>();
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly sweeper: NodeJS.Timeout;

  constructor(options: MemoryCacheOptions = {}) {
    this.maxEntries = options.maxEntries ?? 100_000;
    this.now = options.now ?? Date.now;
    this.sweeper = setInterval(() => this.sweep(), options.sweepIntervalMs ?? 30_000);
    this.sweeper.unref();
  }

  get size(): number {
    return this.entries.size;
  }

  /** The live entry, dropping it when expired. */
  private live(key: string): Entry | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== null && entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  private write(key: string, entry: Entry): void {
    // Re-inserting moves the key to the end of the Map's order: eviction takes the oldest write.
    this.entries.delete(key);
    if (this.entries.size >= this.maxEntries) {
      this.sweep();
      while (this.entries.size >= this.maxEntries) {
        const oldest = this.entries.keys().next();
        if (oldest.done) break;
        this.entries.delete(oldest.value);
      }
    }
    this.entries.set(key, entry);
  }

  /** Drops every expired entry. */
  sweep(): void {
    const now = this.now();
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt !== null && entry.expiresAt <= now) this.entries.delete(key);
    }
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

/**
 * The `Cache` port: a small key/value store with TTLs and atomic counters, implemented by Redis
 * (`ioredis`) and in-process. Values are strings; counters are integers (money is micro-units).
 */
export interface Cache {
  readonly kind: 'redis' | 'memory';
  get(key: string): Promise<string | null>;
  /** `ttlMs` omitted = no expiry. */
  set(key: string, value: string, ttlMs?: number): Promise<void>;
  /** Sets only when absent; true when it was set. */
  setIfAbsent(key: string, value: string, ttlMs?: number): Promise<boolean>;
  del(key: string): Promise<number>;
  /** Atomic add to an integer counter (missing = 0); returns the new value. */
  incrBy(key: string, delta: number): Promise<number>;
  /** Remaining time to live in ms; -1 no expiry, -2 missing (Redis PTTL semantics). */
  ttl(key: string): Promise<number>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

import { LRUCache } from 'lru-cache';

/**
 * A bounded, per-key cache of values loaded from the database, for the gateway's in-memory views
 * (principal facts, allowlists). Reads are synchronous when the value is there and make the key the
 * most recently used (the least recently used goes first when full); concurrent misses for one key
 * share one load; `invalidate` (called on agent.lifecycle events) drops the value and makes any
 * load that started before it start again, so a slow query can never store what the change replaced.
 */
export interface CachedEntry<V> {
  readonly value: V;
  /** Epoch ms after which the entry is stale; Infinity = until invalidated. */
  readonly until: number;
}

export interface InvalidatingCacheOptions<V> {
  maxEntries?: number;
  /** How long a loaded value stays (e.g. short for "does not exist"); default until invalidated. */
  ttlMs?: (value: V) => number;
}

export class InvalidatingCache<V> {
  private readonly entries: LRUCache<string, CachedEntry<V>>;
  /** Handed to every read (one per request): without options lru-cache creates an object per call. */
  private readonly getOptions: LRUCache.GetOptions<string, CachedEntry<V>, unknown> = { status: undefined };
  private readonly loading = new Map<string, Promise<V>>();
  /** Monotonic clock of invalidations: a load that began before its key's last one is stale. */
  private clock = 0;
  private readonly invalidatedAt = new Map<string, number>();
  private clearedAt = 0;
  private readonly maxEntries: number;

  constructor(
    private readonly loader: (key: string) => Promise<V>,
    private readonly options: InvalidatingCacheOptions<V> = {},
  ) {
    this.maxEntries = options.maxEntries ?? 1_000_000;
    // Counted through maxSize (every entry weighs 1) rather than `max`, which would allocate its
    // arrays for the whole bound up front: a million entries by default, most of them never used.
    // Expiry stays the explicit `until` that every entry carries and `peek` hands out.
    this.entries = new LRUCache<string, CachedEntry<V>>({ maxSize: Math.max(this.maxEntries, 1), sizeCalculation: () => 1 });
  }

  /** The cached entry, or undefined when absent or expired (no load is started). */
  peek(key: string): CachedEntry<V> | undefined {
    const entry = this.entries.get(key, this.getOptions);
    // lru-cache leaves its diagnostics status in the options; the next read must start without one.
    this.getOptions.status = undefined;
    if (entry && entry.until <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  get(key: string): Promise<V> {
    const entry = this.peek(key);
    return entry ? Promise.resolve(entry.value) : this.load(key);
  }

  /** Loads the key (sharing a load already in flight) and caches the result. */
  load(key: string): Promise<V> {
    const pending = this.loading.get(key);
    if (pending) return pending;
    const startedAt = this.clock;
    const load: Promise<V> = this.loader(key)
      .then((value) => {
        if ((this.invalidatedAt.get(key) ?? 0) > startedAt || this.clearedAt > startedAt) return this.load(key);
        const ttl = this.options.ttlMs?.(value) ?? Infinity;
        this.entries.set(key, { value, until: ttl === Infinity ? Infinity : Date.now() + ttl });
        return value;
      })
      .finally(() => {
        if (this.loading.get(key) === load) this.loading.delete(key);
      });
    this.loading.set(key, load);
    return load;
  }

  invalidate(key: string): void {
    this.clock++;
    if (this.invalidatedAt.size >= this.maxEntries) {
      // Bounded memory: forgetting per-key marks is safe once every older load counts as stale.
      this.invalidatedAt.clear();
      this.clearedAt = this.clock;
    }
    this.invalidatedAt.set(key, this.clock);
    this.entries.delete(key);
    this.loading.delete(key);
  }

  clear(): void {
    this.clock++;
    this.clearedAt = this.clock;
    this.invalidatedAt.clear();
    this.entries.clear();
    this.loading.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}

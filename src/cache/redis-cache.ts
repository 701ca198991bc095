import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { CaracalError } from '../errors/catalog.js';
import type { Cache } from './cache.js';

export interface RedisCacheOptions {
  url: string;
  /** Prepended to every key (ioredis `keyPrefix`), so deployments and test suites share a Redis safely. */
  keyPrefix: string;
  /** TCP connect timeout. Default 1000 ms. */
  connectTimeoutMs?: number;
  /** A command that got no reply in time fails instead of hanging. Default 2000 ms. */
  commandTimeoutMs?: number;
}

function checkTtl(ttlMs: number | undefined): void {
  if (ttlMs !== undefined && (!Number.isInteger(ttlMs) || ttlMs <= 0)) {
    throw new CaracalError('CARACAL_VALIDATION', `ttlMs must be a positive integer, got ${ttlMs}`);
  }
}

/** Redis replies with an error for bad input (not an integer, overflow); anything else is the dependency. */
function mapError(op: string, err: unknown): CaracalError {
  if (err instanceof CaracalError) return err;
  const message = (err as Error)?.message ?? String(err);
  if ((err as Error)?.name === 'ReplyError') {
    if (/not an integer|out of range|overflow/i.test(message)) {
      return new CaracalError('CARACAL_VALIDATION', `redis ${op}: ${message}`, { cause: err });
    }
    return new CaracalError('CARACAL_DEPENDENCY', `redis ${op}: ${message}`, { cause: err, retriable: false });
  }
  return new CaracalError('CARACAL_DEPENDENCY', `redis ${op}: ${message}`, { cause: err, retriable: true });
}

/**
 * `Cache` on Redis (ioredis). Failure mode: fail fast. The offline queue is off, so while Redis is
 * unreachable every command rejects at once with a retriable CARACAL_DEPENDENCY instead of queueing
 * (a gateway must decide, not hang); the client keeps reconnecting in the background and commands
 * work again once Redis is back. `commandTimeout` bounds a Redis that accepts but does not answer.
 */
export class RedisCache implements Cache {
  readonly kind = 'redis' as const;
  private readonly redis: Redis;
  private connecting?: Promise<void>;
  private closed = false;
  /** SHA-1 of each Lua script run, by its source. */
  private readonly scriptShas = new Map<string, string>();
  /** The last connection error, for readiness reports. */
  lastError?: Error;

  constructor(options: RedisCacheOptions) {
    this.redis = new Redis(options.url, {
      keyPrefix: options.keyPrefix,
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      // Commands issued in the same tick (concurrent requests' reservations, settlements, cache reads) go out in one write.
      enableAutoPipelining: true,
      connectTimeout: options.connectTimeoutMs ?? 1_000,
      commandTimeout: options.commandTimeoutMs ?? 2_000,
      // Reconnect forever with a capped delay; commands meanwhile fail fast (no offline queue).
      retryStrategy: (times) => Math.min(times * 100, 2_000),
    });
    // Without a listener ioredis prints every connection error; the error reaches callers anyway.
    this.redis.on('error', (err: Error) => {
      this.lastError = err;
    });
  }

  /** Connects once (later reconnects are ioredis' own); rejects fast when Redis is unreachable. */
  connect(): Promise<void> {
    if (this.closed) return Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis: cache is closed', { retriable: false }));
    if (this.redis.status !== 'wait') return Promise.resolve();
    this.connecting ??= this.redis.connect().then(
      () => {
        this.connecting = undefined;
      },
      (err: unknown) => {
        this.connecting = undefined;
        throw mapError('connect', err);
      },
    );
    return this.connecting;
  }

  private async run<T>(op: string, command: () => Promise<T>): Promise<T> {
    try {
      await this.connect();
      return await command();
    } catch (err) {
      throw mapError(op, err);
    }
  }

  get(key: string): Promise<string | null> {
    return this.run('get', () => this.redis.get(key));
  }

  async set(key: string, value: string, ttlMs?: number): Promise<void> {
    checkTtl(ttlMs);
    await this.run('set', () => (ttlMs === undefined ? this.redis.set(key, value) : this.redis.set(key, value, 'PX', ttlMs)));
  }

  async setIfAbsent(key: string, value: string, ttlMs?: number): Promise<boolean> {
    checkTtl(ttlMs);
    const reply = await this.run('setIfAbsent', () =>
      ttlMs === undefined ? this.redis.set(key, value, 'NX') : this.redis.set(key, value, 'PX', ttlMs, 'NX'),
    );
    return reply === 'OK';
  }

  del(key: string): Promise<number> {
    return this.run('del', () => this.redis.del(key));
  }

  async incrBy(key: string, delta: number): Promise<number> {
    if (!Number.isSafeInteger(delta)) throw new CaracalError('CARACAL_VALIDATION', `delta must be a safe integer, got ${delta}`);
    return this.run('incrBy', () => this.redis.incrby(key, delta));
  }

  /**
   * Runs a Lua script atomically (EVALSHA, and EVAL when Redis does not have it yet, which also loads it). `keys` get
   * the key prefix like every other key; keys a script derives from them keep it too. For the few places where several
   * keys must change together (src/metering/redis-spend-counters.ts); everything else uses the methods above.
   *
   * Plain EVALSHA/EVAL rather than ioredis' defineCommand: a command defined while an automatic pipeline is pending is
   * missing from that pipeline, and calling it there breaks ioredis' bookkeeping — an uncaught TypeError ("results[i]
   * is not iterable") that ends the process. Built-in commands are in every pipeline.
   */
  async evalScript(name: string, lua: string, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    let sha = this.scriptShas.get(lua);
    if (sha === undefined) this.scriptShas.set(lua, (sha = createHash('sha1').update(lua, 'utf8').digest('hex')));
    const digest = sha;
    return this.run(name, async () => {
      try {
        return await this.redis.evalsha(digest, keys.length, ...keys, ...args);
      } catch (err) {
        // NOSCRIPT: the script did not run (a fresh or flushed Redis), so running it in full is not a second run.
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
        return this.redis.eval(lua, keys.length, ...keys, ...args);
      }
    });
  }

  ttl(key: string): Promise<number> {
    return this.run('ttl', () => this.redis.pttl(key));
  }

  async ping(): Promise<void> {
    await this.run('ping', () => this.redis.ping());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.redis.status === 'ready') {
      try {
        await this.redis.quit();
        return;
      } catch {
        // fall through to a hard disconnect
      }
    }
    // Also stops a pending reconnect loop.
    this.redis.disconnect(false);
  }
}

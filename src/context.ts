import { hostname } from 'node:os';
import { openCache } from './cache/open.js';
import type { Cache } from './cache/cache.js';
import { RedisCache } from './cache/redis-cache.js';
import { RedisSpendCounters } from './metering/redis-spend-counters.js';
import { MemorySpendCounters, type SpendCounters } from './metering/spend-counters.js';
import { reconcileSpend } from './metering/reconcile.js';
import type { CaracalConfig } from './config/schema.js';
import { openEventLog } from './events/open.js';
import type { EventLog } from './events/event-log.js';
import { EventPublisher, eventMessage } from './events/publisher.js';
import { topicNames } from './events/topics.js';
import { buildEvent, EVENT_TYPES, type LifecycleData } from './events/cloudevents.js';
import { loadKeyRing, type KeyRing, type SigningKey } from './authority/tokens/keys.js';
import type { TokenSettings } from './authority/tokens/tokens.js';
import { createLogger, type Logger } from './logging/logger.js';
import type { Db } from './store/db.js';
import { openDb } from './store/open.js';
import { newId } from './util/ids.js';

export interface ContextOverrides {
  db?: Db;
  events?: EventLog;
  cache?: Cache;
  /** Budget spend counters other than the cache's (tests of a failing store). */
  spend?: SpendCounters;
  logger?: Logger;
}

/**
 * Everything a role needs, built once from config (dependency injection without a framework).
 * The database opens eagerly; the event log, cache and signing key open on first use so a CLI
 * command that only reads the database never connects to Kafka.
 */
export class AppContext {
  readonly instanceId = `${hostname()}-${process.pid}-${newId().slice(-6)}`;
  readonly topics: ReturnType<typeof topicNames>;
  readonly tokenSettings: TokenSettings;
  private eventsPromise?: Promise<EventLog>;
  private cachePromise?: Promise<Cache>;
  private spendPromise?: Promise<SpendCounters>;
  private spendOpenPromise?: Promise<SpendCounters>;
  private keyPromise?: Promise<KeyRing>;
  private publisherInstance?: EventPublisher;
  private readonly closers: (() => Promise<void>)[] = [];

  private constructor(
    readonly config: Readonly<CaracalConfig>,
    readonly logger: Logger,
    readonly db: Db,
    private readonly overrides: ContextOverrides,
  ) {
    this.topics = topicNames(config.kafka.topicPrefix);
    this.tokenSettings = { issuer: config.auth.issuer, audience: config.auth.audience, clockSkewSeconds: config.auth.clockSkewSeconds };
  }

  static async fromConfig(config: Readonly<CaracalConfig>, overrides: ContextOverrides = {}): Promise<AppContext> {
    const logger = overrides.logger ?? createLogger(config.logLevel);
    const db = overrides.db ?? (await openDb(config));
    const ctx = new AppContext(config, logger, db, overrides);
    if (!overrides.db) ctx.closers.push(() => db.close());
    return ctx;
  }

  /** The event log, opened once; a failed open is not kept, so a later call tries again (a broker that was down at start). */
  events(): Promise<EventLog> {
    this.eventsPromise ??= (async () => {
      if (this.overrides.events) return this.overrides.events;
      const log = await openEventLog(this.config, this.db);
      this.closers.push(() => log.close());
      return log;
    })().catch((err: unknown) => {
      this.eventsPromise = undefined;
      throw err;
    });
    return this.eventsPromise;
  }

  cache(): Promise<Cache> {
    this.cachePromise ??= (async () => {
      if (this.overrides.cache) return this.overrides.cache;
      const cache = await openCache(this.config);
      this.closers.push(() => cache.close());
      return cache;
    })();
    return this.cachePromise;
  }

  /**
   * Budget spend counters on the cache's store: Redis (shared by every gateway process) or in-process (the embedded
   * default: one gateway process). Counters that are not ready when first opened — a fresh or flushed Redis, a new
   * process on the embedded default — are first reconciled from the metering events recorded in the database
   * (src/metering/reconcile.ts), so a fresh deployment works and the embedded default keeps its budgets across
   * restarts. Counters lost while this process runs are not repaired here: budgets then fail closed until
   * `caracal budget reconcile`. `{ reconcileIfLost: false }` hands them out as they are (that command itself).
   * Counters given as an override are handed out as they are.
   */
  spendCounters(options: { reconcileIfLost?: boolean } = {}): Promise<SpendCounters> {
    if (options.reconcileIfLost === false) return this.openSpendCounters();
    this.spendPromise ??= (async () => {
      const counters = await this.openSpendCounters();
      if (this.overrides.spend || (await counters.isReady())) return counters;
      const report = await reconcileSpend(this.db, counters, new Date());
      this.logger.info(
        { counters: counters.kind, lines: report.lines.length, restored: report.lines.filter((line) => line.restoredMicros > 0).length },
        'budget spend counters started empty: reconciled from the recorded metering events',
      );
      return counters;
    })().catch((err: unknown) => {
      // Not kept: the next caller tries again (the database or Redis may be back).
      this.spendPromise = undefined;
      throw err;
    });
    return this.spendPromise;
  }

  private openSpendCounters(): Promise<SpendCounters> {
    const override = this.overrides.spend;
    this.spendOpenPromise ??= override
      ? Promise.resolve(override)
      : this.cache().then((cache) => (cache instanceof RedisCache ? new RedisSpendCounters(cache) : new MemorySpendCounters()));
    return this.spendOpenPromise;
  }

  /** The current signing key and the earlier ones still trusted (rotation overlap). */
  keyRing(): Promise<KeyRing> {
    this.keyPromise ??= loadKeyRing({ signingKeyPath: this.config.auth.signingKeyPath, home: this.config.home, previousKeys: this.config.auth.previousKeys });
    return this.keyPromise;
  }

  async signingKey(): Promise<SigningKey> {
    return (await this.keyRing()).current;
  }

  async publisher(onBatch?: (topic: string, size: number, ok: boolean) => void): Promise<EventPublisher> {
    if (!this.publisherInstance) {
      const publisher = new EventPublisher(await this.events(), 500, onBatch);
      this.publisherInstance = publisher;
      // Flushed before the event log closes (closers run in reverse order).
      this.closers.push(() => publisher.close());
    }
    return this.publisherInstance;
  }

  /** Announces a change to principals, policies or tokens so every gateway refreshes its facts. */
  async announce(data: LifecycleData): Promise<void> {
    const event = buildEvent(EVENT_TYPES.lifecycle, `caracal/${this.instanceId}`, data.principal_id ?? undefined, data);
    await (await this.events()).publish(this.topics.lifecycle, [eventMessage(data.principal_id ?? 'global', event)]);
  }

  /** Closes what this context opened, newest first. */
  async close(): Promise<void> {
    for (const close of this.closers.reverse()) {
      try {
        await close();
      } catch (err) {
        this.logger.warn({ err }, 'error while closing');
      }
    }
    this.closers.length = 0;
  }
}

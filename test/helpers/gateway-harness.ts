import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { issueAccessToken } from '../../src/authority/tokens/tokens.js';
import type { Cache } from '../../src/cache/cache.js';
import { openCache } from '../../src/cache/open.js';
import { RedisCache } from '../../src/cache/redis-cache.js';
import { loadConfig } from '../../src/config/load.js';
import type { CaracalConfig, UpstreamConfig } from '../../src/config/schema.js';
import { AppContext, type ContextOverrides } from '../../src/context.js';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import type { SpendCounters } from '../../src/metering/spend-counters.js';
import { parseEvent, type DecisionData } from '../../src/events/cloudevents.js';
import type { EventLog, LogMessage } from '../../src/events/event-log.js';
import { KafkaEventLog } from '../../src/events/kafka-event-log.js';
import { openEventLog } from '../../src/events/open.js';
import { assembleGateway, type AssembledGateway } from '../../src/gateway/server.js';
import { createLogger, type Logger } from '../../src/logging/logger.js';
import { runOperation } from '../../src/operations/index.js';
import type { Db } from '../../src/store/db.js';
import { openDb } from '../../src/store/open.js';
import { PgDb } from '../../src/store/pg-db.js';
import { randomName, requireServices } from './services.js';

/**
 * Where the gateway's ports live:
 * - `embedded`: the embedded default (PGlite under a temporary home, the durable log inside it,
 *   the in-process cache);
 * - `services`: the real services of test/helpers/services.ts (PostgreSQL on a fresh schema,
 *   Kafka with a fresh topic prefix, Redis with a fresh key prefix), all dropped or closed by
 *   `close()`.
 */
export type Backend = 'embedded' | 'services';

/** Every backend, for `describe.each(BACKENDS)(...)`. */
export const BACKENDS: readonly Backend[] = ['embedded', 'services'];

/** An upstream besides `echo`: any field of the upstream config, `name` and `url` required. */
export type ExtraUpstream = Pick<UpstreamConfig, 'name' | 'url'> &
  Partial<Omit<UpstreamConfig, 'name' | 'url' | 'credentials'>> & {
    credentials?: { header: string; valueEnv: string; prefix?: string };
  };

export interface HarnessOptions {
  /** Default `embedded`. */
  backend?: Backend;
  env?: Record<string, string>;
  /** Ports supplied by the caller take the backend's place and stay the caller's to close. */
  db?: Db;
  events?: EventLog;
  cache?: Cache;
  /**
   * Wraps the event log the gateway uses (the backend's, or `events`), e.g. to inject a fault
   * into `publish`. The wrapper is not closed; what it wraps is, if the harness opened it.
   */
  wrapEvents?: (events: EventLog) => EventLog;
  extraUpstreams?: ExtraUpstream[];
  /** Budget spend counters instead of the cache's (e.g. ones that fail). */
  spend?: SpendCounters;
  /** The gateway's logger (default: silent), e.g. to read the access log. */
  logger?: Logger;
  /** The gateway's clock (epoch ms) for decision inputs and events, e.g. to record decisions at chosen times. */
  clock?: () => number;
  /** Config values merged over the harness defaults (e.g. `auth.externalIssuers`, `gateway.tls`). */
  configOverrides?: { auth?: Record<string, unknown>; gateway?: Record<string, unknown> } & Record<string, unknown>;
}

/** A whole gateway (real WASM, real event log, real echo upstream on loopback) driven by inject(). */
export interface Harness {
  backend: Backend;
  ctx: AppContext;
  assembled: AssembledGateway;
  upstream: EchoUpstream;
  registerAgent(name?: string): Promise<string>;
  /** Policy + an allowlist entry for the echo upstream (agents with no entry are denied by default). */
  grant(principalId: string, resources: string[], actions: string[]): Promise<string>;
  /** An allowlist entry covering every URL of the echo upstream. */
  allowUpstream(principalId: string): Promise<void>;
  token(principalId: string, ttlSeconds?: number, now?: Date): Promise<string>;
  op(name: string, args: Record<string, unknown>): Promise<unknown>;
  close(): Promise<void>;
}

/** Consumer group timings that keep joins and rebalances well under a second (production: seconds). */
const KAFKA_TEST_CONSUMER = { sessionTimeoutMs: 6_000, heartbeatIntervalMs: 300, rebalanceTimeoutMs: 5_000, maxWaitTimeMs: 100 };

/** Config that points at the backend's services (the ports themselves are opened by `openPorts`). */
function backendConfig(backend: Backend, overrides: HarnessOptions['configOverrides']): Record<string, unknown> {
  if (backend === 'embedded') return {};
  const services = requireServices();
  return {
    database: { ...(overrides?.database as object | undefined), url: services.databaseUrl, schema: randomName('gw') },
    kafka: { ...(overrides?.kafka as object | undefined), brokers: services.kafkaBrokers, clientId: randomName('caracal_harness'), groupPrefix: `${randomName('g')}.` },
    redis: { ...(overrides?.redis as object | undefined), url: services.redisUrl, keyPrefix: `${randomName('gw')}:` },
  };
}

interface Ports {
  overrides: ContextOverrides;
  /** Closes (and for PostgreSQL drops) what the harness opened, after the context has closed. */
  close(): Promise<void>;
}

/**
 * The ports the context gets. On the embedded backend without `wrapEvents` the context opens its
 * own, exactly as a deployment does; otherwise the harness opens them and owns them.
 */
async function openPorts(backend: Backend, config: Readonly<CaracalConfig>, options: HarnessOptions): Promise<Ports> {
  const closers: (() => Promise<void>)[] = [];
  const close = async () => {
    for (const closer of closers.reverse()) await closer().catch(() => {});
    closers.length = 0;
  };
  if (backend === 'embedded' && !options.wrapEvents) {
    return {
      overrides: { ...(options.db ? { db: options.db } : {}), ...(options.events ? { events: options.events } : {}), ...(options.cache ? { cache: options.cache } : {}) },
      close,
    };
  }
  try {
    let db = options.db;
    if (!db) {
      if (backend === 'services') {
        const { url, schema, poolSize } = config.database;
        const pg = new PgDb({ url: url!, schema, poolSize });
        closers.push(async () => {
          await pg.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
          await pg.close();
        });
        await pg.ensureSchema();
        db = pg;
      } else {
        const opened = await openDb(config);
        closers.push(() => opened.close());
        db = opened;
      }
    }
    let events = options.events;
    if (!events) {
      const opened =
        backend === 'services'
          ? await KafkaEventLog.connect({ brokers: config.kafka.brokers!, clientId: config.kafka.clientId, logLevel: 'silent', consumer: KAFKA_TEST_CONSUMER })
          : await openEventLog(config, db);
      closers.push(() => opened.close());
      events = opened;
    }
    let cache = options.cache;
    if (!cache) {
      let opened: Cache;
      if (backend === 'services') {
        const redis = new RedisCache({ url: config.redis.url!, keyPrefix: config.redis.keyPrefix });
        closers.push(() => redis.close());
        await redis.connect();
        opened = redis;
      } else {
        opened = await openCache(config);
        closers.push(() => opened.close());
      }
      cache = opened;
    }
    return { overrides: { db, events: options.wrapEvents ? options.wrapEvents(events) : events, cache }, close };
  } catch (err) {
    await close();
    throw err;
  }
}

export async function createHarness(options: HarnessOptions = {}): Promise<Harness> {
  const backend = options.backend ?? 'embedded';
  const upstream = await startEchoUpstream();
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-harness-'));
  let ports: Ports | undefined;
  let ctx: AppContext | undefined;
  let assembled: AssembledGateway | undefined;
  const teardown = async () => {
    await assembled?.gateway.app.close();
    await assembled?.stop();
    await ctx?.close(); // flushes the publisher into the event log before the ports close
    await ports?.close();
    await upstream.close();
  };
  try {
    const config = loadConfig({
      env: { CARACAL_TOPIC_PREFIX: `${randomName('t')}.`, ...options.env },
      cwd: home,
      overrides: {
        ...options.configOverrides,
        ...backendConfig(backend, options.configOverrides),
        home,
        logLevel: 'silent',
        gateway: {
          // Suites send many failing tokens from one address on purpose; the per-source limit is
          // under test only where a suite sets it.
          limits: { unauthenticatedPerSource: { ratePerSecond: 100_000, burst: 100_000 } },
          ...options.configOverrides?.gateway,
          upstreams: [{ name: 'echo', url: upstream.url }, ...(options.extraUpstreams ?? [])],
        },
      },
    });
    ports = await openPorts(backend, config, options);
    ctx = await AppContext.fromConfig(config, { logger: options.logger ?? createLogger('silent'), ...ports.overrides, ...(options.spend ? { spend: options.spend } : {}) });
    assembled = await assembleGateway(ctx, options.clock ? { clock: options.clock } : {});
    await assembled.gateway.app.ready();
  } catch (err) {
    await teardown().catch(() => {});
    throw err;
  }
  const readyCtx = ctx;
  const op = (name: string, args: Record<string, unknown>) => runOperation(readyCtx, name, args);
  const allowUpstream = async (principalId: string) => {
    await op('allowlist.create', { principalId, pattern: `${upstream.url}/**`, patternType: 'glob' });
  };
  let closed: Promise<void> | undefined;
  return {
    backend,
    ctx: readyCtx,
    assembled,
    upstream,
    op,
    registerAgent: async (name = randomName('agent')) => ((await op('agent.register', { name, owner: 'test@example.com' })) as { id: string }).id,
    grant: async (principalId, resources, actions) => {
      await allowUpstream(principalId);
      return ((await op('policy.create', { principalId, resources, actions, maxValiditySeconds: 3600 })) as { id: string }).id;
    },
    allowUpstream,
    token: async (principalId, ttlSeconds = 300, now) => (await issueAccessToken(await readyCtx.signingKey(), readyCtx.tokenSettings, principalId, ttlSeconds, now)).token,
    close: () => (closed ??= teardown()),
  };
}

/** Reads a topic from the beginning with a fresh group until `done` says so or the time is up. */
export async function readTopic(
  events: EventLog,
  topic: string,
  done: (messages: LogMessage[]) => boolean,
  timeoutMs = 15_000,
): Promise<LogMessage[]> {
  const messages: LogMessage[] = [];
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const subscription = await events.subscribe({
    groupId: randomName('reader'),
    topics: [topic],
    fromBeginning: true,
    handler: async (message) => {
      messages.push(message);
      if (done(messages)) finish();
    },
  });
  const timer = setTimeout(finish, timeoutMs);
  await finished;
  clearTimeout(timer);
  await subscription.stop();
  return messages;
}

export async function readDecisions(events: EventLog, topic: string, expected: (d: DecisionData[]) => boolean, timeoutMs?: number): Promise<DecisionData[]> {
  const toData = (messages: LogMessage[]) => messages.map((m) => parseEvent(m.value).data as DecisionData);
  return toData(await readTopic(events, topic, (messages) => expected(toData(messages)), timeoutMs));
}

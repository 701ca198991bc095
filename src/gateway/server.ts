import Fastify, { type FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import { AuthorityFacts } from '../authority/views/facts.js';
import { verificationKeys } from '../authority/tokens/keys.js';
import { EmergencyState } from '../authority/views/emergency.js';
import { delegateMandate } from '../authority/tokens/mandates.js';
import { RevocationSet } from '../authority/views/revocations.js';
import { TokenVerifier, VerifiedTokenCache } from '../authority/tokens/tokens.js';
import { createAllowlistChecker } from './allowlist-checker.js';
import type { CaracalConfig } from '../config/schema.js';
import { AppContext, type ContextOverrides } from '../context.js';
import { parseEvent, type LifecycleData } from '../events/cloudevents.js';
import type { Subscription } from '../events/event-log.js';
import { topicSpecs } from '../events/topics.js';
import { GatewayMetrics, registerSpoolMetrics } from '../metrics/metrics.js';
import path from 'node:path';
import type { CloudEvent } from '../events/cloudevents.js';
import type { EventLog } from '../events/event-log.js';
import { eventMessage } from '../events/publisher.js';
import type { Logger } from '../logging/logger.js';
import { Spool } from '../spool/spool.js';
import { readSequencer } from '../ledger/store.js';
import { sleep } from '../util/retry.js';
import { CaracalError } from '../errors/catalog.js';
import { DEFAULT_BUNDLE } from '../paths.js';
import { PolicyEngine } from '../policy/engine.js';
import { type BundleSource, HttpBundleSource, StoreBundleSource } from '../policy/bundle-sources.js';
import { openBundleStore, parseBundleStoreSpec } from '../policy/bundle-store-open.js';
import { BundleWatcher } from '../policy/bundle-watcher.js';
import { HomeLock, newAdminToken } from '../store/home.js';
import { migrateUp } from '../store/migrate.js';
import { buildAdminApp } from './admin.js';
import { BearerAuthenticator } from './authenticate.js';
import { ChainAuthenticator } from './authenticators.js';
import { buildGatewayApp, type GatewayApp, type PolicyEvaluator } from './app.js';

export interface AssembledGateway {
  gateway: GatewayApp;
  metrics: GatewayMetrics;
  facts: AuthorityFacts;
  tokenCache: VerifiedTokenCache;
  /** `shadow`: the store's shadow revision, evaluated alongside and never enforced (null: none). */
  engine: { current: PolicyEvaluator; shadow: PolicyEvaluator | null };
  /**
   * Polls the bundle source and swaps `engine.current` / `engine.shadow`: the bundle file with
   * `policy.reload.intervalMs` > 0, or the store of `policy.store`.
   */
  bundleWatcher?: BundleWatcher;
  /** Stops the bundle watcher and the lifecycle subscription (the context is the caller's to close). */
  stop(): Promise<void>;
}

/**
 * Everything the agent-facing app needs, wired from a context, without listening: `startGateway`
 * listens on it, tests `inject()` into it.
 */
export interface AssembleOptions {
  prepare?: boolean;
  metrics?: GatewayMetrics;
  /** Replaces the WASM engine (tests of the outcome mapping, the benchmark's cost breakdown). */
  engine?: PolicyEvaluator;
  /** Epoch ms for decision inputs and events (tests record chosen times); default Date.now. */
  clock?: () => number;
}

export async function assembleGateway(ctx: AppContext, options: AssembleOptions = {}): Promise<AssembledGateway> {
  const { config } = ctx;
  const log = ctx.logger.child({ component: 'gateway' });
  const prepare = options.prepare ?? true;
  // With the spool, decisions do not need the event log to be up: a gateway (re)started while the
  // broker is down serves from its spool and attaches to the log when it is back.
  let events: EventLog | null = await openEventLog(ctx, config.spool.enabled, log);
  if (prepare) await migrateUp(ctx.db);
  const metrics = options.metrics ?? new GatewayMetrics();
  const bundleFile = config.policy.bundlePath ?? DEFAULT_BUNDLE;
  // With policy.reload on or policy.store set (and the real engine), a watcher loads the bundle and
  // owns the holder: it swaps `current` (and `shadow`) when the source changes
  // (src/policy/bundle-watcher.ts). A store starts on the bundle file until it has an active revision.
  const source = options.engine ? null : policySource(ctx);
  const watcher = source
    ? await BundleWatcher.open({
        ...(source.kind === 'file' ? { file: bundleFile } : { source: source.source, fallbackFile: bundleFile }),
        intervalMs: config.policy.reload.intervalMs || STORE_POLL_MS,
        signing: config.policy.signing,
        logger: log,
        metrics,
      })
    : null;
  const engine: { current: PolicyEvaluator; shadow: PolicyEvaluator | null } =
    watcher?.holder ?? { current: options.engine ?? ((await PolicyEngine.fromBundleFile(bundleFile, { signing: config.policy.signing })) as PolicyEvaluator), shadow: null };
  if (!watcher) {
    metrics.bundleInfo.reset();
    metrics.bundleInfo.set({ revision: engine.current.revision }, 1);
  }
  const ring = await ctx.keyRing();
  const facts = new AuthorityFacts(ctx.db, ctx.logger);
  const tokenCache = new VerifiedTokenCache(config.auth.verifiedTokenCacheSize);
  const spooled = config.spool.enabled ? await openSpool(ctx, metrics, log) : null;
  const publisher = spooled ? null : await ctx.publisher((topic, size, ok) => metrics.eventsPublished.inc({ topic, result: ok ? 'ok' : 'error' }, size));
  const cache = await ctx.cache();
  const revocations = new RevocationSet();
  const emergency = new EmergencyState();
  const allowlist = createAllowlistChecker(ctx.db, config.allowlists.whenEmpty);
  await Promise.all([revocations.catchUp(ctx.db), emergency.reload(ctx.db)]);
  const bearer = new BearerAuthenticator(new TokenVerifier(ring, ctx.tokenSettings), tokenCache, metrics);

  // Backstop for a missed lifecycle event: revocations and emergency stops are re-read from the
  // database every few seconds (events normally deliver them within milliseconds).
  const catchUp = setInterval(() => {
    void Promise.all([revocations.catchUp(ctx.db), emergency.reload(ctx.db)]).catch((err) => log.warn({ err }, 'revocation/emergency catch-up failed'));
  }, 5_000);
  catchUp.unref();

  // Changes to principals, policies, mandates, allowlists and emergency stops reach this gateway
  // through agent.lifecycle.
  const subscribeLifecycle = (log_: EventLog): Promise<Subscription> => log_.subscribe({
    groupId: `caracal-gateway-${ctx.instanceId}`,
    topics: [ctx.topics.lifecycle],
    fromBeginning: false,
    handler: async (message) => {
      let data: LifecycleData;
      try {
        data = parseEvent(message.value).data as LifecycleData;
      } catch (err) {
        log.warn({ err, offset: message.offset }, 'ignoring a malformed lifecycle event');
        return;
      }
      switch (data.entity) {
        case 'mandate': {
          const ids = Array.isArray(data.attributes.ids) ? data.attributes.ids.filter((id): id is string => typeof id === 'string') : [];
          revocations.add(ids);
          const revoked = new Set(ids);
          tokenCache.evictWhere((t) => revoked.has(t.tokenId));
          break;
        }
        case 'emergency':
          await emergency.reload(ctx.db);
          break;
        case 'allowlist':
          if (data.principal_id) allowlist.invalidate(data.principal_id);
          break;
        default:
          if (data.principal_id) {
            facts.invalidate(data.principal_id);
            if (data.action === 'suspended') tokenCache.evictWhere((t) => t.principalId === data.principal_id);
          }
      }
    },
  });

  /** Everything that needs the event log: topics, the spool's shipper, the lifecycle subscription. */
  let subscription: Subscription | null = null;
  const attach = async (connected: EventLog) => {
    if (prepare) await connected.createTopics(topicSpecs(config));
    subscription = await subscribeLifecycle(connected);
    spooled?.ship(connected);
  };
  const attaching = new AbortController();
  if (events) await attach(events);
  else {
    // Until the log answers: decisions are durable in the spool, revocations and emergency stops
    // come from the database catch-up above, and /ready reports the log as advisory.
    void (async () => {
      for (let attempt = 1; !attaching.signal.aborted; attempt++) {
        try {
          await sleep(Math.min(5_000, 250 * attempt), attaching.signal);
          const connected = await ctx.events();
          await attach(connected);
          events = connected;
          log.info({ attempt }, 'event log reachable: shipping the spool and following agent.lifecycle');
          return;
        } catch (err) {
          if (!attaching.signal.aborted) log.warn({ err, attempt }, 'event log still unreachable; decisions stay in the spool');
        }
      }
    })();
  }

  const spend = await ctx.spendCounters();
  const gateway = await buildGatewayApp({
    config,
    logger: ctx.logger,
    engine,
    facts,
    revocations,
    emergency,
    allowlist,
    verifyMandate: (token) => bearer.verifyCached(token),
    delegate: async (parent, args) => delegateMandate(ctx.db, ring.current, ctx.tokenSettings, parent, args),
    authenticator: ChainAuthenticator.fromConfig({
      config,
      db: ctx.db,
      logger: ctx.logger,
      caracal: bearer,
      cache: tokenCache,
      metrics,
    }),
    publisher: spooled?.recorder ?? publisher!,
    decisionsTopic: ctx.topics.decisions,
    meteringTopic: ctx.topics.metering,
    metrics,
    readiness: [
      { name: 'database', check: () => ctx.db.ping() },
      // With the spool the log is not needed to serve (the spool check bounds how far it may fall behind).
      { name: 'events', check: () => (events ? events.ping() : Promise.reject(new Error('event log not reachable since start'))), advisory: Boolean(spooled) },
      { name: 'cache', check: () => cache.ping() },
      ...(spooled ? [{ name: 'spool', check: async () => spooled.check() }] : []),
      // A frozen ledger stops sealing, not serving: reported so operators see it, not required.
      {
        name: 'ledger',
        check: async () => {
          const state = await readSequencer(ctx.db, config.ledger.origin);
          if (state?.frozenAt) throw new Error(`ledger ${config.ledger.origin} is frozen since ${state.frozenAt.toISOString()}: ${state.frozenReason ?? 'no reason given'} (caracal merkle resume)`);
        },
        advisory: true,
      },
      // Lost counters (a flushed Redis) refuse priced calls until `caracal budget reconcile`; other calls go on.
      {
        name: 'budgets',
        check: async () => {
          if (!(await spend.isReady())) throw new Error('budget spend counters were lost; priced calls are refused until `caracal budget reconcile`');
        },
        advisory: true,
      },
    ],
    jwks: async () => ({ keys: verificationKeys(ring, Math.floor(Date.now() / 1000)).map((k) => k.publicJwk) }),
    source: `caracal/gateway/${ctx.instanceId}`,
    ledgerDb: ctx.db,
    spend,
    ...(watcher ? { policyStatus: () => watcher.status() } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
  });
  watcher?.start();
  return {
    gateway,
    metrics,
    facts,
    tokenCache,
    engine,
    ...(watcher ? { bundleWatcher: watcher } : {}),
    stop: async () => {
      await watcher?.stop();
      clearInterval(catchUp);
      attaching.abort();
      await (subscription as Subscription | null)?.stop();
      await spooled?.close();
    },
  };
}

/** How often a gateway polls its `policy.store` when `policy.reload.intervalMs` is 0. */
const STORE_POLL_MS = 5_000;

/**
 * What the bundle watcher polls: the store of `policy.store` (a database or directory store, or a
 * bundle server with `policy.storeToken`), else the bundle file when `policy.reload` is on; null:
 * the bundle file is loaded once.
 */
function policySource(ctx: AppContext): { kind: 'store'; source: BundleSource } | { kind: 'file' } | null {
  const { policy } = ctx.config;
  if (policy.store === undefined) return policy.reload.intervalMs > 0 ? { kind: 'file' } : null;
  const spec = parseBundleStoreSpec(policy.store);
  const source =
    spec.kind === 'http'
      ? new HttpBundleSource({ url: spec.url, ...(policy.storeToken ? { token: policy.storeToken } : {}) })
      : new StoreBundleSource(openBundleStore(spec, { db: ctx.db }));
  return { kind: 'store', source };
}

/** Grace for shipping what is left in the spool at shutdown; the rest ships at the next start. */
const SPOOL_DRAIN_MS = 5_000;

/**
 * The local spool in front of the event log: each decision is durable on this gateway's disk
 * (group commit) before the request goes on, and a shipper moves it to the log in the background.
 */
/** The event log; with the spool on, an unreachable log is not fatal (null: attach later). */
async function openEventLog(ctx: AppContext, spoolOn: boolean, log: Logger): Promise<EventLog | null> {
  try {
    return await ctx.events();
  } catch (err) {
    if (!spoolOn || !(err instanceof CaracalError) || err.code !== 'CARACAL_DEPENDENCY') throw err;
    log.warn({ err }, 'event log unreachable at start; serving from the spool and retrying in the background');
    return null;
  }
}

async function openSpool(ctx: AppContext, metrics: GatewayMetrics, log: Logger) {
  const { spool: settings, home } = ctx.config;
  // The flush observer exists once the gauges are registered on the opened spool; flushes before that (none: the spool is idle until the first request) are not observed.
  const flushes: { observe?: (seconds: number, records: number) => void } = {};
  const spool = await Spool.open({
    dir: settings.dir ?? path.join(home, 'spool'),
    maxBytes: settings.maxBytes,
    logger: log.child({ component: 'spool' }),
    onFlush: (seconds, records) => flushes.observe?.(seconds, records),
  });
  const opened = spool.stats();
  if (opened.unshippedRecords > 0 || opened.tornRecords > 0) log.info({ unshipped: opened.unshippedRecords, torn: opened.tornRecords }, 'spool has events from before; shipping them first');
  flushes.observe = registerSpoolMetrics(metrics, spool);
  return {
    ship: (events: EventLog) =>
      spool.startShipping(events, {
        batchSize: settings.shipBatch,
        onError: (err, attempt) => log.warn({ err, attempt }, 'spool could not ship to the event log; retrying'),
      }),
    recorder: {
      publish: (topic: string, key: string, event: CloudEvent) => {
        const { value, headers } = eventMessage(key, event);
        return spool.append([{ topic, key, value, ...(headers ? { headers } : {}) }]);
      },
    },
    check: () => {
      const { unshippedBytes } = spool.stats();
      if (unshippedBytes > settings.readyHighWater * settings.maxBytes) {
        throw new Error(`spool holds ${unshippedBytes} unshipped bytes, above ${Math.round(settings.readyHighWater * 100)} % of spool.maxBytes`);
      }
    },
    close: async () => {
      const deadline = Date.now() + SPOOL_DRAIN_MS;
      while (spool.stats().unshippedRecords > 0 && Date.now() < deadline) await sleep(50);
      await spool.stopShipping();
      await spool.close();
    },
  };
}

export interface RunningGateway {
  ctx: AppContext;
  gatewayUrl: string;
  adminUrl: string;
  metricsUrl: string;
  adminToken: string;
  metrics: GatewayMetrics;
  /** SIGTERM path: 503 for new requests → drain in-flight → flush events → stop consumers → close pools. */
  close(): Promise<void>;
}

export interface StartGatewayOptions {
  /** Admin credential; default CARACAL_ADMIN_TOKEN or a fresh random one. */
  adminToken?: string;
  /** Apply pending migrations and create topics first (default true). */
  prepare?: boolean;
  /** Replacements for the context's ports and the engine (tests, benchmarks). */
  overrides?: ContextOverrides & { engine?: PolicyEvaluator };
  /**
   * Other roles sharing this process and its context (the consumers under `caracal dev`): started
   * once the gateway listens, stopped after it has drained and before the context closes.
   */
  companions?: (ctx: AppContext) => Promise<{ stop(): Promise<void> }>;
}

function urlOf(app: FastifyInstance, tls = false): string {
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `${tls ? 'https' : 'http'}://${host}:${address.port}`;
}

export async function startGateway(config: Readonly<CaracalConfig>, options: StartGatewayOptions = {}): Promise<RunningGateway> {
  const lock = config.database.url ? null : HomeLock.acquire(config.home);
  const ctx = await AppContext.fromConfig(config, options.overrides ?? {}).catch((err) => {
    lock?.release();
    throw err;
  });
  const log = ctx.logger.child({ component: 'gateway' });
  const listening: FastifyInstance[] = [];
  let assembled: AssembledGateway | undefined;
  let companions: { stop(): Promise<void> } | undefined;
  const teardown = async () => {
    for (const app of listening.reverse()) await app.close().catch(() => {});
    await assembled?.stop().catch(() => {});
    await companions?.stop().catch((err) => log.warn({ err }, 'error while stopping companion roles'));
    await ctx.close(); // publisher flush → event log → cache → database
    lock?.release();
  };
  try {
    assembled = await assembleGateway(ctx, {
      ...(options.prepare !== undefined ? { prepare: options.prepare } : {}),
      ...(options.overrides?.engine ? { engine: options.overrides.engine } : {}),
    });
    const { gateway, metrics } = assembled;
    await gateway.app.listen({ host: config.gateway.host, port: config.gateway.port });
    listening.push(gateway.app);

    const adminToken = options.adminToken ?? process.env.CARACAL_ADMIN_TOKEN ?? newAdminToken();
    const admin = await buildAdminApp(ctx, adminToken);
    await admin.listen({ host: config.admin.host, port: config.admin.port });
    listening.push(admin);

    const metricsApp = Fastify({ logger: false });
    metricsApp.get('/metrics', async (_request, reply) => {
      reply.header('content-type', metrics.registry.contentType);
      return metrics.registry.metrics();
    });
    await metricsApp.listen({ host: config.metrics.host, port: config.metrics.port });
    listening.push(metricsApp);

    const adminUrl = urlOf(admin);
    if (options.companions) companions = await options.companions(ctx);
    lock?.publishRuntime(adminUrl, adminToken);
    log.info({ gateway: urlOf(gateway.app, Boolean(config.gateway.tls)), admin: adminUrl, metrics: urlOf(metricsApp), bundle_revision: assembled.engine.current.revision }, 'gateway listening');

    let closed: Promise<void> | undefined;
    return {
      ctx,
      gatewayUrl: urlOf(gateway.app, Boolean(config.gateway.tls)),
      adminUrl,
      metricsUrl: urlOf(metricsApp),
      adminToken,
      metrics,
      close: () =>
        (closed ??= (async () => {
          // New requests get 503 while Fastify's close drains the in-flight ones.
          gateway.beginShutdown();
          await teardown();
          log.info('gateway stopped');
        })()),
    };
  } catch (err) {
    await teardown();
    throw err;
  }
}

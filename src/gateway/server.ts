import Fastify, { type FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import { AuthorityFacts } from '../authority/facts.js';
import { TokenVerifier, VerifiedTokenCache } from '../authority/tokens.js';
import type { CaracalConfig } from '../config/schema.js';
import { AppContext } from '../context.js';
import { parseEvent, type LifecycleData } from '../events/cloudevents.js';
import type { Subscription } from '../events/event-log.js';
import { topicSpecs } from '../events/topics.js';
import { GatewayMetrics } from '../metrics/metrics.js';
import { DEFAULT_BUNDLE } from '../paths.js';
import { PolicyEngine } from '../policy/engine.js';
import { HomeLock, newAdminToken } from '../store/home.js';
import { migrateUp } from '../store/migrate.js';
import { buildAdminApp } from './admin.js';
import { buildGatewayApp } from './app.js';

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
}

function urlOf(app: FastifyInstance, scheme = 'http'): string {
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `${scheme}://${host}:${address.port}`;
}

export async function startGateway(config: Readonly<CaracalConfig>, options: StartGatewayOptions = {}): Promise<RunningGateway> {
  const lock = config.database.url ? null : HomeLock.acquire(config.home);
  const ctx = await AppContext.fromConfig(config).catch((err) => {
    lock?.release();
    throw err;
  });
  const log = ctx.logger.child({ component: 'gateway' });
  const started: { close: () => Promise<unknown> }[] = [];
  let subscription: Subscription | undefined;
  try {
    const events = await ctx.events();
    if (options.prepare ?? true) {
      await migrateUp(ctx.db);
      await events.createTopics(topicSpecs(config));
    }
    const engine = { current: await PolicyEngine.fromBundleFile(config.policy.bundlePath ?? DEFAULT_BUNDLE) };
    const metrics = new GatewayMetrics();
    metrics.bundleInfo.set({ revision: engine.current.revision }, 1);
    const key = await ctx.signingKey();
    const facts = new AuthorityFacts(ctx.db, ctx.logger);
    const tokenCache = new VerifiedTokenCache(config.auth.verifiedTokenCacheSize);
    const publisher = await ctx.publisher((topic, size, ok) => metrics.eventsPublished.inc({ topic, result: ok ? 'ok' : 'error' }, size));
    const cache = await ctx.cache();

    // Changes to principals and policies reach this gateway through agent.lifecycle.
    subscription = await events.subscribe({
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
        if (data.principal_id) {
          facts.invalidate(data.principal_id);
          if (data.action === 'suspended') tokenCache.evictWhere((t) => t.principalId === data.principal_id);
        }
      },
    });

    const gateway = await buildGatewayApp({
      config,
      logger: ctx.logger,
      engine,
      facts,
      verifier: new TokenVerifier([key], ctx.tokenSettings),
      tokenCache,
      publisher,
      decisionsTopic: ctx.topics.decisions,
      metrics,
      readiness: [
        { name: 'database', check: () => ctx.db.ping() },
        { name: 'events', check: () => events.ping() },
        { name: 'cache', check: () => cache.ping() },
      ],
      jwks: async () => ({ keys: [key.publicJwk] }),
      source: `caracal/gateway/${ctx.instanceId}`,
    });
    await gateway.app.listen({ host: config.gateway.host, port: config.gateway.port });
    started.push(gateway.app);

    const adminToken = options.adminToken ?? process.env.CARACAL_ADMIN_TOKEN ?? newAdminToken();
    const admin = await buildAdminApp(ctx, adminToken);
    await admin.listen({ host: config.admin.host, port: config.admin.port });
    started.push(admin);

    const metricsApp = Fastify({ logger: false });
    metricsApp.get('/metrics', async (_request, reply) => {
      reply.header('content-type', metrics.registry.contentType);
      return metrics.registry.metrics();
    });
    await metricsApp.listen({ host: config.metrics.host, port: config.metrics.port });
    started.push(metricsApp);

    const adminUrl = urlOf(admin);
    lock?.publishRuntime(adminUrl, adminToken);
    log.info({ gateway: urlOf(gateway.app), admin: adminUrl, metrics: urlOf(metricsApp), bundle_revision: engine.current.revision, backends: { db: ctx.db.kind, events: events.kind, cache: cache.kind } }, 'gateway listening');

    let closed: Promise<void> | undefined;
    return {
      ctx,
      gatewayUrl: urlOf(gateway.app),
      adminUrl,
      metricsUrl: urlOf(metricsApp),
      adminToken,
      metrics,
      close: () =>
        (closed ??= (async () => {
          gateway.beginShutdown();
          // Fastify's close stops accepting and waits for in-flight requests.
          for (const app of started.reverse()) await app.close().catch(() => {});
          await subscription?.stop().catch(() => {});
          await ctx.close(); // publisher flush → event log → cache → database
          lock?.release();
          log.info('gateway stopped');
        })()),
    };
  } catch (err) {
    for (const app of started.reverse()) await app.close().catch(() => {});
    await subscription?.stop().catch(() => {});
    await ctx.close();
    lock?.release();
    throw err;
  }
}

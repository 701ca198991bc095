import proxy from '@fastify/http-proxy';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { CaracalConfig, UpstreamConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import { buildEvent, EVENT_TYPES, type DecisionData } from '../events/cloudevents.js';
import type { EventPublisher } from '../events/publisher.js';
import type { EmergencyState } from '../authority/emergency.js';
import type { AuthorityFacts } from '../authority/facts.js';
import type { RevocationSet } from '../authority/revocations.js';
import type { IssuedMandate } from '../authority/mandates.js';
import { TokenRejected, type VerifiedToken } from '../authority/tokens.js';
import type { Authenticator, AuthResult } from './authenticate.js';
import { clientErrorHandler, gatewayServerFactory } from './listener.js';
import type { Logger } from '../logging/logger.js';
import type { GatewayMetrics } from '../metrics/metrics.js';
import type { Decision, DecisionInput } from '../policy/engine.js';
import { isClientCertHeader } from './authenticators.js';
import { buildDecisionInput, type AllowlistChecker } from './decision-input.js';
import { newId } from '../util/ids.js';
import { errorBody, installErrorHandling } from './errors.js';
import { baseFastifyOptions } from './fastify-defaults.js';
import { assertSafePath, resourceAndAction } from './request-target.js';
import { mapUpstreamError } from './upstream-errors.js';
import { registerDelegationRoute, resolveMandate } from './mandate-binding.js';

export interface PolicyEvaluator {
  readonly revision: string;
  evaluate(input: DecisionInput): Decision;
}

export interface ReadinessCheck {
  name: string;
  check: () => Promise<void>;
}

export interface GatewayDeps {
  config: Readonly<CaracalConfig>;
  logger: Logger;
  /** Holder so a new bundle can be swapped in atomically: each request reads `current` once. */
  engine: { current: PolicyEvaluator };
  facts: AuthorityFacts;
  revocations: RevocationSet;
  emergency: EmergencyState;
  allowlist: AllowlistChecker;
  /** Issues a child of an already verified parent mandate (src/authority/mandates.ts rules). */
  delegate: (parent: VerifiedToken, args: { parentId: string; principalId: string; resources: string[]; actions: string[]; validitySeconds: number }) => Promise<IssuedMandate>;
  /** Verifies a Caracal mandate presented next to another credential (→ TokenRejected). */
  verifyMandate: (token: string) => Promise<VerifiedToken>;
  authenticator: Authenticator;
  publisher: EventPublisher;
  decisionsTopic: string;
  metrics: GatewayMetrics;
  readiness: ReadinessCheck[];
  jwks: () => Promise<{ keys: unknown[] }>;
  source: string;
}

/** Per-request facts carried from the decision to the response hooks. */
interface RequestState {
  decisionId?: string;
  upstream?: string;
  started: bigint;
}

declare module 'fastify' {
  interface FastifyRequest {
    caracal: RequestState;
  }
}

/**
 * Never forwarded: the agent's credentials (bearer, cookies, its mandate) and certificate headers
 * a client could forge (the gateway does its own TLS; a client's claim about a certificate is noise).
 */
const STRIPPED_HEADERS = new Set([
  'authorization',
  'proxy-authorization',
  'cookie',
  'caracal-mandate',
  'x-forwarded-client-cert',
  'x-ssl-client-cert',
  'x-client-cert',
  'ssl-client-cert',
  'x-client-certificate',
]);

export interface GatewayApp {
  app: FastifyInstance;
  /** Stop admitting requests (503) while in-flight ones drain. */
  beginShutdown(): void;
}

export async function buildGatewayApp(deps: GatewayDeps): Promise<GatewayApp> {
  const { config, metrics } = deps;
  let closing = false;

  const app = Fastify({
    loggerInstance: deps.logger.child({ component: 'gateway' }) as FastifyBaseLogger,
    ...baseFastifyOptions(),
    bodyLimit: config.gateway.bodyLimitBytes,
    serverFactory: gatewayServerFactory(config),
    clientErrorHandler,
    routerOptions: { maxParamLength: 500 },
  });

  app.decorateRequest('caracal', null as unknown as RequestState);
  app.addHook('onRequest', async (request, reply) => {
    request.caracal = { started: process.hrtime.bigint() };
    reply.header('x-request-id', request.id);
    metrics.inFlight.inc();
  });
  app.addHook('onResponse', async (request, reply) => {
    metrics.inFlight.dec();
    const route = request.routeOptions.url ?? 'not_found';
    const upstream = request.caracal.upstream ?? '';
    metrics.requests.inc({ route, method: request.method, status: String(reply.statusCode), upstream });
    metrics.duration.observe({ route, upstream }, Number(process.hrtime.bigint() - request.caracal.started) / 1e9);
  });
  installErrorHandling(app, deps.logger);

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_request, reply) => {
    const checks: Record<string, { ok: boolean; latency_ms: number; error?: string }> = {};
    await Promise.all(
      deps.readiness.map(async ({ name, check }) => {
        const started = performance.now();
        try {
          await withTimeout(check(), 2_000);
          checks[name] = { ok: true, latency_ms: Math.round(performance.now() - started) };
        } catch (err) {
          checks[name] = { ok: false, latency_ms: Math.round(performance.now() - started), error: (err as Error).message.split('\n')[0]! };
        }
      }),
    );
    checks.policy = { ok: Boolean(deps.engine.current), latency_ms: 0 };
    const ready = !closing && Object.values(checks).every((c) => c.ok);
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : closing ? 'shutting_down' : 'not_ready', bundle_revision: deps.engine.current?.revision ?? null, checks };
  });
  app.get('/.well-known/jwks.json', async (_request, reply) => {
    reply.header('cache-control', 'public, max-age=60');
    return deps.jwks();
  });

  registerDelegationRoute(app, { ...deps, isClosing: () => closing });

  async function recordDecision(request: FastifyRequest, data: Omit<DecisionData, 'request_id' | 'method' | 'path' | 'bundle_revision'>): Promise<void> {
    const event = buildEvent(EVENT_TYPES.decision, deps.source, data.principal_id ?? undefined, {
      ...data,
      request_id: request.id,
      method: request.method,
      path: request.url.slice(0, 2048),
      bundle_revision: deps.engine.current?.revision ?? null,
    });
    await deps.publisher.publish(deps.decisionsTopic, data.principal_id ?? 'anonymous', event);
  }

  /** The whole decision: authenticate → facts → one WASM evaluation → record → allow or throw. */
  function gate(upstream: UpstreamConfig) {
    // The concrete URL the allowlist sees: the upstream's base plus the agent's path (no query).
    const upstreamBase = upstream.url.replace(/\/+$/, '');
    const upstreamPrefixLength = `/proxy/${upstream.name}`.length;
    return async function decide(request: FastifyRequest, reply: FastifyReply): Promise<void> {
      if (closing) throw new CaracalError('CARACAL_SHUTTING_DOWN');
      const state = request.caracal;
      state.upstream = upstream.name;
      state.decisionId = newId();
      reply.header('x-caracal-decision-id', state.decisionId);
      assertSafePath(request.url);
      const { resource, action } = resourceAndAction(upstream, request.method);

      let verified: AuthResult;
      let mandate: VerifiedToken | null;
      try {
        verified = await deps.authenticator.authenticate(request);
        mandate = await resolveMandate(request, verified, deps);
      } catch (err) {
        const failure = err instanceof TokenRejected ? err.failure : 'malformed';
        metrics.authFailures.inc({ reason: failure });
        await recordDecision(request, {
          decision_id: state.decisionId,
          principal_id: null,
          token_id: null,
          upstream: upstream.name,
          resource,
          action,
          allow: false,
          reasons: [`token_${failure}`],
          policy_ids: [],
          status: 401,
        }).catch((publishErr) => request.log.error({ err: publishErr }, 'could not record an authentication failure'));
        throw err;
      }

      const pathOnly = request.url.slice(upstreamPrefixLength).split('?', 1)[0]!;
      const input = await buildDecisionInput(
        deps,
        verified,
        mandate,
        { upstream: upstream.name, method: request.method, path: request.url, resource, action },
        `${upstreamBase}${pathOnly}`,
        Math.floor(Date.now() / 1000),
      );
      const engine = deps.engine.current;
      const evalStarted = process.hrtime.bigint();
      const decision = engine.evaluate(input);
      metrics.policyEvalDuration.observe(Number(process.hrtime.bigint() - evalStarted) / 1e9);
      metrics.policyEvaluations.inc({ outcome: decision.outcome, allow: String(decision.allow) });

      const status = decision.allow ? 200 : 403;
      const record = recordDecision(request, {
        decision_id: state.decisionId,
        principal_id: verified.principalId,
        token_id: verified.tokenId,
        upstream: upstream.name,
        resource,
        action,
        allow: decision.allow,
        reasons: decision.reasons,
        policy_ids: decision.policyIds,
        status,
      });
      if (!decision.allow) {
        // A denial is safe to return even if it could not be recorded; an allow is not.
        await record.catch((publishErr) => request.log.error({ err: publishErr }, 'could not record a denial'));
        throw new CaracalError('CARACAL_POLICY_DENIED', `denied: ${decision.reasons.join(', ') || 'no explicit allow'}`, {
          reasons: decision.reasons,
          details: { decision_id: state.decisionId },
        });
      }
      await record; // throws CARACAL_EVENTS_UNAVAILABLE → 503: no unrecorded action
    };
  }

  for (const upstream of config.gateway.upstreams) {
    const base = new URL(upstream.url);
    const basePath = base.pathname.replace(/\/+$/, '');
    await app.register(proxy, {
      upstream: base.origin,
      prefix: `/proxy/${upstream.name}`,
      rewritePrefix: basePath,
      preHandler: gate(upstream),
      // undici (reply-from's default client); `http` options would switch to node:http, ~2x slower.
      undici: { headersTimeout: upstream.timeoutMs, bodyTimeout: upstream.timeoutMs, connections: 256 },
      replyOptions: {
        rewriteRequestHeaders: (request, headers) => {
          const out: Record<string, string | string[] | undefined> = {};
          for (const [name, value] of Object.entries(headers)) {
            // The agent's own credentials and any x-caracal-* header never reach the upstream.
            if (STRIPPED_HEADERS.has(name) || name.startsWith('x-caracal-') || isClientCertHeader(name)) continue;
            out[name] = value;
          }
          out['x-request-id'] = request.id;
          if (upstream.credentials) {
            const secret = process.env[upstream.credentials.valueEnv];
            if (secret) out[upstream.credentials.header.toLowerCase()] = `${upstream.credentials.prefix}${secret}`;
          }
          return out;
        },
        onError: (reply, { error }) => {
          reply.send(mapUpstreamError(error));
        },
      },
    });
  }

  app.setNotFoundHandler((request, reply) => {
    const upstreamRoute = /^\/proxy\/([^/?]*)/.exec(request.url);
    const error = upstreamRoute
      ? new CaracalError('CARACAL_UNKNOWN_UPSTREAM', `no upstream named "${decodeSafe(upstreamRoute[1]!).slice(0, 64)}" is configured`)
      : new CaracalError('CARACAL_ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]!.slice(0, 256)}`);
    reply.code(error.statusCode).send(errorBody(error, request.id));
  });

  return {
    app,
    beginShutdown: () => {
      closing = true;
    },
  };
}

function decodeSafe(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]);
}


import proxy from '@fastify/http-proxy';
import type { FastifyReplyFromHooks } from '@fastify/reply-from';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Readable } from 'node:stream';
import type { CaracalConfig, UpstreamConfig, UpstreamDialect } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import { buildDecisionEvent, type DecisionData } from '../events/cloudevents.js';
import type { CloudEvent } from '../events/cloudevents.js';
import type { EmergencyState } from '../authority/views/emergency.js';
import type { AuthorityFacts } from '../authority/views/facts.js';
import type { RevocationSet } from '../authority/views/revocations.js';
import type { IssuedMandate } from '../authority/tokens/mandates.js';
import { TokenRejected, type VerifiedToken } from '../authority/tokens/tokens.js';
import type { Authenticator, AuthResult } from './authenticate.js';
import { clientErrorHandler, gatewayServerFactory, serverTimeouts } from './listener.js';
import { lazyChildLogger, type Logger } from '../logging/logger.js';
import type { GatewayMetrics } from '../metrics/metrics.js';
import { type Decision, type DecisionInput, ENGINE_REASONS, smokeEvaluate } from '../policy/engine.js';
import { inputRecorder, type RecordedInput } from '../policy/input-redaction.js';
import type { BundleWatcherStatus } from '../policy/bundle-watcher.js';
import { buildDecisionInput, type AllowlistChecker } from './decision-input.js';
import { newId } from '../util/ids.js';
import { installErrorHandling } from './errors.js';
import { agentCredential, dialectErrorBody } from './dialects.js';
import { agentResponseHeaders, upstreamRequestHeaders } from './forwarded-headers.js';
import { assertDeclaredLength, BodyTooLarge, limitBody } from './body-limit.js';
import { PrincipalLimiter, rateLimited, SourceLimiter, type LimitLease } from './limits.js';
import { baseFastifyOptions } from './fastify-defaults.js';
import { resourceAndAction, upstreamMethods, UpstreamTargetBuilder, type UpstreamTarget } from './request-target.js';
import { mapUpstreamError } from './upstream-errors.js';
import { MetricSeries } from './metric-series.js';
import { registerDelegationRoute, resolveMandate } from './mandate-binding.js';
import { registerLedgerRoutes } from './ledger-routes.js';
import type { Queryable } from '../store/db.js';
import type { SpendCounters } from '../metering/spend-counters.js';
import { pricedCall, reserveCall, unboundedCall, type PricedCall } from './budget-gate.js';
import { registerMcpRoutes } from './mcp-route.js';
import { buildMeteringEvent } from '../events/cloudevents.js';
import { costOfCall, llmEndpointOf, llmReservation, readBody, readLlmRequest, responseTap, type LlmRequestFacts, type ResponseTap } from './metering.js';
import type { Pricing } from '../metering/pricing.js';

/** A budget reservation outlives the upstream's timeout by this much before it lapses on its own. */
const RESERVATION_GRACE_MS = 60_000;

export interface PolicyEvaluator {
  readonly revision: string;
  evaluate(input: DecisionInput): Decision;
}

export interface ReadinessCheck {
  name: string;
  check: () => Promise<void>;
  /** Reported in /ready's body but does not make the gateway unready (a dependency it can serve without). */
  advisory?: boolean;
}

export interface GatewayDeps {
  config: Readonly<CaracalConfig>;
  logger: Logger;
  /**
   * Holder so a new bundle can be swapped in atomically: each request reads `current` once, and `shadow` with it. A
   * shadow bundle decides the same inputs beside the enforced one, for the decision events and the
   * `caracal_policy_shadow_decisions_total` counter only: it never changes an answer.
   */
  engine: { current: PolicyEvaluator; shadow?: PolicyEvaluator | null };
  /** Epoch milliseconds for the decision input's `now` and the decision events' time (default Date.now; tests set days). */
  clock?: () => number;
  facts: AuthorityFacts;
  revocations: RevocationSet;
  emergency: EmergencyState;
  allowlist: AllowlistChecker;
  /** Issues a child of an already verified parent mandate (src/authority/tokens/mandates.ts rules). */
  delegate: (
    parent: VerifiedToken,
    args: { parentId: string; principalId: string; resources: string[]; actions: string[]; validitySeconds: number; budget?: { limit: string; window: string; currency?: string } | null },
  ) => Promise<IssuedMandate>;
  /** Verifies a Caracal mandate presented next to another credential (→ TokenRejected). */
  verifyMandate: (token: string) => VerifiedToken | Promise<VerifiedToken>;
  authenticator: Authenticator;
  /** Makes a decision event durable: the event log directly, or the local spool. */
  publisher: { publish(topic: string, key: string, event: CloudEvent): Promise<void> };
  decisionsTopic: string;
  metrics: GatewayMetrics;
  readiness: ReadinessCheck[];
  jwks: () => Promise<{ keys: unknown[] }>;
  source: string;
  /** The ledger's store: receipts and c2sp.org/tlog-tiles (ledger-routes.ts) are served when it is given. */
  ledgerDb?: Queryable;
  /** Budget spend counters (src/gateway/budget-gate.ts); without them no budget binds (tests of other things). */
  spend?: SpendCounters;
  /** Where metering events go (calls to upstreams with a price table); unset: calls are not metered (tests of other things). */
  meteringTopic?: string;
  /** The bundle hot-swap watcher's state, for /ready's policy check (only with policy.reload on). */
  policyStatus?: () => BundleWatcherStatus;
}

/** One metered call, from its reservation to its metering event. */
interface CallMeter {
  pricing: Pricing;
  llm: LlmRequestFacts | null;
  /** Budget lines and the amount held on them; null when no budget binds the call. */
  call: PricedCall | null;
  reservationMicros: number;
  chain: string[];
  mandateIds: string[];
  tokenId: string | null;
  resource: string;
  startedAt: Date;
  requestBytes: number;
  status: number | null;
  tap: ResponseTap | null;
  /** Response bytes of a call priced per request (an LLM call's tap counts its own). */
  responseBytes: number;
}

/**
 * Per-request facts carried from the decision to the proxy and the response hooks. A class so every
 * request's state has one shape from the start (fields added later would change it per request).
 */
class RequestState {
  decisionId: string | undefined = undefined;
  upstream: string | undefined = undefined;
  dialect: UpstreamDialect | undefined = undefined;
  principalId: string | undefined = undefined;
  /** Revision of the engine that decided this request (the one engine object it evaluated with). */
  bundleRevision: string | undefined = undefined;
  /** On /mcp: the engine that decides every message of this request (read once from the holder). */
  mcpEngine: PolicyEvaluator | undefined = undefined;
  /** On /mcp: the shadow engine read with `mcpEngine` (null: none was set). */
  mcpShadow: PolicyEvaluator | null = null;
  /** The one upstream URL of this request: judged, recorded and sent. */
  target: UpstreamTarget | undefined = undefined;
  /** The principal's concurrency slot, freed (once) when the request ends. */
  lease: LimitLease | undefined = undefined;
  /** A call to a priced upstream: settled and metered (once) when the request ends. */
  meter: CallMeter | undefined = undefined;
  /** Settles and meters `meter`; set with it. */
  finish: ((state: RequestState) => void) | undefined = undefined;
  /** The upstream answered (its response headers arrived): a priced call is charged. */
  upstreamAnswered = false;
  /** The agent went away before the response was complete. */
  clientAborted = false;
  constructor(
    readonly started: bigint,
    readonly requestId: string,
  ) {}

  release(): void {
    this.lease?.release();
    const finish = this.finish;
    this.finish = undefined;
    finish?.(this);
  }
}


declare module 'fastify' {
  interface FastifyRequest {
    caracal: RequestState;
  }
}

export interface GatewayApp {
  app: FastifyInstance;
  /** Stop admitting requests (503) while in-flight ones drain. */
  beginShutdown(): void;
}

export async function buildGatewayApp(deps: GatewayDeps): Promise<GatewayApp> {
  const { config, metrics } = deps;
  const bodyLimit = config.gateway.bodyLimitBytes;
  const access = deps.logger.child({ component: 'access' });
  const principalLimiter = new PrincipalLimiter(config.gateway.limits.perPrincipal);
  const sourceLimiter = new SourceLimiter(config.gateway.limits.unauthenticatedPerSource);
  const clock = deps.clock ?? Date.now;
  // /proxy has no arguments: with the default redaction nothing is copied.
  const recordInput = inputRecorder(config.policy.recordInput);
  let closing = false;

  const app = Fastify({
    loggerInstance: deps.logger.child({ component: 'gateway' }) as FastifyBaseLogger,
    // Fastify's per-request child logger, made only when the request writes a line.
    childLoggerFactory: (logger, bindings, options) => lazyChildLogger(logger as Logger, bindings, options) as FastifyBaseLogger,
    ...baseFastifyOptions(),
    ...serverTimeouts(config),
    bodyLimit,
    serverFactory: gatewayServerFactory(config),
    clientErrorHandler,
    routerOptions: { maxParamLength: 500 },
  });

  // Callback hooks, not async ones: an async hook costs a promise and a microtask per request and
  // these never wait for anything.
  app.decorateRequest('caracal', null as unknown as RequestState);
  app.addHook('onRequest', (request, reply, done) => {
    request.caracal = new RequestState(process.hrtime.bigint(), request.id);
    reply.header('x-request-id', request.id);
    metrics.inFlight.inc();
    done();
  });
  app.addHook('onRequestAbort', (request, done) => {
    request.caracal.clientAborted = true;
    request.caracal.release();
    metrics.clientAborts.inc({ upstream: request.caracal.upstream ?? '' });
    access.info({ request_id: request.id, method: request.method, path: request.url.split('?', 1)[0]!.slice(0, 512), upstream: request.caracal.upstream ?? null, principal_id: request.caracal.principalId ?? null, decision_id: request.caracal.decisionId ?? null, duration_ms: elapsedMs(request.caracal.started) }, 'client aborted the request');
    done();
  });
  const series = new MetricSeries(metrics);
  app.addHook('onResponse', (request, reply, done) => {
    const state = request.caracal;
    state.release();
    metrics.inFlight.dec();
    const durationMs = elapsedMs(state.started);
    series.response(request.routeOptions.url ?? 'not_found', request.method, reply.statusCode, state.upstream ?? '', durationMs / 1000);
    // The access line's fields are not even gathered when the line would be dropped.
    if (config.gateway.accessLog && access.isLevelEnabled('info')) {
      access.info(
        {
          request_id: request.id,
          method: request.method,
          path: request.url.split('?', 1)[0]!.slice(0, 512),
          status: reply.statusCode,
          upstream: state.upstream ?? null,
          principal_id: state.principalId ?? null,
          decision_id: state.decisionId ?? null,
          duration_ms: durationMs,
        },
        'request',
      );
    }
    done();
  });
  installErrorHandling(app, deps.logger, { dialectOf: (request) => request.caracal?.dialect, notFound: false });

  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/ready', async (_request, reply) => {
    const checks: Record<string, PolicyCheck & { advisory?: true }> = {};
    await Promise.all(
      deps.readiness.map(async ({ name, check, advisory }) => {
        const started = performance.now();
        const note = advisory ? { advisory: true as const } : {};
        try {
          await withTimeout(check(), 2_000);
          checks[name] = { ok: true, latency_ms: Math.round(performance.now() - started), ...note };
        } catch (err) {
          checks[name] = { ok: false, latency_ms: Math.round(performance.now() - started), error: (err as Error).message.split('\n')[0]!, ...note };
        }
      }),
    );
    // One read of the holder: the check, its revision and bundle_revision describe the same engine.
    const engine = deps.engine.current as PolicyEvaluator | undefined;
    const policy: PolicyCheck = policyCheck(engine);
    if (engine) policy.revision = engine.revision;
    const watched = deps.policyStatus?.();
    if (watched?.lastLoadError) policy.last_load_error = watched.lastLoadError;
    if (watched?.shadowRevision) policy.shadow_revision = watched.shadowRevision;
    if (watched?.shadowLoadError) policy.shadow_last_load_error = watched.shadowLoadError;
    if (watched?.awaitingStore && policy.ok) {
      // Serving the fallback bundle while the store names a revision this gateway has not loaded: it does not enforce
      // what was activated, so it takes no traffic until it does (the store unreadable, or the revision refused).
      policy.ok = false;
      policy.error = `not serving the active revision of ${watched.source} yet (serving the fallback ${watched.revision})${watched.lastLoadError ? `: ${watched.lastLoadError.message}` : ''}`;
    }
    checks.policy = policy;
    const ready = !closing && Object.values(checks).every((c) => c.ok || c.advisory === true);
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : closing ? 'shutting_down' : 'not_ready', bundle_revision: engine?.revision ?? null, checks };
  });
  app.get('/.well-known/jwks.json', async (_request, reply) => {
    reply.header('cache-control', 'public, max-age=60');
    return deps.jwks();
  });

  registerDelegationRoute(app, { ...deps, isClosing: () => closing });
  if (deps.ledgerDb) registerLedgerRoutes(app, { ...deps, db: deps.ledgerDb, isClosing: () => closing, sourceLimiter });

  function recordDecision(
    request: FastifyRequest,
    upstream: UpstreamConfig,
    resource: string,
    action: string,
    who: AuthResult | null,
    allow: boolean,
    reasons: string[],
    policyIds: string[],
    status: number,
    policy?: PolicyRecord,
  ): Promise<void> {
    const state = request.caracal;
    const data: DecisionData = {
      decision_id: state.decisionId!,
      request_id: request.id,
      principal_id: who?.principalId ?? null,
      token_id: who?.tokenId ?? null,
      upstream: upstream.name,
      method: request.method,
      path: request.url.slice(0, 2048),
      upstream_url: state.target?.fullUrl ?? null,
      resource,
      action,
      allow,
      reasons,
      policy_ids: policyIds,
      // The deciding engine's revision (the one in x-caracal-bundle-revision); before a policy
      // evaluation (e.g. a failed authentication), the revision serving now.
      bundle_revision: state.bundleRevision ?? deps.engine.current?.revision ?? null,
      status,
    };
    if (policy) addPolicyRecord(data, policy);
    try {
      return deps.publisher.publish(deps.decisionsTopic, data.principal_id ?? 'anonymous', buildDecisionEvent(deps.source, data, new Date(clock())));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /**
   * The whole decision, before anything of the body is read: limits on what is declared →
   * the one upstream URL → authenticate → per-principal limits → facts → one WASM evaluation →
   * record → allow (the body starts to flow) or throw.
   */
  function gate(upstream: UpstreamConfig) {
    const targets = new UpstreamTargetBuilder(upstream);
    // The resource and action of each method, worked out once per upstream rather than per request.
    const judged = new Map(upstreamMethods(upstream).map((method) => [method, resourceAndAction(upstream, method)]));
    // A denial is answered even when it cannot be recorded; the failure is logged.
    const recordDenial = (request: FastifyRequest, resource: string, action: string, who: AuthResult | null, reasons: string[], status: number) =>
      recordDecision(request, upstream, resource, action, who, false, reasons, [], status).catch((publishErr) => request.log.error({ err: publishErr, reasons }, 'could not record a denial'));

    // Each step that can answer at once (a cached token, facts already in memory) is not awaited:
    // an await is a microtask turn even for a plain value, and these run on every request.
    return async function decide(request: FastifyRequest, reply: FastifyReply): Promise<void> {
      if (closing) throw new CaracalError('CARACAL_SHUTTING_DOWN');
      const state = request.caracal;
      state.upstream = upstream.name;
      state.dialect = upstream.dialect;
      state.decisionId = newId();
      reply.header('x-caracal-decision-id', state.decisionId);
      const { resource, action } = judged.get(request.method) ?? resourceAndAction(upstream, request.method);
      assertDeclaredLength(request.headers['content-length'], bodyLimit);
      const target = targets.build(request.raw.url ?? request.url);
      state.target = target;

      let verified: AuthResult;
      let mandate: VerifiedToken | null;
      try {
        const authenticated = deps.authenticator.authenticate(request);
        verified = authenticated instanceof Promise ? await authenticated : authenticated;
        const resolved = resolveMandate(request, verified, deps);
        mandate = resolved instanceof Promise ? await resolved : resolved;
      } catch (err) {
        const failure = err instanceof TokenRejected ? err.failure : 'malformed';
        metrics.authFailures.inc({ reason: failure });
        // Failed authentications are cheap to send and each one is recorded: a source that keeps
        // failing is slowed down (429) before it fills the event log.
        const source = sourceLimiter.take(request.ip);
        const limited = source.ok ? null : rateLimited('unauthenticated_rate_limited', source.retryAfterSeconds);
        if (limited) metrics.limited.inc({ reason: 'unauthenticated_rate_limited' });
        await recordDenial(request, resource, action, null, limited ? [`token_${failure}`, 'unauthenticated_rate_limited'] : [`token_${failure}`], limited ? 429 : 401);
        throw limited ?? err;
      }
      state.principalId = verified.principalId;

      const lease = principalLimiter.acquire(verified.principalId);
      if (!lease.ok) {
        metrics.limited.inc({ reason: lease.reason });
        await recordDenial(request, resource, action, verified, [lease.reason], 429);
        throw rateLimited(lease.reason, lease.retryAfterSeconds);
      }
      state.lease = lease;
      // A client that went away while it was being authenticated has already passed onRequestAbort:
      // nothing would release this slot later.
      if (clientGone(request)) {
        lease.release();
        throw new CaracalError('CARACAL_BAD_REQUEST', 'the client closed the connection', { reasons: ['client_aborted'] });
      }

      const built = buildDecisionInput(
        deps,
        verified,
        mandate,
        { upstream: upstream.name, method: request.method, path: target.pathAndQuery, url: target.fullUrl, resource, action },
        target.url,
        Math.floor(clock() / 1000),
      );
      const input = built instanceof Promise ? await built : built;
      input.limits = lease.facts;
      // Read once: this engine decides, and its revision is the one reported and recorded; the shadow is read with it.
      const holder = deps.engine;
      const engine = holder.current;
      const shadow = holder.shadow ?? null;
      state.bundleRevision = engine.revision;
      reply.header('x-caracal-bundle-revision', revisionHeader(engine.revision));
      const evalStarted = process.hrtime.bigint();
      const decision = engine.evaluate(input);
      series.evaluation(Number(process.hrtime.bigint() - evalStarted) / 1e9, decision.outcome, decision.allow);

      if (decision.allow && upstream.pricing) await meterCall(request, reply, upstream.pricing, verified, mandate, resource, action);

      const status = decision.allow ? 200 : 403;
      // The event of the policy's own decision carries what it was decided on, and the shadow's verdict on the same input.
      const policy = policyRecord(recordInput, input, decision, shadow, metrics);
      const record = recordDecision(request, upstream, resource, action, verified, decision.allow, decision.reasons, decision.policyIds, status, policy);
      if (!decision.allow) {
        // A denial is safe to return even if it could not be recorded; an allow is not.
        await record.catch((publishErr) => request.log.error({ err: publishErr }, 'could not record a denial'));
        throw new CaracalError('CARACAL_POLICY_DENIED', `denied: ${decision.reasons.join(', ') || 'no explicit allow'}`, {
          reasons: decision.reasons,
          details: { decision_id: state.decisionId },
        });
      }
      await record; // throws CARACAL_EVENTS_UNAVAILABLE → 503: no unrecorded action

      // Only now may the body flow: a client waiting on `Expect: 100-continue` is told to send it,
      // and what it sends is cut at the body limit on its way to the upstream.
      if (request.headers.expect?.toLowerCase() === '100-continue' && !state.meter?.llm) reply.raw.writeContinue();
      if (request.body instanceof Readable && !state.meter?.llm) request.body = limitBody(request.body, bodyLimit);
    };

    /**
     * After an allow, for a priced upstream: read an LLM call's body (its model and token cap), reserve the most the
     * call can cost on every budget of the caller and its mandate chain, and set up its settlement and metering
     * event. A refusal is recorded as the decision and thrown.
     */
    async function meterCall(request: FastifyRequest, reply: FastifyReply, pricing: Pricing, verified: AuthResult, mandate: VerifiedToken | null, resource: string, action: string): Promise<void> {
      const state = request.caracal;
      const decisionId = state.decisionId!;
      const refuse = async (error: CaracalError): Promise<never> => {
        await recordDenial(request, resource, action, verified, error.reasons, error.statusCode);
        throw error;
      };
      const endpoint = llmEndpointOf(upstream.dialect, request.method, state.target!.pathAndQuery);
      let llm: LlmRequestFacts | null = null;
      if (endpoint) {
        // Read only now, after the decision: nothing of a body is read before the caller is authenticated and allowed.
        if (request.headers.expect?.toLowerCase() === '100-continue') reply.raw.writeContinue();
        try {
          const raw = request.body instanceof Readable ? await readBody(request.body, bodyLimit) : Buffer.alloc(0);
          llm = readLlmRequest(endpoint, raw);
        } catch (err) {
          if (err instanceof CaracalError) await refuse(err);
          throw err;
        }
      }
      const chain = mandate?.mandate ? mandate.mandate.chain.map((link) => link.sub) : [];
      const reservation = llmReservation(pricing, llm);
      let call: PricedCall | null = null;
      if (deps.spend) {
        const priced = pricedCall(upstream, deps.facts, [verified.principalId, ...chain], mandate, new Date(), reservation);
        call = priced instanceof Promise ? await priced : priced;
      }
      if (call && reservation === null) await refuse(unboundedCall(call, llm, decisionId));
      if (call) {
        let refused: CaracalError | null;
        try {
          // Held until the request ends; a request that never ends gives it back when it lapses.
          refused = await reserveCall(deps.spend!, call, decisionId, upstream.timeoutMs + RESERVATION_GRACE_MS, llm === null);
        } catch (err) {
          // The counters cannot be reached (or were lost): budgets fail closed.
          await recordDenial(request, resource, action, verified, ['budget_unavailable'], 503);
          throw new CaracalError('CARACAL_DEPENDENCY', 'budgets could not be checked; denied', { cause: err, reasons: ['budget_unavailable'], details: { decision_id: decisionId } });
        }
        if (refused) {
          metrics.limited.inc({ reason: refused.reasons[0]! });
          await refuse(refused);
        }
      }
      state.meter = {
        pricing,
        llm,
        call,
        reservationMicros: reservation ?? 0,
        chain: chain.filter((sub) => sub !== verified.principalId),
        mandateIds: mandate?.mandate ? [mandate.tokenId, ...mandate.mandate.chain.map((link) => link.id).reverse()] : [],
        tokenId: verified.tokenId ?? null,
        resource,
        startedAt: new Date(),
        requestBytes: llm ? llm.body.length : Number(request.headers['content-length'] ?? 0) || 0,
        status: null,
        tap: null,
        responseBytes: 0,
      };
      state.finish = finishCall;
    }

    /** Settles the call's budgets at what it cost and publishes its metering event (once, when the request ends). */
    function finishCall(state: RequestState): void {
      const meter = state.meter!;
      const reading = meter.tap?.result() ?? null;
      const cost = costOfCall(meter.pricing, meter.llm, meter.reservationMicros, state.upstreamAnswered, meter.status, reading);
      const decisionId = state.decisionId!;
      if (meter.call) {
        const spend = deps.spend!;
        const lines = meter.call.lines;
        if (meter.llm === null) {
          // A fixed price was charged when the call was admitted: given back only if the upstream never answered.
          const back = meter.call.amountMicros - cost.micros;
          if (back > 0) spend.refund(lines, back).catch((err) => deps.logger.error({ err, decision_id: decisionId }, 'could not give back the charge of a call that never happened'));
        } else {
          spend.settle(decisionId, lines, cost.micros).catch((err) => deps.logger.error({ err, decision_id: decisionId }, 'could not settle a budget reservation; it lapses on its own'));
        }
      }
      if (!deps.meteringTopic) return;
      const outcome = !state.upstreamAnswered || (meter.status !== null && meter.status >= 400) ? 'failed' : reading && !reading.ended ? (state.clientAborted ? 'aborted' : 'failed') : 'completed';
      const principalId = state.principalId!;
      try {
        const event = buildMeteringEvent(deps.source, {
          decision_id: decisionId,
          request_id: state.requestId,
          principal_id: principalId,
          token_id: meter.tokenId,
          chain: meter.chain,
          mandate_ids: meter.mandateIds,
          upstream: upstream.name,
          resource: meter.resource,
          model: cost.model,
          input_tokens: cost.usage?.inputTokens ?? null,
          output_tokens: cost.usage?.outputTokens ?? null,
          cached_input_tokens: cost.usage?.cachedInputTokens ?? null,
          cost_micros: cost.micros,
          currency: meter.pricing.currency,
          exact: cost.exact,
          estimate_reason: cost.estimateReason,
          outcome,
          upstream_status: meter.status,
          request_bytes: meter.requestBytes,
          response_bytes: reading?.bytes ?? meter.responseBytes,
          duration_ms: elapsedMs(state.started),
          started_at: meter.startedAt.toISOString(),
        });
        deps.publisher.publish(deps.meteringTopic, principalId, event).catch((err) => deps.logger.error({ err, decision_id: decisionId }, 'could not record a metering event'));
      } catch (err) {
        deps.logger.error({ err, decision_id: decisionId }, 'could not build a metering event');
      }
    }
  }

  /** The agent's credentials on this request, so no forwarded header carries them. */
  function agentSecrets(request: { headers: Record<string, string | string[] | undefined> }): string[] {
    const secrets: string[] = [];
    try {
      const bearer = agentCredential(request.headers);
      if (bearer) secrets.push(bearer);
    } catch {
      // Ambiguous credentials never get this far (authentication refused them).
    }
    const mandate = request.headers['caracal-mandate'];
    if (typeof mandate === 'string') secrets.push(mandate);
    return secrets;
  }

  // MCP servers are reached at /mcp/<server>, decided message by message (mcp-route.ts); never at /proxy, where a
  // whole POST would be judged as one write and a policy could not tell read_file from delete_repo.
  await registerMcpRoutes(app, { deps, principalLimiter, sourceLimiter, isClosing: () => closing });
  for (const upstream of config.gateway.upstreams) {
    if (upstream.dialect === 'mcp') continue;
    const base = new URL(upstream.url);
    const credentialValue = upstream.credentials ? process.env[upstream.credentials.valueEnv] : undefined;
    const credential = upstream.credentials && credentialValue ? { header: upstream.credentials.header.toLowerCase(), value: `${upstream.credentials.prefix}${credentialValue}` } : null;
    for (const method of upstreamMethods(upstream)) if (!app.supportedMethods.includes(method)) app.addHttpMethod(method, { hasBody: true });
    await app.register(async (scope) => {
      // Every content type passes through as the raw stream: nothing of a proxied body is read
      // before the decision, and nothing is buffered after it.
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser('*', (_request, payload, done) => done(null, payload));
      await scope.register(proxy, {
        upstream: base.origin,
        prefix: `/proxy/${upstream.name}`,
        rewritePrefix: base.pathname.replace(/\/+$/, ''),
        proxyPayloads: false,
        httpMethods: upstreamMethods(upstream),
        preHandler: gate(upstream),
        disableRequestLogging: true,
        // The URL that was judged, not one the proxy library derives again from the raw request.
        handler: (request, reply, _dest, options) => {
          const target = request.caracal.target!;
          const llm = request.caracal.meter?.llm;
          // A metered LLM call's body was read for its reservation: the bytes read (with the usage request added) go on.
          if (llm) return reply.from(target.path, { ...options, queryString: () => target.query, body: llm.body, contentType: request.headers['content-type'] ?? 'application/json' });
          return reply.from(target.path, { ...options, queryString: () => target.query });
        },
        // undici (reply-from's default client); `http` options would switch to node:http, ~2x slower.
        undici: { headersTimeout: upstream.timeoutMs, bodyTimeout: upstream.timeoutMs, connections: upstream.maxConnections },
        replyOptions: {
          rewriteRequestHeaders: (request, headers) => {
            const forwarded = upstreamRequestHeaders(headers, { requestId: request.id, decisionId: request.caracal.decisionId!, agentSecrets: agentSecrets(request), credential });
            // The gateway reads a metered LLM response for its usage: it asks for it uncompressed.
            if (request.caracal.meter?.llm) forwarded['accept-encoding'] = 'identity';
            return forwarded;
          },
          ...(upstream.pricing ? { onResponse: meteredResponse(upstream.dialect) as unknown as NonNullable<FastifyReplyFromHooks['onResponse']> } : {}),
          rewriteHeaders: (headers, request) => {
            if (request) request.caracal.upstreamAnswered = true;
            return agentResponseHeaders(headers);
          },
          // reply-from's typings describe the details loosely; it passes undici's request and response.
          retryDelay: retryPolicy(upstream, metrics) as unknown as NonNullable<FastifyReplyFromHooks['retryDelay']>,
          onError: (reply, { error }) => {
            const request = reply.request;
            if (clientGone(request) && !reply.raw.headersSent) {
              // The agent went away; there is nobody to answer. Counted by onRequestAbort.
              return;
            }
            const cause = (error as { cause?: unknown }).cause;
            reply.send(cause instanceof BodyTooLarge ? cause : error instanceof BodyTooLarge ? error : mapUpstreamError(error));
          },
        },
      });
    });
  }

  const upstreamByName = new Map(config.gateway.upstreams.map((u) => [u.name, u]));
  app.setNotFoundHandler((request, reply) => {
    const upstreamRoute = /^\/proxy\/([^/?]*)/.exec(request.url);
    const upstream = upstreamRoute ? upstreamByName.get(upstreamRoute[1]!) : undefined;
    let error: CaracalError;
    if (upstream?.dialect === 'mcp') {
      error = new CaracalError('CARACAL_ROUTE_NOT_FOUND', `upstream "${upstream.name}" speaks MCP: its endpoint is /mcp/${upstream.name}`);
    } else if (upstream) {
      request.caracal.dialect = upstream.dialect;
      reply.header('allow', upstreamMethods(upstream).join(', '));
      error = new CaracalError('CARACAL_METHOD_NOT_ALLOWED', `${request.method} is not mapped to an action for upstream "${upstream.name}"`);
    } else if (upstreamRoute) {
      error = new CaracalError('CARACAL_UNKNOWN_UPSTREAM', `no upstream named "${decodeSafe(upstreamRoute[1]!).slice(0, 64)}" is configured`);
    } else {
      error = new CaracalError('CARACAL_ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]!.slice(0, 256)}`);
    }
    reply.code(error.statusCode).send(dialectErrorBody(request.caracal.dialect, error, request.id));
  });

  return {
    app,
    beginShutdown: () => {
      closing = true;
    },
  };
}

/**
 * reply-from's onResponse for a priced upstream: a metered call's response passes through its tap (usage read as it
 * goes by), and the request is settled when the agent's response closes — finished, or cut by the agent going away,
 * which Fastify's own hooks do not see once the request body was read.
 */
function meteredResponse(dialect: UpstreamDialect) {
  return (request: FastifyRequest, reply: FastifyReply, res: { statusCode: number; headers: Record<string, string | string[] | undefined>; stream: Readable }): void => {
    const state = request.caracal;
    const meter = state.meter;
    if (!meter) {
      reply.send(res.stream);
      return;
    }
    meter.status = res.statusCode;
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) state.clientAborted = true;
      state.release();
    });
    if (!meter.llm) {
      // Priced per request: nothing to read, so nothing in the way; the size is the upstream's own count.
      const length = Number(res.headers['content-length']);
      if (Number.isSafeInteger(length) && length >= 0) meter.responseBytes = length;
      else res.stream.on('data', (chunk: Buffer) => (meter.responseBytes += chunk.length));
      reply.send(res.stream);
      return;
    }
    const contentType = res.headers['content-type'];
    const tap = responseTap(dialect, meter.llm, res.statusCode, typeof contentType === 'string' ? contentType : undefined);
    meter.tap = tap;
    // The held-back usage chunk changes the length.
    if (meter.llm.stripUsage) reply.removeHeader('content-length');
    // Not stream.pipeline: it makes an AbortController and a DOMException for every response it finishes.
    res.stream.on('error', (err) => tap.stream.destroy(err));
    tap.stream.once('close', () => {
      if (!res.stream.destroyed) res.stream.destroy();
    });
    res.stream.pipe(tap.stream);
    reply.send(tap.stream);
  };
}

/**
 * No hidden retries: one decision is one upstream call unless the upstream sets `retries`. Then
 * only idempotent methods without a body are retried, on a refused connection or a 503, at most
 * `retries` times; `Retry-After` is read in seconds and capped, and each attempt is counted.
 */
function retryPolicy(upstream: UpstreamConfig, metrics: GatewayMetrics) {
  return ({ err, req, res, attempt }: { err: (Error & { code?: string }) | null; req: { method?: string }; res: { statusCode: number; headers: Record<string, unknown> } | null; attempt: number }): number | null => {
    if (upstream.retries === 0 || attempt >= upstream.retries) return null;
    if (req.method !== 'GET' && req.method !== 'HEAD' && req.method !== 'OPTIONS') return null;
    const retriable = res ? res.statusCode === 503 : err?.code === 'ECONNREFUSED' || err?.code === 'ECONNRESET' || err?.code === 'UND_ERR_SOCKET';
    if (!retriable) return null;
    metrics.upstreamRetries.inc({ upstream: upstream.name });
    const retryAfter = Number(res?.headers['retry-after']);
    const backoff = 100 * 2 ** attempt * (0.5 + Math.random() / 2);
    return Math.min(Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter * 1000 : backoff, 2_000);
  };
}

/**
 * What the event of a policy decision adds to the decision itself: the input it was made on (when
 * `policy.recordInput` is on) and the shadow bundle's verdict on it (when a shadow is set). Only events whose allow
 * and reasons are the policy's carry them (not a budget's refusal of an allowed call): a replay of the recorded input
 * through the recorded revision gives the recorded decision.
 */
export interface PolicyRecord {
  input?: RecordedInput;
  shadow?: NonNullable<DecisionData['shadow']>;
}

export function policyRecord(
  recordInput: ((input: object) => RecordedInput) | null,
  input: DecisionInput,
  enforced: Pick<Decision, 'allow' | 'reasons'>,
  shadow: PolicyEvaluator | null,
  metrics: GatewayMetrics,
): PolicyRecord | undefined {
  if (!recordInput && !shadow) return undefined;
  const record: PolicyRecord = {};
  if (recordInput) record.input = recordInput(input);
  if (shadow) record.shadow = shadowVerdict(shadow, input, enforced, metrics);
  return record;
}

export function addPolicyRecord(data: DecisionData, policy: PolicyRecord): void {
  if (policy.input) {
    // An input over its byte budget is left out, and said to be (the event must still fit a ledger leaf).
    if (policy.input.input_omitted) data.input_omitted = policy.input.input_omitted;
    else {
      data.input = policy.input.input;
      if (policy.input.input_redactions) data.input_redactions = policy.input.input_redactions;
    }
  }
  if (policy.shadow) data.shadow = policy.shadow;
}

/**
 * The shadow bundle's decision on the input the enforced one decided, counted as agreeing or not. Evaluated after the
 * enforced decision and never thrown out of: a shadow that throws (or whose engine fails) denies with the engine's
 * reason, like an enforced engine would.
 */
export function shadowVerdict(shadow: PolicyEvaluator, input: DecisionInput, enforced: Pick<Decision, 'allow' | 'reasons'>, metrics: GatewayMetrics): NonNullable<DecisionData['shadow']> {
  let allow = false;
  let reasons: string[];
  try {
    const decision = shadow.evaluate(input);
    allow = decision.allow === true;
    // A stand-in evaluator is trusted no more than a bundle: reasons the event schema would refuse are not recorded.
    reasons = Array.isArray(decision.reasons) && decision.reasons.every((reason) => typeof reason === 'string') ? decision.reasons : [ENGINE_REASONS.malformed];
    if (reasons !== decision.reasons) allow = false;
  } catch {
    reasons = [ENGINE_REASONS.error];
  }
  const agrees = allow === enforced.allow && sameReasons(reasons, enforced.reasons);
  metrics.shadowDecisions.inc({ agreement: agrees ? 'agree' : 'disagree' });
  return { revision: shadow.revision || 'unknown', allow, reasons, agrees };
}

/** The same reasons in any order (each list is a handful of codes). */
function sameReasons(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  if (a.length === 0) return true;
  if (a.length === 1) return a[0] === b[0];
  const x = [...a].sort();
  const y = [...b].sort();
  return x.every((reason, i) => reason === y[i]);
}

/** One entry of /ready's checks; the policy check also names the revision and the last refused bundle. */
interface PolicyCheck {
  ok: boolean;
  latency_ms: number;
  error?: string;
  revision?: string;
  last_load_error?: BundleWatcherStatus['lastLoadError'];
  shadow_revision?: string;
  shadow_last_load_error?: BundleWatcherStatus['shadowLoadError'];
}

/** The policy check of /ready: the loaded bundle must actually decide (a smoke evaluation). */
function policyCheck(engine: PolicyEvaluator | undefined): PolicyCheck {
  const started = performance.now();
  try {
    if (!engine) throw new Error('no policy bundle is loaded');
    smokeEvaluate(engine);
    return { ok: true, latency_ms: Math.round(performance.now() - started) };
  } catch (err) {
    return { ok: false, latency_ms: Math.round(performance.now() - started), error: (err as Error).message.split('\n')[0]! };
  }
}

const HEADER_SAFE = /^[\x21-\x7e]{1,256}$/;

/** A bundle revision as a header value (a manifest may hold anything; a bad header value would be a 500). */
export function revisionHeader(revision: string): string {
  return HEADER_SAFE.test(revision) ? revision : encodeURIComponent(revision.slice(0, 256)) || 'unknown';
}

/**
 * The agent's connection is gone. Not `request.raw.destroyed`: Node also destroys a request once
 * its body has been read to the end, and the agent is still waiting for its answer then.
 */
export function clientGone(request: { raw: { socket?: { destroyed?: boolean } | null } }): boolean {
  return request.raw.socket?.destroyed === true;
}

function elapsedMs(started: bigint): number {
  return Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100;
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

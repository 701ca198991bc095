/**
 * `/mcp/<server>`: the Model Context Protocol (Streamable HTTP) through the gateway, decided message by message.
 *
 *   POST    the body (one JSON-RPC message, or a batch where the protocol version has them) is read after the caller
 *           is authenticated, and every message is decided on its own: a tool call as `mcp:<server>/<tool>` /
 *           `call` with its arguments in the policy input, a resource read, a prompt, or session plumbing
 *           (`mcp:<server>` / `session`). One decision event per message. What is allowed goes upstream, re-serialised
 *           from what was judged; what is denied is answered by the gateway with a JSON-RPC error for its id, next to
 *           the upstream's answers. Listings in the answers (tools, resources, prompts) are filtered to what the
 *           caller may use.
 *   GET     the server's event stream (notifications, server requests), passed through as it comes.
 *   DELETE  ends the session.
 *
 * A session belongs to the principal that opened it: another caller presenting its id is told it does not exist.
 * src/mcp/ holds the protocol layer (parsing, naming, errors, filtering); this file wires it to the gateway.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { PassThrough, Readable } from 'node:stream';
import { Pool } from 'undici';
import type { UpstreamConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import { buildDecisionEvent, buildMeteringEvent, type DecisionData } from '../events/cloudevents.js';
import { pricedCall, reserveCall, type PricedCall } from './budget-gate.js';
import type { VerifiedToken } from '../authority/tokens/tokens.js';
import { TokenRejected } from '../authority/tokens/tokens.js';
import type { Decision, DecisionInput, RequestFact } from '../policy/engine.js';
import {
  argumentDigest,
  ASSUMED_PROTOCOL_VERSION,
  classify,
  createMcpResponseRewriter,
  deniedResponse,
  filterListResponse,
  isListMethod,
  jsonRpcError,
  MAX_MCP_JSON_BYTES,
  McpMessageError,
  parseMcpBody,
  promptResource,
  requestIdKey,
  resourceResource,
  rewriteJsonBody,
  toolResource,
  type JsonRpcErrorResponse,
  type ListMethod,
  type McpAction,
  type McpMessage,
} from '../mcp/messages.js';
import type { JsonObject } from '../mcp/json.js';
import { newId } from '../util/ids.js';
import type { AuthResult } from './authenticate.js';
import { assertDeclaredLength } from './body-limit.js';
import { buildDecisionInput } from './decision-input.js';
import { agentCredential } from './dialects.js';
import { agentResponseHeaders, upstreamRequestHeaders } from './forwarded-headers.js';
import { rateLimited, type PrincipalLimiter, type SourceLimiter } from './limits.js';
import { resolveMandate } from './mandate-binding.js';
import { readBody } from './metering.js';
import type { GatewayDeps } from './app.js';

/** The largest MCP POST body the gateway reads (and the body limit, if smaller). */
const MAX_MCP_BODY_BYTES = 4 << 20;
const MAX_BATCH = 64;
/** Sessions remembered per gateway (oldest forgotten first: its next use is answered as an unknown session). */
const MAX_SESSIONS = 100_000;
const SESSION_ID = /^[\x21-\x7e]{1,256}$/;

export interface McpRouteDeps {
  deps: GatewayDeps;
  principalLimiter: PrincipalLimiter;
  sourceLimiter: SourceLimiter;
  isClosing: () => boolean;
}

interface Caller {
  verified: AuthResult;
  mandate: VerifiedToken | null;
}

/** One decided message: what the policy said, and the event that records it. */
interface Judged {
  message: McpMessage;
  action: McpAction;
  decisionId: string;
  allow: boolean;
  reasons: string[];
  /** A priced tool call: its price, and the budget lines it was charged on (null: no budget binds it). */
  price?: { micros: number; call: PricedCall | null };
}

/** A budget reservation outlives the upstream's timeout by this much (as on /proxy). */
const RESERVATION_GRACE_MS = 60_000;

export async function registerMcpRoutes(app: FastifyInstance, route: McpRouteDeps): Promise<void> {
  for (const upstream of route.deps.config.gateway.upstreams) {
    if (upstream.dialect !== 'mcp') continue;
    await app.register(async (scope) => {
      // The body is read by the handler, after authentication: nothing is parsed before that.
      scope.removeAllContentTypeParsers();
      scope.addContentTypeParser('*', (_request, payload, done) => done(null, payload));
      const server = new McpServerRoute(upstream, route);
      scope.route({ method: ['POST', 'GET', 'DELETE'], url: `/mcp/${upstream.name}`, handler: (request, reply) => server.handle(request, reply) });
      scope.addHook('onClose', async () => server.close());
    });
  }
}

class McpServerRoute {
  private readonly pool: Pool;
  private readonly url: URL;
  private readonly sessions = new Map<string, string>();
  private readonly credential: { header: string; value: string } | null;
  private readonly maxBody: number;

  constructor(
    private readonly upstream: UpstreamConfig,
    private readonly route: McpRouteDeps,
  ) {
    this.url = new URL(upstream.url);
    // Event streams stay open for as long as the session lives: no body timeout on them (headers still time out).
    this.pool = new Pool(this.url.origin, { connections: upstream.maxConnections, headersTimeout: upstream.timeoutMs, bodyTimeout: 0 });
    const value = upstream.credentials ? process.env[upstream.credentials.valueEnv] : undefined;
    this.credential = upstream.credentials && value ? { header: upstream.credentials.header.toLowerCase(), value: `${upstream.credentials.prefix}${value}` } : null;
    this.maxBody = Math.min(MAX_MCP_BODY_BYTES, route.deps.config.gateway.bodyLimitBytes);
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  async handle(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (this.route.isClosing()) throw new CaracalError('CARACAL_SHUTTING_DOWN');
    const state = request.caracal;
    state.upstream = this.upstream.name;
    state.dialect = 'mcp';
    state.decisionId = newId();
    assertDeclaredLength(request.headers['content-length'], this.maxBody);
    const caller = await this.authenticate(request);

    const sessionHeader = request.headers['mcp-session-id'];
    let sessionId: string | null = null;
    if (sessionHeader !== undefined) {
      if (typeof sessionHeader !== 'string' || !SESSION_ID.test(sessionHeader)) throw new CaracalError('CARACAL_BAD_REQUEST', 'mcp-session-id must be 1-256 visible ASCII characters', { reasons: ['mcp_session_invalid'] });
      sessionId = sessionHeader;
      // Someone else's session, or one this gateway never saw opened: it does not exist for this caller.
      if (this.sessions.get(sessionId) !== caller.verified.principalId) {
        reply.code(404).header('content-type', 'application/json');
        return reply.send(jsonRpcError(null, -32001, 'Session not found'));
      }
    }
    const protocolVersion = typeof request.headers['mcp-protocol-version'] === 'string' ? request.headers['mcp-protocol-version'] : null;
    const base = await this.baseInput(request, caller);

    if (request.method !== 'POST') {
      // Opening the event stream, or ending the session: session plumbing on this server.
      const method = request.method === 'GET' ? 'GET' : 'DELETE';
      const action: McpAction = { kind: 'session', resource: `mcp:${this.upstream.name}`, action: 'session', method };
      const decision = this.evaluate({ ...base, request: { ...base.request, mcp_method: method } });
      const judged: Judged = { message: { kind: 'notification', method, params: undefined, json: {} }, action, decisionId: newId(), allow: decision.allow, reasons: decision.reasons };
      await this.record(request, caller, [judged]);
      state.decisionId = judged.decisionId;
      reply.header('x-caracal-decision-id', judged.decisionId);
      if (!judged.allow) throw denied(judged);
      return this.forward(request, reply, caller, null, { sessionId, listIds: new Map(), answers: [], batch: false, initialize: false });
    }

    const raw = request.body instanceof Readable ? await readBody(request.body, this.maxBody) : Buffer.alloc(0);
    let parsed;
    try {
      parsed = parseMcpBody(raw, { maxBytes: this.maxBody, maxBatch: MAX_BATCH, protocolVersion: protocolVersion ?? (sessionId ? null : ASSUMED_PROTOCOL_VERSION) });
    } catch (err) {
      if (err instanceof McpMessageError) {
        reply.code(err.statusCode === 413 ? 413 : 400).header('content-type', 'application/json');
        return reply.send(err.toJsonRpc());
      }
      throw err;
    }
    const answers: JsonRpcErrorResponse[] = [];
    const judged: Judged[] = [];
    for (const entry of parsed.entries) {
      if (!entry.ok) {
        answers.push(entry.error.toJsonRpc());
        continue;
      }
      judged.push(this.decide(base, entry.message));
    }
    for (const j of judged) if (j.allow && j.action.kind === 'tool') await this.charge(request, caller, j);
    try {
      await this.record(request, caller, judged);
    } catch (err) {
      this.refundAll(judged);
      throw err;
    }
    this.meterOnClose(request, reply, caller, judged);
    if (judged.length > 0) {
      state.decisionId = judged[0]!.decisionId;
      reply.header('x-caracal-decision-id', judged.map((j) => j.decisionId).join(', ').slice(0, 4096));
    }
    const forwarded: JsonObject[] = [];
    const listIds = new Map<string, ListMethod>();
    let initialize = false;
    for (const j of judged) {
      if (j.allow) {
        forwarded.push(j.message.json);
        if (j.message.kind === 'request' && isListMethod(j.message.method)) listIds.set(requestIdKey(j.message.id), j.message.method);
        if (j.message.kind === 'request' && j.message.method === 'initialize') initialize = true;
      } else if (j.message.kind === 'request') {
        answers.push(j.action.kind === 'invalid' ? jsonRpcError(j.message.id, j.action.code, j.action.message) : deniedResponse(j.message.id, { reasons: j.reasons, decisionId: j.decisionId, requestId: request.id }));
      }
    }
    if (forwarded.length === 0) {
      // Nothing goes upstream: the gateway answers alone (202 when there is nothing to answer: notifications).
      if (answers.length === 0) return reply.code(202).send();
      reply.code(200).header('content-type', 'application/json');
      return reply.send(parsed.batch ? answers : answers[0]);
    }
    const body = JSON.stringify(parsed.batch ? forwarded : forwarded[0]);
    return this.forward(request, reply, caller, body, { sessionId, listIds, answers, batch: parsed.batch, initialize });
  }

  /** Authenticates the caller (a refused one is recorded and slowed like on /proxy) and takes its concurrency slot. */
  private async authenticate(request: FastifyRequest): Promise<Caller> {
    const { deps, sourceLimiter, principalLimiter } = this.route;
    const resource = `mcp:${this.upstream.name}`;
    let verified: AuthResult;
    let mandate: VerifiedToken | null;
    try {
      verified = await deps.authenticator.authenticate(request);
      mandate = await resolveMandate(request, verified, deps);
    } catch (err) {
      const failure = err instanceof TokenRejected ? err.failure : 'malformed';
      deps.metrics.authFailures.inc({ reason: failure });
      const source = sourceLimiter.take(request.ip);
      const limited = source.ok ? null : rateLimited('unauthenticated_rate_limited', source.retryAfterSeconds);
      if (limited) deps.metrics.limited.inc({ reason: 'unauthenticated_rate_limited' });
      await this.publish(request, null, { decisionId: request.caracal.decisionId!, resource, action: 'session', allow: false, reasons: limited ? [`token_${failure}`, 'unauthenticated_rate_limited'] : [`token_${failure}`], status: limited ? 429 : 401 }).catch((publishErr) =>
        request.log.error({ err: publishErr }, 'could not record a denial'),
      );
      throw limited ?? err;
    }
    request.caracal.principalId = verified.principalId;
    const lease = principalLimiter.acquire(verified.principalId);
    if (!lease.ok) {
      deps.metrics.limited.inc({ reason: lease.reason });
      await this.publish(request, verified, { decisionId: request.caracal.decisionId!, resource, action: 'session', allow: false, reasons: [lease.reason], status: 429 }).catch(() => {});
      throw rateLimited(lease.reason, lease.retryAfterSeconds);
    }
    request.caracal.lease = lease;
    return { verified, mandate };
  }

  /** The policy input every message of this request shares (facts, allowlist, limits); each message sets `request`. */
  private async baseInput(request: FastifyRequest, caller: Caller): Promise<DecisionInput> {
    const fact: RequestFact = { upstream: this.upstream.name, method: request.method, path: `/mcp/${this.upstream.name}`, url: this.upstream.url, resource: `mcp:${this.upstream.name}`, action: 'session' };
    const input = await buildDecisionInput(this.route.deps, caller.verified, caller.mandate, fact, this.upstream.url, Math.floor(Date.now() / 1000));
    input.limits = request.caracal.lease?.facts;
    return input;
  }

  private evaluate(input: DecisionInput): Decision {
    return this.route.deps.engine.current.evaluate(input);
  }

  /** Decides one message (synchronously: the facts are in `base`). */
  private decide(base: DecisionInput, message: McpMessage): Judged {
    const server = this.upstream.name;
    const action = classify(message, server);
    const decisionId = newId();
    const method = message.kind === 'response' ? null : message.method;
    if (action.kind === 'invalid') return { message, action, decisionId, allow: false, reasons: [action.reason] };
    if (action.kind === 'unknown') return { message, action, decisionId, allow: false, reasons: ['mcp_method_unknown'] };
    const fact: RequestFact = { ...base.request, resource: action.resource, action: action.kind === 'session' ? 'session' : action.action, mcp_method: method };
    if (action.kind === 'tool') Object.assign(fact, { tool: action.tool, arguments: action.arguments });
    else if (action.kind === 'resource') fact.uri = action.uri;
    else if (action.kind === 'prompt') Object.assign(fact, { prompt: action.prompt, arguments: action.arguments });
    const decision = this.evaluate({ ...base, request: fact });
    return { message, action, decisionId, allow: decision.allow, reasons: decision.reasons };
  }

  /**
   * A tool call on a priced server is charged its price (`pricing.tools`, else `perRequest`) on every budget of the
   * caller, its mandate chain and its mandates, before it goes up; one the budgets cannot cover is denied for its id
   * (`budget_exceeded`), and counters that cannot be reached deny it too (`budget_unavailable`: fail closed).
   */
  private async charge(request: FastifyRequest, caller: Caller, j: Judged): Promise<void> {
    const pricing = this.upstream.pricing;
    const { deps } = this.route;
    if (!pricing || j.action.kind !== 'tool') return;
    const micros = pricing.tools[j.action.tool] ?? pricing.perRequest ?? 0;
    if (micros === 0) return;
    j.price = { micros, call: null };
    if (!deps.spend) return;
    const chain = caller.mandate?.mandate ? caller.mandate.mandate.chain.map((link) => link.sub) : [];
    const call = await pricedCall(this.upstream, deps.facts, [caller.verified.principalId, ...chain], caller.mandate, new Date(), micros);
    if (!call) return;
    let refused: CaracalError | null;
    try {
      refused = await reserveCall(deps.spend, call, j.decisionId, this.upstream.timeoutMs + RESERVATION_GRACE_MS, true);
    } catch (err) {
      request.log.error({ err, decision_id: j.decisionId }, 'budgets could not be checked; the tool call is denied');
      refused = new CaracalError('CARACAL_DEPENDENCY', 'budgets could not be checked; denied', { reasons: ['budget_unavailable'] });
    }
    if (refused) {
      deps.metrics.limited.inc({ reason: refused.reasons[0]! });
      j.allow = false;
      j.reasons = refused.reasons;
      j.price = undefined;
      return;
    }
    j.price.call = call;
  }

  private refundAll(judged: readonly Judged[]): void {
    for (const j of judged) {
      const call = j.price?.call;
      if (call) this.route.deps.spend!.refund(call.lines, call.amountMicros).catch(() => {});
    }
  }

  /** When the answer is over: a priced call the upstream never answered is given back; each is metered. */
  private meterOnClose(request: FastifyRequest, reply: FastifyReply, caller: Caller, judged: readonly Judged[]): void {
    const priced = judged.filter((j) => j.allow && j.price);
    if (priced.length === 0) return;
    const { deps } = this.route;
    const started = new Date();
    reply.raw.once('close', () => {
      const answered = request.caracal.upstreamAnswered;
      const status = answered ? reply.statusCode : null;
      const outcome = !answered || (status !== null && status >= 400) ? 'failed' : reply.raw.writableFinished ? 'completed' : 'aborted';
      for (const j of priced) {
        const { micros, call } = j.price!;
        const cost = answered ? micros : 0;
        if (call && cost < micros) deps.spend!.refund(call.lines, micros - cost).catch((err) => request.log.error({ err, decision_id: j.decisionId }, 'could not give back the charge of a call that never happened'));
        if (!deps.meteringTopic || j.action.kind !== 'tool') continue;
        try {
          const event = buildMeteringEvent(deps.source, {
            decision_id: j.decisionId,
            request_id: request.id,
            principal_id: caller.verified.principalId,
            token_id: caller.verified.tokenId ?? null,
            chain: caller.mandate?.mandate ? caller.mandate.mandate.chain.map((link) => link.sub).filter((sub) => sub !== caller.verified.principalId) : [],
            mandate_ids: caller.mandate?.mandate ? [caller.mandate.tokenId, ...caller.mandate.mandate.chain.map((link) => link.id).reverse()] : [],
            upstream: this.upstream.name,
            resource: j.action.resource,
            model: null,
            input_tokens: null,
            output_tokens: null,
            cached_input_tokens: null,
            cost_micros: cost,
            currency: this.upstream.pricing!.currency,
            exact: true,
            estimate_reason: null,
            outcome,
            upstream_status: status,
            request_bytes: Buffer.byteLength(JSON.stringify(j.message.json)),
            response_bytes: 0,
            duration_ms: Date.now() - started.getTime(),
            started_at: started.toISOString(),
          });
          deps.publisher.publish(deps.meteringTopic, caller.verified.principalId, event).catch((err) => request.log.error({ err, decision_id: j.decisionId }, 'could not record a metering event'));
        } catch (err) {
          request.log.error({ err, decision_id: j.decisionId }, 'could not build a metering event');
        }
      }
    });
  }

  /** Records every decision; an allow is forwarded only once its event is durable (no unrecorded action). */
  private async record(request: FastifyRequest, caller: Caller, judged: readonly Judged[]): Promise<void> {
    const results = await Promise.allSettled(
      judged.map((j) => {
        const action = j.action;
        const mcp: NonNullable<DecisionData['mcp']> = { method: j.message.kind === 'response' ? 'response' : j.message.method };
        if (action.kind === 'tool') Object.assign(mcp, { name: action.tool, argument_digest: argumentDigest(action.arguments) });
        else if (action.kind === 'prompt') Object.assign(mcp, { name: action.prompt, argument_digest: argumentDigest(action.arguments) });
        else if (action.kind === 'resource') mcp.name = action.uri;
        return this.publish(request, caller.verified, {
          decisionId: j.decisionId,
          resource: action.resource,
          action: action.kind === 'tool' || action.kind === 'resource' || action.kind === 'prompt' ? action.action : 'session',
          allow: j.allow,
          reasons: j.reasons,
          status: j.allow ? 200 : 403,
          mcp,
        });
      }),
    );
    results.forEach((result, n) => {
      if (result.status === 'rejected') {
        if (judged[n]!.allow) throw new CaracalError('CARACAL_EVENTS_UNAVAILABLE', undefined, { cause: result.reason });
        request.log.error({ err: result.reason }, 'could not record a denial');
      }
    });
  }

  private publish(request: FastifyRequest, who: AuthResult | null, d: { decisionId: string; resource: string; action: string; allow: boolean; reasons: string[]; status: number; mcp?: DecisionData['mcp'] }): Promise<void> {
    const { deps } = this.route;
    const data: DecisionData = {
      decision_id: d.decisionId,
      request_id: request.id,
      principal_id: who?.principalId ?? null,
      token_id: who?.tokenId ?? null,
      upstream: this.upstream.name,
      method: request.method,
      path: `/mcp/${this.upstream.name}`,
      upstream_url: this.upstream.url,
      resource: d.resource,
      action: d.action,
      allow: d.allow,
      reasons: d.reasons,
      policy_ids: [],
      bundle_revision: deps.engine.current?.revision ?? null,
      status: d.status,
      ...(d.mcp ? { mcp: d.mcp } : {}),
    };
    try {
      return deps.publisher.publish(deps.decisionsTopic, data.principal_id ?? 'anonymous', buildDecisionEvent(deps.source, data));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /** Whether the caller may use a listed entry (a listing asks "with some arguments", so none are given). */
  private listedAllowed(base: DecisionInput, method: ListMethod): (name: string) => boolean {
    const server = this.upstream.name;
    return (name) => {
      const fact: RequestFact = { ...base.request, listing: true, mcp_method: method };
      if (method === 'tools/list') Object.assign(fact, { resource: toolResource(server, name), action: 'call', tool: name });
      else if (method === 'prompts/list') Object.assign(fact, { resource: promptResource(server, name), action: 'get', prompt: name });
      else Object.assign(fact, { resource: resourceResource(server, name), action: 'read', uri: name });
      return this.evaluate({ ...base, request: fact }).allow;
    };
  }

  private async forward(
    request: FastifyRequest,
    reply: FastifyReply,
    caller: Caller,
    body: string | null,
    context: { sessionId: string | null; listIds: Map<string, ListMethod>; answers: JsonRpcErrorResponse[]; batch: boolean; initialize: boolean },
  ): Promise<void> {
    const secrets: string[] = [];
    try {
      const bearer = agentCredential(request.headers);
      if (bearer) secrets.push(bearer);
    } catch {
      // refused at authentication
    }
    if (typeof request.headers['caracal-mandate'] === 'string') secrets.push(request.headers['caracal-mandate']);
    const headers = upstreamRequestHeaders(request.headers, { requestId: request.id, decisionId: request.caracal.decisionId!, agentSecrets: secrets, credential: this.credential });
    delete headers.host;
    delete headers['content-length'];
    if (body !== null) headers['content-type'] = 'application/json';
    const abort = new AbortController();
    request.raw.once('close', () => {
      if (!reply.raw.writableFinished) abort.abort();
    });
    reply.raw.once('close', () => abort.abort());
    let response;
    try {
      response = await this.pool.request({ path: `${this.url.pathname}${this.url.search}`, method: request.method as 'POST' | 'GET' | 'DELETE', headers: headers as Record<string, string>, body: body ?? undefined, signal: abort.signal });
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'UND_ERR_HEADERS_TIMEOUT') throw new CaracalError('CARACAL_UPSTREAM_TIMEOUT', undefined, { cause: err });
      throw new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', undefined, { cause: err });
    }
    request.caracal.upstreamAnswered = true;
    const session = response.headers['mcp-session-id'];
    if (context.initialize && typeof session === 'string' && SESSION_ID.test(session) && response.statusCode < 300) this.bindSession(session, caller.verified.principalId);
    if (request.method === 'DELETE' && context.sessionId && response.statusCode < 300) this.sessions.delete(context.sessionId);

    const outHeaders = agentResponseHeaders(response.headers as Record<string, string | string[] | undefined>);
    delete outHeaders['content-length'];
    reply.code(response.statusCode);
    for (const [name, value] of Object.entries(outHeaders)) if (value !== undefined) reply.header(name, value);
    const type = String(response.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
    const base = context.listIds.size > 0 ? await this.baseInput(request, caller) : null;
    const rewrite = (message: JsonObject): JsonObject | null => {
      const id = message.id;
      const method = (typeof id === 'string' || typeof id === 'number') && base ? context.listIds.get(requestIdKey(id)) : undefined;
      return method ? filterListResponse(method, message, this.listedAllowed(base!, method)) : message;
    };

    if (type === 'text/event-stream') {
      const out = new PassThrough();
      // The gateway's own answers first, as events of the same stream.
      for (const answer of context.answers) out.write(`event: message\ndata: ${JSON.stringify(answer)}\n\n`);
      if (context.listIds.size === 0) response.body.pipe(out);
      else response.body.pipe(createMcpResponseRewriter({ rewrite })).pipe(out);
      response.body.on('error', (err) => out.destroy(err));
      return reply.send(out);
    }
    if (type === 'application/json' && (context.listIds.size > 0 || context.answers.length > 0)) {
      // Read to be filtered or joined with the gateway's own answers: bounded, a bigger answer is the upstream's fault.
      const raw = await readBody(response.body, MAX_MCP_JSON_BYTES).catch((err: unknown) => {
        throw new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', `the MCP server's answer could not be read (${err instanceof CaracalError ? 'larger than the gateway reads' : 'cut off'})`, { reasons: ['mcp_upstream_malformed'] });
      });
      const rewritten = context.listIds.size > 0 ? rewriteJsonBody(raw, rewrite) : raw;
      if (rewritten === null) throw new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', 'the MCP server answered with JSON the gateway cannot read', { reasons: ['mcp_upstream_malformed'] });
      if (context.answers.length === 0) return reply.send(rewritten);
      const upstreamAnswer: unknown = JSON.parse(rewritten.toString('utf8'));
      const all = [...(Array.isArray(upstreamAnswer) ? upstreamAnswer : [upstreamAnswer]), ...context.answers];
      return reply.send(JSON.stringify(context.batch ? all : all[0]));
    }
    if (context.answers.length > 0 && (response.statusCode === 202 || response.statusCode === 204)) {
      // The upstream had nothing to say (notifications went up); the gateway still answers the denied requests.
      await response.body.dump();
      reply.code(200).header('content-type', 'application/json');
      return reply.send(JSON.stringify(context.batch ? context.answers : context.answers[0]));
    }
    return reply.send(response.body);
  }

  private bindSession(sessionId: string, principalId: string): void {
    if (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    this.sessions.set(sessionId, principalId);
  }
}

function denied(judged: Judged): CaracalError {
  return new CaracalError('CARACAL_POLICY_DENIED', `denied: ${judged.reasons.join(', ') || 'no explicit allow'}`, { reasons: judged.reasons, details: { decision_id: judged.decisionId } });
}

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
 * A session belongs to the principal that opened it: another caller presenting its id is told it does not exist
 * (mcp-sessions.ts: ownership, request ids in flight, stream counts). src/mcp/ holds the protocol layer (parsing,
 * naming, errors, filtering); this file wires it to the gateway.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ServerResponse } from 'node:http';
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
  filterListResult,
  isJsonObject,
  isListMethod,
  jsonRpcError,
  JSONRPC_INVALID_REQUEST,
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
import { addPolicyRecord, policyRecord, revisionHeader, type PolicyRecord } from './app.js';
import { McpSessions, RequestSlots } from './mcp-sessions.js';
import type { GatewayDeps } from './app.js';
import { ARGUMENTS_PATH, inputRecorder, type RecordedInput } from '../policy/input-redaction.js';

/** The largest MCP POST body the gateway reads (and the body limit, if smaller). */
const MAX_MCP_BODY_BYTES = 4 << 20;
const MAX_BATCH = 64;
/** Sessions remembered per server (least recently used forgotten first: its next use is answered as unknown). */
const MAX_SESSIONS = 100_000;
const MAX_SESSIONS_PER_PRINCIPAL = 64;
/** A session unused for a day is forgotten (the client opens a new one when told its session does not exist). */
const SESSION_IDLE_MS = 24 * 3600_000;
/** Event streams (GET) open at once per principal; in all, the server's connection limit (they have their own pool). */
const MAX_STREAMS_PER_PRINCIPAL = 4;
/** A stream (a GET stream, or a POST answered as a stream) silent this long is ended; the client may open another. */
const STREAM_IDLE_MS = 5 * 60_000;
/** A GET stream is ended after this long whatever it carries, so none holds a connection for ever. */
const STREAM_MAX_MS = 60 * 60_000;
/** How often a GET stream's policy facts (grants, stops, limits) are read again for filtering what it carries. */
const STREAM_FACTS_REFRESH_MS = 5_000;
/**
 * The most listed names one answer is judged for (each is one policy evaluation; repeats are remembered): a listing
 * beyond it is cut to what was judged, so a huge listing cannot stall the gateway.
 */
const MAX_LISTING_EVALUATIONS = 2_000;
/** Failures that mean the request never left the gateway: a tool call charged for it is given back. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_DESTROYED', 'UND_ERR_CLOSED']);
/**
 * What could be a listing in an answer: a member named like a listing's list, or a \u escape (which could spell one).
 * An event or body without it is passed on unparsed; one with it is parsed and filtered by shape.
 */
const LISTING_HINT = /"(?:tools|prompts|resources|resourceTemplates)"|\\u/;
/** The largest arguments (JSON bytes) a decision event carries where an upstream records them; larger: the digest only. */
const MAX_RECORDED_ARGUMENT_BYTES = 16 << 10;
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
  /**
   * The input the policy decided on and its decision, while `allow` and `reasons` are the policy's: dropped when a
   * budget or a limit refuses what it allowed (the event then records that refusal, not the policy's decision).
   */
  policy?: { input: DecisionInput; decision: Decision };
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
      // No HEAD: Fastify would route it to the GET handler, and a HEAD is not an event stream.
      scope.route({ method: ['POST', 'GET', 'DELETE'], url: `/mcp/${upstream.name}`, exposeHeadRoute: false, handler: (request, reply) => server.handle(request, reply) });
      // Streams stay open for as long as their sessions live: they are ended when the gateway closes, not waited for.
      scope.addHook('preClose', async () => server.endStreams());
      scope.addHook('onClose', async () => server.close());
    });
  }
}

/**
 * The end of the agent's response (finished, or cut by the agent going away), seen from the start of the request:
 * work registered later still runs if the end already came (a hang-up while a decision was being recorded).
 */
class ResponseEnd {
  private ended = false;
  private readonly callbacks: (() => void)[] = [];

  constructor(private readonly raw: ServerResponse) {
    if (raw.destroyed) this.ended = true;
    else
      raw.once('close', () => {
        this.ended = true;
        for (const callback of this.callbacks.splice(0)) callback();
      });
  }

  get over(): boolean {
    return this.ended;
  }

  /** The agent went away before its answer was complete. */
  get cut(): boolean {
    return this.ended && !this.raw.writableFinished;
  }

  then(callback: () => void): void {
    if (this.ended) callback();
    else this.callbacks.push(callback);
  }
}

/** How one POST went upstream, for settling its priced calls. */
interface Exchange {
  end: ResponseEnd;
  /** The request certainly never reached the server (it was not sent, or its connection failed). */
  notSent: boolean;
  /** Settles once it is known whether the request left (the upstream answered, failed, or it was never sent). */
  settled: Promise<void>;
  settle: () => void;
}

function newExchange(end: ResponseEnd): Exchange {
  let settle!: () => void;
  const settled = new Promise<void>((resolve) => (settle = resolve));
  return { end, notSent: false, settled, settle };
}

const LISTING_FIELDS: readonly [field: string, method: ListMethod][] = [
  ['tools', 'tools/list'],
  ['prompts', 'prompts/list'],
  ['resources', 'resources/list'],
  ['resourceTemplates', 'resources/templates/list'],
];

class McpServerRoute {
  private readonly pool: Pool;
  /** GET streams have a pool of their own: however many are open, requests still get a connection. */
  private readonly streamPool: Pool;
  private readonly url: URL;
  private readonly sessions: McpSessions;
  /** Connections for requests (POST, DELETE): see RequestSlots. */
  private readonly slots: RequestSlots;
  private readonly credential: { header: string; value: string } | null;
  private readonly maxBody: number;
  /** Upstream answers being streamed to agents: ended when the gateway closes. */
  private readonly live = new Set<Readable>();
  /** How this server's decision events record their input (null: policy.recordInput is off). */
  private readonly recordInput: ((input: object) => RecordedInput) | null;
  /** The same with `request.arguments` redacted: for arguments too large to record where they would be kept. */
  private readonly recordInputWithoutArguments: ((input: object) => RecordedInput) | null;
  /** `recordInput` keeps (some of) the argument values: their size is checked first. */
  private readonly inputKeepsArguments: boolean;

  constructor(
    private readonly upstream: UpstreamConfig,
    private readonly route: McpRouteDeps,
  ) {
    this.url = new URL(upstream.url);
    const options = { connections: upstream.maxConnections, headersTimeout: upstream.timeoutMs, bodyTimeout: STREAM_IDLE_MS };
    this.pool = new Pool(this.url.origin, options);
    this.streamPool = new Pool(this.url.origin, options);
    // A principal may hold a quarter of the connections while its answers stream back; the others keep the rest.
    this.slots = new RequestSlots(upstream.maxConnections, Math.max(1, Math.floor(upstream.maxConnections / 4)));
    this.sessions = new McpSessions({
      maxSessions: MAX_SESSIONS,
      maxSessionsPerPrincipal: MAX_SESSIONS_PER_PRINCIPAL,
      idleMs: SESSION_IDLE_MS,
      maxStreams: upstream.maxConnections,
      maxStreamsPerPrincipal: MAX_STREAMS_PER_PRINCIPAL,
    });
    const value = upstream.credentials ? process.env[upstream.credentials.valueEnv] : undefined;
    this.credential = upstream.credentials && value ? { header: upstream.credentials.header.toLowerCase(), value: `${upstream.credentials.prefix}${value}` } : null;
    this.maxBody = Math.min(MAX_MCP_BODY_BYTES, route.deps.config.gateway.bodyLimitBytes);
    // An upstream that records its arguments (recordArguments) records them in the input too, up to the same size.
    const recordInput = route.deps.config.policy.recordInput;
    this.recordInput = inputRecorder(recordInput, { keepArguments: upstream.recordArguments });
    this.recordInputWithoutArguments = inputRecorder({ enabled: recordInput.enabled, redact: recordInput.redact.includes(ARGUMENTS_PATH) ? recordInput.redact : [...recordInput.redact, ARGUMENTS_PATH] });
    this.inputKeepsArguments = recordInput.enabled && (upstream.recordArguments || !recordInput.redact.some((path) => path === 'request' || path === ARGUMENTS_PATH));
  }

  private now(): number {
    return (this.route.deps.clock ?? Date.now)();
  }

  endStreams(): void {
    for (const body of this.live) body.destroy();
    this.live.clear();
  }

  async close(): Promise<void> {
    this.endStreams();
    await Promise.all([this.pool.destroy(), this.streamPool.destroy()]);
  }

  async handle(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const end = new ResponseEnd(reply.raw);
    if (this.route.isClosing()) throw new CaracalError('CARACAL_SHUTTING_DOWN');
    const state = request.caracal;
    state.upstream = this.upstream.name;
    state.dialect = 'mcp';
    state.decisionId = newId();
    assertDeclaredLength(request.headers['content-length'], this.maxBody);
    const caller = await this.authenticate(request);
    // One engine decides every message of this request, and its revision is the one reported and recorded; the shadow
    // beside it is read with it.
    const holder = this.route.deps.engine;
    const engine = holder.current;
    state.mcpEngine = engine;
    state.mcpShadow = holder.shadow ?? null;
    state.bundleRevision = engine.revision;
    reply.header('x-caracal-bundle-revision', revisionHeader(engine.revision));

    const sessionHeader = request.headers['mcp-session-id'];
    let sessionId: string | null = null;
    if (sessionHeader !== undefined) {
      if (typeof sessionHeader !== 'string' || !SESSION_ID.test(sessionHeader)) {
        await this.refused(request, caller, ['mcp_session_invalid'], 400);
        throw new CaracalError('CARACAL_BAD_REQUEST', 'mcp-session-id must be 1-256 visible ASCII characters', { reasons: ['mcp_session_invalid'] });
      }
      sessionId = sessionHeader;
      // Someone else's session, or one this gateway never saw opened (or forgot): it does not exist for this caller.
      if (this.sessions.owner(sessionId) !== caller.verified.principalId) {
        await this.refused(request, caller, ['mcp_session_unknown'], 404);
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
      const input: DecisionInput = { ...base, request: { ...base.request, mcp_method: method } };
      const decision = this.evaluate(request, input);
      const judged: Judged = { message: { kind: 'notification', method, params: undefined, json: {} }, action, decisionId: newId(), allow: decision.allow, reasons: decision.reasons, policy: { input, decision } };
      // A stream beyond the caller's share is refused, and recorded as such (not as the allow the policy gave).
      const opened = method === 'GET' && judged.allow ? this.sessions.openStream(caller.verified.principalId) : null;
      if (opened && 'refused' in opened) {
        judged.allow = false;
        judged.reasons = [opened.refused];
        judged.policy = undefined;
      }
      await this.record(request, caller, [judged], opened && 'refused' in opened ? 429 : undefined);
      state.decisionId = judged.decisionId;
      reply.header('x-caracal-decision-id', judged.decisionId);
      if (opened && 'refused' in opened) {
        this.route.deps.metrics.limited.inc({ reason: opened.refused });
        throw rateLimited(opened.refused, 5);
      }
      if (!judged.allow) throw denied(judged);
      const slot = opened && 'release' in opened ? opened : null;
      if (slot) end.then(slot.release);
      const exchange = newExchange(end);
      try {
        return await this.forward(request, reply, caller, null, { base, sessionId, listIds: new Map(), answers: [], batch: false, initialize: false, exchange });
      } catch (err) {
        slot?.release();
        throw err;
      }
    }

    // The body flows only now that the caller is known: a client waiting on `Expect: 100-continue` is told to send it.
    if (request.headers.expect?.toLowerCase() === '100-continue') reply.raw.writeContinue();
    let raw: Buffer;
    try {
      raw = request.body instanceof Readable ? await readBody(request.body, this.maxBody) : Buffer.alloc(0);
    } catch (err) {
      // A body over the limit without a declared length, or one that broke off: refused, and recorded as refused.
      await this.refused(request, caller, err instanceof CaracalError ? err.reasons : ['body_unreadable'], err instanceof CaracalError ? err.statusCode : 400);
      throw err;
    }
    let parsed;
    try {
      parsed = parseMcpBody(raw, { maxBytes: this.maxBody, maxBatch: MAX_BATCH, protocolVersion: protocolVersion ?? (sessionId ? null : ASSUMED_PROTOCOL_VERSION) });
    } catch (err) {
      if (err instanceof McpMessageError) {
        const status = err.statusCode === 413 ? 413 : 400;
        await this.refused(request, caller, err.reasons, status);
        reply.code(status).header('content-type', 'application/json');
        return reply.send(err.toJsonRpc());
      }
      throw err;
    }
    const answers: JsonRpcErrorResponse[] = [];
    const judged: Judged[] = [];
    const malformed: string[][] = [];
    // Request ids already in flight in this session are refused for this POST (see mcp-sessions.ts).
    const ids = sessionId
      ? this.sessions.claimIds(
          sessionId,
          parsed.entries.flatMap((e) => (e.ok && e.message.kind === 'request' ? [requestIdKey(e.message.id)] : [])),
        )
      : null;
    if (ids) end.then(ids.release);
    for (const entry of parsed.entries) {
      if (!entry.ok) {
        answers.push(entry.error.toJsonRpc());
        malformed.push(entry.error.reasons);
        continue;
      }
      const message = entry.message;
      if (ids && message.kind === 'request' && ids.taken.has(requestIdKey(message.id))) {
        const reasons = ['mcp_id_in_flight'];
        answers.push(jsonRpcError(message.id, JSONRPC_INVALID_REQUEST, `the id ${JSON.stringify(message.id)} is already used by a request in flight in this session`, { caracal: { error: 'CARACAL_BAD_REQUEST', reasons } }));
        malformed.push(reasons);
        continue;
      }
      judged.push(this.decide(request, base, message));
    }
    const exchange = newExchange(end);
    try {
      for (const j of judged) if (j.allow && j.action.kind === 'tool') await this.charge(request, caller, j);
      await Promise.all([this.record(request, caller, judged), ...malformed.map((reasons) => this.refused(request, caller, reasons, 400))]);
    } catch (err) {
      this.refundAll(judged);
      throw err;
    }
    // The agent left while its messages were being decided: nothing will be sent, so nothing is charged.
    if (end.over) exchange.notSent = true;
    this.meterOnClose(request, reply, caller, judged, exchange);
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
      exchange.notSent = true;
      exchange.settle();
      if (answers.length === 0) {
        // Only notifications or responses, and none accepted: the protocol asks for an HTTP error, not 202.
        const refused = judged.find((j) => !j.allow);
        if (refused) throw denied(refused);
        return reply.code(202).send();
      }
      reply.code(200).header('content-type', 'application/json');
      return reply.send(parsed.batch ? answers : answers[0]);
    }
    const body = JSON.stringify(parsed.batch ? forwarded : forwarded[0]);
    try {
      return await this.forward(request, reply, caller, body, { base, sessionId, listIds, answers, batch: parsed.batch, initialize, exchange });
    } finally {
      exchange.settle();
    }
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
    const input = await buildDecisionInput(this.route.deps, caller.verified, caller.mandate, fact, this.upstream.url, Math.floor(this.now() / 1000));
    input.limits = request.caracal.lease?.facts;
    return input;
  }

  /** Evaluates with the engine that decides this request (read once per request: a hot swap never splits one). */
  private evaluate(request: FastifyRequest, input: DecisionInput): Decision {
    return (request.caracal.mcpEngine ?? this.route.deps.engine.current).evaluate(input);
  }

  /** Decides one message (synchronously: the facts are in `base`). */
  private decide(request: FastifyRequest, base: DecisionInput, message: McpMessage): Judged {
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
    const input: DecisionInput = { ...base, request: fact };
    const decision = this.evaluate(request, input);
    return { message, action, decisionId, allow: decision.allow, reasons: decision.reasons, policy: { input, decision } };
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
    // Own members only: a tool named `constructor` or `toString` has no price of its own.
    const micros = (Object.hasOwn(pricing.tools, j.action.tool) ? pricing.tools[j.action.tool] : undefined) ?? pricing.perRequest ?? 0;
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
      j.policy = undefined;
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

  /**
   * When the answer is over, each priced call is metered; one whose request certainly never reached the server is
   * given back. A call the agent stopped waiting for is not: it may have run (the budget errs on the side of spend).
   */
  private meterOnClose(request: FastifyRequest, reply: FastifyReply, caller: Caller, judged: readonly Judged[], exchange: Exchange): void {
    const priced = judged.filter((j) => j.allow && j.price);
    if (priced.length === 0) return;
    const { deps } = this.route;
    const started = new Date();
    // Settled once the agent's answer is over and it is known whether the request left (in either order).
    exchange.end.then(() => void exchange.settled.then(() => settle()));
    const settle = () => {
      const answered = request.caracal.upstreamAnswered;
      const status = answered ? reply.statusCode : null;
      const outcome = exchange.notSent || (status !== null && status >= 400) ? 'failed' : answered && !exchange.end.cut ? 'completed' : 'aborted';
      for (const j of priced) {
        const { micros, call } = j.price!;
        const cost = exchange.notSent ? 0 : micros;
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
    };
  }

  /** Argument values small enough to be recorded (in `mcp.arguments`, or kept in the recorded input). */
  private argumentsFit(args: JsonObject): boolean {
    return Buffer.byteLength(JSON.stringify(args), 'utf8') <= MAX_RECORDED_ARGUMENT_BYTES;
  }

  /** Records a refusal that is not one message's decision (a bad session, a body refused whole); never throws. */
  private refused(request: FastifyRequest, caller: Caller, reasons: readonly string[], status: number): Promise<void> {
    return this.publish(request, caller.verified, { decisionId: newId(), resource: `mcp:${this.upstream.name}`, action: 'session', allow: false, reasons: [...reasons], status }).catch((err) =>
      request.log.error({ err }, 'could not record a denial'),
    );
  }

  /** Records every decision; an allow is forwarded only once its event is durable (no unrecorded action). */
  private async record(request: FastifyRequest, caller: Caller, judged: readonly Judged[], deniedStatus = 403): Promise<void> {
    const results = await Promise.allSettled(
      judged.map((j) => {
        const action = j.action;
        const mcp: NonNullable<DecisionData['mcp']> = { method: j.message.kind === 'response' ? 'response' : j.message.method };
        const args = action.kind === 'tool' || action.kind === 'prompt' ? action.arguments : null;
        // Measured once, and only where argument values would be recorded.
        const fits = args !== null && (this.upstream.recordArguments || (this.inputKeepsArguments && j.policy !== undefined)) ? this.argumentsFit(args) : false;
        if (action.kind === 'tool') Object.assign(mcp, { name: action.tool, argument_digest: argumentDigest(action.arguments) });
        else if (action.kind === 'prompt') Object.assign(mcp, { name: action.prompt, argument_digest: argumentDigest(action.arguments) });
        else if (action.kind === 'resource') mcp.name = action.uri;
        if (args !== null && this.upstream.recordArguments && fits) mcp.arguments = args;
        const recordInput = args !== null && this.inputKeepsArguments && !fits ? this.recordInputWithoutArguments : this.recordInput;
        return this.publish(request, caller.verified, {
          decisionId: j.decisionId,
          resource: action.resource,
          action: action.kind === 'tool' || action.kind === 'resource' || action.kind === 'prompt' ? action.action : 'session',
          allow: j.allow,
          reasons: j.reasons,
          status: j.allow ? 200 : deniedStatus,
          mcp,
          policy: j.policy ? policyRecord(recordInput, j.policy.input, j.policy.decision, request.caracal.mcpShadow, this.route.deps.metrics) : undefined,
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

  private publish(
    request: FastifyRequest,
    who: AuthResult | null,
    d: { decisionId: string; resource: string; action: string; allow: boolean; reasons: string[]; status: number; mcp?: DecisionData['mcp']; policy?: PolicyRecord | undefined },
  ): Promise<void> {
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
      bundle_revision: request.caracal.bundleRevision ?? deps.engine.current?.revision ?? null,
      status: d.status,
      ...(d.mcp ? { mcp: d.mcp } : {}),
    };
    if (d.policy) addPolicyRecord(data, d.policy);
    try {
      return deps.publisher.publish(deps.decisionsTopic, data.principal_id ?? 'anonymous', buildDecisionEvent(deps.source, data, new Date(this.now())));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /**
   * Whether the caller may use a listed entry (a listing asks "with some arguments", so none are given). Answers are
   * remembered for the request; past MAX_LISTING_EVALUATIONS distinct names, the rest are left out (fail closed).
   */
  private listingJudge(request: FastifyRequest, base: DecisionInput): (method: ListMethod, name: string) => boolean {
    const server = this.upstream.name;
    const seen = new Map<string, boolean>();
    let warned = false;
    return (method, name) => {
      const key = `${method}\n${name}`;
      const known = seen.get(key);
      if (known !== undefined) return known;
      if (seen.size >= MAX_LISTING_EVALUATIONS) {
        if (!warned) request.log.warn({ upstream: server, limit: MAX_LISTING_EVALUATIONS }, 'an MCP listing named more entries than the gateway judges in one answer; the rest are left out');
        warned = true;
        return false;
      }
      const fact: RequestFact = { ...base.request, listing: true, mcp_method: method };
      if (method === 'tools/list') Object.assign(fact, { resource: toolResource(server, name), action: 'call', tool: name });
      else if (method === 'prompts/list') Object.assign(fact, { resource: promptResource(server, name), action: 'get', prompt: name });
      else Object.assign(fact, { resource: resourceResource(server, name), action: 'read', uri: name });
      const allow = this.route.deps.engine.current.evaluate({ ...base, request: fact }).allow;
      seen.set(key, allow);
      return allow;
    };
  }

  private async forward(
    request: FastifyRequest,
    reply: FastifyReply,
    caller: Caller,
    body: string | null,
    context: { base: DecisionInput; sessionId: string | null; listIds: Map<string, ListMethod>; answers: JsonRpcErrorResponse[]; batch: boolean; initialize: boolean; exchange: Exchange },
  ): Promise<void> {
    const { exchange } = context;
    const stream = request.method === 'GET';
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
    delete headers.expect;
    // The gateway reads answers to filter them: they come uncompressed.
    headers['accept-encoding'] = 'identity';
    // Replaying a stream's past events is for the GET stream, where every event is filtered (below), not for a POST.
    if (!stream) delete headers['last-event-id'];
    if (body !== null) headers['content-type'] = 'application/json';

    const abort = new AbortController();
    exchange.end.then(() => abort.abort());
    if (abort.signal.aborted) {
      // The agent went away while its messages were being decided: nothing is sent (and no one reads this answer).
      exchange.notSent = true;
      throw new CaracalError('CARACAL_BAD_REQUEST', 'the agent closed the connection before its messages were sent', { reasons: ['client_closed'] });
    }
    // A request (not a GET stream, which has its slot already) waits here for a connection, not inside the pool: until
    // it has one it has certainly not left, and a principal at its share is refused at once.
    let slot: { release: () => void } | null = null;
    if (!stream) {
      const got = await this.slots.acquire(caller.verified.principalId, this.upstream.timeoutMs, (cancel) => exchange.end.then(cancel));
      if (typeof got === 'string') {
        exchange.notSent = true;
        // The messages were allowed and recorded; that they never went up is recorded too.
        await this.refused(request, caller, [got], got === 'mcp_connections_per_principal' ? 429 : got === 'mcp_upstream_busy' ? 504 : 400);
        if (got === 'mcp_connections_per_principal') {
          this.route.deps.metrics.limited.inc({ reason: got });
          throw rateLimited(got, 1);
        }
        if (got === 'mcp_upstream_busy') throw new CaracalError('CARACAL_UPSTREAM_TIMEOUT', 'no connection to the MCP server came free in time', { reasons: [got] });
        throw new CaracalError('CARACAL_BAD_REQUEST', 'the agent closed the connection before its messages were sent', { reasons: [got] });
      }
      slot = got;
      if (abort.signal.aborted) {
        slot.release();
        exchange.notSent = true;
        throw new CaracalError('CARACAL_BAD_REQUEST', 'the agent closed the connection before its messages were sent', { reasons: ['client_closed'] });
      }
    }
    // headersTimeout runs from when the request is written; the pool never queues (slots), so this is the same bound.
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this.upstream.timeoutMs);
    let response;
    try {
      response = await (stream ? this.streamPool : this.pool).request({
        path: `${this.url.pathname}${this.url.search}`,
        method: request.method as 'POST' | 'GET' | 'DELETE',
        headers: headers as Record<string, string>,
        body: body ?? undefined,
        signal: abort.signal,
      });
    } catch (err) {
      slot?.release();
      const code = (err as { code?: string }).code;
      if (code && NOT_SENT_CODES.has(code)) exchange.notSent = true;
      if (timedOut || code === 'UND_ERR_HEADERS_TIMEOUT') throw new CaracalError('CARACAL_UPSTREAM_TIMEOUT', undefined, { cause: err });
      throw new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', undefined, { cause: err });
    } finally {
      clearTimeout(timer);
      exchange.settle();
    }
    request.caracal.upstreamAnswered = true;
    const upstreamBody = response.body;
    if (slot) upstreamBody.once('close', slot.release);
    this.live.add(upstreamBody);
    upstreamBody.once('close', () => this.live.delete(upstreamBody));
    exchange.end.then(() => upstreamBody.destroy());
    if (stream) {
      const lifetime = setTimeout(() => upstreamBody.destroy(), STREAM_MAX_MS);
      lifetime.unref();
      upstreamBody.once('close', () => clearTimeout(lifetime));
    }

    const session = response.headers['mcp-session-id'];
    if (context.initialize && typeof session === 'string' && SESSION_ID.test(session) && response.statusCode < 300) this.sessions.bind(session, caller.verified.principalId);
    if (request.method === 'DELETE' && context.sessionId && response.statusCode < 300) this.sessions.forget(context.sessionId);

    const outHeaders = agentResponseHeaders(response.headers as Record<string, string | string[] | undefined>);
    delete outHeaders['content-length'];
    reply.code(response.statusCode);
    for (const [name, value] of Object.entries(outHeaders)) if (value !== undefined) reply.header(name, value);
    const type = String(response.headers['content-type'] ?? '').split(';', 1)[0]!.trim().toLowerCase();
    const encoding = String(response.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    const failed = response.statusCode >= 400;
    // Every listing-shaped answer is filtered, whatever request it claims to answer: a GET stream may replay events of
    // any stream of the session, and a server routes answers by id, so one to a listing asked on a POST the agent left
    // can come back on a later POST that reused the id. Pending listing ids are filtered as their method says.
    if (!failed && encoding !== 'identity') {
      upstreamBody.destroy();
      throw upstreamMalformed(`the MCP server's answer is ${encoding}-encoded though the gateway asked for none`);
    }
    let judge = this.listingJudge(request, context.base);
    if (stream) {
      // A GET stream lives for up to an hour: what it filters follows the caller's grants, stops and limits as they
      // change (and the judged names are forgotten with them).
      const refresh = setInterval(() => {
        this.baseInput(request, caller).then(
          (base) => (judge = this.listingJudge(request, base)),
          (err: unknown) => request.log.warn({ err }, 'could not refresh the facts of an MCP event stream; the old ones stay'),
        );
      }, STREAM_FACTS_REFRESH_MS);
      refresh.unref();
      const stop = () => clearInterval(refresh);
      upstreamBody.once('close', stop);
      exchange.end.then(stop);
    }
    const rewrite = (message: JsonObject): JsonObject | null => {
      const current = judge;
      const id = message.id;
      const method = typeof id === 'string' || typeof id === 'number' ? context.listIds.get(requestIdKey(id)) : undefined;
      if (method) return filterListResponse(method, message, (name) => current(method, name));
      return filterListingShapes(message, current);
    };
    // An answer to a listing the agent asked for is always read; any other only when it could hold one.
    const mayHoldListing = (text: string) => context.listIds.size > 0 || LISTING_HINT.test(text);

    if (type === 'text/event-stream') {
      const out = new PassThrough();
      // The gateway's own answers first, as events of the same stream.
      for (const answer of context.answers) out.write(`event: message\ndata: ${JSON.stringify(answer)}\n\n`);
      upstreamBody.pipe(createMcpResponseRewriter({ rewrite, mayRewrite: mayHoldListing, maxEventBytes: MAX_MCP_JSON_BYTES })).pipe(out);
      // A GET stream that fails or goes silent ends cleanly (the client opens another); a POST's stream that fails is
      // cut, so the client learns at once that its answers will not come. One the gateway ends (its lifetime, shutdown)
      // is ended cleanly.
      upstreamBody.on('error', (err) => (stream ? out.end() : out.destroy(err)));
      upstreamBody.once('close', () => {
        if (!upstreamBody.readableEnded && !out.destroyed && !out.writableEnded) out.end();
      });
      return reply.send(out);
    }
    if (failed) return reply.send(upstreamBody); // the server's own error, as it sent it
    if (type === 'application/json') {
      // Read whole (bounded: a bigger answer is the upstream's fault) to be filtered or joined with the gateway's answers.
      const raw = await readBody(upstreamBody, MAX_MCP_JSON_BYTES).catch((err: unknown) => {
        throw upstreamMalformed(`the MCP server's answer could not be read (${err instanceof CaracalError ? 'larger than the gateway reads' : 'cut off'})`);
      });
      if (context.answers.length === 0 && !mayHoldListing(raw.toString('latin1'))) return reply.send(raw);
      // Read as JSON-RPC: what is joined with the gateway's answers must be messages.
      const rewritten = rewriteJsonBody(raw, rewrite);
      if (rewritten === null) throw upstreamMalformed("the MCP server's answer held no message the gateway could pass on");
      if (context.answers.length === 0) return reply.send(rewritten);
      const upstreamAnswer: unknown = JSON.parse(rewritten.toString('utf8'));
      const all = [...(Array.isArray(upstreamAnswer) ? upstreamAnswer : [upstreamAnswer]), ...context.answers];
      return reply.send(JSON.stringify(context.batch ? all : all[0]));
    }
    if (response.statusCode === 202 || response.statusCode === 204) {
      await upstreamBody.dump();
      if (context.answers.length === 0) return reply.send();
      // The upstream had nothing to say (notifications went up); the gateway still answers the denied requests.
      reply.code(200).header('content-type', 'application/json');
      return reply.send(JSON.stringify(context.batch ? context.answers : context.answers[0]));
    }
    // An answer the gateway cannot read (it reads every one, for listings) is refused rather than passed on; an empty
    // one (DELETE's) has nothing to read.
    const rest = await readBody(upstreamBody, MAX_MCP_JSON_BYTES).catch(() => null);
    if (rest !== null && rest.length === 0) return reply.send(rest);
    throw upstreamMalformed(`the MCP server answered with ${type || 'no content type'}, not JSON or an event stream`);
  }
}

/**
 * Listings found by their shape rather than by the request they answer (on the GET stream, which may replay answers
 * to any request of the session): every result member named like a listing's list is filtered as that listing.
 */
function filterListingShapes(message: JsonObject, judge: (method: ListMethod, name: string) => boolean): JsonObject {
  const result = message.result;
  if (!isJsonObject(result)) return message;
  let filtered: JsonObject = result;
  for (const [field, method] of LISTING_FIELDS) {
    if (!Object.prototype.hasOwnProperty.call(result, field)) continue;
    const list = filterListResult(method, filtered, (name) => judge(method, name));
    filtered = list;
  }
  return filtered === result ? message : { ...message, result: filtered };
}

function upstreamMalformed(message: string): CaracalError {
  // The same reason as the protocol layer's refusals of an answer (src/mcp/rewriter.ts): one name for "unreadable".
  return new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', message, { reasons: ['mcp_upstream_answer_invalid'] });
}

function denied(judged: Judged): CaracalError {
  return new CaracalError('CARACAL_POLICY_DENIED', `denied: ${judged.reasons.join(', ') || 'no explicit allow'}`, { reasons: judged.reasons, details: { decision_id: judged.decisionId } });
}

// The MCP gateway (/mcp/<server>) against hostile agents and hostile servers: one test (or a few) per finding of the
// security reviews of src/gateway/mcp-route.ts, each written so that it fails if the fix is reverted (the finding is
// named above each test; those of the second review with their severity). The bundle is the core policy plus the
// code-hosting example (policies/examples/code-hosting: read tools allowed, read_file under /public/ only, write tools
// under a mandate, delete_repo never); the servers are
// test/helpers/mcp-fixture-upstream.ts: the official SDK for what a real server does, a scripted one for what a
// broken or malicious one does. Everything listens on loopback and is closed in afterAll.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecisionData, MeteringData } from '../../src/events/cloudevents.js';
import type { EventLog } from '../../src/events/event-log.js';
import { windowBounds } from '../../src/metering/money.js';
import { budgetLineKey } from '../../src/metering/spend-counters.js';
import { POLICIES_DIR } from '../../src/paths.js';
import { buildBundle } from '../../src/policy/bundle.js';
import { createHarness, readDecisions, readTopic, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';
import { DEEP_NESTING, startScriptedUpstream, startSdkFixture, type ScriptedUpstream, type SdkFixture } from '../helpers/mcp-fixture-upstream.js';
import { closedPort } from '../helpers/ports.js';
import { rawRequest } from '../helpers/raw-http.js';
import { requireServices } from '../helpers/services.js';

const PROTOCOL = '2025-11-25';
/** The last protocol version with JSON-RPC batches. */
const BATCH_PROTOCOL = '2025-03-26';
/** 0.01 USD per tool call, whatever the tool. */
const PRICE = { currency: 'USD', perRequest: '0.01', tools: {} } as unknown as NonNullable<ExtraUpstream['pricing']>;
const PRICE_MICROS = 10_000;
/** 0.01 USD per tool call, but search_code costs 0.02: a price table with entries of its own. */
const TOOL_PRICES = { currency: 'USD', perRequest: '0.01', tools: { search_code: '0.02' } } as unknown as NonNullable<ExtraUpstream['pricing']>;
/** How long a "slow" tool call takes on the narrow server: well past the narrow upstream's timeout (800 ms). */
const NARROW_SLOW_MS = 2_500;
const BIG_TOOLS = Array.from({ length: 3_000 }, (_, i) => `tool_${String(i).padStart(4, '0')}`);
/** Request ids (x-request-id, which the gateway keeps when it is safe) starting with this have their decision held. */
const HOLD_PREFIX = 'hold-';
const HOLD_MS = 400;
const run = randomBytes(4).toString('hex');

let tmp: string;
let bundlePath: string;
let code: SdkFixture;
/** The SDK server behind the upstreams with few connections (narrow: 1, shared: 4). */
let narrow: SdkFixture;
let big: ScriptedUpstream;
let hostile: ScriptedUpstream;
let streams: ScriptedUpstream;
let refusedOrigin: string;
let h: Harness;
let gatewayUrl: string;
let gatewayPort: number;
/** Called when a held decision is being recorded (see holdDecisions). */
let onHeld: (() => void) | null = null;

interface Agent {
  id: string;
  token: string;
}

interface RpcMessage {
  jsonrpc?: string;
  id?: unknown;
  result?: Record<string, unknown>;
  error?: { code: number; message: string; data?: { caracal?: { reasons?: string[] } } };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Waits (bounded) until `ready` says so; false when the time ran out. */
async function until(ready: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await ready()) return true;
    await sleep(20);
  }
  return ready();
}

/**
 * The event log with a pause on the decision events of requests whose id starts with HOLD_PREFIX: the gateway waits
 * for an allow's event before it forwards, so a test can hang up at the exact moment the decision is being recorded.
 */
function holdDecisions(log: EventLog): EventLog {
  return {
    kind: log.kind,
    createTopics: (topics) => log.createTopics(topics),
    listTopics: () => log.listTopics(),
    publish: async (topic, messages) => {
      if (topic === h?.ctx.topics.decisions && messages.some((m) => m.value.includes(`"request_id":"${HOLD_PREFIX}`))) {
        onHeld?.();
        await sleep(HOLD_MS);
      }
      await log.publish(topic, messages);
    },
    subscribe: (options) => log.subscribe(options),
    consumerLag: (groupId, topics) => log.consumerLag(groupId, topics),
    ping: () => log.ping(),
    close: () => log.close(),
  };
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-mcp-hostile-'));
  const team = path.join(tmp, 'policies');
  await cp(path.join(POLICIES_DIR, 'caracal'), path.join(team, 'caracal'), { recursive: true });
  await cp(path.join(POLICIES_DIR, 'examples', 'code-hosting'), path.join(team, 'code-hosting'), { recursive: true });
  bundlePath = (await buildBundle({ opaBin: requireServices().opaBin, policiesDir: team, outFile: path.join(tmp, 'bundle.tar.gz'), revision: 'mcp-hostile' })).outFile;
  [code, narrow, big, hostile, streams] = await Promise.all([
    startSdkFixture({ eventStore: true }),
    startSdkFixture({ slowCallMs: NARROW_SLOW_MS }),
    startScriptedUpstream({ tools: BIG_TOOLS }),
    startScriptedUpstream(),
    startScriptedUpstream(),
  ]);
  refusedOrigin = `http://127.0.0.1:${await closedPort()}`;
  h = await createHarness({
    wrapEvents: holdDecisions,
    // Decisions go straight to the event log (no spool), so holding one holds the request.
    configOverrides: { policy: { bundlePath }, spool: { enabled: false } },
    extraUpstreams: [
      { name: 'code', url: code.url, dialect: 'mcp' },
      // The same SDK server, priced per tool call.
      { name: 'paid', url: code.url, dialect: 'mcp', pricing: PRICE },
      // The same again, with a price table naming one tool.
      { name: 'priced', url: code.url, dialect: 'mcp', pricing: TOOL_PRICES },
      // One connection, a short timeout, priced: a request waits for the connection at most 800 ms.
      { name: 'narrow', url: narrow.url, dialect: 'mcp', pricing: PRICE, maxConnections: 1, timeoutMs: 800 },
      // Four connections: a principal's share is one.
      { name: 'shared', url: narrow.url, dialect: 'mcp', maxConnections: 4 },
      // Priced, and nothing listens there: every connection is refused.
      { name: 'refused', url: `${refusedOrigin}/mcp`, dialect: 'mcp', pricing: PRICE, timeoutMs: 5_000 },
      { name: 'big', url: big.url, dialect: 'mcp' },
      { name: 'hostile', url: hostile.url, dialect: 'mcp' },
      { name: 'streams', url: streams.url, dialect: 'mcp' },
    ],
  });
  await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
  gatewayPort = (h.assembled.gateway.app.server.address() as AddressInfo).port;
  gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
}, 120_000);

afterAll(async () => {
  await h?.close();
  await Promise.all([code?.close(), narrow?.close(), big?.close(), hostile?.close(), streams?.close()]);
  if (tmp) await rm(tmp, { recursive: true, force: true });
}, 60_000);

/** An agent with a grant on `resources` and an allowlist entry for every fixture server. */
async function newAgent(resources: string[], actions: string[] = ['call']): Promise<Agent> {
  const id = await h.registerAgent();
  await h.op('policy.create', { principalId: id, resources, actions, maxValiditySeconds: 3600 });
  for (const origin of [code.origin, narrow.origin, big.origin, hostile.origin, streams.origin, refusedOrigin]) {
    await h.op('allowlist.create', { principalId: id, pattern: `${origin}/**`, patternType: 'glob' });
  }
  return { id, token: await h.token(id) };
}

function mcpHeaders(token: string, extra: Record<string, string> = {}): Record<string, string> {
  return { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...extra };
}

function sessionHeaders(token: string, sessionId: string, version = PROTOCOL, extra: Record<string, string> = {}): Record<string, string> {
  return mcpHeaders(token, { 'mcp-session-id': sessionId, 'mcp-protocol-version': version, ...extra });
}

function post(server: string, headers: Record<string, string>, body: unknown): Promise<Response> {
  return fetch(`${gatewayUrl}/mcp/${server}`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

/** Opens a session (initialize, then notifications/initialized) and returns its id. */
async function initialize(server: string, token: string, version = PROTOCOL): Promise<string> {
  const response = await post(server, mcpHeaders(token), { jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: version, capabilities: {}, clientInfo: { name: 'mcp-hostile', version: '1.0.0' } } });
  await response.text();
  const sessionId = response.headers.get('mcp-session-id');
  if (response.status !== 200 || !sessionId) throw new Error(`initialize on ${server} answered ${response.status} without a session`);
  const initialized = await post(server, sessionHeaders(token, sessionId, version), { jsonrpc: '2.0', method: 'notifications/initialized' });
  await initialized.text();
  return sessionId;
}

/** The JSON-RPC messages of an answer: a JSON body (one message or an array) or the data of its SSE events. */
function messagesOf(text: string, contentType: string | null): RpcMessage[] {
  if (contentType?.startsWith('text/event-stream')) {
    return text
      .split(/\r?\n/)
      .filter((line) => line.startsWith('data:') && line.slice(5).trim() !== '')
      .flatMap((line) => [JSON.parse(line.slice(5)) as RpcMessage | RpcMessage[]].flat());
  }
  return [JSON.parse(text) as RpcMessage | RpcMessage[]].flat();
}

async function answerOf(response: Response): Promise<{ status: number; text: string; messages: RpcMessage[] }> {
  const text = await response.text();
  return { status: response.status, text, messages: response.status < 300 && text !== '' ? messagesOf(text, response.headers.get('content-type')) : [] };
}

function toolNames(message: RpcMessage | undefined): string[] {
  return ((message?.result?.tools ?? []) as { name: string }[]).map((t) => t.name);
}

/** Reads a streamed body until `done` says so or the time is up, then lets go of it. */
async function readStream(response: Response, done: (text: string) => boolean, timeoutMs: number): Promise<string> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const timer = setTimeout(() => void reader.cancel().catch(() => {}), timeoutMs);
  try {
    while (!done(text)) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      text += decoder.decode(value, { stream: true });
    }
  } catch {
    // cancelled at the deadline
  } finally {
    clearTimeout(timer);
    await reader.cancel().catch(() => {});
  }
  return text;
}

/** Writes a whole POST on a raw socket (so the test decides when, and how hard, the agent hangs up). */
function rawPost(server: string, headers: Record<string, string>, body: string): net.Socket {
  const socket = net.connect(gatewayPort, '127.0.0.1');
  const lines = Object.entries({ host: 'gateway', 'content-length': String(Buffer.byteLength(body)), ...headers })
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.on('error', () => {});
  socket.write(`POST /mcp/${server} HTTP/1.1\r\n${lines}\r\n${body}`);
  return socket;
}

/**
 * Sends a POST whose body is chunked (no content-length) and `bytes` long; resolves with the status, or 'reset' when
 * the gateway cut the connection before answering.
 */
function chunkedPost(server: string, headers: Record<string, string>, bytes: number): Promise<number | 'reset'> {
  return new Promise((resolve) => {
    const request = http.request({ host: '127.0.0.1', port: gatewayPort, method: 'POST', path: `/mcp/${server}`, headers: { ...headers, 'transfer-encoding': 'chunked' } }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    request.on('error', () => resolve('reset'));
    const chunk = Buffer.alloc(1 << 20, 0x20);
    for (let sent = 0; sent < bytes; sent += chunk.length) request.write(chunk);
    request.end();
  });
}

const spent = async (principalId: string) => (await (await h.ctx.spendCounters()).usage(budgetLineKey(principalId, 'daily', windowBounds('daily', new Date()).start))).spentMicros;

async function meteringOf(principalId: string, expected: (events: MeteringData[]) => boolean): Promise<MeteringData[]> {
  const mine = (all: { value: string }[]) => all.map((m) => (JSON.parse(m.value) as { data: MeteringData }).data).filter((d) => d.principal_id === principalId);
  return mine(await readTopic(await h.ctx.events(), h.ctx.topics.metering, (all) => expected(mine(all)), 10_000));
}

async function decisionsOf(principalId: string, expected: (decisions: DecisionData[]) => boolean): Promise<DecisionData[]> {
  const all = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (ds) => expected(ds.filter((d) => d.principal_id === principalId)), 10_000);
  return all.filter((d) => d.principal_id === principalId);
}

describe('budgets: priced tool calls whose agent hangs up, or whose server cannot be reached', () => {
  // Finding: a priced call whose agent hung up was given back although it reached the server (and ran), so a budget
  // never bound an agent that always hangs up; and an agent that hung up while its decision was being recorded got
  // its call charged with no metering event at all (the hang-up was listened for only after the recording).
  it('keeps the charge of a call that reached the server, and meters every allowed priced call', async () => {
    const payer = await newAgent(['mcp:paid/*']);
    await h.op('budget.set', { principalId: payer.id, window: 'daily', limit: '100', currency: 'USD' });
    const sessionId = await initialize('paid', payer.token);
    const headers = (requestId: string) => ({ ...sessionHeaders(payer.token, sessionId), 'x-request-id': requestId });
    const call = (id: number, query: string) => JSON.stringify({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'search_code', arguments: { query } } });

    // 1. Hang-ups at every moment of the first few milliseconds.
    const early: string[] = [];
    for (const delay of [0, 1, 2, 4, 8, 16, 32]) {
      const requestId = `early-${run}-${delay}`;
      early.push(requestId);
      const socket = rawPost('paid', headers(requestId), call(10 + delay, `q${delay}`));
      await sleep(delay);
      socket.resetAndDestroy();
      await sleep(50);
    }

    // 2. The call is running on the server (it takes 1.5 s) when the agent resets its connection.
    const ranId = `ran-${run}`;
    const ran = rawPost('paid', headers(ranId), call(1, 'slow'));
    expect(await until(() => code.toolCalls.some((c) => c.requestId === ranId))).toBe(true);
    ran.resetAndDestroy();

    // 3. The agent resets while its decision is being recorded (the event log holds it HOLD_MS). Last: the events
    // of one principal are read in the order they were recorded, so once this one is read, all of the above are.
    const heldId = `${HOLD_PREFIX}${run}`;
    const recording = new Promise<void>((resolve) => (onHeld = resolve));
    const held = rawPost('paid', headers(heldId), call(2, 'held'));
    await Promise.race([recording, sleep(5_000)]);
    onHeld = null;
    held.resetAndDestroy();

    const sent = [ranId, heldId, ...early];
    const decisions = await decisionsOf(payer.id, (ds) => [ranId, heldId].every((id) => ds.some((d) => d.request_id === id && d.mcp?.name === 'search_code')));
    const allowed = decisions.filter((d) => d.allow && d.mcp?.name === 'search_code' && sent.includes(d.request_id!));
    expect(allowed.map((d) => d.request_id)).toEqual(expect.arrayContaining([ranId, heldId]));
    // Every allowed priced decision has its metering event (exactly one).
    const metered = await meteringOf(payer.id, (events) => allowed.every((d) => events.some((e) => e.decision_id === d.decision_id)));
    for (const d of allowed) expect(metered.filter((e) => e.decision_id === d.decision_id), `metering of ${d.request_id}`).toHaveLength(1);

    const reached = new Set(code.toolCalls.map((c) => c.requestId));
    for (const event of metered) {
      if (reached.has(event.request_id)) {
        // It reached the server: charged, whatever the agent did.
        expect(event, event.request_id).toMatchObject({ cost_micros: PRICE_MICROS, resource: 'mcp:paid/search_code' });
        expect(['aborted', 'completed']).toContain(event.outcome);
      } else {
        // Never sent: either given back (failed, 0) or kept on the side of spend (aborted, the price).
        expect([`failed/0`, `aborted/${PRICE_MICROS}`]).toContain(`${event.outcome}/${event.cost_micros}`);
      }
    }
    expect(metered.find((e) => e.request_id === ranId)).toMatchObject({ outcome: 'aborted', cost_micros: PRICE_MICROS });
    // The held call never left the gateway: given back.
    expect(reached.has(heldId)).toBe(false);
    expect(metered.find((e) => e.request_id === heldId)).toMatchObject({ outcome: 'failed', cost_micros: 0 });
    // The budget holds what the metering events say was spent (refunds are asynchronous: waited for).
    const total = metered.reduce((sum, e) => sum + e.cost_micros, 0);
    expect(total).toBeGreaterThanOrEqual(PRICE_MICROS);
    await until(async () => (await spent(payer.id)) === total);
    expect(await spent(payer.id)).toBe(total);
  }, 60_000);

  // Finding: the counterpart of the above must still hold: a call that never left the gateway (the server refused
  // the connection) is given back and metered as failed at no cost.
  it('gives back a call whose server refuses the connection, and meters it failed at no cost', async () => {
    const payer = await newAgent(['mcp:refused/*']);
    await h.op('budget.set', { principalId: payer.id, window: 'daily', limit: '100', currency: 'USD' });
    const requestId = `refused-${run}`;
    const response = await post('refused', mcpHeaders(payer.token, { 'x-request-id': requestId }), { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'search_code', arguments: { query: 'x' } } });
    expect(response.status).toBe(502);
    expect(((await response.json()) as { error: string }).error).toBe('CARACAL_UPSTREAM_UNREACHABLE');
    const [event] = await meteringOf(payer.id, (events) => events.some((e) => e.request_id === requestId));
    expect(event).toMatchObject({ request_id: requestId, resource: 'mcp:refused/search_code', cost_micros: 0, outcome: 'failed' });
    expect(await until(async () => (await spent(payer.id)) === 0)).toBe(true);
  }, 30_000);

  // Finding (LOW): a tool's price was read as pricing.tools[name], inherited members included, so a tool named
  // `constructor` or `toString` was priced at a function of Object.prototype: its call was denied budget_unavailable
  // (or, with no budget, metered at no number). Only the table's own entries price a tool; any other costs perRequest.
  it('prices a tool named constructor or toString at perRequest, and meters it', async () => {
    const payer = await newAgent(['mcp:priced/*']);
    await h.op('budget.set', { principalId: payer.id, window: 'daily', limit: '100', currency: 'USD' });
    const sessionId = await initialize('priced', payer.token);
    // The server has no such tools (it answers an error of its own); the charge is what is under test. search_code
    // shows that the table itself is read.
    const prices: [tool: string, micros: number][] = [
      ['constructor', PRICE_MICROS],
      ['toString', PRICE_MICROS],
      ['search_code', 2 * PRICE_MICROS],
    ];
    const requestIds = new Map<string, string>();
    for (const [n, [tool]] of prices.entries()) {
      const requestId = `priced-${run}-${tool}`;
      requestIds.set(tool, requestId);
      const answer = await answerOf(await post('priced', { ...sessionHeaders(payer.token, sessionId), 'x-request-id': requestId }, { jsonrpc: '2.0', id: n + 1, method: 'tools/call', params: { name: tool, arguments: {} } }));
      expect(answer.status, `${tool}: ${answer.text}`).toBe(200);
      const message = answer.messages.find((m) => m.id === n + 1);
      expect(message, `${tool}: ${answer.text}`).toBeDefined();
      // Not the gateway's refusal (a budget denial carries the gateway's reasons).
      expect(message!.error?.data?.caracal, `${tool}: ${answer.text}`).toBeUndefined();
    }
    expect(code.toolCalls.filter((c) => [...requestIds.values()].includes(c.requestId!)).map((c) => c.name)).toEqual(prices.map(([tool]) => tool));

    const decisions = await decisionsOf(payer.id, (ds) => [...requestIds.values()].every((id) => ds.some((d) => d.request_id === id)));
    const metered = await meteringOf(payer.id, (events) => [...requestIds.values()].every((id) => events.some((e) => e.request_id === id)));
    for (const [tool, micros] of prices) {
      const requestId = requestIds.get(tool)!;
      expect(decisions.filter((d) => d.request_id === requestId), tool).toEqual([expect.objectContaining({ allow: true, resource: `mcp:priced/${tool}` })]);
      expect(metered.filter((e) => e.request_id === requestId), tool).toEqual([expect.objectContaining({ resource: `mcp:priced/${tool}`, cost_micros: micros, outcome: 'completed' })]);
    }
    expect(await spent(payer.id)).toBe(4 * PRICE_MICROS);
  }, 30_000);
});

describe('request ids in flight', () => {
  // Finding: two POSTs of one session with the same request id: the server routes an answer by its id, so the
  // tools/list answer (filtered only on the POST that asked for it) came back unfiltered on the other POST.
  it('refuses an id already in flight in the session, so a listing never comes back unfiltered, and frees it after', async () => {
    const agent = await newAgent(['mcp:code/*']);
    const sessionId = await initialize('code', agent.token);
    const headers = sessionHeaders(agent.token, sessionId);
    const before = code.requests.length;
    const pings = () => code.requests.slice(before).filter((r) => r.messages.some((m) => m.method === 'ping'));
    code.listDelayMs = 1_000;
    try {
      const listing = post('code', headers, { jsonrpc: '2.0', id: 5, method: 'tools/list' }).then(answerOf);
      expect(await until(() => code.requests.slice(before).some((r) => r.messages.some((m) => m.method === 'tools/list' && m.id === 5)))).toBe(true);
      const ping = await answerOf(await post('code', headers, { jsonrpc: '2.0', id: 5, method: 'ping' }));
      expect(ping.status).toBe(200);
      expect(ping.messages).toEqual([expect.objectContaining({ id: 5, error: expect.objectContaining({ code: -32600 }) })]);
      expect(ping.messages[0]!.error!.data!.caracal!.reasons).toEqual(['mcp_id_in_flight']);
      expect(ping.text).not.toContain('delete_repo');
      const listed = await listing;
      expect(listed.status).toBe(200);
      expect(listed.text).not.toContain('delete_repo');
      expect(toolNames(listed.messages.find((m) => m.id === 5)).sort()).toEqual(['read_file', 'search_code']);
      expect(pings()).toEqual([]);
    } finally {
      code.listDelayMs = 0;
    }
    // Once the listing is answered, the id is free again.
    let again: { status: number; messages: RpcMessage[] } = { status: 0, messages: [] };
    await until(async () => {
      again = await answerOf(await post('code', headers, { jsonrpc: '2.0', id: 5, method: 'ping' }));
      return again.messages[0]?.result !== undefined;
    }, 3_000);
    expect(again.messages).toEqual([expect.objectContaining({ id: 5, result: {} })]);
    expect(pings()).toHaveLength(1);
  }, 30_000);

  // Finding (HIGH): an agent that hangs up frees the request ids of its POST at once, while the server still works on
  // them; a later POST of the session reusing an id then gets what the server routes to that id. A tools/list left
  // that way came back unfiltered on a tools/call (an answer the gateway did not filter): delete_repo, which the
  // policy hides, reached the agent. Every listing-shaped answer is now filtered, whatever request it answers.
  for (const mode of ['event stream', 'JSON'] as const) {
    it(`filters a listing that a server sends back on a later POST reusing the id of a hung-up one (${mode})`, async () => {
      const agent = await newAgent(['mcp:code/*']);
      // The fixture's sessions answer as JSON if opened while jsonResponse is set.
      code.jsonResponse = mode === 'JSON';
      let sessionId: string;
      try {
        sessionId = await initialize('code', agent.token);
      } finally {
        code.jsonResponse = false;
      }
      const headers = sessionHeaders(agent.token, sessionId);
      const before = code.requests.length;
      const received = (method: string) => code.requests.slice(before).some((r) => r.messages.some((m) => m.method === method && m.id === 7));
      // B: the same id, a read_file the policy allows that takes 1.5 s on the server, so A's listing (answered after
      // 800 ms) is ready first and the server routes it to B's POST.
      const call = { jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name: 'read_file', arguments: { path: '/public/readme', query: 'slow' } } };
      code.listDelayMs = 800;
      let b: Awaited<ReturnType<typeof answerOf>> = { status: 0, text: '', messages: [] };
      try {
        // A: the listing, and the agent hangs up while the server works on it.
        const a = rawPost('code', headers, JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/list' }));
        expect(await until(() => received('tools/list'))).toBe(true);
        a.resetAndDestroy();
        // Until the gateway has seen the hang-up, id 7 is in flight and B is refused (it then never left): asked again.
        const inFlight = (answer: typeof b) => answer.messages.some((m) => m.error?.data?.caracal?.reasons?.includes('mcp_id_in_flight'));
        await until(async () => {
          b = await answerOf(await post('code', headers, call));
          return !inFlight(b);
        }, 2_000);
      } finally {
        code.listDelayMs = 0;
      }
      expect(received('tools/call')).toBe(true);
      expect(b.status, b.text).toBe(200);
      expect(b.text).not.toContain('delete_repo');
      expect(b.text).not.toContain('write_file');
      // What B carries is A's listing (the case this test is about), filtered to what the caller may use.
      const listing = b.messages.find((m) => m.id === 7 && m.result?.tools !== undefined);
      expect(listing, b.text).toBeDefined();
      expect(toolNames(listing).sort()).toEqual(['read_file', 'search_code']);
    }, 30_000);
  }
});

describe('connections to the server', () => {
  // Finding (MED): requests waited for a connection inside the connection pool, where the gateway could not tell a
  // call that timed out waiting (it never left) from one the server got: the victim of an agent holding every
  // connection was charged for tool calls that never happened. Requests now wait in the gateway (RequestSlots): one
  // that gets no connection in time is refused 504 mcp_upstream_busy, never sent, and given back.
  it('gives back a priced call that timed out waiting for a connection, and never sends it', async () => {
    const noisy = await newAgent(['mcp:narrow/*']);
    const victim = await newAgent(['mcp:narrow/*']);
    await h.op('budget.set', { principalId: victim.id, window: 'daily', limit: '100', currency: 'USD' });
    const noisySession = await initialize('narrow', noisy.token);
    const victimSession = await initialize('narrow', victim.token);
    const call = (id: number, query: string) => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'search_code', arguments: { query } } });
    // The noisy agent holds the one connection: its call runs 2.5 s, its answer streams back until then.
    const noisyId = `noisy-${run}`;
    const slow = post('narrow', { ...sessionHeaders(noisy.token, noisySession), 'x-request-id': noisyId }, call(1, 'slow')).then(answerOf);
    expect(await until(() => narrow.toolCalls.some((c) => c.requestId === noisyId))).toBe(true);

    const victimId = `victim-${run}`;
    const started = Date.now();
    const response = await post('narrow', { ...sessionHeaders(victim.token, victimSession), 'x-request-id': victimId }, call(1, 'victim'));
    const waited = Date.now() - started;
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ error: 'CARACAL_UPSTREAM_TIMEOUT', reasons: ['mcp_upstream_busy'] });
    // Refused after the upstream's timeout, not once the noisy call was over.
    expect(waited).toBeLessThan(NARROW_SLOW_MS - 500);

    const noisyAnswer = await slow;
    expect(noisyAnswer.status).toBe(200);
    expect(noisyAnswer.messages).toEqual([expect.objectContaining({ id: 1, result: expect.any(Object) })]);
    await sleep(100);
    expect(narrow.toolCalls.some((c) => c.requestId === victimId)).toBe(false);
    const [event] = await meteringOf(victim.id, (events) => events.some((e) => e.request_id === victimId));
    expect(event).toMatchObject({ request_id: victimId, resource: 'mcp:narrow/search_code', cost_micros: 0, outcome: 'failed', upstream_status: null });
    expect(await until(async () => (await spent(victim.id)) === 0)).toBe(true);
  }, 30_000);

  // Finding (MED): nothing bounded the connections one principal held while its answers streamed back: an agent with
  // slow calls in flight took every connection to the server. A principal now holds at most a quarter of them (here
  // one of four) and is refused past it at once (429 mcp_connections_per_principal); others still get theirs.
  it('refuses a principal a connection beyond its share, while another principal still gets one', async () => {
    const greedy = await newAgent(['mcp:shared/*']);
    const other = await newAgent(['mcp:shared/*']);
    const greedySession = await initialize('shared', greedy.token);
    const otherSession = await initialize('shared', other.token);
    const call = (id: number, query: string) => ({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'search_code', arguments: { query } } });
    const greedyId = `greedy-${run}`;
    const slow = post('shared', { ...sessionHeaders(greedy.token, greedySession), 'x-request-id': greedyId }, call(1, 'slow')).then(answerOf);
    expect(await until(() => narrow.toolCalls.some((c) => c.requestId === greedyId))).toBe(true);

    const secondId = `greedy-second-${run}`;
    const second = await post('shared', { ...sessionHeaders(greedy.token, greedySession), 'x-request-id': secondId }, call(2, 'second'));
    expect(second.status).toBe(429);
    expect(second.headers.get('retry-after')).toBe('1');
    expect(await second.json()).toMatchObject({ error: 'CARACAL_RATE_LIMITED', reasons: ['mcp_connections_per_principal'] });
    expect(narrow.toolCalls.some((c) => c.requestId === secondId)).toBe(false);
    // The call was allowed by the policy and recorded so; that it never went up is recorded too.
    const refusals = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (all) => all.some((d) => d.request_id === secondId && !d.allow));
    expect(refusals.filter((d) => d.request_id === secondId).map((d) => [d.allow, d.reasons, d.status])).toEqual(
      expect.arrayContaining([
        [true, [], 200],
        [false, ['mcp_connections_per_principal'], 429],
      ]),
    );

    const theirs = await answerOf(await post('shared', sessionHeaders(other.token, otherSession), call(1, 'theirs')));
    expect(theirs.status).toBe(200);
    expect(theirs.messages).toEqual([expect.objectContaining({ id: 1, result: expect.any(Object) })]);

    expect((await slow).status).toBe(200);
    // Its call answered, the principal has its connection back (the slot is freed as the server's answer closes).
    let after = 0;
    await until(async () => {
      const response = await post('shared', sessionHeaders(greedy.token, greedySession), call(3, 'after'));
      after = response.status;
      await response.text();
      return after !== 429;
    }, 2_000);
    expect(after).toBe(200);
  }, 30_000);
});

describe('the GET stream and Last-Event-ID', () => {
  // Finding: a GET with Last-Event-ID makes a resumable server replay past answers of the session's streams (a
  // tools/list answer included) on the GET stream, which the gateway passed through unfiltered.
  it('filters a listing replayed on the GET stream, and forwards no Last-Event-ID on a POST', async () => {
    const agent = await newAgent(['mcp:code/*']);
    const sessionId = await initialize('code', agent.token);
    const headers = sessionHeaders(agent.token, sessionId);
    const listed = await post('code', headers, { jsonrpc: '2.0', id: 7, method: 'tools/list' });
    expect(listed.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const text = await listed.text();
    expect(toolNames(messagesOf(text, 'text/event-stream').find((m) => m.id === 7)).sort()).toEqual(['read_file', 'search_code']);
    // The server's priming event: replaying from it replays the listing.
    const primingId = /^id: ?(.+)$/m.exec(text)?.[1];
    expect(primingId).toBeDefined();

    const abort = new AbortController();
    try {
      const stream = await fetch(`${gatewayUrl}/mcp/code`, { method: 'GET', headers: { ...headers, accept: 'text/event-stream', 'last-event-id': primingId! }, signal: abort.signal });
      expect(stream.status).toBe(200);
      const replay = await readStream(stream, (t) => t.includes('"tools"'), 5_000);
      const replayed = messagesOf(replay, 'text/event-stream').find((m) => m.id === 7);
      expect(replayed, replay).toBeDefined();
      expect(toolNames(replayed).sort()).toEqual(['read_file', 'search_code']);
      expect(replay).not.toContain('delete_repo');
    } finally {
      abort.abort();
    }

    const before = code.requests.length;
    const ping = await answerOf(await post('code', { ...headers, 'last-event-id': primingId! }, { jsonrpc: '2.0', id: 8, method: 'ping' }));
    expect(ping.messages).toEqual([expect.objectContaining({ id: 8, result: {} })]);
    const received = code.requests.slice(before).find((r) => r.messages.some((m) => m.method === 'ping' && m.id === 8));
    expect(received).toBeDefined();
    expect(received!.headers['last-event-id']).toBeUndefined();
  }, 30_000);
});

describe('huge listings', () => {
  // Finding: every listed name is one policy evaluation, so a server listing thousands of entries (64 times over, in
  // a batch) held the gateway's event loop for every agent. Now at most 2,000 names are judged per answer.
  it('judges at most 2,000 names of a 3,000-tool listing and leaves the rest out', async () => {
    const agent = await newAgent(['mcp:big/*']);
    const sessionId = await initialize('big', agent.token);
    const started = Date.now();
    const listed = await answerOf(await post('big', sessionHeaders(agent.token, sessionId), { jsonrpc: '2.0', id: 1, method: 'tools/list' }));
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(listed.status).toBe(200);
    // Every name is allowed (a grant on mcp:big/*): what is missing was left out unjudged, not denied.
    expect(toolNames(listed.messages[0])).toEqual(BIG_TOOLS.slice(0, 2_000));
  }, 30_000);

  it('answers a batch of 64 such listings without stalling another agent', async () => {
    const agent = await newAgent(['mcp:big/*']);
    const other = await newAgent(['mcp:big/*']);
    const sessionId = await initialize('big', agent.token, BATCH_PROTOCOL);
    const otherSession = await initialize('big', other.token);
    const batch = Array.from({ length: 64 }, (_, i) => ({ jsonrpc: '2.0', id: 100 + i, method: 'tools/list' }));
    let done = false;
    const started = Date.now();
    const listing = post('big', sessionHeaders(agent.token, sessionId, BATCH_PROTOCOL), batch)
      .then(answerOf)
      .finally(() => (done = true));
    const latencies: number[] = [];
    for (let n = 0; (n === 0 || !done) && n < 200; n++) {
      const sent = Date.now();
      const ping = await answerOf(await post('big', sessionHeaders(other.token, otherSession), { jsonrpc: '2.0', id: 1000 + n, method: 'ping' }));
      expect(ping.messages[0]?.result).toEqual({});
      latencies.push(Date.now() - sent);
      await sleep(10);
    }
    const answer = await listing;
    expect(Math.max(...latencies)).toBeLessThan(5_000);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(answer.status).toBe(200);
    expect(answer.messages).toHaveLength(64);
    for (const message of answer.messages) expect(toolNames(message)).toHaveLength(2_000);
  }, 60_000);
});

describe('event streams (GET)', () => {
  // Finding: GET streams stay open for as long as their sessions live and were not counted: one agent could hold
  // every connection to the server (no one else got a stream or an answer) and keep the gateway from shutting down.
  it('lets a principal hold at most 4 streams on a server, while others still get theirs and POSTs still work', async () => {
    const agent = await newAgent(['mcp:streams/*']);
    const other = await newAgent(['mcp:streams/*']);
    const sessions: string[] = [];
    for (let i = 0; i < 5; i++) sessions.push(await initialize('streams', agent.token));
    const aborts: AbortController[] = [];
    const openStream = async (token: string, sessionId: string) => {
      const abort = new AbortController();
      aborts.push(abort);
      return fetch(`${gatewayUrl}/mcp/streams`, { method: 'GET', headers: { ...sessionHeaders(token, sessionId), accept: 'text/event-stream' }, signal: abort.signal });
    };
    try {
      const baseline = streams.openStreams;
      for (let i = 0; i < 4; i++) expect((await openStream(agent.token, sessions[i]!)).status).toBe(200);
      const fifth = await openStream(agent.token, sessions[4]!);
      expect(fifth.status).toBe(429);
      expect(((await fifth.json()) as { reasons: string[] }).reasons).toEqual(['mcp_streams_per_principal']);

      const otherStream = await openStream(other.token, await initialize('streams', other.token));
      expect(otherStream.status).toBe(200);
      expect(await until(() => streams.openStreams === baseline + 5)).toBe(true);
      const ping = await answerOf(await post('streams', sessionHeaders(agent.token, sessions[4]!), { jsonrpc: '2.0', id: 1, method: 'ping' }));
      expect(ping.messages).toEqual([expect.objectContaining({ id: 1, result: {} })]);

      // A stream the agent closes gives its slot back.
      aborts[0]!.abort();
      let reopened = 0;
      await until(async () => {
        const response = await openStream(agent.token, sessions[4]!);
        reopened = response.status;
        if (response.status !== 200) await response.body?.cancel();
        return response.status === 200;
      }, 5_000);
      expect(reopened).toBe(200);
    } finally {
      for (const abort of aborts) abort.abort();
    }
  }, 30_000);

  it('shuts the gateway down within seconds while streams are open', async () => {
    const upstream = await startScriptedUpstream();
    const gw = await createHarness({ configOverrides: { policy: { bundlePath } }, extraUpstreams: [{ name: 'streams', url: upstream.url, dialect: 'mcp' }] });
    const aborts: AbortController[] = [];
    try {
      await gw.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
      const url = `http://127.0.0.1:${(gw.assembled.gateway.app.server.address() as AddressInfo).port}/mcp/streams`;
      const id = await gw.registerAgent();
      await gw.op('policy.create', { principalId: id, resources: ['mcp:streams/*'], actions: ['call'], maxValiditySeconds: 3600 });
      await gw.op('allowlist.create', { principalId: id, pattern: `${upstream.origin}/**`, patternType: 'glob' });
      const token = await gw.token(id);
      for (let i = 0; i < 2; i++) {
        const opened = await fetch(url, { method: 'POST', headers: mcpHeaders(token), body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: PROTOCOL, capabilities: {}, clientInfo: { name: 't', version: '1' } } }) });
        await opened.text();
        const abort = new AbortController();
        aborts.push(abort);
        const stream = await fetch(url, { method: 'GET', headers: { ...sessionHeaders(token, opened.headers.get('mcp-session-id')!), accept: 'text/event-stream' }, signal: abort.signal });
        expect(stream.status).toBe(200);
        void readStream(stream, () => false, 30_000);
      }
      expect(await until(() => upstream.openStreams === 2)).toBe(true);
      const started = Date.now();
      const closed = await Promise.race([gw.close().then(() => 'closed'), sleep(10_000).then(() => 'still closing')]);
      expect(closed).toBe('closed');
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(await until(() => upstream.openStreams === 0)).toBe(true);
    } finally {
      for (const abort of aborts) abort.abort();
      await gw.close();
      await upstream.close();
    }
  }, 60_000);
});

describe('completion/complete', () => {
  // Finding: completion/complete was session plumbing, so any agent with some grant on the server could read what a
  // prompt argument or a resource template would accept (values only a caller allowed to use them should see).
  it('is decided as using the prompt or resource its ref names', async () => {
    const caller = await newAgent(['mcp:code/*'], ['call']);
    const sessionId = await initialize('code', caller.token);
    const before = code.requests.length;
    const refs = [
      { ref: { type: 'ref/prompt', name: 'hr_review' }, argument: { name: 'employee', value: '' } },
      { ref: { type: 'ref/resource', uri: 'file:///{+path}' }, argument: { name: 'path', value: 'priv' } },
    ];
    for (const [n, params] of refs.entries()) {
      const answer = await answerOf(await post('code', sessionHeaders(caller.token, sessionId), { jsonrpc: '2.0', id: 20 + n, method: 'completion/complete', params }));
      expect(answer.status).toBe(200);
      expect(answer.messages).toEqual([expect.objectContaining({ id: 20 + n, error: expect.objectContaining({ code: -32003 }) })]);
      expect(answer.text).not.toMatch(/alice|private\/keys/);
    }
    expect(code.requests.slice(before).filter((r) => r.messages.some((m) => m.method === 'completion/complete'))).toEqual([]);

    // A caller allowed to use the prompt and read the resource gets the completions (the refusal above is the policy's).
    const reader = await newAgent(['mcp:code/**'], ['get', 'read']);
    const readerSession = await initialize('code', reader.token);
    const allowed = await answerOf(await post('code', sessionHeaders(reader.token, readerSession), { jsonrpc: '2.0', id: 30, method: 'completion/complete', params: refs[0] }));
    expect(allowed.messages[0]?.result).toMatchObject({ completion: { values: expect.arrayContaining([expect.stringContaining('alice')]) } });
  }, 30_000);
});

describe('decision events for refused traffic', () => {
  // Finding: requests refused before any message was decided (someone else's session, a malformed session id, a
  // body that is not JSON, a malformed message) left no decision event: the audit trail missed probing.
  it('records a deny for a foreign session, an invalid session id, a parse error and a malformed message', async () => {
    const owner = await newAgent(['mcp:code/*']);
    const prober = await newAgent(['mcp:code/*']);
    const ownerSession = await initialize('code', owner.token);
    const ids = { unknown: `unknown-${run}`, invalid: `invalid-${run}`, parse: `parse-${run}`, malformed: `malformed-${run}` };
    const ping = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' });

    const foreign = await post('code', sessionHeaders(prober.token, ownerSession, PROTOCOL, { 'x-request-id': ids.unknown }), ping);
    expect(foreign.status).toBe(404);
    expect(((await foreign.json()) as RpcMessage).error?.message).toBe('Session not found');
    const invalid = await post('code', sessionHeaders(prober.token, 'x'.repeat(300), PROTOCOL, { 'x-request-id': ids.invalid }), ping);
    expect(invalid.status).toBe(400);
    await invalid.text();
    const parse = await post('code', mcpHeaders(prober.token, { 'x-request-id': ids.parse }), '{"jsonrpc":"2.0","id":1,"method":');
    expect(parse.status).toBe(400);
    await parse.text();
    const malformed = await answerOf(await post('code', mcpHeaders(prober.token, { 'x-request-id': ids.malformed }), { jsonrpc: '1.0', id: 9, method: 'ping' }));
    expect(malformed.messages).toEqual([expect.objectContaining({ id: 9, error: expect.objectContaining({ code: -32600 }) })]);

    const expected: [string, string, number][] = [
      [ids.unknown, 'mcp_session_unknown', 404],
      [ids.invalid, 'mcp_session_invalid', 400],
      [ids.parse, 'mcp_parse_error', 400],
      [ids.malformed, 'mcp_invalid_message', 400],
    ];
    const decisions = await decisionsOf(prober.id, (ds) => expected.every(([id]) => ds.some((d) => d.request_id === id)));
    for (const [requestId, reason, status] of expected) {
      const found = decisions.filter((d) => d.request_id === requestId);
      expect(found, requestId).toHaveLength(1);
      expect(found[0]).toMatchObject({ allow: false, reasons: [reason], principal_id: prober.id, resource: 'mcp:code', status });
    }
  }, 30_000);

  // Finding (LOW): a GET stream refused past the principal's share (429) was recorded as the allow the policy had
  // given, and a chunked POST body (no content-length) refused for its size (413) left no decision event at all.
  it('records a 5th stream refused 429, and a chunked body over 4 MiB refused 413, as denies', async () => {
    const agent = await newAgent(['mcp:streams/*']);
    const sessionId = await initialize('streams', agent.token);
    const ids = { fifth: `fifth-stream-${run}`, chunked: `chunked-${run}` };
    const aborts: AbortController[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const abort = new AbortController();
        aborts.push(abort);
        const requestId = i === 4 ? ids.fifth : `stream-${run}-${i}`;
        const response = await fetch(`${gatewayUrl}/mcp/streams`, { method: 'GET', headers: { ...sessionHeaders(agent.token, sessionId), accept: 'text/event-stream', 'x-request-id': requestId }, signal: abort.signal });
        expect(response.status, requestId).toBe(i < 4 ? 200 : 429);
        if (i === 4) expect(((await response.json()) as { reasons: string[] }).reasons).toEqual(['mcp_streams_per_principal']);
      }
    } finally {
      for (const abort of aborts) abort.abort();
    }
    const before = streams.requests.length;
    // The gateway stops reading at 4 MiB: the agent sees the 413, or its connection cut while still sending.
    expect([413, 'reset']).toContain(await chunkedPost('streams', { ...sessionHeaders(agent.token, sessionId), 'x-request-id': ids.chunked }, 5 << 20));
    expect(streams.requests.slice(before).filter((r) => r.method === 'POST')).toEqual([]);

    const decisions = await decisionsOf(agent.id, (ds) => Object.values(ids).every((id) => ds.some((d) => d.request_id === id)));
    expect(decisions.filter((d) => d.request_id === ids.fifth)).toEqual([expect.objectContaining({ allow: false, reasons: ['mcp_streams_per_principal'], status: 429, resource: 'mcp:streams' })]);
    expect(decisions.filter((d) => d.request_id === ids.chunked)).toEqual([expect.objectContaining({ allow: false, reasons: ['body_too_large'], status: 413, resource: 'mcp:streams' })]);
  }, 30_000);
});

describe('upstream error paths', () => {
  // Finding: an answer the gateway cannot read, while it has answers of its own to add (a denied request of the same
  // POST) or a listing to filter, was either passed on as it came (dropping the denial, or the filtering) or ended
  // in a 500. It is now refused as the server's fault: 502 mcp_upstream_answer_invalid.
  const mixed = [
    { jsonrpc: '2.0', id: 1, method: 'ping' },
    { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'search_code', arguments: { query: 'x' } } },
  ];

  it('answers 502 (never 500, never the server’s text) when the server sends text/plain or invalid JSON', async () => {
    const agent = await newAgent(['mcp:hostile/read_file']);
    const headers = mcpHeaders(agent.token, { 'mcp-protocol-version': BATCH_PROTOCOL });
    try {
      // Not JSON at all (the route's refusal) and JSON it cannot read (the rewriter's) are the same reason.
      const reasons = { 'text-plain': 'mcp_upstream_answer_invalid', 'invalid-json': 'mcp_upstream_answer_invalid' };
      for (const mode of ['text-plain', 'invalid-json'] as const) {
        hostile.mode = mode;
        const before = hostile.requests.length;
        const response = await post('hostile', headers, mixed);
        const body = await response.text();
        expect(response.status, `${mode}: ${body}`).toBe(502);
        expect(JSON.parse(body) as object).toMatchObject({ error: 'CARACAL_UPSTREAM_UNREACHABLE', reasons: [reasons[mode]] });
        // The allowed ping went up alone; the denied call never did.
        expect(hostile.requests.slice(before).map((r) => r.messages.map((m) => m.method))).toEqual([['ping']]);
      }
    } finally {
      hostile.mode = 'json';
    }
  }, 30_000);

  // Finding: the agent's accept-encoding went upstream, and a gzip-encoded event stream passed the filter unread (the
  // listing reached the agent unfiltered). The gateway now asks for identity and refuses an encoded answer it must read.
  it('asks the server for identity encoding and refuses a gzip answer it must filter', async () => {
    const agent = await newAgent(['mcp:hostile/read_file']);
    try {
      for (const mode of ['gzip', 'gzip-sse'] as const) {
        hostile.mode = mode;
        const before = hostile.requests.length;
        const response = await post('hostile', mcpHeaders(agent.token, { 'accept-encoding': 'gzip' }), { jsonrpc: '2.0', id: 3, method: 'tools/list' });
        const body = await response.text().catch(() => '');
        expect(response.status, `${mode}: ${body}`).toBe(502);
        expect(body).not.toContain('search_code');
        const received = hostile.requests.slice(before);
        expect(received).toHaveLength(1);
        expect(received[0]!.headers['accept-encoding']).toBe('identity');
      }
    } finally {
      hostile.mode = 'json';
    }
  }, 30_000);

  // Finding (LOW): the scan for repeated member names stopped at the first one, so the nesting behind it went
  // unmeasured: an answer repeating a name and then nesting 200,000 arrays deep reached code that recursed through
  // it, and the agent got a 500. The scan now measures the depth whatever it found before: 502, the server's fault.
  // The same at 1,000 levels (which re-serialising survives): refused for its depth, not passed on.
  it('answers 502 (never 500) to a repeated member name followed by 200,000 (or 1,000) nested arrays', async () => {
    const agent = await newAgent(['mcp:hostile/*']);
    hostile.mode = 'deep';
    try {
      for (const depth of [200_000, 1_000]) {
        hostile.deepNesting = depth;
        for (const message of [
          { jsonrpc: '2.0', id: 4, method: 'tools/list' },
          { jsonrpc: '2.0', id: 5, method: 'tools/call', params: { name: 'read_file', arguments: {} } },
        ]) {
          const response = await post('hostile', mcpHeaders(agent.token), message);
          const body = await response.text();
          expect(response.status, `${depth} deep, ${message.method}: ${body.slice(0, 300)}`).toBe(502);
          expect(JSON.parse(body) as object).toMatchObject({ error: 'CARACAL_UPSTREAM_UNREACHABLE', reasons: ['mcp_upstream_answer_invalid'] });
        }
      }
    } finally {
      hostile.mode = 'json';
      hostile.deepNesting = DEEP_NESTING;
    }
  }, 30_000);
});

describe('protocol edges', () => {
  // Finding: HEAD was routed to the GET handler, decided as session plumbing and forwarded upstream.
  it('does not route HEAD', async () => {
    const agent = await newAgent(['mcp:code/*']);
    const before = code.requests.length;
    const response = await fetch(`${gatewayUrl}/mcp/code`, { method: 'HEAD', headers: mcpHeaders(agent.token) });
    expect([404, 405]).toContain(response.status);
    expect(code.requests.length).toBe(before);
  });

  // Finding: a POST with `Expect: 100-continue` was never told to continue: the agent waited (holding its slot) for
  // a 100 that never came. It now comes once the caller is authenticated, and not before.
  it('answers Expect: 100-continue after authentication, and only then', async () => {
    const agent = await newAgent(['mcp:hostile/*']);
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' });
    const head = (token: string) =>
      `POST /mcp/hostile HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\nauthorization: Bearer ${token}\r\ncontent-type: application/json\r\n` +
      `accept: application/json, text/event-stream\r\ncontent-length: ${Buffer.byteLength(body)}\r\nexpect: 100-continue\r\n\r\n`;
    const sendBodyOnContinue = (socket: net.Socket, soFar: string) => {
      if (soFar.startsWith('HTTP/1.1 100')) socket.write(body);
    };
    const allowed = await rawRequest(gatewayPort, head(agent.token), { timeoutMs: 5_000, then: sendBodyOnContinue });
    expect(allowed.statuses).toEqual([100, 200]);
    expect(allowed.body).toContain('"result":{}');

    const refused = await rawRequest(gatewayPort, head('not-a-token'), { timeoutMs: 5_000, then: sendBodyOnContinue });
    expect(refused.statuses).toEqual([401]);
  }, 30_000);

  // Finding: a POST whose only message was a denied notification was answered 202 Accepted, as if it had gone up.
  it('answers 403, not 202, to a lone denied notification', async () => {
    const stranger = await newAgent(['mcp:hostile/*']);
    const member = await newAgent(['mcp:code/*']);
    const memberSession = await initialize('code', member.token);
    const before = code.requests.length;
    const noGrant = await post('code', mcpHeaders(stranger.token), { jsonrpc: '2.0', method: 'notifications/foo' });
    expect(noGrant.status).toBe(403);
    await noGrant.text();
    const deniedKind = await post('code', sessionHeaders(member.token, memberSession), { jsonrpc: '2.0', method: 'tools/call', params: { name: 'read_file', arguments: { path: '/public/a' } } });
    expect(deniedKind.status).toBe(403);
    expect(((await deniedKind.json()) as { reasons: string[] }).reasons).toEqual(['mcp_method_unknown']);
    expect(code.requests.length).toBe(before);
  }, 30_000);
});

describe('sessions', () => {
  // Finding: sessions were forgotten least recently used first across all principals, so one agent opening sessions
  // in a loop pushed out every other agent's. Now a principal past its 64 forgets its own oldest only.
  it('keeps a principal’s 64 most recent sessions and no one else’s session is forgotten for it', async () => {
    const victim = await newAgent(['mcp:streams/*']);
    const opener = await newAgent(['mcp:streams/*']);
    const victimSession = await initialize('streams', victim.token);
    const opened: string[] = [];
    for (let i = 0; i < 70; i++) opened.push(await initialize('streams', opener.token));
    const ping = async (token: string, sessionId: string) => {
      const response = await post('streams', sessionHeaders(token, sessionId), { jsonrpc: '2.0', id: 1, method: 'ping' });
      return { status: response.status, body: (await response.json()) as RpcMessage };
    };
    // The six oldest are forgotten (asked first: a refused session id is not touched).
    for (const sessionId of opened.slice(0, 6)) {
      const answer = await ping(opener.token, sessionId);
      expect(answer.status).toBe(404);
      expect(answer.body.error?.message).toBe('Session not found');
    }
    for (const sessionId of [opened[6]!, opened[69]!]) expect((await ping(opener.token, sessionId)).status).toBe(200);
    expect(await ping(victim.token, victimSession)).toMatchObject({ status: 200, body: { result: {} } });
  }, 60_000);
});

describe('bundle revision', () => {
  // With hot swap, one request's messages are decided by one engine: its revision is in the response and the events.
  it('names the revision that decided the messages in the response header and in every decision event', async () => {
    const agent = await newAgent(['mcp:code/*']);
    const sessionId = await initialize('code', agent.token);
    const requestId = `revision-${Date.now()}`;
    const response = await post('code', sessionHeaders(agent.token, sessionId, PROTOCOL, { 'x-request-id': requestId }), { jsonrpc: '2.0', id: 1, method: 'tools/list' });
    await response.text();
    const revision = response.headers.get('x-caracal-bundle-revision');
    expect(revision).toBe((await h.assembled.gateway.app.inject({ url: '/ready' })).json().bundle_revision);
    expect(revision).toMatch(/.+/);
    const decisions = await decisionsOf(agent.id, (all) => all.some((d) => d.request_id === requestId));
    const mine = decisions.filter((d) => d.request_id === requestId);
    expect(mine.length).toBeGreaterThan(0);
    for (const d of mine) expect(d.bundle_revision).toBe(revision);
  }, 30_000);
});

/**
 * policy.recordInput and the shadow bundle, through the whole gateway (embedded backend, real WASM): every decision
 * event of the policy carries the input it was decided on (redacted per config), at the time of the injected clock,
 * and a shadow bundle's verdict on the same input, which never changes an answer.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEvent, type CloudEvent, type DecisionData } from '../../src/events/cloudevents.js';
import type { PolicyEvaluator } from '../../src/gateway/app.js';
import { canonicalJson } from '../../src/ledger/canonical.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import { readBundleFiles, writeBundleTarball } from '../../src/policy/bundle.js';
import { PolicyEngine, type DecisionInput } from '../../src/policy/engine.js';
import { ledgerEntryOf, MAX_LEAF_BYTES } from '../../src/ledger/store.js';
import { MAX_RECORDED_INPUT_BYTES, REDACTED } from '../../src/policy/input-redaction.js';
import { createHarness, readTopic, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';

const DAY = Date.parse('2026-06-01T00:00:00.000Z');
const HOUR = 3_600_000;

/** A stand-in MCP server: answers every JSON-RPC request with an empty result (notifications: 202). */
async function startJsonRpcServer(): Promise<{ url: string; origin: string; bodies: string[]; close: () => Promise<void> }> {
  const bodies: string[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      bodies.push(body);
      if (req.method !== 'POST') {
        res.writeHead(405).end();
        return;
      }
      const parsed = JSON.parse(body) as unknown;
      const messages = (Array.isArray(parsed) ? parsed : [parsed]) as { id?: unknown }[];
      const answers = messages.filter((m) => m.id !== undefined).map((m) => ({ jsonrpc: '2.0', id: m.id, result: { content: [] } }));
      if (answers.length === 0) {
        res.writeHead(202).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(Array.isArray(parsed) ? answers : answers[0]));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url: `${origin}/mcp`, origin, bodies, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

type Recorded = CloudEvent<DecisionData>;

/** The decision events with these ids, read back from the decisions topic as a consumer sees them (envelope included). */
async function eventsOf(h: Harness, ids: readonly string[]): Promise<Map<string, Recorded>> {
  const wanted = new Set(ids);
  const found = new Map<string, Recorded>();
  const take = (values: string[]) => {
    for (const value of values) {
      const event = parseEvent(value) as Recorded;
      if (wanted.has(event.data.decision_id)) found.set(event.data.decision_id, event);
    }
  };
  const messages = await readTopic(await h.ctx.events(), h.ctx.topics.decisions, (all) => {
    found.clear();
    take(all.map((m) => m.value));
    return found.size >= wanted.size;
  }, 30_000);
  found.clear();
  take(messages.map((m) => m.value));
  expect([...wanted].filter((id) => !found.has(id))).toEqual([]);
  return found;
}

/** What a consumer (the ledger) does with an event: its RFC 8785 form must exist, and be the same JSON. */
function expectCanonical(event: Recorded): void {
  const text = canonicalJson(JSON.parse(JSON.stringify(event)));
  expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(event)));
}

const decisionIds = (reply: { headers: Record<string, unknown> }) => String(reply.headers['x-caracal-decision-id']).split(', ');

/** A JSON-RPC tools/call body (raw text, so members such as __proto__ stay members). */
const toolCall = (id: number, name: string, argumentsJson: string) => `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"${name}","arguments":${argumentsJson}}}`;

/** The default bundle with one more deny reason for every request: a shadow that disagrees with every allow. */
async function denyingEngine(revision: string): Promise<PolicyEngine> {
  const files = await readBundleFiles(await readFile(DEFAULT_BUNDLE));
  const manifest = JSON.parse(files.get('.manifest')!.toString('utf8')) as Record<string, unknown>;
  files.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, revision })));
  files.set('data.json', Buffer.from(JSON.stringify({ caracal: { authz: { extra_deny_reasons: ['shadow_says_no'] } } })));
  return PolicyEngine.fromBundleBytes(writeBundleTarball(files), `shadow ${revision}`);
}

describe('decision events carry their policy input, and a shadow bundle decides beside the enforced one', () => {
  let mcp: Awaited<ReturnType<typeof startJsonRpcServer>>;
  let h: Harness;
  let nowMs = DAY + 9 * HOUR;
  let agent: string;
  let token: string;
  /** Every input the enforced engine evaluated, as JSON (a wrapper around the real engine). */
  const evaluated: DecisionInput[] = [];
  let real: PolicyEvaluator;

  const mcpUpstreams = (url: string): ExtraUpstream[] => [
    { name: 'tools', url, dialect: 'mcp' },
    { name: 'tools-recorded', url, dialect: 'mcp', recordArguments: true },
    // Priced at 1 USD a call: a budget of 0.50 refuses it after the policy allowed it.
    { name: 'paid', url: new URL(url).origin, pricing: { currency: 'USD', perRequest: '1.00' } as unknown as NonNullable<ExtraUpstream['pricing']> },
  ];
  const limits = { unauthenticatedPerSource: { ratePerSecond: 100_000, burst: 100_000 }, perPrincipal: { maxConcurrent: 64, rate: { ratePerSecond: 100_000, burst: 100_000 } } };

  async function agentWithGrants(on: Harness): Promise<{ id: string; token: string }> {
    const id = await on.registerAgent();
    await on.grant(id, ['api:external/echo', 'api:external/paid', 'mcp:tools/*', 'mcp:tools-recorded/*'], ['read', 'call']);
    await on.op('allowlist.create', { principalId: id, pattern: `${mcp.origin}/**`, patternType: 'glob' });
    return { id, token: await on.token(id, 3_600) };
  }

  const get = (on: Harness, bearer: string, url: string) => on.assembled.gateway.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${bearer}` } });
  const post = (on: Harness, bearer: string, server: string, body: string) =>
    on.assembled.gateway.app.inject({ method: 'POST', url: `/mcp/${server}`, headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, payload: body });

  beforeAll(async () => {
    mcp = await startJsonRpcServer();
    h = await createHarness({ clock: () => nowMs, extraUpstreams: mcpUpstreams(mcp.url), configOverrides: { gateway: { limits } } });
    ({ id: agent, token } = await agentWithGrants(h));
    real = h.assembled.engine.current;
    h.assembled.engine.current = {
      revision: real.revision,
      evaluate: (input) => {
        evaluated.push(JSON.parse(JSON.stringify(input)) as DecisionInput);
        return real.evaluate(input);
      },
    };
  }, 120_000);

  afterAll(async () => {
    await h?.close();
    await mcp?.close();
  });

  it('/proxy: the event carries the very input that was evaluated, its now and its time from the injected clock, and no credential', async () => {
    const times = [DAY + 9 * HOUR + 1_234, DAY + 13 * HOUR + 59 * 60_000, DAY + 23 * HOUR + 59 * 60_000 + 999];
    const ids: string[] = [];
    const inputs: DecisionInput[] = [];
    for (const at of times) {
      nowMs = at;
      evaluated.length = 0;
      const reply = await get(h, token, '/proxy/echo/reports/daily?format=csv');
      expect(reply.statusCode).toBe(200);
      ids.push(...decisionIds(reply));
      expect(evaluated).toHaveLength(1);
      inputs.push(evaluated[0]!);
    }
    const events = await eventsOf(h, ids);
    ids.forEach((id, n) => {
      const event = events.get(id)!;
      expect(event.time).toBe(new Date(times[n]!).toISOString());
      expect(event.data.input).toEqual(inputs[n]);
      expect(event.data.input_redactions).toBeUndefined();
      expect(event.data.shadow).toBeUndefined();
      expect(event.data.input).toMatchObject({
        principal: { id: agent, status: 'active' },
        policies: [{ resources: ['api:external/echo', 'api:external/paid', 'mcp:tools/*', 'mcp:tools-recorded/*'], actions: ['read', 'call'] }],
        request: { upstream: 'echo', method: 'GET', path: '/reports/daily?format=csv', resource: 'api:external/echo', action: 'read' },
        allowlist: { checked: true, matched: true },
        auth: { method: 'caracal-token' },
        limits: { max_concurrent: 64 },
        now: Math.floor(times[n]! / 1000),
      });
      expectCanonical(event);
      expect(JSON.stringify(event)).not.toContain(token);
    });
  });

  it('/proxy: a denial carries its input; a request refused before any input (a bad token) carries none', async () => {
    nowMs = DAY + 10 * HOUR;
    const denied = await h.assembled.gateway.app.inject({ method: 'DELETE', url: '/proxy/echo/reports/daily', headers: { authorization: `Bearer ${token}` } });
    expect(denied.statusCode).toBe(403);
    const refused = await get(h, 'not-a-token', '/proxy/echo/reports/daily');
    expect(refused.statusCode).toBe(401);
    const events = await eventsOf(h, [...decisionIds(denied), ...decisionIds(refused)]);
    const deniedEvent = events.get(decisionIds(denied)[0]!)!;
    expect(deniedEvent.data).toMatchObject({ allow: false, input: { request: { method: 'DELETE', action: 'delete' }, now: Math.floor(nowMs / 1000) } });
    const refusedEvent = events.get(decisionIds(refused)[0]!)!;
    expect(refusedEvent.data.allow).toBe(false);
    expect(refusedEvent.data.input).toBeUndefined();
    expect(refusedEvent.time).toBe(new Date(nowMs).toISOString());
  });

  it('MCP: tools/call arguments are redacted leaf by leaf (structure kept) and named in input_redactions; the engine saw them whole', async () => {
    nowMs = DAY + 11 * HOUR;
    evaluated.length = 0;
    const reply = await post(h, token, 'tools', toolCall(1, 'deploy', '{"target":"prod-db","password":"hunter2","retries":3,"force":true,"tags":["a","b"],"extra":null}'));
    expect(reply.statusCode).toBe(200);
    const [id] = decisionIds(reply);
    const event = (await eventsOf(h, [id!])).get(id!)!;
    expect(event.time).toBe(new Date(nowMs).toISOString());
    expect(event.data.input_redactions).toEqual(['request.arguments']);
    const request = (event.data.input as { request: Record<string, unknown> }).request;
    expect(request).toMatchObject({ upstream: 'tools', resource: 'mcp:tools/deploy', action: 'call', tool: 'deploy', mcp_method: 'tools/call' });
    expect(request.arguments).toEqual({ target: REDACTED, password: REDACTED, retries: REDACTED, force: REDACTED, tags: [REDACTED, REDACTED], extra: null });
    expect(JSON.stringify(event)).not.toContain('hunter2');
    expect(JSON.stringify(event)).not.toContain(token);
    // What the policy decided on had the values; apart from them the recorded input is what it saw.
    const seen = evaluated.find((input) => (input.request as { tool?: string }).tool === 'deploy')!;
    expect(seen.request.arguments).toEqual({ target: 'prod-db', password: 'hunter2', retries: 3, force: true, tags: ['a', 'b'], extra: null });
    expect({ ...event.data.input, request: { ...request, arguments: null } }).toEqual({ ...seen, request: { ...seen.request, arguments: null } });
    expect((event.data.input as { now: number }).now).toBe(Math.floor(nowMs / 1000));
    expectCanonical(event);
  });

  it('MCP: an upstream with recordArguments keeps them in the input (up to the size it records them at)', async () => {
    nowMs = DAY + 12 * HOUR;
    const small = await post(h, token, 'tools-recorded', toolCall(2, 'deploy', '{"target":"staging","n":1}'));
    expect(small.statusCode).toBe(200);
    const large = await post(h, token, 'tools-recorded', toolCall(3, 'deploy', JSON.stringify({ blob: 'x'.repeat(20_000) })));
    expect(large.statusCode).toBe(200);
    const events = await eventsOf(h, [...decisionIds(small), ...decisionIds(large)]);
    const kept = events.get(decisionIds(small)[0]!)!;
    expect((kept.data.input as { request: { arguments: unknown } }).request.arguments).toEqual({ target: 'staging', n: 1 });
    expect(kept.data.input_redactions).toBeUndefined();
    expect(kept.data.mcp?.arguments).toEqual({ target: 'staging', n: 1 });
    // Too large for mcp.arguments: too large for the input too.
    const dropped = events.get(decisionIds(large)[0]!)!;
    expect(dropped.data.mcp?.arguments).toBeUndefined();
    expect(dropped.data.input_redactions).toEqual(['request.arguments']);
    expect((dropped.data.input as { request: { arguments: unknown } }).request.arguments).toEqual({ blob: REDACTED });
  });

  it('hostile arguments (__proto__, constructor, 10 000-element arrays, a batch of them): answered, recorded, canonical, nothing polluted', async () => {
    nowMs = DAY + 14 * HOUR;
    const hostile = `{"__proto__":{"isAdmin":true,"polluted":"yes"},"constructor":{"prototype":{"polluted":"yes"}},"toString":"x","list":[${new Array(10_000).fill('0').join(',')}],"names":[${new Array(2_000).fill('"n"').join(',')}]}`;
    const one = await post(h, token, 'tools', toolCall(4, 'deploy', hostile));
    const recorded = await post(h, token, 'tools-recorded', toolCall(5, 'deploy', hostile));
    const batch = await post(h, token, 'tools', `[${Array.from({ length: 8 }, (_, i) => toolCall(10 + i, 'deploy', hostile)).join(',')}]`);
    for (const reply of [one, recorded, batch]) expect(reply.statusCode).toBe(200);
    const ids = [...decisionIds(one), ...decisionIds(recorded), ...decisionIds(batch)];
    expect(ids).toHaveLength(10);
    const events = await eventsOf(h, ids);
    for (const id of ids) {
      const event = events.get(id)!;
      expect(event.data.allow).toBe(true);
      expect(event.data.input_redactions).toEqual(['request.arguments']);
      // 2,000 names redacted are 26 KB of "[redacted]": over MAX_RECORDED_INPUT_BYTES, the arguments collapse whole.
      expect((event.data.input as { request: { arguments: unknown } }).request.arguments).toBe(REDACTED);
      expect(JSON.stringify(event).length).toBeLessThan(64 * 1024);
      expectCanonical(event);
    }
    // The same members within the budget: kept as data, redacted like any other (10 000 zeros are one "[redacted]").
    const fits = await post(h, token, 'tools', toolCall(30, 'deploy', hostile.replace(/,"names":\[[^\]]*\]/, '')));
    expect(fits.statusCode).toBe(200);
    const fitted = (await eventsOf(h, decisionIds(fits))).get(decisionIds(fits)[0]!)!;
    const args = (fitted.data.input as { request: { arguments: Record<string, unknown> } }).request.arguments;
    expect(Object.keys(args)).toEqual(['__proto__', 'constructor', 'toString', 'list']);
    expect(Object.getOwnPropertyDescriptor(args, '__proto__')?.value).toEqual({ isAdmin: REDACTED, polluted: REDACTED });
    expect(args.list).toBe(REDACTED);
    expectCanonical(fitted);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();
  });

  it('inputs an agent makes large (4,000 arguments, one 70 KB key, a 15 KB or 40 KB /proxy path): the answers the policy gave, and every event passes the ledger\'s own leaf check', async () => {
    nowMs = DAY + 15 * HOUR;
    evaluated.length = 0;
    const many = await post(h, token, 'tools', toolCall(40, 'deploy', JSON.stringify(Object.fromEntries(Array.from({ length: 4_000 }, (_, i) => [`arg${i}`, 0])))));
    const wideKey = await post(h, token, 'tools', toolCall(41, 'deploy', JSON.stringify({ ['k'.repeat(70_000)]: 1 })));
    const path15 = `/proxy/echo/${'p'.repeat(15_000)}`;
    const path40 = `/proxy/echo/${'q'.repeat(40_000)}`;
    const proxied = await get(h, token, path15);
    const proxied40 = await get(h, token, path40);
    const deniedProxy = await h.assembled.gateway.app.inject({ method: 'DELETE', url: path15, headers: { authorization: `Bearer ${token}` } });
    for (const reply of [many, wideKey]) expect(reply.statusCode, reply.body.slice(0, 300)).toBe(200);
    // The default bundle's allowlist does not match these long paths (a policy answer, made before anything is recorded).
    for (const reply of [proxied, proxied40, deniedProxy]) expect(reply.statusCode).toBe(403);
    // The engine decided on the whole arguments and paths.
    expect(evaluated.some((input) => Object.keys((input.request.arguments ?? {}) as object).length === 4_000)).toBe(true);
    expect(evaluated.some((input) => input.request.path.length > 15_000)).toBe(true);

    const byReply = [many, wideKey, proxied, proxied40, deniedProxy].map((reply) => decisionIds(reply)[0]!);
    const events = await eventsOf(h, byReply);
    const [eMany, eKey, eProxy, eProxy40, eDeniedProxy] = byReply.map((id) => events.get(id)!);
    // The events record the very answers given.
    expect([eMany, eKey, eProxy, eProxy40, eDeniedProxy].map((e) => e!.data.allow)).toEqual([true, true, false, false, false]);
    for (const [event, reply] of [[eProxy, proxied], [eProxy40, proxied40], [eDeniedProxy, deniedProxy]] as const) expect(event!.data.reasons).toEqual((JSON.parse(reply.body) as { reasons: string[] }).reasons);
    for (const event of [eMany, eKey]) {
      expect((event!.data.input as { request: { arguments: unknown } }).request.arguments).toBe(REDACTED);
      expect(event!.data.input_redactions).toEqual(['request.arguments']);
    }
    for (const event of [eProxy, eProxy40, eDeniedProxy]) {
      expect((event!.data.input as { request: Record<string, unknown> }).request).toMatchObject({ path: REDACTED, url: REDACTED, upstream: 'echo' });
      expect(event!.data.input_redactions).toEqual(['request.path', 'request.url']);
    }
    for (const event of [eMany, eKey, eProxy, eProxy40, eDeniedProxy]) {
      // The ledger's own leaf builder: throws for an event over MAX_LEAF_BYTES (it would be dead-lettered).
      const leaf = ledgerEntryOf(JSON.parse(JSON.stringify(event)));
      expect(leaf.canonical.length).toBeLessThanOrEqual(MAX_LEAF_BYTES);
      expect(Buffer.byteLength(JSON.stringify(event!.data.input))).toBeLessThanOrEqual(MAX_RECORDED_INPUT_BYTES);
      expectCanonical(event!);
    }
  }, 60_000);

  describe('a shadow bundle', () => {
    let shadow: PolicyEngine;
    const counted = async (agreement: 'agree' | 'disagree') => (await h.assembled.metrics.shadowDecisions.get()).values.filter((v) => v.labels.agreement === agreement).reduce((sum, v) => sum + v.value, 0);
    const setShadow = (engine: PolicyEvaluator | null) => {
      (h.assembled.engine as { shadow?: PolicyEvaluator | null }).shadow = engine;
    };

    beforeAll(async () => {
      shadow = await denyingEngine('shadow-denies-all');
    });
    afterAll(() => setShadow(null));

    it('that denies everything changes no answer: /proxy and MCP still allowed, the events and the counter show the disagreements', async () => {
      setShadow(shadow);
      const before = { agree: await counted('agree'), disagree: await counted('disagree') };
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        nowMs = DAY + 15 * HOUR + i * 60_000;
        const reply = await get(h, token, `/proxy/echo/shadowed/${i}`);
        expect(reply.statusCode).toBe(200);
        expect(reply.headers['x-caracal-bundle-revision']).toBe(real.revision);
        ids.push(...decisionIds(reply));
      }
      const mcpReply = await post(h, token, 'tools', `[${toolCall(30, 'deploy', '{"a":1}')},${toolCall(31, 'status', '{}')}]`);
      expect(mcpReply.statusCode).toBe(200);
      expect((mcpReply.json() as { result?: unknown }[]).every((answer) => answer.result !== undefined)).toBe(true);
      ids.push(...decisionIds(mcpReply));
      expect(ids).toHaveLength(7);

      expect(await counted('disagree')).toBe(before.disagree + 7);
      expect(await counted('agree')).toBe(before.agree);
      const events = await eventsOf(h, ids);
      for (const id of ids) {
        const event = events.get(id)!;
        expect(event.data.allow).toBe(true);
        expect(event.data.bundle_revision).toBe(real.revision);
        // (Bundle data holds the reason as a list, not a set: the core policy adds that the extension is malformed.)
        expect(event.data.shadow).toEqual({ revision: 'shadow-denies-all', allow: false, reasons: ['policy_extension_invalid', 'shadow_says_no'], agrees: false });
        expect(event.data.input).toBeDefined();
      }
    });

    it('a shadow that decides the same agrees; one that throws denies with the engine reason, and neither changes an answer', async () => {
      setShadow({ revision: 'same-as-enforced', evaluate: (input) => real.evaluate(input) });
      const agreeBefore = await counted('agree');
      const allowed = await get(h, token, '/proxy/echo/same');
      const denied = await h.assembled.gateway.app.inject({ method: 'DELETE', url: '/proxy/echo/same', headers: { authorization: `Bearer ${token}` } });
      expect([allowed.statusCode, denied.statusCode]).toEqual([200, 403]);
      expect(await counted('agree')).toBe(agreeBefore + 2);

      setShadow({
        revision: 'throws',
        evaluate: () => {
          throw new Error('shadow exploded');
        },
      });
      const disagreeBefore = await counted('disagree');
      const stillAllowed = await get(h, token, '/proxy/echo/throws');
      const stillMcp = await post(h, token, 'tools', toolCall(40, 'deploy', '{}'));
      expect([stillAllowed.statusCode, stillMcp.statusCode]).toEqual([200, 200]);
      expect(await counted('disagree')).toBe(disagreeBefore + 2);

      const events = await eventsOf(h, [...decisionIds(allowed), ...decisionIds(denied), ...decisionIds(stillAllowed), ...decisionIds(stillMcp)]);
      expect(events.get(decisionIds(allowed)[0]!)!.data.shadow).toEqual({ revision: 'same-as-enforced', allow: true, reasons: [], agrees: true });
      const deniedEvent = events.get(decisionIds(denied)[0]!)!.data;
      expect(deniedEvent.shadow).toEqual({ revision: 'same-as-enforced', allow: false, reasons: deniedEvent.reasons, agrees: true });
      for (const id of [...decisionIds(stillAllowed), ...decisionIds(stillMcp)]) {
        expect(events.get(id)!.data).toMatchObject({ allow: true, shadow: { revision: 'throws', allow: false, reasons: ['engine_error'], agrees: false } });
      }
      setShadow(null);
    });

    it('a refusal that is not the policy\'s (a budget refused what it allowed) carries no input and no shadow: a replay of every recorded input gives its recorded decision', async () => {
      setShadow(shadow);
      const other = await agentWithGrants(h);
      await h.op('budget.set', { principalId: other.id, window: 'daily', limit: '0.50', currency: 'USD' });
      const counts = { agree: await counted('agree'), disagree: await counted('disagree') };
      const refused = await get(h, other.token, '/proxy/paid/report');
      expect(refused.statusCode).toBe(429);
      const event = (await eventsOf(h, decisionIds(refused))).get(decisionIds(refused)[0]!)!;
      expect(event.data).toMatchObject({ allow: false, reasons: ['budget_exceeded'] });
      expect(event.data.input).toBeUndefined();
      expect(event.data.shadow).toBeUndefined();
      expect({ agree: await counted('agree'), disagree: await counted('disagree') }).toEqual(counts);
      setShadow(null);
    });
  });
});

describe('policy.recordInput configured', () => {
  let mcp: Awaited<ReturnType<typeof startJsonRpcServer>>;
  const harnesses: Harness[] = [];

  beforeAll(async () => {
    mcp = await startJsonRpcServer();
  });
  afterAll(async () => {
    for (const h of harnesses) await h.close();
    await mcp?.close();
  });

  async function gateway(recordInput: Record<string, unknown>): Promise<{ h: Harness; token: string }> {
    const h = await createHarness({
      extraUpstreams: [{ name: 'tools', url: mcp.url, dialect: 'mcp' }],
      configOverrides: { policy: { recordInput } },
    });
    harnesses.push(h);
    const id = await h.registerAgent();
    await h.grant(id, ['api:external/echo', 'mcp:tools/*'], ['read', 'call']);
    await h.op('allowlist.create', { principalId: id, pattern: `${mcp.origin}/**`, patternType: 'glob' });
    return { h, token: await h.token(id, 3_600) };
  }
  const send = (h: Harness, token: string) =>
    Promise.all([
      h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/x', headers: { authorization: `Bearer ${token}` } }),
      h.assembled.gateway.app.inject({
        method: 'POST',
        url: '/mcp/tools',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        payload: toolCall(1, 'deploy', '{"target":"prod","secret":{"value":"s3cr3t","note":"n"}}'),
      }),
    ]);

  it('off: no event carries an input', async () => {
    const { h, token } = await gateway({ enabled: false });
    const replies = await send(h, token);
    expect(replies.map((r) => r.statusCode)).toEqual([200, 200]);
    const events = await eventsOf(h, replies.flatMap(decisionIds));
    expect(events.size).toBe(2);
    for (const event of events.values()) {
      expect(event.data.allow).toBe(true);
      expect(event.data.input).toBeUndefined();
      expect(event.data.input_redactions).toBeUndefined();
    }
  }, 60_000);

  it('custom paths: only what they name is redacted (here a principal field and one argument), arrays crossed', async () => {
    const { h, token } = await gateway({ redact: ['principal.kind', 'request.arguments.secret', 'policies.actions'] });
    const [proxied, mcpReply] = await send(h, token);
    expect([proxied!.statusCode, mcpReply!.statusCode]).toEqual([200, 200]);
    const events = await eventsOf(h, [...decisionIds(proxied!), ...decisionIds(mcpReply!)]);
    const proxyInput = events.get(decisionIds(proxied!)[0]!)!.data;
    expect(proxyInput.input_redactions).toEqual(['principal.kind', 'policies.actions']);
    expect(proxyInput.input).toMatchObject({ principal: { kind: REDACTED, status: 'active' }, policies: [{ actions: [REDACTED, REDACTED], resources: ['api:external/echo', 'mcp:tools/*'] }] });
    const mcpEvent = events.get(decisionIds(mcpReply!)[0]!)!.data;
    expect(mcpEvent.input_redactions).toEqual(['principal.kind', 'request.arguments.secret', 'policies.actions']);
    expect((mcpEvent.input as { request: { arguments: unknown } }).request.arguments).toEqual({ target: 'prod', secret: { value: REDACTED, note: REDACTED } });
    expect(JSON.stringify(mcpEvent)).not.toContain('s3cr3t');
  }, 60_000);
});

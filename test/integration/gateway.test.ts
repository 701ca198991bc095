import { generateKeyPairSync } from 'node:crypto';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signingKeyFromPem } from '../../src/authority/tokens/keys.js';
import { issueAccessToken } from '../../src/authority/tokens/tokens.js';
import { BACKENDS, createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';

function rawRequest(port: number, text: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(text));
    let data = '';
    socket.on('data', (chunk) => (data += chunk.toString()));
    socket.on('end', () => resolve(data));
    socket.on('error', (err) => (data ? resolve(data) : reject(err)));
  });
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe.each(BACKENDS)('gateway on the %s backend', (backend) => {
  let h: Harness;
  let agent: string;
  let token: string;
  const decisionIds = new Set<string>();

  async function call(method: string, url: string, headers: Record<string, string> = {}, body?: string) {
    const response = await h.assembled.gateway.app.inject({ method: method as 'GET', url, headers, ...(body !== undefined ? { payload: body } : {}) });
    const decision = response.headers['x-caracal-decision-id'];
    if (typeof decision === 'string') decisionIds.add(decision);
    return response;
  }

  /** Polls until the gateway answers `status`, bounded: the change travels by agent.lifecycle. */
  async function eventually(bearer: string, status: number) {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const response = await call('GET', '/proxy/echo/x', { authorization: `Bearer ${bearer}` });
      if (response.statusCode === status || Date.now() > deadline) return response;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  beforeAll(async () => {
    h = await createHarness({ backend, extraUpstreams: [{ name: 'down', url: 'http://127.0.0.1:9/base', timeoutMs: 2_000 }] });
    agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo', 'api:external/down'], ['read']);
    await h.op('allowlist.create', { principalId: agent, pattern: 'http://127.0.0.1:9/base/**', patternType: 'glob' });
    token = await h.token(agent);
  });
  afterAll(async () => h?.close());

  it('runs on the ports of its backend', async () => {
    const expected = backend === 'services' ? { db: 'postgres', events: 'kafka', cache: 'redis' } : { db: 'pglite', events: 'local', cache: 'memory' };
    expect({ db: h.ctx.db.kind, events: (await h.ctx.events()).kind, cache: (await h.ctx.cache()).kind }).toEqual(expected);
  });

  it('proxies an allowed call, stripping the agent credentials and x-caracal-* headers', async () => {
    const before = h.upstream.requests;
    const response = await call('GET', '/proxy/echo/v1/items?limit=2', {
      authorization: `Bearer ${token}`,
      'x-caracal-principal': 'admin',
      'x-request-id': 'req-123',
      cookie: 'session=secret',
    });
    expect(response.statusCode).toBe(200);
    const echoed = response.json() as { path: string; headers: Record<string, string> };
    expect(echoed.path).toBe('/v1/items?limit=2');
    expect(echoed.headers.authorization).toBeUndefined();
    expect(echoed.headers.cookie).toBeUndefined();
    expect(echoed.headers['x-caracal-principal']).toBeUndefined();
    expect(echoed.headers['x-request-id']).toBe('req-123');
    expect(response.headers['x-request-id']).toBe('req-123');
    expect(response.headers['x-caracal-decision-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(h.upstream.requests).toBe(before + 1);
  });

  it('replaces an unsafe inbound x-request-id', async () => {
    const response = await call('GET', '/proxy/echo/x', { authorization: `Bearer ${token}`, 'x-request-id': 'bad id\twith spaces' });
    expect(response.statusCode).toBe(200);
    expect(response.headers['x-request-id']).not.toContain(' ');
  });

  it('denies an action outside the policy with 403, the reason, and no upstream call', async () => {
    const before = h.upstream.requests;
    const response = await call('POST', '/proxy/echo/v1/items', { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, '{"a":1}');
    expect(response.statusCode).toBe(403);
    const body = response.json();
    expect(body).toMatchObject({ error: 'CARACAL_POLICY_DENIED', reasons: ['scope_action'] });
    expect(body.decision_id).toBe(response.headers['x-caracal-decision-id']);
    expect(body.request_id).toBe(response.headers['x-request-id']);
    expect(h.upstream.requests).toBe(before);
  });

  it('denies a resource no policy names', async () => {
    const other = await h.registerAgent();
    await h.grant(other, ['api:external/other'], ['read']);
    const response = await call('GET', '/proxy/echo/x', { authorization: `Bearer ${await h.token(other)}` });
    expect(response.statusCode).toBe(403);
    expect(response.json().reasons).toEqual(['scope_resource']);
  });

  it('denies a principal with no policy and a token for a principal that does not exist', async () => {
    const bare = await h.registerAgent();
    await h.allowUpstream(bare);
    expect((await call('GET', '/proxy/echo/x', { authorization: `Bearer ${await h.token(bare)}` })).json().reasons).toEqual(['no_policy']);
    const ghost = await h.token('0190f0f0-0000-7000-8000-000000000000');
    const response = await call('GET', '/proxy/echo/x', { authorization: `Bearer ${ghost}` });
    expect(response.statusCode).toBe(403);
    expect(response.json().reasons).toContain('principal_unknown');
  });

  it('answers 401 for missing, malformed, expired, alg:none, HS256 and foreign-key tokens', async () => {
    const key = await h.ctx.signingKey();
    const expired = (await issueAccessToken(key, h.ctx.tokenSettings, agent, 60, new Date(Date.now() - 3_600_000))).token;
    const [, payload] = token.split('.');
    const algNone = `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`;
    const hs256 = await new SignJWT({ sub: agent, jti: 'x' })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('caracal')
      .setAudience('caracal-gateway')
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(key.publicKey.export({ format: 'pem', type: 'spki' }).toString()));
    const foreignPem = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const foreignKey = await signingKeyFromPem(foreignPem, 'test');
    const foreign = (await issueAccessToken({ ...foreignKey, kid: key.kid }, h.ctx.tokenSettings, agent, 300)).token;
    const cases: [string, Record<string, string>, string][] = [
      ['missing', {}, 'CARACAL_UNAUTHENTICATED'],
      ['basic scheme', { authorization: 'Basic dXNlcjpwYXNz' }, 'CARACAL_UNAUTHENTICATED'],
      ['garbage', { authorization: 'Bearer not-a-jwt' }, 'CARACAL_TOKEN_INVALID'],
      ['truncated', { authorization: `Bearer ${token.slice(0, -10)}` }, 'CARACAL_TOKEN_INVALID'],
      ['huge', { authorization: `Bearer ${'a'.repeat(9000)}.b.c` }, 'CARACAL_TOKEN_INVALID'],
      ['expired', { authorization: `Bearer ${expired}` }, 'CARACAL_TOKEN_EXPIRED'],
      ['alg none', { authorization: `Bearer ${algNone}` }, 'CARACAL_TOKEN_INVALID'],
      ['hs256 with the public key', { authorization: `Bearer ${hs256}` }, 'CARACAL_TOKEN_INVALID'],
      ['signed by another key', { authorization: `Bearer ${foreign}` }, 'CARACAL_TOKEN_INVALID'],
    ];
    const before = h.upstream.requests;
    for (const [name, headers, code] of cases) {
      const response = await call('GET', '/proxy/echo/x', headers);
      expect(response.statusCode, name).toBe(401);
      expect(response.json().error, name).toBe(code);
      expect(response.json().request_id, name).toBe(response.headers['x-request-id']);
    }
    expect(h.upstream.requests).toBe(before);
  });

  it('answers 404 for an unknown upstream and never proxies it', async () => {
    const before = h.upstream.requests;
    for (const url of ['/proxy/nope/x', '/proxy/', '/proxy/%2e%2e/x', '/nothing']) {
      const response = await call('GET', url, { authorization: `Bearer ${token}` });
      expect(response.statusCode, url).toBe(404);
      expect(response.json().request_id, url).toBe(response.headers['x-request-id']);
    }
    expect(h.upstream.requests).toBe(before);
  });

  it('refuses path traversal sent raw on a socket (no client-side normalisation) with 400', async () => {
    const { app } = h.assembled.gateway;
    if (!app.server.listening) await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as AddressInfo;
    const before = h.upstream.requests;
    const paths = ['/proxy/echo/../admin', '/proxy/echo/a/../../admin', '/proxy/echo/a/%2e%2e/%2E%2E/etc/passwd', '/proxy/echo/a/..%2f..%2fx', '/proxy/echo/a%5c..%5cb', '/proxy/echo/.', '/proxy/echo/a%00b', '/proxy/echo/a\\..\\b'];
    for (const target of paths) {
      const reply = await rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`);
      expect(reply, target).toMatch(/^HTTP\/1\.1 400/);
      expect(reply, target).toContain('path_traversal');
    }
    expect(h.upstream.requests).toBe(before);
  });

  it('maps an unreachable upstream to 502', async () => {
    const response = await call('GET', '/proxy/down/x', { authorization: `Bearer ${token}` });
    expect(response.statusCode).toBe(502);
    expect(response.json()).toMatchObject({ error: 'CARACAL_UPSTREAM_UNREACHABLE' });
  });

  it('denies a suspended principal once the lifecycle event arrives, and allows again on resume', async () => {
    const subject = await h.registerAgent();
    await h.grant(subject, ['api:external/*'], ['*']);
    const subjectToken = await h.token(subject);
    expect((await call('GET', '/proxy/echo/x', { authorization: `Bearer ${subjectToken}` })).statusCode).toBe(200);
    await h.op('agent.suspend', { id: subject });
    const denied = await eventually(subjectToken, 403);
    expect(denied.statusCode).toBe(403);
    expect(denied.json().reasons).toEqual(['principal_suspended']);
    await h.op('agent.resume', { id: subject });
    expect((await eventually(subjectToken, 200)).statusCode).toBe(200);
  });

  it('skips malformed lifecycle events and goes on applying the ones after them', async () => {
    const subject = await h.registerAgent();
    await h.grant(subject, ['api:external/echo'], ['read']);
    const subjectToken = await h.token(subject);
    expect((await call('GET', '/proxy/echo/x', { authorization: `Bearer ${subjectToken}` })).statusCode).toBe(200);
    // Keyed like the suspension announced next, so they share its partition and come before it.
    const events = await h.ctx.events();
    await events.publish(h.ctx.topics.lifecycle, [
      { key: subject, value: 'not json' },
      { key: subject, value: JSON.stringify({ specversion: '1.0', id: 'x', type: 'dev.caracal.agent.lifecycle.v1', source: 's', time: 'yesterday', datacontenttype: 'application/json', data: {} }) },
      { key: subject, value: JSON.stringify({ specversion: '1.0', id: 'y', type: 'evil.type', source: 's', time: new Date().toISOString(), datacontenttype: 'application/json', data: { principal_id: subject } }) },
    ]);
    await h.op('agent.suspend', { id: subject });
    // Only the lifecycle subscription tells this gateway about the suspension: it must have
    // handled the malformed events without stalling on them.
    const denied = await eventually(subjectToken, 403);
    expect(denied.statusCode).toBe(403);
    expect(denied.json().reasons).toEqual(['principal_suspended']);
    expect((await call('GET', '/proxy/echo/x', { authorization: `Bearer ${token}` })).statusCode).toBe(200);
    expect((await call('POST', '/proxy/echo/x', { authorization: `Bearer ${token}` })).statusCode).toBe(403);
  });

  it('refuses oversize request headers with 431 on a real socket', async () => {
    const { app } = h.assembled.gateway;
    if (!app.server.listening) await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as AddressInfo;
    const reply = await rawRequest(port, `GET /proxy/echo/x HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`);
    expect(reply).toMatch(/^HTTP\/1\.1 431/);
    expect(reply).toContain('CARACAL_HEADERS_TOO_LARGE');
  });

  it('serves /health, /ready with per-component checks, and the JWKS', async () => {
    expect((await call('GET', '/health')).json()).toEqual({ status: 'ok' });
    const ready = await call('GET', '/ready');
    expect(ready.statusCode).toBe(200);
    expect(ready.json().checks).toMatchObject({ database: { ok: true }, events: { ok: true }, cache: { ok: true }, policy: { ok: true } });
    const jwks = (await call('GET', '/.well-known/jwks.json')).json();
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256' });
    expect(jwks.keys[0].d).toBeUndefined();
  });

  it('counts requests and evaluations in metrics without agent ids or raw paths', async () => {
    const text = await h.assembled.metrics.registry.metrics();
    expect(text).toMatch(/caracal_gateway_requests_total\{route="\/proxy\/echo\/\*",method="GET",status="200",upstream="echo"\} \d+/);
    expect(text).toMatch(/caracal_policy_evaluations_total\{outcome="result",allow="false"\} \d+/);
    expect(text).not.toContain(agent);
    expect(text).not.toContain('/v1/items');
  });

  it('recorded every decision (allow, deny and 401) as a policy.decisions event', async () => {
    const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => d.length >= decisionIds.size);
    const recorded = new Set(decisions.map((d) => d.decision_id));
    for (const id of decisionIds) expect(recorded.has(id), id).toBe(true);
    expect(decisions.some((d) => d.allow && d.status === 200)).toBe(true);
    expect(decisions.some((d) => !d.allow && d.status === 403 && d.reasons.includes('scope_action'))).toBe(true);
    expect(decisions.some((d) => d.status === 401 && d.reasons.includes('token_expired'))).toBe(true);
  });
});

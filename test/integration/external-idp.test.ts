import { createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, SignJWT, type JWK, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sleep } from '../helpers/fixtures.js';
import { createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';
import { randomName } from '../helpers/services.js';

/** A local IdP: JWKS documents by path, and how many times each path was fetched. */
interface Idp {
  url: string;
  hits: Map<string, number>;
  /** path → document (JSON-serialised on each fetch), or a status code to answer with. */
  routes: Map<string, unknown>;
  close(): Promise<void>;
}

async function startServer(onRequest: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<{ url: string; server: http.Server; close(): Promise<void> }> {
  const server = http.createServer(onRequest);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function startIdp(): Promise<Idp> {
  const hits = new Map<string, number>();
  const routes = new Map<string, unknown>();
  const started = await startServer((req, res) => {
    const path = req.url ?? '/';
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const route = routes.get(path);
    if (typeof route === 'number' || route === undefined) {
      res.writeHead(typeof route === 'number' ? route : 404).end();
      return;
    }
    const body = typeof route === 'string' ? route : JSON.stringify(route);
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  return { url: started.url, hits, routes, close: started.close };
}

interface IdpKey {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: KeyObject;
  jwk: JWK;
}

async function newKey(alg: 'RS256' | 'ES256', kid = `${alg.toLowerCase()}-${randomUUID().slice(0, 8)}`): Promise<IdpKey> {
  const { privateKey, publicKey } = alg === 'RS256' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

const MAIN = 'https://idp.caracal.test';
const SLOW = 'https://slow.idp.caracal.test';
const BROKEN = 'https://broken.idp.caracal.test';
const GONE = 'https://gone.idp.caracal.test';
const HUGE = 'https://huge.idp.caracal.test';
const PREFIXED = 'https://prefixed.idp.caracal.test';
const BY_ID = 'https://byid.idp.caracal.test';
const AUDIENCE = 'caracal-gateway-ext';

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe('external IdP tokens (remote JWKS on loopback)', () => {
  let idp: Idp;
  let elsewhere: Awaited<ReturnType<typeof startServer>>;
  let elsewhereHits = 0;
  let h: Harness;
  let rsa: IdpKey;
  let ec: IdpKey;
  let agentName: string;
  let agentId: string;

  const sign = (key: IdpKey, claims: JWTPayload, options: { iss?: string; aud?: string; exp?: number; header?: Record<string, unknown> } = {}) => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ iat: now, exp: options.exp ?? now + 300, ...claims })
      .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...options.header })
      .setIssuer(options.iss ?? MAIN)
      .setAudience(options.aud ?? AUDIENCE)
      .sign(key.privateKey);
  };
  const call = (token: string, extra: Record<string, string> = {}) =>
    h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/v1/things', headers: { authorization: `Bearer ${token}`, ...extra } });

  beforeAll(async () => {
    idp = await startIdp();
    elsewhere = await startServer((_req, res) => {
      elsewhereHits++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"keys":[]}');
    });
    const gone = await startServer(() => {});
    const goneUrl = `${gone.url}/jwks.json`;
    await gone.close(); // connection refused from now on

    rsa = await newKey('RS256');
    ec = await newKey('ES256');
    for (const path of ['/main/jwks.json', '/slow/jwks.json', '/prefixed/jwks.json', '/byid/jwks.json']) idp.routes.set(path, { keys: [rsa.jwk, ec.jwk] });
    idp.routes.set('/broken/jwks.json', 503);
    idp.routes.set('/huge/jwks.json', JSON.stringify({ keys: [rsa.jwk, ec.jwk], pad: 'x'.repeat(1024 * 1024) }));

    const issuer = (iss: string, path: string, extra: Record<string, unknown> = {}) => ({
      issuer: iss,
      audience: AUDIENCE,
      jwksUrl: path.startsWith('http') ? path : `${idp.url}${path}`,
      jwksMinRefreshSeconds: 1,
      ...extra,
    });
    h = await createHarness({
      configOverrides: {
        // Identity is under test here, not allowlists: the policy alone decides.
        allowlists: { whenEmpty: 'allow' },
        auth: {
          externalIssuers: [
            issuer(MAIN, '/main/jwks.json'),
            issuer(SLOW, '/slow/jwks.json', { jwksMinRefreshSeconds: 30 }),
            issuer(BROKEN, '/broken/jwks.json', { jwksMinRefreshSeconds: 30 }),
            issuer(GONE, goneUrl),
            issuer(HUGE, '/huge/jwks.json'),
            issuer(PREFIXED, '/prefixed/jwks.json', { principalClaim: 'agent_uri', mapping: { by: 'name', stripPrefix: 'spiffe://caracal.test/agent/' } }),
            issuer(BY_ID, '/byid/jwks.json', { algorithms: ['ES256'], mapping: { by: 'id' } }),
          ],
        },
      },
    });
    agentName = randomName('ext_agent');
    agentId = await h.registerAgent(agentName);
    await h.grant(agentId, ['api:external/echo'], ['read']);
  });
  afterAll(async () => {
    await h?.close();
    await idp?.close();
    await elsewhere?.close();
  });

  it('accepts RS256 and ES256 tokens naming an existing principal by name, proxies them, and verifies each once', async () => {
    const before = h.upstream.requests;
    for (const key of [rsa, ec]) {
      const token = await sign(key, { sub: agentName });
      for (let i = 0; i < 2; i++) {
        const response = await call(token);
        expect(response.statusCode, `${key.alg}: ${response.body}`).toBe(200);
        const echoed = response.json() as { headers: Record<string, string> };
        expect(echoed.headers.authorization).toBeUndefined();
      }
    }
    expect(h.upstream.requests).toBe(before + 4);
    expect(idp.hits.get('/main/jwks.json')).toBe(1);
    const metrics = await h.assembled.metrics.registry.metrics();
    expect(metrics).toMatch(/caracal_token_cache_requests_total\{result="hit"\} [1-9]/);
  });

  it('maps by id, and strips a required prefix from a custom claim', async () => {
    expect((await call(await sign(ec, { sub: agentId }, { iss: BY_ID }))).statusCode).toBe(200);
    expect((await call(await sign(rsa, { agent_uri: `spiffe://caracal.test/agent/${agentName}` }, { iss: PREFIXED }))).statusCode).toBe(200);
  });

  it('follows a key rotation at the IdP: an unknown kid triggers one refetch, then the new key is accepted', async () => {
    await sleep(1_100); // past jwksMinRefreshSeconds (1 s) since the first fetch
    const rotated = await newKey('RS256');
    idp.routes.set('/main/jwks.json', { keys: [rotated.jwk, ec.jwk] });
    const fetched = idp.hits.get('/main/jwks.json')!;
    const response = await call(await sign(rotated, { sub: agentName }));
    expect(response.statusCode).toBe(200);
    expect(idp.hits.get('/main/jwks.json')).toBe(fetched + 1);
    expect((await call(await sign(rotated, { sub: agentName, jti: 'second' }))).statusCode).toBe(200);
    expect(idp.hits.get('/main/jwks.json')).toBe(fetched + 1);
    // The retired key is gone from the refreshed set.
    expect((await call(await sign(rsa, { sub: agentName, jti: 'old-key' }))).statusCode).toBe(401);
  });

  it('rate-limits JWKS refetches: 100 tokens with random unknown kids cause at most one fetch, all 401', async () => {
    const before = h.upstream.requests;
    const tokens = await Promise.all(Array.from({ length: 100 }, () => sign({ ...rsa, kid: randomUUID() }, { sub: agentName }, { iss: SLOW })));
    const responses = await Promise.all(tokens.map((token) => call(token)));
    for (const response of responses) {
      expect(response.statusCode).toBe(401);
      expect(response.json().error).toBe('CARACAL_TOKEN_INVALID');
    }
    const fetches = idp.hits.get('/slow/jwks.json') ?? 0;
    expect(fetches).toBeGreaterThanOrEqual(1);
    expect(fetches).toBeLessThanOrEqual(2);
    // More unknown kids inside the window: no fetch at all; the known key keeps working.
    for (let i = 0; i < 10; i++) expect((await call(await sign({ ...ec, kid: randomUUID() }, { sub: agentName }, { iss: SLOW }))).statusCode).toBe(401);
    expect((await call(await sign(ec, { sub: agentName }, { iss: SLOW }))).statusCode).toBe(200);
    expect(idp.hits.get('/slow/jwks.json')).toBe(fetches);
    expect(h.upstream.requests).toBe(before + 1);
  });

  it('refuses forged, misdirected, expired and unmappable tokens with 401, never reaching the upstream', async () => {
    const now = Math.floor(Date.now() / 1000);
    const valid = await sign(ec, { sub: agentName });
    const [, payload] = valid.split('.');
    const hs256 = await new SignJWT({ sub: agentName })
      .setProtectedHeader({ alg: 'HS256', kid: rsa.kid })
      .setIssuer(MAIN)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(createPublicKey(rsa.privateKey).export({ format: 'pem', type: 'spki' }).toString()));
    const hs256Pub = await new SignJWT({ sub: agentName })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer(MAIN)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(JSON.stringify(ec.jwk)));
    const impostor = await newKey('ES256', ec.kid); // same kid, different key
    const cases: [string, string][] = [
      ['wrong iss (not a configured issuer)', await sign(ec, { sub: agentName }, { iss: 'https://evil.test' })],
      ['wrong aud', await sign(ec, { sub: agentName }, { aud: 'someone-else' })],
      ['expired beyond the skew', await sign(ec, { sub: agentName, iat: now - 3600 }, { exp: now - 120 })],
      ['nbf in the future', await sign(ec, { sub: agentName, nbf: now + 600 })],
      ['no exp', await new SignJWT({ sub: agentName }).setProtectedHeader({ alg: 'ES256', kid: ec.kid }).setIssuer(MAIN).setAudience(AUDIENCE).sign(ec.privateKey)],
      ['alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`],
      ['HS256 with the public key as secret', hs256],
      ['HS256 with the public JWK as secret', hs256Pub],
      ['alg not in the issuer list', await sign(rsa, { sub: agentId }, { iss: BY_ID })],
      ['jku header', await sign(ec, { sub: agentName }, { header: { jku: `${elsewhere.url}/jwks.json` } })],
      ['x5u header', await sign(ec, { sub: agentName }, { header: { x5u: `${elsewhere.url}/cert.pem` } })],
      ['jwk header', await sign(impostor, { sub: agentName }, { header: { jwk: impostor.jwk } })],
      ['signed by another key with a known kid', await sign(impostor, { sub: agentName })],
      ['missing principal claim', await sign(ec, {})],
      ['principal claim not a string', await sign(ec, { sub: 42 as unknown as string })],
      ['principal name that does not exist', await sign(ec, { sub: 'nobody-by-this-name' })],
      ['principal id that does not exist', await sign(ec, { sub: '0190f0f0-0000-7000-8000-000000000000' }, { iss: BY_ID })],
      ['claim without the required prefix', await sign(rsa, { agent_uri: agentName }, { iss: PREFIXED })],
      ['JWKS server answers 503', await sign(ec, { sub: agentName }, { iss: BROKEN })],
      ['JWKS server down (connection refused)', await sign(ec, { sub: agentName }, { iss: GONE })],
      ['JWKS document over the size cap', await sign(ec, { sub: agentName }, { iss: HUGE })],
    ];
    const before = h.upstream.requests;
    for (const [name, token] of cases) {
      const response = await call(token);
      expect(response.statusCode, name).toBe(401);
      expect(['CARACAL_TOKEN_INVALID', 'CARACAL_TOKEN_EXPIRED'], name).toContain(response.json().error);
      expect(response.json().request_id, name).toBeTruthy();
    }
    expect(h.upstream.requests).toBe(before);
    expect(elsewhereHits).toBe(0);
  });

  it('fails closed while the IdP is down, and refetches at most once per window', async () => {
    const before = idp.hits.get('/broken/jwks.json') ?? 0;
    for (let i = 0; i < 20; i++) expect((await call(await sign(ec, { sub: agentName, jti: `down-${i}` }, { iss: BROKEN }))).statusCode).toBe(401);
    // One attempt per 30 s window in all (the previous test may already have made it).
    expect(idp.hits.get('/broken/jwks.json')).toBe(Math.max(before, 1));
  });

  it('ignores client-certificate headers for authentication', async () => {
    const response = await h.assembled.gateway.app.inject({
      method: 'GET',
      url: '/proxy/echo/x',
      headers: { 'x-forwarded-client-cert': `By=spiffe://caracal.test;URI=spiffe://caracal.test/agent/${agentName}`, 'x-ssl-client-cert': 'MIIB', 'x-client-cert': 'MIIB' },
    });
    expect(response.statusCode).toBe(401);
  });

  it('records external-token decisions with the principal and the token id', async () => {
    const token = await sign(ec, { sub: agentName, jti: 'ext-jti-1' });
    const response = await call(token);
    expect(response.statusCode).toBe(200);
    const id = response.headers['x-caracal-decision-id'];
    const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => d.some((x) => x.decision_id === id));
    expect(decisions.find((d) => d.decision_id === id)).toMatchObject({ principal_id: agentId, token_id: 'ext-jti-1', allow: true });
  });
});

import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';
import { rawGet, rawRequest } from '../helpers/raw-http.js';
import { startRecordingUpstream, type RecordedRequest, type RecordingUpstream } from '../helpers/recording-upstream.js';

/**
 * The request path under attack: what the upstream receives is exactly what was judged, nothing of
 * a body is read before the decision, no agent credential leaves the gateway, one agent cannot
 * starve another, and every refusal is a clear 4xx in Caracal's shape.
 */

async function listen(h: Harness): Promise<number> {
  await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
  return (h.assembled.gateway.app.server.address() as AddressInfo).port;
}

function seenBy(up: RecordingUpstream, decisionId: string | undefined): RecordedRequest[] {
  return up.requests.filter((r) => decisionId !== undefined && r.headers['x-caracal-decision-id'] === decisionId);
}

function headerOf(head: string, name: string): string | undefined {
  const match = new RegExp(`^${name}: (.*)$`, 'im').exec(head);
  return match?.[1]?.trim();
}

describe('gateway hardening', () => {
  let up: RecordingUpstream;
  let pooled: RecordingUpstream;
  let h: Harness;
  let port: number;
  let agent: string;
  let token: string;

  beforeAll(async () => {
    up = await startRecordingUpstream();
    pooled = await startRecordingUpstream();
    h = await createHarness({
      extraUpstreams: [
        { name: 'up', url: `${up.url}/base` },
        { name: 'retry', url: up.url, retries: 2 },
        { name: 'pool', url: pooled.url, maxConnections: 2 },
      ],
      configOverrides: {
        gateway: {
          bodyLimitBytes: 64 * 1024,
          limits: { perPrincipal: { maxConcurrent: 20, rate: { ratePerSecond: 5_000, burst: 5_000 } }, unauthenticatedPerSource: { ratePerSecond: 1_000, burst: 1_000 } },
        },
      },
    });
    agent = await h.registerAgent();
    await h.op('policy.create', { principalId: agent, resources: ['api:external/up', 'api:external/retry', 'api:external/pool'], actions: ['read', 'write', 'delete'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: agent, pattern: `${up.url}/**`, patternType: 'glob' });
    await h.op('allowlist.create', { principalId: agent, pattern: `${pooled.url}/**`, patternType: 'glob' });
    token = await h.token(agent);
    port = await listen(h);
  });

  afterAll(async () => {
    await h?.close();
    await up?.close();
    await pooled?.close();
  });

  const auth = () => ({ authorization: `Bearer ${token}` });

  describe('one URL, judged and sent', () => {
    it('refuses a fragment that would have fooled a regex allowlist (raw socket)', async () => {
      const pdfAgent = await h.registerAgent();
      await h.op('policy.create', { principalId: pdfAgent, resources: ['api:external/up'], actions: ['read'], maxValiditySeconds: 3600 });
      await h.op('allowlist.create', { principalId: pdfAgent, pattern: `${up.url}/base/files/[^/]+\\.pdf`, patternType: 'regex' });
      const pdfToken = await h.token(pdfAgent);
      const before = up.requests.length;
      const reply = await rawRequest(port, rawGet('/proxy/up/files/secret.txt#.pdf', { authorization: `Bearer ${pdfToken}` }));
      expect(reply.status).toBe(400);
      expect(JSON.parse(reply.body)).toMatchObject({ error: 'CARACAL_BAD_REQUEST', reasons: ['fragment'], request_id: expect.any(String) });
      // The honest request is still judged by the allowlist: a PDF passes, the text file does not.
      expect((await rawRequest(port, rawGet('/proxy/up/files/report.pdf', { authorization: `Bearer ${pdfToken}` }))).status).toBe(200);
      expect((await rawRequest(port, rawGet('/proxy/up/files/secret.txt', { authorization: `Bearer ${pdfToken}` }))).status).toBe(403);
      expect(up.requests.length).toBe(before + 1);
      expect(up.requests.at(-1)!.url).toBe('/base/files/report.pdf');
    });

    it('refuses a fragment that would have fooled a glob allowlist, and a path parameter', async () => {
      const jsonAgent = await h.registerAgent();
      await h.op('policy.create', { principalId: jsonAgent, resources: ['api:external/up'], actions: ['read'], maxValiditySeconds: 3600 });
      await h.op('allowlist.create', { principalId: jsonAgent, pattern: `${up.url}/base/**/*.json`, patternType: 'glob' });
      const jsonToken = await h.token(jsonAgent);
      const before = up.requests.length;
      for (const target of ['/proxy/up/files/secret.txt#x.json', '/proxy/up/files/secret.txt;x.json']) {
        const reply = await rawRequest(port, rawGet(target, { authorization: `Bearer ${jsonToken}` }));
        expect(reply.status, target).toBe(400);
      }
      expect(up.requests.length).toBe(before);
      // An encoded '#' is part of the file name, judged and sent as such: a file named "secret.txt#x.json".
      const encoded = await rawRequest(port, rawGet('/proxy/up/files/secret.txt%23x.json', { authorization: `Bearer ${jsonToken}` }));
      expect(encoded.status).toBe(200);
      expect(up.requests.at(-1)!.url).toBe('/base/files/secret.txt%23x.json');
    });

    it('allowlist.test refuses a URL with a fragment instead of judging it', async () => {
      await expect(h.op('allowlist.test', { principalId: agent, url: `${up.url}/files/secret.txt#x.json` })).rejects.toThrow(/fragment/);
    });

    it('refuses the upstream name written in any way but plainly', async () => {
      const before = up.requests.length;
      for (const target of ['/proxy/%75p/files/a', '/proxy/UP/files/a', '/proxy//up/files/a', '/proxy/up%2Ffiles/a']) {
        const reply = await rawRequest(port, rawGet(target, auth()));
        expect(reply.status, target).toBeGreaterThanOrEqual(400);
        expect(reply.status, target).toBeLessThan(500);
        expect(JSON.parse(reply.body).request_id, target).toEqual(expect.any(String));
      }
      expect(up.requests.length).toBe(before);
    });

    it('normalises once: what the upstream receives is what was decided and recorded, or nothing (property)', async () => {
      const pieces = ['a', 'B', '0', '-', '.', '..', '/', '//', '%2e', '%2E', '%2f', '%2F', ';', '#', '?', '&', '=', '%', '%zz', '%41', '%7e', '~', '%00', '%5c', '\\', '%c0%ae', '%25', '+', '*', ':', '@', 'x.json', '.pdf', "'", '(', ')', '!', '$', ','];
      const prefixes = ['/proxy/up/', '/proxy/up/', '/proxy/up/', '/proxy/up/', '/proxy/%75p/', '/proxy/u%70/', '/proxy//up/', '/proxy/./up/', '/proxy/up%2f', '/proxy/up/../up/'];
      const suffix = fc
        .tuple(fc.constantFrom(...prefixes), fc.array(fc.constantFrom(...pieces), { minLength: 1, maxLength: 8 }))
        .map(([prefix, parts]) => `${prefix}${parts.join('')}`);
      const outcomes: { target: string; status: number; decisionId: string | undefined }[] = [];
      const before = up.requests.length;
      await fc.assert(
        fc.asyncProperty(suffix, async (target) => {
          const reply = await rawRequest(port, rawGet(target, auth()));
          const decisionId = headerOf(reply.head, 'x-caracal-decision-id');
          outcomes.push({ target, status: reply.status, decisionId });
          // Never a server error, whatever the target.
          expect(reply.status, target).toBeGreaterThanOrEqual(200);
          expect(reply.status, target).toBeLessThan(500);
          const seen = seenBy(up, decisionId);
          if (reply.status !== 200) expect(seen, target).toHaveLength(0);
          else expect(seen, target).toHaveLength(1);
        }),
        { numRuns: 200, seed: 20261202 },
      );
      const allowed = outcomes.filter((o) => o.status === 200);
      expect(allowed.length).toBeGreaterThan(10);
      expect(outcomes.length - allowed.length).toBeGreaterThan(10);
      expect(up.requests.length - before).toBe(allowed.length);
      const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => allowed.every((a) => d.some((x) => x.decision_id === a.decisionId)));
      const judged = new Map(decisions.map((d) => [d.decision_id, d]));
      for (const o of allowed) {
        const decision = judged.get(o.decisionId!);
        expect(decision, o.target).toBeDefined();
        expect(decision!.allow).toBe(true);
        const received = seenBy(up, o.decisionId)[0]!;
        expect(`${up.url}${received.url}`, o.target).toBe(decision!.upstream_url);
      }
    });
  });

  describe('bodies', () => {
    for (const contentType of ['text/plain', 'application/json', 'application/octet-stream', 'multipart/form-data; boundary=x']) {
      it(`answers an unauthenticated ${contentType} POST without reading its body`, async () => {
        // 5 MB declared, 10 bytes sent: a gateway that buffered the body first would never answer.
        const reply = await rawRequest(port, `POST /proxy/up/x HTTP/1.1\r\nhost: g\r\ncontent-type: ${contentType}\r\ncontent-length: 50000\r\nauthorization: Bearer nope\r\n\r\n0123456789`, { timeoutMs: 8_000 });
        expect(reply.status).toBe(401);
        expect(reply.complete, 'the whole 401 arrived while the body was still owed').toBe(true);
      });
    }

    it('answers a denied POST without reading its body', async () => {
      const readOnly = await h.registerAgent();
      await h.op('policy.create', { principalId: readOnly, resources: ['api:external/up'], actions: ['read'], maxValiditySeconds: 3600 });
      await h.op('allowlist.create', { principalId: readOnly, pattern: `${up.url}/**`, patternType: 'glob' });
      const reply = await rawRequest(port, `POST /proxy/up/x HTTP/1.1\r\nhost: g\r\ncontent-type: text/plain\r\ncontent-length: 60000\r\nauthorization: Bearer ${await h.token(readOnly)}\r\n\r\n0123456789`, { timeoutMs: 8_000 });
      expect(reply.status).toBe(403);
      expect(reply.complete).toBe(true);
    });

    it('refuses a declared body over the limit with 413 before anything reaches the upstream', async () => {
      const before = up.requests.length;
      const reply = await rawRequest(port, `POST /proxy/up/x HTTP/1.1\r\nhost: g\r\ncontent-type: text/plain\r\ncontent-length: ${100 * 1024}\r\nauthorization: Bearer ${token}\r\n\r\nabc`);
      expect(reply.status).toBe(413);
      expect(JSON.parse(reply.body)).toMatchObject({ error: 'CARACAL_PAYLOAD_TOO_LARGE', request_id: expect.any(String) });
      expect(up.requests.length).toBe(before);
    });

    it('cuts a chunked body at the limit: the upstream never gets more than the limit, the agent gets 413', async () => {
      const chunk = 'x'.repeat(16 * 1024);
      const chunks = Array.from({ length: 8 }, () => `${(chunk.length).toString(16)}\r\n${chunk}\r\n`).join('');
      const reply = await rawRequest(port, `POST /proxy/up/chunked HTTP/1.1\r\nhost: g\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\nauthorization: Bearer ${token}\r\n\r\n${chunks}0\r\n\r\n`, { timeoutMs: 8_000 });
      expect(reply.status).toBe(413);
      const seen = up.requests.filter((r) => r.url === '/base/chunked');
      expect(seen.length).toBeLessThanOrEqual(1);
      for (const request of seen) {
        expect(request.bodyBytes).toBeLessThanOrEqual(64 * 1024);
        expect(request.complete).toBe(false);
      }
    });

    it('streams a chunked body under the limit whole', async () => {
      const body = 'y'.repeat(10_000);
      const reply = await rawRequest(port, `POST /proxy/up/ok HTTP/1.1\r\nhost: g\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\nauthorization: Bearer ${token}\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`);
      expect(reply.status).toBe(200);
      expect(seenBy(up, headerOf(reply.head, 'x-caracal-decision-id'))[0]).toMatchObject({ bodyBytes: 10_000, complete: true });
    });

    it('supports Expect: 100-continue: asks for the body only after the allow, and not at all on a denial', async () => {
      const body = 'z'.repeat(2_000);
      const reply = await rawRequest(port, `POST /proxy/up/continue HTTP/1.1\r\nhost: g\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\nconnection: close\r\nauthorization: Bearer ${token}\r\n\r\n`, {
        then: (socket, soFar) => {
          if (soFar.startsWith('HTTP/1.1 100')) socket.write(body);
        },
      });
      expect(reply.statuses).toEqual([100, 200]);
      const seen = seenBy(up, headerOf(reply.head, 'x-caracal-decision-id'))[0]!;
      expect(seen.bodyBytes).toBe(body.length);
      expect(seen.headers.expect).toBeUndefined();

      const denied = await rawRequest(port, `POST /proxy/up/continue HTTP/1.1\r\nhost: g\r\ncontent-length: 10\r\nexpect: 100-continue\r\nconnection: close\r\nauthorization: Bearer nope\r\n\r\n`);
      expect(denied.statuses).toEqual([401]);

      const unsupported = await rawRequest(port, rawGet('/proxy/up/continue', { ...auth(), expect: 'something-else' }));
      expect(unsupported.status).toBe(417);
      expect(JSON.parse(unsupported.body)).toMatchObject({ error: 'CARACAL_EXPECTATION_FAILED', request_id: expect.any(String) });
    });
  });

  describe('headers', () => {
    it('strips method overrides and hop-by-hop headers on the way up', async () => {
      const reply = await rawRequest(
        port,
        `POST /proxy/up/headers HTTP/1.1\r\nhost: g\r\nauthorization: Bearer ${token}\r\ncontent-length: 2\r\nx-http-method-override: DELETE\r\nx-method-override: DELETE\r\nx-http-method: DELETE\r\nx-original-url: /admin\r\nx-rewrite-url: /admin\r\nkeep-alive: timeout=600\r\nte: trailers\r\ntrailer: x-foo\r\nx-caracal-principal: someone-else\r\nconnection: close\r\n\r\n{}`,
      );
      expect(reply.status).toBe(200);
      const seen = seenBy(up, headerOf(reply.head, 'x-caracal-decision-id'))[0]!;
      expect(seen.method).toBe('POST');
      for (const name of ['x-http-method-override', 'x-method-override', 'x-http-method', 'x-original-url', 'x-rewrite-url', 'keep-alive', 'te', 'trailer', 'x-caracal-principal', 'authorization']) {
        expect(seen.headers[name], name).toBeUndefined();
      }
      expect(seen.headers['x-request-id']).toBe(headerOf(reply.head, 'x-request-id'));
    });

    it('passes an Upgrade request as a plain request without the upgrade', async () => {
      const reply = await rawRequest(port, rawGet('/proxy/up/upgrade', { ...auth(), upgrade: 'h2c' }));
      expect(reply.status).toBe(200);
      expect(seenBy(up, headerOf(reply.head, 'x-caracal-decision-id'))[0]!.headers.upgrade).toBeUndefined();
    });

    it('never lets the upstream set x-caracal-*, x-request-id or hop-by-hop headers toward the agent', async () => {
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/up/evil-headers', headers: auth() });
      expect(reply.statusCode).toBe(200);
      expect(reply.headers['x-caracal-decision-id']).not.toBe('forged-by-upstream');
      expect(reply.headers['x-caracal-decision-id']).toMatch(/^[0-9a-f-]{36}$/);
      expect(reply.headers['x-request-id']).not.toBe('forged-by-upstream');
      expect(reply.headers['x-caracal-policy']).toBeUndefined();
      expect(reply.headers['keep-alive']).toBeUndefined();
      expect(reply.headers['proxy-authenticate']).toBeUndefined();
      expect(reply.headers['x-hop-secret']).toBeUndefined();
      expect(reply.headers['x-kept']).toBe('yes');
    });

    it('answers a method outside the action map with 405 and Allow, not 404', async () => {
      for (const method of ['PROPFIND', 'TRACE']) {
        const reply = await rawRequest(port, `${method} /proxy/up/x HTTP/1.1\r\nhost: g\r\nconnection: close\r\nauthorization: Bearer ${token}\r\n\r\n`);
        expect(reply.status, method).toBe(405);
        expect(headerOf(reply.head, 'allow'), method).toContain('GET');
        expect(JSON.parse(reply.body), method).toMatchObject({ error: 'CARACAL_METHOD_NOT_ALLOWED', request_id: expect.any(String) });
      }
    });

    it('never forwards the agent credential, whichever header carries it', async () => {
      const corpus: Record<string, string>[] = [
        { authorization: `Bearer ${token}` },
        { 'x-api-key': token },
        { 'api-key': token },
        { authorization: `Bearer ${token}`, 'x-api-key': token },
        { authorization: `Bearer ${token}`, 'x-my-auth': token },
        { authorization: `Bearer ${token}`, cookie: `session=${token}` },
        { authorization: `Bearer ${token}`, 'x-forwarded-authorization': `Bearer ${token}` },
        { 'x-api-key': token, 'proxy-authorization': `Bearer ${token}` },
        { authorization: `bearer ${token}`, 'caracal-mandate': token },
      ];
      for (const headers of corpus) {
        const reply = await h.assembled.gateway.app.inject({ url: '/proxy/up/cred', headers });
        expect(reply.statusCode, JSON.stringify(Object.keys(headers))).toBeLessThan(500);
        for (const seen of seenBy(up, reply.headers['x-caracal-decision-id'] as string)) {
          for (const [name, value] of Object.entries(seen.headers)) expect(String(value), name).not.toContain(token);
        }
      }
      // The credential in x-api-key or api-key alone authenticates.
      expect((await h.assembled.gateway.app.inject({ url: '/proxy/up/cred', headers: { 'x-api-key': token } })).statusCode).toBe(200);
      expect((await h.assembled.gateway.app.inject({ url: '/proxy/up/cred', headers: { 'api-key': token } })).statusCode).toBe(200);
      // Two different credentials are ambiguous: refused, never one of them picked.
      const other = await h.token(await h.registerAgent());
      const ambiguous = await h.assembled.gateway.app.inject({ url: '/proxy/up/cred', headers: { authorization: `Bearer ${token}`, 'x-api-key': other } });
      expect(ambiguous.statusCode).toBe(401);
    });
  });

  describe('upstream calls', () => {
    it('makes no hidden retries: a 503 is one upstream call, passed to the agent', async () => {
      const before = up.requests.filter((r) => r.url === '/base/status/503').length;
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/up/status/503', headers: auth() });
      expect(reply.statusCode).toBe(503);
      expect(up.requests.filter((r) => r.url === '/base/status/503').length).toBe(before + 1);
    });

    it('retries only when configured, bounded and counted', async () => {
      const before = up.requests.filter((r) => r.url === '/status/503').length;
      const counted = async () => (await h.assembled.metrics.upstreamRetries.get()).values.find((v) => v.labels.upstream === 'retry')?.value ?? 0;
      const retriesBefore = await counted();
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/retry/status/503', headers: auth() });
      expect(reply.statusCode).toBe(503);
      expect(up.requests.filter((r) => r.url === '/status/503').length).toBe(before + 3);
      expect((await counted()) - retriesBefore).toBe(2);
      // A POST is never retried.
      const posts = up.requests.filter((r) => r.url === '/status/503' && r.method === 'POST').length;
      await h.assembled.gateway.app.inject({ method: 'POST', url: '/proxy/retry/status/503', headers: auth(), payload: {} });
      expect(up.requests.filter((r) => r.url === '/status/503' && r.method === 'POST').length).toBe(posts + 1);
    });

    it('keeps each upstream to its own connection pool (maxConnections)', async () => {
      const calls = Array.from({ length: 6 }, (_, i) => h.assembled.gateway.app.inject({ url: `/proxy/pool/slow?ms=400&i=${i}`, headers: auth() }));
      const results = await Promise.all(calls);
      expect(results.map((r) => r.statusCode)).toEqual([200, 200, 200, 200, 200, 200]);
      expect(pooled.requests.length).toBe(6);
      expect(pooled.maxInFlight).toBe(2);
    });

    it('one agent cannot starve another: per-principal concurrency gives 429 + Retry-After, the other agent is served', async () => {
      const greedy = await h.registerAgent();
      await h.op('policy.create', { principalId: greedy, resources: ['api:external/up'], actions: ['read'], maxValiditySeconds: 3600 });
      await h.op('allowlist.create', { principalId: greedy, pattern: `${up.url}/**`, patternType: 'glob' });
      const greedyToken = await h.token(greedy);
      const flood = Array.from({ length: 60 }, () => h.assembled.gateway.app.inject({ url: '/proxy/up/slow?ms=2500', headers: { authorization: `Bearer ${greedyToken}` } }));
      await new Promise((resolve) => setTimeout(resolve, 300));
      const started = Date.now();
      const polite = await h.assembled.gateway.app.inject({ url: '/proxy/up/fast', headers: auth() });
      const politeMs = Date.now() - started;
      const results = await Promise.all(flood);
      expect(polite.statusCode).toBe(200);
      expect(politeMs).toBeLessThan(2_000);
      const limited = results.filter((r) => r.statusCode === 429);
      expect(results.filter((r) => r.statusCode === 200)).toHaveLength(20);
      expect(limited).toHaveLength(40);
      expect(Number(limited[0]!.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(limited[0]!.json()).toMatchObject({ error: 'CARACAL_RATE_LIMITED', reasons: ['concurrency_limited'], request_id: expect.any(String) });
    });
  });

  describe('errors in Caracal shape', () => {
    for (const target of ['/proxy/up/%c0%ae', '/proxy/up/a%zz', '/nowhere/%zz', '/proxy/up/%E0%A4%A']) {
      it(`answers a bad encoding ${target} with 400 and request_id`, async () => {
        const reply = await rawRequest(port, rawGet(target, auth()));
        expect(reply.status).toBe(400);
        const body = JSON.parse(reply.body);
        expect(body.error).toBe('CARACAL_BAD_REQUEST');
        expect(body.request_id).toEqual(expect.any(String));
      });
    }
  });
});

describe('gateway connection hygiene', () => {
  let h: Harness;
  let port: number;

  beforeAll(async () => {
    h = await createHarness({ configOverrides: { gateway: { maxConnections: 5, timeouts: { idleSocketMs: 500, keepAliveMs: 300, headersMs: 1_000, requestMs: 2_000 } } } });
    port = await listen(h);
  });
  afterAll(async () => h?.close());

  it('closes idle sockets and caps open connections', async () => {
    const sockets = await Promise.all(
      Array.from({ length: 10 }, () => new Promise<net.Socket>((resolve) => {
        const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
        socket.on('error', () => {});
      })),
    );
    const closed = sockets.map((socket) => new Promise<number>((resolve) => {
      const opened = Date.now();
      if (socket.destroyed) resolve(0);
      socket.on('close', () => resolve(Date.now() - opened));
    }));
    const lifetimes = await Promise.race([Promise.all(closed), new Promise<null>((resolve) => setTimeout(() => resolve(null), 10_000))]);
    for (const s of sockets) s.destroy();
    expect(lifetimes, 'every idle socket was closed within 10 s').not.toBeNull();
    // Over the cap: closed at once rather than after the idle timeout.
    expect(lifetimes!.filter((ms) => ms < 300).length).toBeGreaterThanOrEqual(5);
  });

  it('closes a connection whose headers never complete', async () => {
    const started = Date.now();
    const reply = await rawRequest(port, 'GET /proxy/echo/x HTTP/1.1\r\nhost: g\r\n', { timeoutMs: 10_000 });
    expect(Date.now() - started).toBeLessThan(9_000);
    expect([0, 408]).toContain(reply.status);
  });
});

describe('unauthenticated sources', () => {
  let h: Harness;

  beforeAll(async () => {
    h = await createHarness({ configOverrides: { gateway: { limits: { unauthenticatedPerSource: { ratePerSecond: 1, burst: 5 } } } } });
  });
  afterAll(async () => h?.close());

  it('slows a source that keeps failing authentication (429), and records every attempt', async () => {
    const statuses: number[] = [];
    const decisionIds: string[] = [];
    for (let i = 0; i < 12; i++) {
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/echo/x', headers: { authorization: 'Bearer garbage' } });
      statuses.push(reply.statusCode);
      decisionIds.push(reply.headers['x-caracal-decision-id'] as string);
    }
    expect(statuses.filter((s) => s === 401).length).toBeGreaterThanOrEqual(5);
    expect(statuses.filter((s) => s === 401).length).toBeLessThanOrEqual(7);
    expect(statuses.at(-1)).toBe(429);
    // A valid agent from the same address is not held back by the failures.
    const agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
    expect((await h.assembled.gateway.app.inject({ url: '/proxy/echo/x', headers: { authorization: `Bearer ${await h.token(agent)}` } })).statusCode).toBe(200);
    const recorded = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => decisionIds.every((id) => d.some((x) => x.decision_id === id)));
    for (const id of decisionIds) expect(recorded.some((d) => d.decision_id === id && !d.allow)).toBe(true);
    expect(recorded.some((d) => d.status === 429 && d.reasons.includes('unauthenticated_rate_limited'))).toBe(true);
  });

  it('does not serve the ledger as public tiles unless ledger.serveTiles is on (entry bundles are the decision events)', async () => {
    for (const url of ['/ledger/caracal.local/ledger/checkpoint', '/ledger/caracal.local/ledger/tile/entries/000.p/1', '/ledger/caracal.local/ledger/tile/0/000.p/1']) {
      expect((await h.assembled.gateway.app.inject({ url })).statusCode, url).toBe(404);
    }
  });

  it('slows a source that keeps failing authentication on the receipts route too', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) {
      const reply = await h.assembled.gateway.app.inject({ url: '/v1/receipts/01900000-0000-7000-8000-000000000000', headers: { authorization: 'Bearer garbage' } });
      statuses.push(reply.statusCode);
    }
    expect(statuses.every((s) => s === 401 || s === 429)).toBe(true);
    expect(statuses.at(-1)).toBe(429);
  });
});

describe('access log and client aborts', () => {
  let up: RecordingUpstream;
  let h: Harness;
  let port: number;
  let token: string;
  let agent: string;
  const lines: Record<string, unknown>[] = [];

  beforeAll(async () => {
    up = await startRecordingUpstream();
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
        callback();
      },
    });
    h = await createHarness({ extraUpstreams: [{ name: 'up', url: up.url }], logger: pino({ level: 'info' }, sink) });
    agent = await h.registerAgent();
    await h.op('policy.create', { principalId: agent, resources: ['api:external/up'], actions: ['read'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: agent, pattern: `${up.url}/**`, patternType: 'glob' });
    token = await h.token(agent);
    port = await listen(h);
  });
  afterAll(async () => {
    await h?.close();
    await up?.close();
  });

  it('writes one access line per request with method, path, status, upstream, principal, decision and duration', async () => {
    const reply = await rawRequest(port, rawGet('/proxy/up/items?secret=1', { authorization: `Bearer ${token}` }));
    expect(reply.status).toBe(200);
    const decisionId = headerOf(reply.head, 'x-caracal-decision-id');
    await expect.poll(() => lines.filter((l) => l.decision_id === decisionId && l.msg === 'request')).toHaveLength(1);
    const line = lines.find((l) => l.decision_id === decisionId && l.msg === 'request')!;
    expect(line).toMatchObject({ component: 'access', method: 'GET', path: '/proxy/up/items', status: 200, upstream: 'up', principal_id: agent, request_id: headerOf(reply.head, 'x-request-id') });
    expect(line.duration_ms).toEqual(expect.any(Number));
    expect(JSON.stringify(line)).not.toContain(token);
  });

  it('counts clients that hang up mid-request as aborts at info level, never as a 500 at error level', async () => {
    const abortsBefore = (await h.assembled.metrics.clientAborts.get()).values.reduce((sum, v) => sum + v.value, 0);
    const count = 20;
    await Promise.all(
      Array.from({ length: count }, (_, i) =>
        new Promise<void>((resolve) => {
          const socket = net.connect(port, '127.0.0.1', () => socket.write(rawGet(`/proxy/up/slow?ms=1500&i=${i}`, { authorization: `Bearer ${token}` })));
          socket.on('error', () => {});
          setTimeout(() => {
            socket.destroy();
            resolve();
          }, 300);
        }),
      ),
    );
    await expect.poll(async () => (await h.assembled.metrics.clientAborts.get()).values.reduce((sum, v) => sum + v.value, 0), { timeout: 10_000 }).toBeGreaterThanOrEqual(abortsBefore + count);
    // Let the upstream answers arrive for connections that are gone.
    await new Promise((resolve) => setTimeout(resolve, 1_800));
    expect(lines.filter((l) => (l.level as number) >= 50)).toEqual([]);
    expect(lines.filter((l) => l.msg === 'client aborted the request').length).toBeGreaterThanOrEqual(count);
    // Their concurrency slots are free again: the agent is served.
    expect((await rawRequest(port, rawGet('/proxy/up/after', { authorization: `Bearer ${token}` }))).status).toBe(200);
  });
});

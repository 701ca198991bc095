import { randomBytes } from 'node:crypto';
import http, { type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventLog } from '../../src/events/event-log.js';
import type { PolicyEvaluator } from '../../src/gateway/app.js';
import { waitUntil } from '../helpers/fixtures.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';

interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

/**
 * An upstream that records every request it receives. Requests under `/hold` get no answer until
 * `release()` (or ever, if it is not called); every other request gets 200 at once.
 */
async function startRecordingUpstream() {
  const received: Received[] = [];
  const held: ServerResponse[] = [];
  const server = http.createServer((req, res) => {
    received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    req.resume();
    if (req.url?.startsWith('/hold')) {
      res.on('error', () => {}); // the gateway may have given up on it
      held.push(res);
      return;
    }
    const body = JSON.stringify({ answered: req.url });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    /** Answers every held request that is still open. */
    release() {
      for (const res of held.splice(0)) {
        if (res.destroyed || !res.socket || res.socket.destroyed) continue;
        const body = JSON.stringify({ answered: res.req.url, released: true });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The real event log, except that `publish` fails while `fail(topic)` says so: a broken write path. */
function withFailingPublish(log: EventLog, fail: (topic: string) => boolean): EventLog {
  return {
    kind: log.kind,
    createTopics: (topics) => log.createTopics(topics),
    listTopics: () => log.listTopics(),
    publish: async (topic, messages) => {
      if (fail(topic)) throw new Error(`injected fault: the event log refuses writes to ${topic}`);
      await log.publish(topic, messages);
    },
    subscribe: (options) => log.subscribe(options),
    consumerLag: (groupId, topics) => log.consumerLag(groupId, topics),
    ping: () => log.ping(),
    close: () => log.close(),
  };
}

/** Every error the gateway answers carries the request id it also sends as `x-request-id`. */
function expectError(response: LightMyRequestResponse, status: number, code: string): void {
  expect(response.statusCode, response.body).toBe(status);
  const requestId = response.headers['x-request-id'];
  expect(typeof requestId === 'string' && requestId.length > 0, `x-request-id: ${String(requestId)}`).toBe(true);
  expect(response.json()).toMatchObject({ error: code, request_id: requestId });
}

describe.each(BACKENDS)('gateway and its upstreams on the %s backend', (backend) => {
  const secretEnv = `CARACAL_TEST_UPSTREAM_KEY_${randomBytes(4).toString('hex').toUpperCase()}`;
  const secret = `sk-upstream-${randomBytes(16).toString('hex')}`;
  let recorder: Awaited<ReturnType<typeof startRecordingUpstream>>;
  let h: Harness;
  let agent: string;
  let token: string;
  let failDecisions = false;

  const get = (url: string, bearer = token) => h.assembled.gateway.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${bearer}` } });
  const receivedAt = (path: string) => recorder.received.filter((r) => r.url === path);

  beforeAll(async () => {
    recorder = await startRecordingUpstream();
    process.env[secretEnv] = secret;
    h = await createHarness({
      backend,
      extraUpstreams: [
        { name: 'keyed', url: recorder.url, credentials: { header: 'x-api-key', valueEnv: secretEnv, prefix: '' } },
        { name: 'slow', url: `${recorder.url}/hold`, timeoutMs: 500 },
      ],
      wrapEvents: (log) => withFailingPublish(log, (topic) => failDecisions && topic === h.ctx.topics.decisions),
      // The direct path (no spool): each allow waits for the event log itself, so a failing log
      // must refuse the call. The spool's own refusal (spool full) is in gateway-spool.test.ts.
      configOverrides: { spool: { enabled: false } },
    });
    agent = await h.registerAgent();
    await h.grant(agent, ['api:external/keyed', 'api:external/slow'], ['read']);
    await h.op('allowlist.create', { principalId: agent, pattern: `${recorder.url}/**`, patternType: 'glob' });
    token = await h.token(agent);
  });
  afterAll(async () => {
    recorder?.release();
    await h?.close();
    await recorder?.close();
    delete process.env[secretEnv];
  });

  it('injects the upstream credential from its environment variable and forwards none of the agent’s', async () => {
    const response = await get('/proxy/keyed/v1/models?limit=1');
    expect(response.statusCode, response.body).toBe(200);
    expect(response.json()).toEqual({ answered: '/v1/models?limit=1' });
    const [received, ...more] = receivedAt('/v1/models?limit=1');
    expect(more).toEqual([]);
    expect(received!.headers['x-api-key']).toBe(secret);
    expect(received!.headers.authorization).toBeUndefined();
    const carryingToken = Object.entries(received!.headers).filter(([, value]) => [value ?? ''].flat().some((v) => v.includes(token)));
    expect(carryingToken).toEqual([]);
  });

  it('answers 503 CARACAL_EVENTS_UNAVAILABLE and calls no upstream when the decision cannot be recorded', async () => {
    const before = recorder.received.length;
    failDecisions = true;
    let refused: LightMyRequestResponse;
    try {
      refused = await get('/proxy/keyed/v1/unrecorded');
    } finally {
      failDecisions = false;
    }
    expectError(refused, 503, 'CARACAL_EVENTS_UNAVAILABLE');
    expect(recorder.received.length).toBe(before);
    // The same request goes through once decisions can be recorded again.
    const allowed = await get('/proxy/keyed/v1/unrecorded');
    expect(allowed.statusCode, allowed.body).toBe(200);
    expect(receivedAt('/v1/unrecorded')).toHaveLength(1);
  });

  it('answers 504 CARACAL_UPSTREAM_TIMEOUT when the upstream does not answer within its timeoutMs', async () => {
    const started = performance.now();
    const response = await get('/proxy/slow/never');
    const elapsed = performance.now() - started;
    expectError(response, 504, 'CARACAL_UPSTREAM_TIMEOUT');
    // The request did reach the upstream (this is not a refused connection), and the gateway
    // gave up on it after the upstream's 500 ms rather than waiting on.
    expect(receivedAt('/hold/never')).toHaveLength(1);
    expect(elapsed).toBeGreaterThanOrEqual(450);
    expect(elapsed).toBeLessThan(15_000);
  });

  it('reports the policy as not ready when the loaded evaluator cannot decide', async () => {
    const healthy = await h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' });
    expect(healthy.statusCode, healthy.body).toBe(200);
    expect(healthy.json().checks.policy.ok).toBe(true);
    const original = h.assembled.engine.current;
    const broken: PolicyEvaluator = {
      revision: original.revision,
      evaluate: () => {
        throw new Error('injected fault: the policy cannot be evaluated');
      },
    };
    h.assembled.engine.current = broken;
    try {
      const ready = await h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' });
      expect(ready.statusCode, ready.body).toBe(503);
      expect(ready.json()).toMatchObject({ status: 'not_ready', checks: { policy: { ok: false } } });
    } finally {
      h.assembled.engine.current = original;
    }
    expect((await h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' })).statusCode).toBe(200);
  });

  // Last: a gateway that began shutting down does not come back.
  it('answers 503 CARACAL_SHUTTING_DOWN while draining, and the in-flight request still completes', async () => {
    const inFlight = get('/proxy/keyed/hold/in-flight');
    await waitUntil(() => receivedAt('/hold/in-flight').length === 1, 'the in-flight request at the upstream', 15_000);
    const before = recorder.received.length;

    h.assembled.gateway.beginShutdown();
    const refused = await get('/proxy/keyed/v1/after-shutdown');
    expectError(refused, 503, 'CARACAL_SHUTTING_DOWN');
    expect(recorder.received.length).toBe(before);
    const ready = await h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json().status).toBe('shutting_down');

    recorder.release();
    const completed = await inFlight;
    expect(completed.statusCode, completed.body).toBe(200);
    expect(completed.json()).toEqual({ answered: '/hold/in-flight', released: true });
  });
});

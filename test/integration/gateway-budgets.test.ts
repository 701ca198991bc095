// Budgets on the request path: a priced upstream, an agent with a budget for exactly N calls, many calls at once —
// exactly N reach the upstream and are allowed; the others get a readable budget_exceeded in the upstream's dialect.
// A call the upstream never answered is not charged; a budget raised by an operator takes effect on every gateway.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import { windowBounds } from '../../src/metering/money.js';
import { budgetLineKey, type SpendCounters } from '../../src/metering/spend-counters.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { closedPort } from '../helpers/ports.js';
import { BACKENDS, createHarness, readTopic, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';

const PRICE = '0.25';
const PRICE_MICROS = 250_000;
const ALLOWED = 37;
const CALLS = 1_000;

async function until(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

describe.each(BACKENDS)('budgets on the request path on the %s backend', (backend) => {
  let h: Harness;
  let paid: EchoUpstream;
  let llm: EchoUpstream;
  // Config input (decimal text), which loadConfig parses into micro-units.
  const pricing = { currency: 'USD', perRequest: PRICE } as unknown as NonNullable<ExtraUpstream['pricing']>;

  beforeAll(async () => {
    paid = await startEchoUpstream();
    llm = await startEchoUpstream();
    h = await createHarness({
      backend,
      configOverrides: {
        // The budget is what limits here, not the per-principal limits.
        gateway: { limits: { perPrincipal: { maxConcurrent: 100_000, rate: { ratePerSecond: 1_000_000, burst: 1_000_000 } }, unauthenticatedPerSource: { ratePerSecond: 100_000, burst: 100_000 } } },
      },
      extraUpstreams: [
        { name: 'paid', url: paid.url, pricing },
        { name: 'llm', url: llm.url, dialect: 'openai', pricing },
        { name: 'gone', url: `http://127.0.0.1:${await closedPort()}`, pricing },
        { name: 'free', url: paid.url },
      ],
    });
  }, 120_000);

  afterAll(async () => {
    await h?.close();
    await paid?.close();
    await llm?.close();
  });

  /** An agent allowed on every upstream of the suite, with a daily budget. */
  async function agent(limit: string) {
    const id = await h.registerAgent();
    await h.op('policy.create', { principalId: id, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600 });
    for (const url of [paid.url, llm.url, 'http://127.0.0.1:*']) await h.op('allowlist.create', { principalId: id, pattern: `${url}/**`, patternType: 'glob' });
    await h.op('budget.set', { principalId: id, window: 'daily', limit, currency: 'USD' });
    return { id, token: await h.token(id) };
  }
  const call = (token: string, upstream: string) => h.assembled.gateway.app.inject({ url: `/proxy/${upstream}/v1/items`, headers: { authorization: `Bearer ${token}` } });
  const usage = async (principalId: string) => {
    const spend = await h.ctx.spendCounters();
    return spend.usage(budgetLineKey(principalId, 'daily', windowBounds('daily', new Date()).start));
  };

  it(`lets exactly ${ALLOWED} of ${CALLS} concurrent calls through a budget for ${ALLOWED}, and none more reach the upstream`, async () => {
    const { id, token } = await agent(String(ALLOWED * 0.25));
    const before = paid.requests;
    const replies = await Promise.all(Array.from({ length: CALLS }, () => call(token, 'paid')));
    const allowed = replies.filter((r) => r.statusCode === 200);
    const refused = replies.filter((r) => r.statusCode === 429);
    expect(allowed).toHaveLength(ALLOWED);
    expect(refused).toHaveLength(CALLS - ALLOWED);
    expect(paid.requests - before).toBe(ALLOWED);
    expect(await until(async () => (await usage(id)).reservedMicros === 0)).toBe(true);
    expect(await usage(id)).toEqual({ spentMicros: ALLOWED * PRICE_MICROS, reservedMicros: 0 });

    const body = refused[0]!.json();
    expect(body).toMatchObject({
      error: 'CARACAL_BUDGET_EXCEEDED',
      reasons: ['budget_exceeded'],
      budget: { principal_id: id, window: 'daily', limit: '9.25', remaining: '0.00', currency: 'USD', resets_at: windowBounds('daily', new Date()).end.toISOString() },
      request_id: expect.any(String),
      decision_id: expect.any(String),
    });
    expect(body.message).toMatch(/^budget_exceeded: the daily budget of .* has 0\.00 USD left, this call needs 0\.25; it resets at /);
  }, 120_000);

  it('answers budget_exceeded in the upstream’s dialect, so an OpenAI client reads it', async () => {
    const { token } = await agent('0.25');
    expect((await call(token, 'llm')).statusCode).toBe(200);
    const refused = await call(token, 'llm');
    expect(refused.statusCode).toBe(429);
    expect(refused.json()).toMatchObject({ error: { type: 'rate_limit_error', code: 'CARACAL_BUDGET_EXCEEDED', message: expect.stringMatching(/budget_exceeded: .* \[CARACAL_BUDGET_EXCEEDED\]$/) } });
  }, 60_000);

  it('charges nothing for a call the upstream never answered, and nothing for unpriced upstreams', async () => {
    const { id, token } = await agent('1.00');
    expect((await call(token, 'gone')).statusCode).toBe(502);
    for (let i = 0; i < 5; i++) expect((await call(token, 'free')).statusCode).toBe(200);
    expect(await until(async () => (await usage(id)).reservedMicros === 0)).toBe(true);
    expect(await usage(id)).toEqual({ spentMicros: 0, reservedMicros: 0 });
  }, 60_000);

  it('takes a raised budget into account once the operator sets it (lifecycle event to the gateway)', async () => {
    const { id, token } = await agent('0.25');
    expect((await call(token, 'paid')).statusCode).toBe(200);
    expect((await call(token, 'paid')).statusCode).toBe(429);
    await h.op('budget.set', { principalId: id, window: 'daily', limit: '0.50', currency: 'USD' });
    expect(await until(async () => (await call(token, 'paid')).statusCode === 200)).toBe(true);
    expect((await call(token, 'paid')).statusCode).toBe(429);
  }, 60_000);

  it('refuses a call when the budget is in another currency than the price, never lets it through', async () => {
    const id = await h.registerAgent();
    await h.op('policy.create', { principalId: id, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: id, pattern: `${paid.url}/**`, patternType: 'glob' });
    await h.op('budget.set', { principalId: id, window: 'monthly', limit: '100', currency: 'EUR' });
    const before = paid.requests;
    const refused = await call(await h.token(id), 'paid');
    expect(refused.statusCode).toBe(429);
    expect(refused.json()).toMatchObject({ reasons: ['budget_currency_mismatch'] });
    expect(paid.requests).toBe(before);
  }, 60_000);
});

describe('budgets when the spend counters cannot be reached', () => {
  it('fails closed: 503 budget_unavailable, nothing proxied, the denial recorded', async () => {
    const paid = await startEchoUpstream();
    const down: SpendCounters = {
      kind: 'redis',
      reserve: () => Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis reserve: connect ECONNREFUSED', { retriable: true })),
      settle: () => Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis settle: connect ECONNREFUSED', { retriable: true })),
      usage: () => Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis usage: connect ECONNREFUSED', { retriable: true })),
      charge: () => Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis charge: connect ECONNREFUSED', { retriable: true })),
      refund: () => Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis refund: connect ECONNREFUSED', { retriable: true })),
      restore: () => Promise.reject(new CaracalError('CARACAL_DEPENDENCY', 'redis restore: connect ECONNREFUSED', { retriable: true })),
      markReady: async () => {},
      isReady: async () => true,
      close: async () => {},
    };
    const h = await createHarness({ spend: down, extraUpstreams: [{ name: 'paid', url: paid.url, pricing: { currency: 'USD', perRequest: '0.01' } as unknown as NonNullable<ExtraUpstream['pricing']> }] });
    try {
      const id = await h.registerAgent();
      await h.op('policy.create', { principalId: id, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 });
      await h.op('allowlist.create', { principalId: id, pattern: `${paid.url}/**`, patternType: 'glob' });
      await h.op('budget.set', { principalId: id, window: 'hourly', limit: '1', currency: 'USD' });
      const token = await h.token(id);
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/paid/x', headers: { authorization: `Bearer ${token}` } });
      expect(reply.statusCode).toBe(503);
      expect(reply.json()).toMatchObject({ error: 'CARACAL_DEPENDENCY', reasons: ['budget_unavailable'] });
      expect(paid.requests).toBe(0);
      // An agent without budgets is not held up by the counters.
      const free = await h.registerAgent();
      await h.op('policy.create', { principalId: free, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 });
      await h.op('allowlist.create', { principalId: free, pattern: `${paid.url}/**`, patternType: 'glob' });
      expect((await h.assembled.gateway.app.inject({ url: '/proxy/paid/x', headers: { authorization: `Bearer ${await h.token(free)}` } })).statusCode).toBe(200);
      const decisions = await readTopic(await h.ctx.events(), h.ctx.topics.decisions, (messages) => messages.some((m) => m.value.includes('budget_unavailable')));
      const denial = decisions.map((m) => JSON.parse(m.value) as { data: { principal_id: string; allow: boolean; reasons: string[]; status: number } }).find((e) => e.data.reasons.includes('budget_unavailable'));
      expect(denial?.data).toMatchObject({ principal_id: id, allow: false, status: 503 });
    } finally {
      await h.close();
      await paid.close();
    }
  }, 60_000);
});

// Metering on the request path, against a local upstream that speaks the OpenAI and Anthropic protocols: every call is
// costed by the gateway to the micro-unit from the usage it read itself, streams pass through as they come, a stream
// cut short is settled for what was delivered, and a call whose usage cannot be read is settled at its reservation and
// flagged estimated. Each call's metering event and its budget line agree.
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IssuedMandate } from '../../src/authority/tokens/mandates.js';
import type { MeteringData } from '../../src/events/cloudevents.js';
import { windowBounds } from '../../src/metering/money.js';
import { budgetLineKey } from '../../src/metering/spend-counters.js';
import type { DecisionInput } from '../../src/policy/engine.js';
import { BACKENDS, createHarness, readTopic, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';
import { countInputWords, outputTokensFor, startMeteredLlmUpstream, type MeteredLlmUpstream } from '../helpers/metered-llm-upstream.js';

const KEY_ENV = 'TEST_METERED_LLM_KEY';
// Per million tokens: input 2.50, cached input 1.25, output 10.00 (so 2.5, 1.25 and 10 micro-units a token); 0.001 a call.
const PER_REQUEST = 1_000;
const pricing = {
  currency: 'USD',
  perRequest: '0.001',
  // A call without a token cap reserves the model's `reservation`.
  models: { 'gpt-4o': { input: '2.50', output: '10.00', cachedInput: '1.25', reservation: '0.05' }, 'claude-test': { input: '2.50', output: '10.00', cachedInput: '1.25', reservation: '0.05' } },
  unknownModelReservation: '0.02',
} as unknown as NonNullable<ExtraUpstream['pricing']>;
const tokens = (n: number, microsPerToken: number) => Math.ceil((n * microsPerToken * 1_000_000) / 1_000_000);
const costOf = (input: number, output: number, cached = 0) => PER_REQUEST + tokens(input - cached, 2.5) + tokens(cached, 1.25) + tokens(output, 10);

describe.each(BACKENDS)('metering on the %s backend', (backend) => {
  let h: Harness;
  let llm: MeteredLlmUpstream;
  let faulty: MeteredLlmUpstream;
  let gatewayUrl: string;
  let agentId: string;
  let token: string;
  const savedKey = process.env[KEY_ENV];
  const apiKey = `sk-metered-${randomBytes(8).toString('hex')}`;
  const inputs: DecisionInput[] = [];

  beforeAll(async () => {
    process.env[KEY_ENV] = apiKey;
    llm = await startMeteredLlmUpstream({ apiKey, cachedInputTokens: (route) => (route === 'messages' || route === 'chat' ? 2 : 0) });
    faulty = await startMeteredLlmUpstream({ apiKey, slowDelayMs: 40, outputTokens: 40 });
    const openai = { header: 'authorization', valueEnv: KEY_ENV, prefix: 'Bearer ' };
    h = await createHarness({
      backend,
      extraUpstreams: [
        { name: 'openai', url: llm.url, dialect: 'openai', credentials: openai, pricing },
        { name: 'anthropic', url: llm.url, dialect: 'anthropic', credentials: { header: 'x-api-key', valueEnv: KEY_ENV }, pricing },
        { name: 'faulty', url: faulty.url, dialect: 'openai', credentials: openai, pricing },
        { name: 'faulty-anthropic', url: faulty.url, dialect: 'anthropic', credentials: { header: 'x-api-key', valueEnv: KEY_ENV }, pricing },
      ],
    });
    // Every policy input is kept, to see the budget facts reach the policy.
    const engine = h.assembled.engine.current;
    h.assembled.engine.current = { revision: engine.revision, evaluate: (input) => (inputs.push(input), engine.evaluate(input)) };
    await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
    gatewayUrl = `http://127.0.0.1:${(h.assembled.gateway.app.server.address() as AddressInfo).port}`;
    agentId = await h.registerAgent();
    await h.op('policy.create', { principalId: agentId, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600 });
    for (const url of [llm.url, faulty.url]) await h.op('allowlist.create', { principalId: agentId, pattern: `${url}/**`, patternType: 'glob' });
    await h.op('budget.set', { principalId: agentId, window: 'daily', limit: '1000.00', currency: 'USD' });
    token = await h.token(agentId);
  }, 120_000);

  afterAll(async () => {
    await h?.close();
    await llm?.close();
    await faulty?.close();
    if (savedKey === undefined) delete process.env[KEY_ENV];
    else process.env[KEY_ENV] = savedKey;
  });

  const post = (upstream: string, path: string, body: unknown, options: { signal?: AbortSignal; as?: string } = {}) =>
    fetch(`${gatewayUrl}/proxy/${upstream}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${options.as ?? token}`, 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
      ...(options.signal ? { signal: options.signal } : {}),
    });

  /** The metering event of a decision, read from the metering topic. */
  async function metering(decisionId: string, subject = agentId): Promise<MeteringData> {
    const events = await h.ctx.events();
    const messages = await readTopic(events, h.ctx.topics.metering, (all) => all.some((m) => m.value.includes(decisionId)));
    const found = messages.map((m) => JSON.parse(m.value) as { type: string; subject: string; data: MeteringData }).find((e) => e.data.decision_id === decisionId);
    if (!found) throw new Error(`no metering event for ${decisionId}`);
    expect(found.type).toBe('dev.caracal.metering.event.v1');
    expect(found.subject).toBe(subject);
    return found.data;
  }
  const spent = async () => (await (await h.ctx.spendCounters()).usage(budgetLineKey(agentId, 'daily', windowBounds('daily', new Date()).start))).spentMicros;

  /** Sends a call, reads all of its answer, and returns it with its metering event and what the budget line gained. */
  async function meteredCall(upstream: string, path: string, body: Record<string, unknown>) {
    const before = await spent();
    const response = await post(upstream, path, body);
    const text = await response.text();
    const decisionId = response.headers.get('x-caracal-decision-id')!;
    const event = await metering(decisionId);
    // The settlement lands when the request ends; the event is published with it.
    let charged = (await spent()) - before;
    for (let i = 0; i < 50 && charged !== event.cost_micros; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      charged = (await spent()) - before;
    }
    return { response, text, event, charged };
  }

  it('meters an OpenAI chat completion (JSON) to the micro-unit, cached input at the cached price', async () => {
    const body = { model: 'gpt-4o', max_tokens: 4, messages: [{ role: 'user', content: 'one two three four five six seven' }] };
    const { response, event, charged } = await meteredCall('openai', '/v1/chat/completions', body);
    expect(response.status).toBe(200);
    expect(event).toMatchObject({ model: 'gpt-4o', input_tokens: 7, output_tokens: 4, cached_input_tokens: 2, cost_micros: costOf(7, 4, 2), currency: 'USD', exact: true, estimate_reason: null, outcome: 'completed', upstream_status: 200, upstream: 'openai', principal_id: agentId, chain: [] });
    expect(event.response_bytes).toBeGreaterThan(100);
    expect(charged).toBe(costOf(7, 4, 2));
  });

  it('asks a streamed chat completion for its usage and holds that chunk back from an agent that did not ask', async () => {
    const body = { model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'a b c' }] };
    const { response, text, event, charged } = await meteredCall('openai', '/v1/chat/completions', body);
    expect(response.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const sent = JSON.parse(llm.requests.at(-1)!.body) as Record<string, unknown>;
    expect(sent.stream_options).toEqual({ include_usage: true });
    const chunks = text.split('\n\n').filter((c) => c.startsWith('data: ') && c !== 'data: [DONE]').map((c) => JSON.parse(c.slice(6)) as { choices: unknown[]; usage?: unknown });
    expect(chunks.length).toBeGreaterThan(5);
    expect(chunks.some((c) => c.choices.length === 0)).toBe(false);
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(event).toMatchObject({ input_tokens: 3, output_tokens: 5, cost_micros: costOf(3, 5, 2), exact: true, outcome: 'completed' });
    expect(charged).toBe(costOf(3, 5, 2));

    // An agent that asked for usage gets it, and the request goes up unchanged.
    const asked = { model: 'gpt-4o', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'a b c d' }] };
    const again = await meteredCall('openai', '/v1/chat/completions', asked);
    expect(llm.requests.at(-1)!.body).toBe(JSON.stringify(asked));
    expect(again.text).toContain('"choices":[]');
    expect(again.event).toMatchObject({ input_tokens: 4, cost_micros: costOf(4, 5, 2), exact: true });
  });

  it('meters the Responses API (JSON and streamed) and embeddings', async () => {
    const json = await meteredCall('openai', '/v1/responses', { model: 'gpt-4o', input: 'one two three', max_output_tokens: 3 });
    expect(json.event).toMatchObject({ input_tokens: 3, output_tokens: 3, cost_micros: costOf(3, 3), exact: true });
    expect(json.charged).toBe(costOf(3, 3));
    const streamed = await meteredCall('openai', '/v1/responses', { model: 'gpt-4o', input: 'one two three four', stream: true });
    expect(streamed.text).toContain('response.completed');
    expect(streamed.event).toMatchObject({ input_tokens: 4, output_tokens: 5, cost_micros: costOf(4, 5), exact: true });
    const embeddings = await meteredCall('openai', '/v1/embeddings', { model: 'gpt-4o', input: ['x y', 'z'] });
    expect(embeddings.event).toMatchObject({ input_tokens: 3, output_tokens: 0, cost_micros: costOf(3, 0), exact: true });
  });

  it('meters Anthropic messages, JSON and streamed (message_start + message_delta)', async () => {
    const body = { model: 'claude-test', max_tokens: 3, system: 'be brief', messages: [{ role: 'user', content: 'hello there you' }] };
    const json = await meteredCall('anthropic', '/v1/messages', body);
    expect(json.event).toMatchObject({ model: 'claude-test', input_tokens: 5, output_tokens: 3, cached_input_tokens: 2, cost_micros: costOf(5, 3, 2), exact: true });
    expect(json.charged).toBe(costOf(5, 3, 2));
    const streamed = await meteredCall('anthropic', '/v1/messages', { ...body, stream: true, max_tokens: 50 });
    expect(streamed.text).toContain('event: message_delta');
    expect(streamed.event).toMatchObject({ input_tokens: 5, output_tokens: 5, cost_micros: costOf(5, 5, 2), exact: true });
    expect(streamed.charged).toBe(costOf(5, 5, 2));
  });

  it('passes stream chunks on as they come, and settles a stream the client aborts halfway for what was delivered', async () => {
    const body = { model: 'gpt-4o+slow', stream: true, messages: [{ role: 'user', content: 'count slowly' }] };
    const raw = JSON.stringify(body);
    const before = await spent();
    const controller = new AbortController();
    const response = await post('faulty', '/v1/chat/completions', raw, { signal: controller.signal });
    const decisionId = response.headers.get('x-caracal-decision-id')!;
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let received = '';
    const firstAt = Date.now();
    let deltas = 0;
    // 40 tokens at 40 ms each: the first ten arrive one by one, long before the stream's end (not buffered).
    while (deltas < 10) {
      const { value, done } = await reader.read();
      if (done) break;
      received += decoder.decode(value, { stream: true });
      deltas = (received.match(/"content":"/g) ?? []).length;
    }
    expect(deltas).toBeGreaterThanOrEqual(10);
    expect(Date.now() - firstAt).toBeLessThan(40 * 40);
    controller.abort();
    await faulty.streamsSettled();
    const stream = faulty.streams.at(-1)!;
    expect(stream.aborted).toBe(true);
    const event = await metering(decisionId);
    expect(event).toMatchObject({ outcome: 'aborted', exact: false, estimate_reason: 'cut_short' });
    // What was delivered: the prompt's bound (its bytes) and the deltas that passed the gateway.
    expect(event.output_tokens).toBeGreaterThanOrEqual(10);
    expect(event.output_tokens).toBeLessThanOrEqual(stream.deltasWritten);
    expect(event.output_tokens).toBeLessThan(40);
    expect(event.cost_micros).toBe(PER_REQUEST + tokens(Buffer.byteLength(raw), 2.5) + tokens(event.output_tokens!, 10));
    let charged = 0;
    for (let i = 0; i < 50 && charged !== event.cost_micros; i++) {
      charged = (await spent()) - before;
      if (charged !== event.cost_micros) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(charged).toBe(event.cost_micros);
  });

  it.each([
    ['a stream that never sends usage', 'no-usage', true, 'no_usage'],
    ['a lying usage block', 'lying-usage', false, 'usage_unreadable: '],
    ['a lying usage block in a stream', 'lying-usage', true, 'usage_unreadable: '],
    ['broken SSE', 'broken-sse', true, 'usage_unreadable: a stream event is not JSON'],
    ['an event larger than the tap reads', 'huge-event', true, 'usage_unreadable: a stream line is larger than the tap reads'],
  ])('settles %s at the reservation, flagged estimated, and still answers the agent', async (_name, fault, stream, reason) => {
    // A model the table lacks (the fault suffix): reserved at unknownModelReservation.
    const body = { model: `gpt-4o+${fault}`, stream, messages: [{ role: 'user', content: 'x' }] };
    const { response, text, event, charged } = await meteredCall('faulty', '/v1/chat/completions', body);
    expect(response.status).toBe(200);
    expect(text.length).toBeGreaterThan(0);
    expect(event.exact).toBe(false);
    expect(event.estimate_reason!.startsWith(reason)).toBe(true);
    expect(event.cost_micros).toBe(PER_REQUEST + 20_000);
    expect(charged).toBe(PER_REQUEST + 20_000);
    if (fault === 'huge-event') expect(text.length).toBeGreaterThan(2 * 1024 * 1024);
  });

  it('charges an upstream error answer its per-request price only', async () => {
    const { response, event, charged } = await meteredCall('faulty', '/v1/chat/completions', { model: 'gpt-4o+status-500', messages: [] });
    expect(response.status).toBe(500);
    expect(event).toMatchObject({ outcome: 'failed', upstream_status: 500, cost_micros: PER_REQUEST, exact: true });
    expect(charged).toBe(PER_REQUEST);
  });

  it.each([
    ['a body that is not JSON', '{"model": "gpt-4o", ', 400, 'bad_llm_request'],
    ['a negative token cap', JSON.stringify({ model: 'gpt-4o', max_tokens: -3, messages: [] }), 400, 'bad_llm_request'],
    ['a NaN-like cap', '{"model":"gpt-4o","max_tokens":1e400,"messages":[]}', 400, 'bad_llm_request'],
    ['no model', JSON.stringify({ messages: [] }), 400, 'bad_llm_request'],
  ])('refuses %s before anything reaches the upstream, in the dialect, never a 500', async (_name, body, status, reason) => {
    const before = llm.requests.length;
    const response = await post('openai', '/v1/chat/completions', body);
    expect(response.status).toBe(status);
    const json = (await response.json()) as { error: { code: string; reasons: string[]; message: string } };
    expect(json.error.code).toBe('CARACAL_BAD_REQUEST');
    expect(json.error.reasons).toEqual([reason]);
    expect(llm.requests.length).toBe(before);
  });

  it('refuses a budgeted call whose cost nothing bounds, and one the budget cannot cover, before the upstream', async () => {
    const poor = await h.registerAgent();
    await h.op('policy.create', { principalId: poor, resources: ['api:external/*'], actions: ['write'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: poor, pattern: `${llm.url}/**`, patternType: 'glob' });
    await h.op('budget.set', { principalId: poor, window: 'hourly', limit: '0.01', currency: 'USD' });
    const poorToken = await h.token(poor);
    const before = llm.requests.length;
    const unbounded = await post('anthropic', '/v1/messages', { model: 'claude-unpriced', messages: [] }, { as: poorToken });
    // No max_tokens on a model the table lacks, and no reservation configured for it: 0.02 is over the budget anyway.
    expect(unbounded.status).toBe(429);
    const big = await post('openai', '/v1/chat/completions', { model: 'gpt-4o', max_tokens: 5_000, messages: [] }, { as: poorToken });
    expect(big.status).toBe(429);
    const body = (await big.json()) as { error: { code: string; message: string; budget: { remaining: string; resets_at: string } } };
    expect(body.error.code).toBe('CARACAL_BUDGET_EXCEEDED');
    expect(body.error.budget).toMatchObject({ remaining: '0.01', resets_at: windowBounds('hourly', new Date()).end.toISOString() });
    const small = await post('openai', '/v1/chat/completions', { model: 'gpt-4o', max_tokens: 5, messages: [] }, { as: poorToken });
    expect(small.status).toBe(200);
    expect(llm.requests.length).toBe(before + 1);
    // The policy saw the budgets this call is reserved against.
    const seen = inputs.filter((input) => (input.principal as { id: string } | null)?.id === poor).at(-1)!;
    expect(seen.spend).toEqual({ budgets: [{ principal_id: poor, window: 'hourly', limit_micros: 10_000, currency: 'USD' }] });
  });

  it('charges a delegated mandate’s own budget and its delegator’s along with the caller’s, and refuses past the smallest', async () => {
    const lead = await h.registerAgent();
    const worker = await h.registerAgent();
    for (const id of [lead, worker]) {
      await h.op('policy.create', { principalId: id, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600, delegationDepth: 2 });
      await h.op('allowlist.create', { principalId: id, pattern: `${llm.url}/**`, patternType: 'glob' });
    }
    await h.op('budget.set', { principalId: lead, window: 'monthly', limit: '50.00', currency: 'USD' });
    const root = (await h.op('mandate.issue', { principalId: lead, resources: ['api:external/openai'], actions: ['write'], validitySeconds: 600 })) as IssuedMandate;
    // The worker's mandate may spend 0.0035 a day. Each call costs exactly 0.001 (no tokens in, none out) but reserves
    // 0.001 plus its body's bound at the input price first: three fit, the fourth's reservation does not.
    const child = (await h.op('mandate.delegate', {
      parentToken: root.token,
      parentId: root.id,
      principalId: worker,
      resources: ['api:external/openai'],
      actions: ['write'],
      validitySeconds: 300,
      budget: { limit: '0.0035', window: 'daily', currency: 'USD' },
    })) as IssuedMandate;
    const workerToken = await h.token(worker);
    const call = () =>
      fetch(`${gatewayUrl}/proxy/openai/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${workerToken}`, 'caracal-mandate': child.token, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-4o', max_tokens: 0, messages: [] }),
      });
    const statuses: number[] = [];
    let refusal: { error: { message: string; budget: Record<string, string> } } | null = null;
    let lastAllowed = '';
    for (let i = 0; i < 5; i++) {
      const response = await call();
      statuses.push(response.status);
      if (response.status === 429) refusal ??= (await response.json()) as typeof refusal;
      else {
        lastAllowed = response.headers.get('x-caracal-decision-id')!;
        await response.text();
      }
    }
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
    expect(refusal!.error.budget).toMatchObject({ principal_id: worker, mandate_id: child.id, window: 'daily', limit: '0.0035', remaining: '0.0005' });
    expect(refusal!.error.message).toContain(`budget of mandate ${child.id} (held by ${worker})`);
    const event = await metering(lastAllowed, worker);
    expect(event).toMatchObject({ principal_id: worker, chain: [lead], mandate_ids: [child.id, root.id], cost_micros: PER_REQUEST });
    // The delegator's own budget was charged for the worker's calls.
    const leadSpent = await (await h.ctx.spendCounters()).usage(budgetLineKey(lead, 'monthly', windowBounds('monthly', new Date()).start));
    expect(leadSpent.spentMicros).toBe(3 * PER_REQUEST);
  });

  it('counts input and output by the upstream’s usage, not by anything the agent claims', async () => {
    // An agent that sends its own "usage" and a price gets metered by what the upstream reported.
    const body = { model: 'gpt-4o', max_tokens: 2, usage: { prompt_tokens: 0, completion_tokens: 0 }, price: 0, messages: [{ role: 'user', content: 'p q r s' }] };
    const { event } = await meteredCall('openai', '/v1/chat/completions', body);
    expect(countInputWords('chat', body)).toBe(4);
    expect(outputTokensFor('chat', body)).toBe(2);
    expect(event).toMatchObject({ input_tokens: 4, output_tokens: 2, cost_micros: costOf(4, 2, 2), exact: true });
  });
});

import Anthropic from '@anthropic-ai/sdk';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeteringData } from '../../src/events/cloudevents.js';
import { createHarness, readTopic, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';
import { replyText, startMeteredLlmUpstream, type MeteredLlmUpstream } from '../helpers/metered-llm-upstream.js';

/**
 * The official OpenAI and Anthropic clients, pointed at the gateway and otherwise unchanged, plain and streaming: they
 * get the upstream's answers as they would from the provider (a streamed chat completion shows no usage chunk the
 * agent did not ask for), every call is metered to the micro-unit, and a call over budget is an exception of the
 * SDK's own class whose message says budget_exceeded, with what is left and when it resets.
 */

const KEY_ENV = 'TEST_METERING_SDK_KEY';
// Per token: input 2.5, output 10 micro-units; 0.001 a call.
const pricing = {
  currency: 'USD',
  perRequest: '0.001',
  models: { 'gpt-4o': { input: '2.50', output: '10.00', reservation: '0.05' }, 'claude-test': { input: '2.50', output: '10.00', reservation: '0.05' } },
} as unknown as NonNullable<ExtraUpstream['pricing']>;
const costOf = (input: number, output: number) => 1_000 + Math.ceil(input * 2.5) + output * 10;

let h: Harness;
let upstream: MeteredLlmUpstream;
let gatewayUrl: string;
let agentId: string;
let token: string;
const savedKey = process.env[KEY_ENV];

beforeAll(async () => {
  const apiKey = `sk-upstream-${randomBytes(8).toString('hex')}`;
  process.env[KEY_ENV] = apiKey;
  upstream = await startMeteredLlmUpstream({ apiKey });
  h = await createHarness({
    extraUpstreams: [
      { name: 'openai', url: upstream.url, dialect: 'openai', credentials: { header: 'authorization', valueEnv: KEY_ENV, prefix: 'Bearer ' }, pricing },
      { name: 'anthropic', url: upstream.url, dialect: 'anthropic', credentials: { header: 'x-api-key', valueEnv: KEY_ENV }, pricing },
    ],
  });
  await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
  gatewayUrl = `http://127.0.0.1:${(h.assembled.gateway.app.server.address() as AddressInfo).port}`;
  agentId = await h.registerAgent();
  await h.op('policy.create', { principalId: agentId, resources: ['api:external/*'], actions: ['write'], maxValiditySeconds: 3600 });
  await h.op('allowlist.create', { principalId: agentId, pattern: `${upstream.url}/**`, patternType: 'glob' });
  await h.op('budget.set', { principalId: agentId, window: 'monthly', limit: '100.00', currency: 'USD' });
  token = await h.token(agentId);
}, 120_000);

afterAll(async () => {
  await h?.close();
  await upstream?.close();
  if (savedKey === undefined) delete process.env[KEY_ENV];
  else process.env[KEY_ENV] = savedKey;
});

const openai = (apiKey = token) => new OpenAI({ apiKey, baseURL: `${gatewayUrl}/proxy/openai/v1`, maxRetries: 0 });
const anthropic = (apiKey = token) => new Anthropic({ apiKey, baseURL: `${gatewayUrl}/proxy/anthropic`, maxRetries: 0 });

/** The metering events of these decisions, read from the metering topic. */
async function metering(decisionIds: string[]): Promise<Map<string, MeteringData>> {
  const events = await h.ctx.events();
  const messages = await readTopic(events, h.ctx.topics.metering, (all) => decisionIds.every((id) => all.some((m) => m.value.includes(id))));
  const found = new Map<string, MeteringData>();
  for (const m of messages) {
    const data = (JSON.parse(m.value) as { data: MeteringData }).data;
    if (decisionIds.includes(data.decision_id)) found.set(data.decision_id, data);
  }
  expect([...found.keys()].sort()).toEqual([...decisionIds].sort());
  return found;
}

describe('official SDK clients through the metering gateway', () => {
  it('work unchanged, plain and streaming, and every call is metered to the micro-unit', async () => {
    const ids: string[] = [];
    const decision = (response: Response) => ids.push(response.headers.get('x-caracal-decision-id')!);

    const plain = await openai().chat.completions.create({ model: 'gpt-4o', max_tokens: 3, messages: [{ role: 'user', content: 'one two three four' }] }).withResponse();
    decision(plain.response);
    expect(plain.data.choices[0]!.message.content).toBe(replyText(3));
    expect(plain.data.usage?.prompt_tokens).toBe(4);

    const streamed = await openai().chat.completions.create({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'a b' }] }).withResponse();
    decision(streamed.response);
    let text = '';
    let usageChunks = 0;
    for await (const chunk of streamed.data) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usageChunks++;
    }
    expect(text).toBe(replyText(5));
    expect(usageChunks).toBe(0); // the gateway asked for usage; the agent did not, so it never sees it

    const responses = await openai().responses.create({ model: 'gpt-4o', input: 'x y z', max_output_tokens: 2 }).withResponse();
    decision(responses.response);
    expect(responses.data.output_text).toBe(replyText(2));

    const message = await anthropic().messages.create({ model: 'claude-test', max_tokens: 4, messages: [{ role: 'user', content: 'hello there' }] }).withResponse();
    decision(message.response);
    expect(message.data.content[0]).toMatchObject({ type: 'text', text: replyText(4) });

    const messageStream = anthropic().messages.stream({ model: 'claude-test', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] });
    const final = await messageStream.finalMessage();
    expect(final.usage.output_tokens).toBe(5);
    const streamedId = (await messageStream.withResponse()).response.headers.get('x-caracal-decision-id')!;
    ids.push(streamedId);

    const events = await metering(ids);
    const costs = ids.map((id) => events.get(id)!);
    expect(costs.map((e) => [e.input_tokens, e.output_tokens, e.cost_micros, e.exact])).toEqual([
      [4, 3, costOf(4, 3), true],
      [2, 5, costOf(2, 5), true],
      [3, 2, costOf(3, 2), true],
      [2, 4, costOf(2, 4), true],
      [1, 5, costOf(1, 5), true],
    ]);
  }, 60_000);

  it('show a readable budget_exceeded error in each SDK, and the upstream hears nothing of it', async () => {
    const poor = await h.registerAgent();
    await h.op('policy.create', { principalId: poor, resources: ['api:external/*'], actions: ['write'], maxValiditySeconds: 3600 });
    await h.op('allowlist.create', { principalId: poor, pattern: `${upstream.url}/**`, patternType: 'glob' });
    await h.op('budget.set', { principalId: poor, window: 'daily', limit: '0.02', currency: 'USD' });
    const poorToken = await h.token(poor);
    const before = upstream.requests.length;

    const openaiError = await openai(poorToken)
      .chat.completions.create({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: 'hi' }] })
      .then(() => null, (err: unknown) => err);
    expect(openaiError).toBeInstanceOf(OpenAI.RateLimitError);
    const oe = openaiError as InstanceType<typeof OpenAI.RateLimitError>;
    expect(oe.status).toBe(429);
    expect(oe.code).toBe('CARACAL_BUDGET_EXCEEDED');
    expect(oe.message).toMatch(/^429 budget_exceeded: the daily budget of .+ has 0\.02 USD left, this call needs 0\.051; it resets at \d{4}-\d\d-\d\dT00:00:00\.000Z \[CARACAL_BUDGET_EXCEEDED\]$/);
    expect(oe.message).not.toContain('[object Object]');

    const anthropicError = await anthropic(poorToken)
      .messages.create({ model: 'claude-test', max_tokens: 10_000, messages: [{ role: 'user', content: 'hi' }] })
      .then(() => null, (err: unknown) => err);
    expect(anthropicError).toBeInstanceOf(Anthropic.RateLimitError);
    const ae = anthropicError as InstanceType<typeof Anthropic.RateLimitError>;
    expect(ae.status).toBe(429);
    expect(ae.message).toContain('budget_exceeded: the daily budget of');
    expect((ae.error as { error: { budget: { remaining: string } } }).error.budget.remaining).toBe('0.02');
    expect(upstream.requests.length).toBe(before);
  }, 60_000);
});

// The request side of metering: what the gateway reads of an LLM call before reserving, and what a call that ended
// costs — exact from a full usage count, estimated (and flagged) from the reservation or from what was delivered.
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { costOfCall, llmEndpointOf, llmReservation, readBody, readLlmRequest, type ResponseReading } from '../../src/gateway/metering.js';
import { PricingSchema } from '../../src/metering/pricing.js';

// 2.50 / 10.00 per million tokens (1.25 cached), 0.001 per request.
const pricing = PricingSchema.parse({ currency: 'USD', perRequest: '0.001', models: { 'gpt-4o': { input: '2.50', output: '10.00', cachedInput: '1.25', reservation: '0.05' } } });
const bytes = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
const reading = (overrides: Partial<ResponseReading>): ResponseReading => ({ model: null, usage: null, error: null, deltas: 0, final: false, bytes: 0, ended: true, ...overrides });

function refusal(run: () => unknown): CaracalError {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(CaracalError);
    return err as CaracalError;
  }
  throw new Error('expected a refusal');
}

describe('LLM endpoints', () => {
  it('are found by the end of the upstream path, for POST only', () => {
    expect(llmEndpointOf('openai', 'POST', '/v1/chat/completions')).toBe('chat');
    expect(llmEndpointOf('openai', 'POST', '/v1/chat/completions/?x=1')).toBe('chat');
    expect(llmEndpointOf('openai', 'POST', '/v1/responses')).toBe('responses');
    expect(llmEndpointOf('openai', 'POST', '/v1/embeddings')).toBe('embeddings');
    expect(llmEndpointOf('anthropic', 'POST', '/v1/messages')).toBe('messages');
    expect(llmEndpointOf('openai', 'GET', '/v1/chat/completions')).toBeNull();
    expect(llmEndpointOf('openai', 'POST', '/v1/messages')).toBeNull();
    expect(llmEndpointOf('anthropic', 'POST', '/v1/messages/count_tokens')).toBeNull();
    expect(llmEndpointOf('http', 'POST', '/v1/chat/completions')).toBeNull();
  });
});

describe('reading an LLM request', () => {
  it('takes the model, the token cap and the prompt bound, and leaves the bytes alone', () => {
    const raw = bytes({ model: 'gpt-4o', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] });
    const facts = readLlmRequest('chat', raw);
    expect(facts).toMatchObject({ endpoint: 'chat', model: 'gpt-4o', stream: false, maxOutputTokens: 100, promptTokens: raw.length, stripUsage: false });
    expect(facts.body.equals(raw)).toBe(true);
    // max_completion_tokens wins over the older max_tokens; the Responses API and Anthropic have their own names.
    expect(readLlmRequest('chat', bytes({ model: 'gpt-4o', max_tokens: 100, max_completion_tokens: 7 })).maxOutputTokens).toBe(7);
    expect(readLlmRequest('responses', bytes({ model: 'gpt-4o', max_output_tokens: 9 })).maxOutputTokens).toBe(9);
    expect(readLlmRequest('messages', bytes({ model: 'claude', max_tokens: 11 })).maxOutputTokens).toBe(11);
    expect(readLlmRequest('embeddings', bytes({ model: 'e', input: 'x' })).maxOutputTokens).toBe(0);
    expect(readLlmRequest('chat', bytes({ model: 'gpt-4o' })).maxOutputTokens).toBeNull();
  });

  it('asks a streamed chat completion for its usage, without moving anything else, and remembers to hold it back', () => {
    const raw = bytes('  {"model":"gpt-4o","stream":true,"seed":12345678901234567890}');
    const facts = readLlmRequest('chat', raw);
    expect(facts.stripUsage).toBe(true);
    expect(facts.body.toString()).toBe('{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"seed":12345678901234567890}');
    // stream_options of the agent's own: kept, with include_usage turned on.
    const own = readLlmRequest('chat', bytes({ model: 'gpt-4o', stream: true, stream_options: { include_usage: false, other: 1 } }));
    expect(JSON.parse(own.body.toString())).toEqual({ model: 'gpt-4o', stream: true, stream_options: { include_usage: true, other: 1 } });
    expect(own.stripUsage).toBe(true);
    // An agent that asked for usage sees it: nothing is changed or held back.
    const asked = bytes({ model: 'gpt-4o', stream: true, stream_options: { include_usage: true } });
    expect(readLlmRequest('chat', asked)).toMatchObject({ stripUsage: false, stream: true });
    expect(readLlmRequest('chat', asked).body.equals(asked)).toBe(true);
    // Other endpoints report usage in their streams anyway.
    expect(readLlmRequest('messages', bytes({ model: 'c', stream: true, max_tokens: 5 })).stripUsage).toBe(false);
  });

  it.each([
    ['not JSON', '{"model":', /not JSON/],
    ['an array', '[1,2]', /not a JSON object/],
    ['no model', { messages: [] }, /model must be/],
    ['a numeric model', { model: 7 }, /model must be/],
    ['a huge model name', { model: 'm'.repeat(257) }, /model must be/],
    ['a negative cap', { model: 'gpt-4o', max_tokens: -1 }, /max_tokens must be/],
    ['a fractional cap', { model: 'gpt-4o', max_tokens: 1.5 }, /max_tokens must be/],
    ['a huge cap', { model: 'gpt-4o', max_tokens: 1e12 }, /max_tokens must be/],
    ['a text cap', { model: 'gpt-4o', max_tokens: '10' }, /max_tokens must be/],
    ['a text stream flag', { model: 'gpt-4o', stream: 'yes' }, /stream must be/],
    ['stream_options that is not an object', { model: 'gpt-4o', stream: true, stream_options: 'all' }, /stream_options must be/],
  ])('refuses %s with a 400 naming it', (_name, body, message) => {
    const error = refusal(() => readLlmRequest('chat', bytes(body)));
    expect(error.statusCode).toBe(400);
    expect(error.message).toMatch(message);
    expect(error.reasons).toEqual(['bad_llm_request']);
  });

  it('reads a body up to the limit and refuses one past it with 413', async () => {
    expect((await readBody(Readable.from([Buffer.from('ab'), Buffer.from('cd')]), 4)).toString()).toBe('abcd');
    await expect(readBody(Readable.from([Buffer.from('abc'), Buffer.from('de')]), 4)).rejects.toMatchObject({ statusCode: 413 });
  });
});

describe('the cost of a call that ended', () => {
  const chat = readLlmRequest('chat', bytes({ model: 'gpt-4o', max_tokens: 100 }));
  const reservation = llmReservation(pricing, chat)!;

  it('reserves the per-request price, the prompt bound and the cap at the model’s prices', () => {
    // 1,000 + ceil(27 × 2.5) + 100 × 10 micro-units.
    expect(reservation).toBe(1_000 + Math.ceil(chat.promptTokens * 2.5) + 1_000);
    expect(llmReservation(pricing, readLlmRequest('chat', bytes({ model: 'gpt-4o' })))).toBe(1_000 + 50_000);
    expect(llmReservation(pricing, readLlmRequest('chat', bytes({ model: 'unknown' })))).toBeNull();
    expect(llmReservation(pricing, null)).toBe(1_000);
  });

  it('is exact from a full usage count, at the reported model’s prices, cached tokens at the cached price', () => {
    const usage = { inputTokens: 1_000, outputTokens: 200, cachedInputTokens: 400 };
    const cost = costOfCall(pricing, chat, reservation, true, 200, reading({ model: 'gpt-4o', usage, final: true }));
    expect(cost).toEqual({ micros: 1_000 + 1_500 + 500 + 2_000, exact: true, estimateReason: null, model: 'gpt-4o', usage });
    // A reported model name the table lacks (a dated snapshot) is priced as the model that was asked for.
    expect(costOfCall(pricing, chat, reservation, true, 200, reading({ model: 'gpt-4o-2024-08-06', usage, final: true })).micros).toBe(5_000);
  });

  it('is the reservation, flagged, when no usage could be read', () => {
    expect(costOfCall(pricing, chat, reservation, true, 200, reading({}))).toMatchObject({ micros: reservation, exact: false, estimateReason: 'no_usage' });
    expect(costOfCall(pricing, chat, reservation, true, 200, reading({ error: 'usage prompt_tokens is not a token count (-5)' }))).toMatchObject({
      micros: reservation,
      exact: false,
      estimateReason: 'usage_unreadable: usage prompt_tokens is not a token count (-5)',
    });
  });

  it('is what was delivered when the stream was cut short, never more than the reservation', () => {
    const cut = costOfCall(pricing, chat, reservation, true, 200, reading({ ended: false, deltas: 3 }));
    expect(cut).toMatchObject({ micros: 1_000 + Math.ceil(chat.promptTokens * 2.5) + 30, exact: false, estimateReason: 'cut_short' });
    // Anthropic's message_start told the input count: that is used rather than the bound.
    const known = costOfCall(pricing, chat, reservation, true, 200, reading({ ended: false, deltas: 4, usage: { inputTokens: 10, outputTokens: 1, cachedInputTokens: 0 } }));
    expect(known.micros).toBe(1_000 + 25 + 40);
    expect(costOfCall(pricing, chat, reservation, true, 200, reading({ ended: false, deltas: 1_000_000 })).micros).toBe(reservation);
  });

  it('charges only the per-request price for an error answer, and nothing without an answer', () => {
    expect(costOfCall(pricing, chat, reservation, true, 429, null)).toMatchObject({ micros: 1_000, exact: true });
    expect(costOfCall(pricing, chat, reservation, false, null, null)).toMatchObject({ micros: 0, exact: true });
    expect(costOfCall(pricing, null, 1_000, true, 200, null)).toMatchObject({ micros: 1_000, exact: true, model: null });
  });
});

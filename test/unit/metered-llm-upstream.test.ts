import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  countInputWords,
  isMeteredFault,
  outputTokensFor,
  replyText,
  startMeteredLlmUpstream,
  type MeteredLlmUpstream,
  type MeteredStream,
} from '../helpers/metered-llm-upstream.js';

/**
 * The metering tests' fake provider, driven straight by the official SDK clients (no gateway): every route answers
 * in a shape the SDK parses, with the usage the helper documents, and every fault does what it says.
 */

const KEY = 'sk-metered-upstream-test';
const HUGE = 2 * 1024 * 1024;
const SLOW_MS = 40;

let up: MeteredLlmUpstream;
let slowUp: MeteredLlmUpstream;

beforeAll(async () => {
  up = await startMeteredLlmUpstream({ apiKey: KEY, slowDelayMs: SLOW_MS });
  // For aborts halfway: long enough gaps that the server sees the client leave before it writes on.
  slowUp = await startMeteredLlmUpstream({ apiKey: KEY, faults: ['slow'], slowDelayMs: 250, outputTokens: 8 });
});

afterAll(async () => {
  await up?.close();
  await slowUp?.close();
});

const openai = (u: MeteredLlmUpstream = up, apiKey = KEY) => new OpenAI({ apiKey, baseURL: `${u.url}/v1`, maxRetries: 0, logLevel: 'off' });
const anthropic = (u: MeteredLlmUpstream = up, apiKey = KEY) => new Anthropic({ apiKey, baseURL: u.url, maxRetries: 0, logLevel: 'off' });

// 3 + 5 = 8 words.
const CHAT_MESSAGES = [
  { role: 'system' as const, content: 'You are terse.' },
  { role: 'user' as const, content: 'Say hello to the world.' },
];
const ANTHROPIC_SYSTEM = 'You are terse.';
const ANTHROPIC_MESSAGES = [{ role: 'user' as const, content: [{ type: 'text' as const, text: 'Say hello to the world.' }] }];

const lastStream = (u: MeteredLlmUpstream = up): MeteredStream => {
  const s = u.streams.at(-1);
  if (!s) throw new Error('no stream recorded');
  return s;
};

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

/** Collects what an iterable yields until it throws; returns both. */
async function collectUntilError<T>(iterable: AsyncIterable<T>): Promise<{ items: T[]; error: unknown }> {
  const items: T[] = [];
  try {
    for await (const item of iterable) items.push(item);
  } catch (error) {
    return { items, error };
  }
  throw new Error('the stream ended without an error');
}

async function rejection(call: Promise<unknown>): Promise<unknown> {
  try {
    await call;
  } catch (err) {
    return err;
  }
  throw new Error('the call succeeded but was expected to fail');
}

/** POSTs a JSON body without an SDK; returns the status and the raw text. */
async function rawPost(path: string, body: unknown, headers: Record<string, string>): Promise<{ status: number; text: string }> {
  const res = await fetch(`${up.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: res.status, text: await res.text() };
}

describe('usage rules', () => {
  it('counts whitespace-separated words of the message and input texts', () => {
    expect(countInputWords('chat', { messages: [{ role: 'system', content: ' a  b\tc\n' }, { role: 'user', content: [{ type: 'text', text: 'd e' }, { type: 'image_url', image_url: { url: 'x y z' } }] }] })).toBe(5);
    expect(countInputWords('responses', { instructions: 'be brief', input: 'one two three' })).toBe(5);
    expect(countInputWords('responses', { input: [{ role: 'user', content: 'a b' }, { role: 'user', content: [{ type: 'input_text', text: 'c d e' }] }, { type: 'function_call_output', output: 'x y' }] })).toBe(5);
    expect(countInputWords('embeddings', { input: ['a b', 'c'] })).toBe(3);
    expect(countInputWords('embeddings', { input: [[1, 2, 3], [4]] })).toBe(4);
    expect(countInputWords('messages', { system: [{ type: 'text', text: 'a b' }], messages: [{ role: 'user', content: 'c d e' }] })).toBe(5);
    expect(countInputWords('chat', { messages: [] })).toBe(0);
  });

  it('takes the request output limit when it is below the default', () => {
    expect(outputTokensFor('chat', {})).toBe(5);
    expect(outputTokensFor('chat', { max_tokens: 3 })).toBe(3);
    expect(outputTokensFor('chat', { max_completion_tokens: 2, max_tokens: 4 })).toBe(2);
    expect(outputTokensFor('chat', { max_tokens: 500 })).toBe(5);
    expect(outputTokensFor('responses', { max_output_tokens: 4 })).toBe(4);
    expect(outputTokensFor('messages', { max_tokens: 1024 }, 7)).toBe(7);
    expect(outputTokensFor('embeddings', { max_tokens: 2 })).toBe(0);
  });

  it('knows the fault names', () => {
    for (const f of ['no-usage', 'lying-usage', 'broken-sse', 'slow', 'huge-event', 'status-429', 'status-500']) expect(isMeteredFault(f)).toBe(true);
    for (const f of ['none', 'status-42', 'status-600', 'fast']) expect(isMeteredFault(f)).toBe(false);
    expect(replyText(3)).toBe('alpha bravo charlie');
  });
});

describe('OpenAI chat completions', () => {
  it('answers JSON with exact usage, echoing the model', async () => {
    const completion = await openai().chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES });
    expect(completion.model).toBe('gpt-4o-mini');
    expect(completion.choices[0]?.message.content).toBe('alpha bravo charlie delta echo');
    expect(completion.choices[0]?.finish_reason).toBe('stop');
    expect(completion.usage).toEqual({ prompt_tokens: 8, completion_tokens: 5, total_tokens: 13, prompt_tokens_details: { cached_tokens: 0 } });
    const request = up.requests.at(-1);
    expect(request?.route).toBe('chat');
    expect(request?.url).toBe('/v1/chat/completions');
    expect(request?.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(request?.json?.model).toBe('gpt-4o-mini');
    expect(JSON.parse(request?.body ?? '')).toEqual(request?.json);
  });

  it('caps output at max_tokens / max_completion_tokens', async () => {
    const a = await openai().chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, max_tokens: 3 });
    expect(a.usage?.completion_tokens).toBe(3);
    expect(a.choices[0]?.finish_reason).toBe('length');
    const b = await openai().chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, max_completion_tokens: 2 });
    expect(b.usage?.completion_tokens).toBe(2);
    expect(b.choices[0]?.message.content).toBe('alpha bravo');
  });

  it('streams one chunk per token and no usage when include_usage is not asked', async () => {
    const chunks = await collect(await openai().chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true }));
    expect(chunks).toHaveLength(6);
    const deltas = chunks.filter((c) => (c.choices[0]?.delta.content ?? '') !== '');
    expect(deltas).toHaveLength(5);
    expect(deltas.map((c) => c.choices[0]?.delta.content).join('')).toBe('alpha bravo charlie delta echo');
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
    for (const c of chunks) {
      expect(c.object).toBe('chat.completion.chunk');
      expect(c.model).toBe('gpt-4o-mini');
      expect('usage' in c).toBe(false);
    }
    await up.streamsSettled();
    const s = lastStream();
    expect(s).toMatchObject({ route: 'chat', chunksPlanned: 7, chunksWritten: 7, deltasWritten: 5, ended: true, aborted: false });
    expect(s.usage).toEqual({ inputTokens: 8, outputTokens: 5, cachedInputTokens: 0 });
  });

  it('streams a usage-only chunk last when include_usage is asked, usage null before it', async () => {
    const chunks = await collect(await openai().chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true, stream_options: { include_usage: true }, max_tokens: 4 }));
    expect(chunks).toHaveLength(6);
    const usageChunk = chunks.at(-1);
    expect(usageChunk?.choices).toEqual([]);
    expect(usageChunk?.usage).toEqual({ prompt_tokens: 8, completion_tokens: 4, total_tokens: 12, prompt_tokens_details: { cached_tokens: 0 } });
    for (const c of chunks.slice(0, -1)) expect(c.usage).toBeNull();
    expect(chunks.filter((c) => (c.choices[0]?.delta.content ?? '') !== '')).toHaveLength(4);
    expect(chunks.at(-2)?.choices[0]?.finish_reason).toBe('length');
    await up.streamsSettled();
    expect(lastStream()).toMatchObject({ chunksWritten: 7, deltasWritten: 4, ended: true });
  });

  it('satisfies the SDK stream helper', async () => {
    const stream = openai().chat.completions.stream({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream_options: { include_usage: true } });
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]?.message).toMatchObject({ role: 'assistant', content: 'alpha bravo charlie delta echo' });
    expect(final.usage).toMatchObject({ prompt_tokens: 8, completion_tokens: 5, total_tokens: 13 });
  });
});

describe('OpenAI Responses API', () => {
  it('answers JSON with output_text and exact usage', async () => {
    const response = await openai().responses.create({ model: 'gpt-4.1', instructions: 'Be brief.', input: 'Name five letters please.' });
    expect(response.object).toBe('response');
    expect(response.model).toBe('gpt-4.1');
    expect(response.output_text).toBe('alpha bravo charlie delta echo');
    expect(response.usage).toEqual({ input_tokens: 6, output_tokens: 5, total_tokens: 11, input_tokens_details: { cached_tokens: 0 }, output_tokens_details: { reasoning_tokens: 0 } });
  });

  it('streams for responses.stream() with a delta per token and usage on response.completed', async () => {
    const stream = openai().responses.stream({ model: 'gpt-4.1', input: [{ role: 'user', content: 'Name three letters.' }], max_output_tokens: 3 });
    const texts: string[] = [];
    stream.on('response.output_text.delta', (e) => texts.push(e.delta));
    const final = await stream.finalResponse();
    expect(texts).toEqual(['alpha', ' bravo', ' charlie']);
    expect(final.output[0]).toMatchObject({ type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'alpha bravo charlie' }] });
    expect(final.usage).toMatchObject({ input_tokens: 3, output_tokens: 3, total_tokens: 6, input_tokens_details: { cached_tokens: 0 } });
  });

  it('streams for responses.create({ stream: true }) with consecutive sequence numbers', async () => {
    const events = await collect(await openai().responses.create({ model: 'gpt-4.1', input: 'one two', stream: true }));
    expect(events.map((e) => e.type)).toEqual([
      'response.created',
      'response.output_item.added',
      'response.content_part.added',
      ...Array<string>(5).fill('response.output_text.delta'),
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
    const completed = events.at(-1);
    if (completed?.type !== 'response.completed') throw new Error('no response.completed');
    expect(completed.response.usage).toMatchObject({ input_tokens: 2, output_tokens: 5, total_tokens: 7 });
    await up.streamsSettled();
    expect(lastStream()).toMatchObject({ route: 'responses', chunksWritten: 12, deltasWritten: 5, ended: true });
  });
});

describe('OpenAI embeddings', () => {
  it('answers with vectors (base64 as the SDK asks by default, or floats) and prompt usage', async () => {
    const a = await openai().embeddings.create({ model: 'text-embedding-3-small', input: ['one two', 'three'] });
    expect(a.data).toHaveLength(2);
    expect(a.data[1]?.embedding).toHaveLength(8);
    expect(a.data[0]?.embedding[1]).toBeCloseTo(2 / 64);
    expect(a.usage).toEqual({ prompt_tokens: 3, total_tokens: 3 });
    expect(up.requests.at(-1)?.json?.encoding_format).toBe('base64');
    const b = await openai().embeddings.create({ model: 'text-embedding-3-small', input: 'four five six seven', encoding_format: 'float', dimensions: 4 });
    expect(b.data[0]?.embedding).toEqual([1 / 64, 2 / 64, 3 / 64, 4 / 64]);
    expect(b.usage).toEqual({ prompt_tokens: 4, total_tokens: 4 });
    expect(b.model).toBe('text-embedding-3-small');
  });
});

describe('Anthropic messages', () => {
  it('answers JSON with exact usage', async () => {
    const message = await anthropic().messages.create({ model: 'claude-sonnet-4-5', max_tokens: 1024, system: ANTHROPIC_SYSTEM, messages: ANTHROPIC_MESSAGES });
    expect(message.model).toBe('claude-sonnet-4-5');
    expect(message.content).toEqual([{ type: 'text', text: 'alpha bravo charlie delta echo', citations: null }]);
    expect(message.stop_reason).toBe('end_turn');
    expect(message.usage).toEqual({ input_tokens: 8, output_tokens: 5, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 });
    const request = up.requests.at(-1);
    expect(request?.url).toBe('/v1/messages');
    // The SDK sends its apiKey as a bearer token; the x-api-key header (what a gateway sets) is taken too.
    expect(request?.headers.authorization).toBe(`Bearer ${KEY}`);
    const viaHeader = new Anthropic({ apiKey: null, defaultHeaders: { 'x-api-key': KEY }, baseURL: up.url, maxRetries: 0 });
    expect((await viaHeader.messages.create({ model: 'claude-sonnet-4-5', max_tokens: 2, messages: ANTHROPIC_MESSAGES })).usage.output_tokens).toBe(2);
    expect(up.requests.at(-1)?.headers['x-api-key']).toBe(KEY);
    expect(up.requests.at(-1)?.headers.authorization).toBeUndefined();
  });

  it('streams for messages.stream() with a delta per token', async () => {
    const stream = anthropic().messages.stream({ model: 'claude-sonnet-4-5', max_tokens: 4, system: ANTHROPIC_SYSTEM, messages: ANTHROPIC_MESSAGES });
    const texts: string[] = [];
    stream.on('text', (t) => texts.push(t));
    const final = await stream.finalMessage();
    expect(texts).toEqual(['alpha', ' bravo', ' charlie', ' delta']);
    expect(final.content[0]).toMatchObject({ type: 'text', text: 'alpha bravo charlie delta' });
    expect(final.stop_reason).toBe('max_tokens');
    expect(final.usage).toMatchObject({ input_tokens: 8, output_tokens: 4, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 });
    await up.streamsSettled();
    expect(lastStream()).toMatchObject({ route: 'messages', chunksWritten: 9, deltasWritten: 4, ended: true });
  });

  it('streams for messages.create({ stream: true }): start usage output 1, delta usage cumulative', async () => {
    const events = await collect(await anthropic().messages.create({ model: 'claude-sonnet-4-5', max_tokens: 1024, messages: ANTHROPIC_MESSAGES, stream: true }));
    expect(events.map((e) => e.type)).toEqual(['message_start', 'content_block_start', ...Array<string>(5).fill('content_block_delta'), 'content_block_stop', 'message_delta', 'message_stop']);
    const start = events[0];
    if (start?.type !== 'message_start') throw new Error('no message_start');
    expect(start.message.usage).toEqual({ input_tokens: 5, output_tokens: 1, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 });
    const delta = events.at(-2);
    if (delta?.type !== 'message_delta') throw new Error('no message_delta');
    expect(delta.usage).toEqual({ output_tokens: 5 });
    expect(delta.delta.stop_reason).toBe('end_turn');
  });
});

describe('configuration', () => {
  it('takes the input count, cached tokens, output default and reported model from options', async () => {
    const u = await startMeteredLlmUpstream({
      apiKey: KEY,
      anthropicApiKey: 'sk-ant-other',
      inputTokens: (route) => (route === 'embeddings' ? 11 : 20),
      cachedInputTokens: 6,
      cacheCreationInputTokens: 4,
      outputTokens: 7,
      reportModel: (m) => `${m}-2024-07-18`,
    });
    try {
      const chat = await openai(u).chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES });
      expect(chat.model).toBe('gpt-4o-mini-2024-07-18');
      expect(chat.usage).toEqual({ prompt_tokens: 20, completion_tokens: 7, total_tokens: 27, prompt_tokens_details: { cached_tokens: 6 } });
      const response = await openai(u).responses.create({ model: 'gpt-4.1', input: 'hi' });
      expect(response.usage).toMatchObject({ input_tokens: 20, output_tokens: 7, input_tokens_details: { cached_tokens: 6 } });
      const embedding = await openai(u).embeddings.create({ model: 'text-embedding-3-small', input: 'hi' });
      expect(embedding.usage).toEqual({ prompt_tokens: 11, total_tokens: 11 });
      // Anthropic counts cache reads and writes outside input_tokens: 20 = 10 + 6 + 4.
      const message = await anthropic(u, 'sk-ant-other').messages.create({ model: 'claude-haiku', max_tokens: 100, messages: ANTHROPIC_MESSAGES });
      expect(message.model).toBe('claude-haiku-2024-07-18');
      expect(message.usage).toEqual({ input_tokens: 10, output_tokens: 7, cache_read_input_tokens: 6, cache_creation_input_tokens: 4 });
      expect(await rejection(anthropic(u, KEY).messages.create({ model: 'claude-haiku', max_tokens: 100, messages: ANTHROPIC_MESSAGES }))).toBeInstanceOf(Anthropic.AuthenticationError);
    } finally {
      await u.close();
    }
  });

  it('reports a fixed model when told to', async () => {
    const u = await startMeteredLlmUpstream({ apiKey: KEY, reportModel: 'gpt-4o-2024-08-06' });
    try {
      const chat = await openai(u).chat.completions.create({ model: 'gpt-4o', messages: CHAT_MESSAGES });
      expect(chat.model).toBe('gpt-4o-2024-08-06');
    } finally {
      await u.close();
    }
  });

  it('refuses a wrong credential with a 401 in the provider shape', async () => {
    const a = await rejection(openai(up, 'sk-wrong').chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES }));
    expect(a).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((a as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe('invalid_api_key');
    const b = await rejection(anthropic(up, 'sk-wrong').messages.create({ model: 'claude-haiku', max_tokens: 10, messages: ANTHROPIC_MESSAGES }));
    expect(b).toBeInstanceOf(Anthropic.AuthenticationError);
    expect((b as InstanceType<typeof Anthropic.AuthenticationError>).status).toBe(401);
  });

  it('answers an unknown path with a 404', async () => {
    const res = await rawPost('/v1/completions-unknown', { model: 'x' }, { authorization: `Bearer ${KEY}` });
    expect(res.status).toBe(404);
    expect(JSON.parse(res.text)).toMatchObject({ error: { code: 'unknown_url' } });
  });

  it('applies instance faults unless the model suffix replaces them (+none clears them)', async () => {
    const u = await startMeteredLlmUpstream({ apiKey: KEY, faults: ['no-usage'] });
    try {
      const a = await openai(u).chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES });
      expect(a.usage).toBeUndefined();
      const b = await openai(u).chat.completions.create({ model: 'gpt-4o-mini+none', messages: CHAT_MESSAGES });
      expect(b.model).toBe('gpt-4o-mini');
      expect(b.usage?.prompt_tokens).toBe(8);
      const c = await openai(u).chat.completions.create({ model: 'gpt-4o-mini+lying-usage', messages: CHAT_MESSAGES });
      expect(c.usage?.prompt_tokens).toBe(-5);
      expect(u.requests.map((r) => r.faults)).toEqual([['no-usage'], [], ['lying-usage']]);
      expect(u.requests.map((r) => r.model)).toEqual(['gpt-4o-mini', 'gpt-4o-mini', 'gpt-4o-mini']);
    } finally {
      await u.close();
    }
  });
});

describe('fault: no-usage', () => {
  it('leaves usage out of JSON bodies', async () => {
    const chat = await openai().chat.completions.create({ model: 'gpt-4o-mini+no-usage', messages: CHAT_MESSAGES });
    expect(chat.model).toBe('gpt-4o-mini');
    expect(chat.choices[0]?.message.content).toBe('alpha bravo charlie delta echo');
    expect('usage' in chat).toBe(false);
    const response = await openai().responses.create({ model: 'gpt-4.1+no-usage', input: 'hi' });
    expect(response.usage).toBeUndefined();
    const embedding = await openai().embeddings.create({ model: 'text-embedding-3-small+no-usage', input: 'hi' });
    expect('usage' in embedding).toBe(false);
    const message = await anthropic().messages.create({ model: 'claude-haiku+no-usage', max_tokens: 100, messages: ANTHROPIC_MESSAGES });
    expect('usage' in message).toBe(false);
  });

  it('sends no usage chunk in a chat stream even when asked', async () => {
    const chunks = await collect(await openai().chat.completions.create({ model: 'gpt-4o-mini+no-usage', messages: CHAT_MESSAGES, stream: true, stream_options: { include_usage: true } }));
    expect(chunks).toHaveLength(6);
    for (const c of chunks) {
      expect(c.usage).toBeNull();
      expect(c.choices).toHaveLength(1);
    }
  });

  it('sends no usage in Responses and Anthropic streams', async () => {
    const events = await collect(await openai().responses.create({ model: 'gpt-4.1+no-usage', input: 'hi', stream: true }));
    const completed = events.at(-1);
    if (completed?.type !== 'response.completed') throw new Error('no response.completed');
    expect(completed.response.usage).toBeUndefined();
    expect(completed.response.output_text).toBeUndefined(); // raw events: the SDK adds output_text only to JSON answers
    const anthropicEvents = await collect(await anthropic().messages.create({ model: 'claude-haiku+no-usage', max_tokens: 100, messages: ANTHROPIC_MESSAGES, stream: true }));
    const start = anthropicEvents[0];
    if (start?.type !== 'message_start') throw new Error('no message_start');
    expect(start.message.usage).toBeUndefined();
    const delta = anthropicEvents.at(-2);
    if (delta?.type !== 'message_delta') throw new Error('no message_delta');
    expect(delta.usage).toBeUndefined();
    expect(delta.delta.stop_reason).toBe('end_turn');
  });
});

describe('fault: lying-usage', () => {
  it('reports -5 input tokens everywhere', async () => {
    const chat = await openai().chat.completions.create({ model: 'gpt-4o-mini+lying-usage', messages: CHAT_MESSAGES });
    expect(chat.usage).toEqual({ prompt_tokens: -5, completion_tokens: 5, total_tokens: 0, prompt_tokens_details: { cached_tokens: 0 } });
    const chunks = await collect(await openai().chat.completions.create({ model: 'gpt-4o-mini+lying-usage', messages: CHAT_MESSAGES, stream: true, stream_options: { include_usage: true } }));
    expect(chunks.at(-1)?.usage?.prompt_tokens).toBe(-5);
    const response = await openai().responses.create({ model: 'gpt-4.1+lying-usage', input: 'hi' });
    expect(response.usage?.input_tokens).toBe(-5);
    const embedding = await openai().embeddings.create({ model: 'text-embedding-3-small+lying-usage', input: 'hi' });
    expect(embedding.usage).toEqual({ prompt_tokens: -5, total_tokens: -5 });
    const message = await anthropic().messages.create({ model: 'claude-haiku+lying-usage', max_tokens: 100, messages: ANTHROPIC_MESSAGES });
    expect(message.usage.input_tokens).toBe(-5);
    const final = await anthropic().messages.stream({ model: 'claude-haiku+lying-usage', max_tokens: 100, messages: ANTHROPIC_MESSAGES }).finalMessage();
    expect(final.usage).toMatchObject({ input_tokens: -5, output_tokens: 5 });
  });
});

describe('fault: broken-sse', () => {
  it('breaks a chat stream after two good chunks, without [DONE]', async () => {
    const { items, error } = await collectUntilError(await openai().chat.completions.create({ model: 'gpt-4o-mini+broken-sse', messages: CHAT_MESSAGES, stream: true, stream_options: { include_usage: true } }));
    expect(items.map((c) => c.choices[0]?.delta.content)).toEqual(['alpha', ' bravo']);
    expect(error).toBeInstanceOf(SyntaxError);
    await up.streamsSettled();
    expect(lastStream()).toMatchObject({ chunksPlanned: 3, chunksWritten: 3, deltasWritten: 2, ended: true, aborted: false });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini+broken-sse', messages: CHAT_MESSAGES, stream: true }, { authorization: `Bearer ${KEY}` });
    expect(raw.text.endsWith('data: {not json\n\n')).toBe(true);
    expect(raw.text).not.toContain('[DONE]');
  });

  it('breaks Responses and Anthropic streams after two good events', async () => {
    const r = await collectUntilError(await openai().responses.create({ model: 'gpt-4.1+broken-sse', input: 'hi', stream: true }));
    expect(r.items.map((e) => e.type)).toEqual(['response.created', 'response.output_item.added']);
    expect(r.error).toBeInstanceOf(SyntaxError);
    expect(await rejection(openai().responses.stream({ model: 'gpt-4.1+broken-sse', input: 'hi' }).finalResponse())).toBeInstanceOf(Error);
    const a = await collectUntilError(await anthropic().messages.create({ model: 'claude-haiku+broken-sse', max_tokens: 100, messages: ANTHROPIC_MESSAGES, stream: true }));
    expect(a.items.map((e) => e.type)).toEqual(['message_start', 'content_block_start']);
    expect(a.error).toBeInstanceOf(SyntaxError);
    expect(await rejection(anthropic().messages.stream({ model: 'claude-haiku+broken-sse', max_tokens: 100, messages: ANTHROPIC_MESSAGES }).finalMessage())).toBeInstanceOf(Error);
    await up.streamsSettled();
    expect(lastStream()).toMatchObject({ route: 'messages', chunksWritten: 3, deltasWritten: 0, ended: true, aborted: false });
  });
});

describe('fault: slow', () => {
  it('spaces stream events by the configured delay', async () => {
    const started = Date.now();
    const times: number[] = [];
    for await (const _ of await openai().chat.completions.create({ model: 'gpt-4o-mini+slow', messages: CHAT_MESSAGES, stream: true })) times.push(Date.now() - started);
    expect(times).toHaveLength(6);
    // 7 events (6 chunks and [DONE]), 6 gaps.
    expect(Date.now() - started).toBeGreaterThanOrEqual(6 * SLOW_MS - 10);
    for (let i = 1; i < times.length; i++) expect((times[i] as number) - (times[i - 1] as number)).toBeGreaterThanOrEqual(SLOW_MS - 10);
  });

  it('counts a chat stream the client leaves halfway as aborted, with the chunks written', async () => {
    const before = slowUp.aborted;
    const stream = await openai(slowUp).chat.completions.create({ model: 'gpt-4o-mini', messages: CHAT_MESSAGES, stream: true, stream_options: { include_usage: true } });
    const seen: string[] = [];
    for await (const chunk of stream) {
      seen.push(chunk.choices[0]?.delta.content ?? '');
      if (seen.length === 3) break; // the SDK aborts the request
    }
    const s = lastStream(slowUp);
    await s.done;
    expect(seen).toEqual(['alpha', ' bravo', ' charlie']);
    expect(s).toMatchObject({ aborted: true, ended: false, chunksPlanned: 11, chunksWritten: 3, deltasWritten: 3 });
    expect(slowUp.aborted).toBe(before + 1);
  });

  it('counts an Anthropic stream the client aborts halfway', async () => {
    const before = slowUp.aborted;
    const stream = anthropic(slowUp).messages.stream({ model: 'claude-haiku', max_tokens: 100, messages: ANTHROPIC_MESSAGES });
    const texts: string[] = [];
    stream.on('text', (t) => {
      texts.push(t);
      if (texts.length === 2) stream.abort();
    });
    expect(await rejection(stream.finalMessage())).toBeInstanceOf(Anthropic.APIUserAbortError);
    const s = lastStream(slowUp);
    await s.done;
    expect(texts).toEqual(['alpha', ' bravo']);
    // message_start, content_block_start, two deltas; of 8 + 5 events.
    expect(s).toMatchObject({ route: 'messages', aborted: true, ended: false, chunksPlanned: 13, chunksWritten: 4, deltasWritten: 2 });
    expect(slowUp.aborted).toBe(before + 1);
  });
});

describe('fault: status-<code>', () => {
  it('answers with the status and the provider error shape, streamed or not', async () => {
    const a = await rejection(openai().chat.completions.create({ model: 'gpt-4o-mini+status-429', messages: CHAT_MESSAGES }));
    expect(a).toBeInstanceOf(OpenAI.RateLimitError);
    expect((a as InstanceType<typeof OpenAI.RateLimitError>).code).toBe('rate_limit_exceeded');
    const b = await rejection(openai().chat.completions.create({ model: 'gpt-4o-mini+status-500', messages: CHAT_MESSAGES, stream: true }));
    expect(b).toBeInstanceOf(OpenAI.InternalServerError);
    expect((b as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(500);
    const c = await rejection(openai().responses.create({ model: 'gpt-4.1+status-400', input: 'hi' }));
    expect(c).toBeInstanceOf(OpenAI.BadRequestError);
    const d = await rejection(anthropic().messages.create({ model: 'claude-haiku+status-529', max_tokens: 100, messages: ANTHROPIC_MESSAGES, stream: true }));
    expect(d).toBeInstanceOf(Anthropic.APIError);
    expect((d as InstanceType<typeof Anthropic.APIError>).status).toBe(529);
    expect((d as InstanceType<typeof Anthropic.APIError>).error).toMatchObject({ type: 'error', error: { type: 'overloaded_error' } });
    const e = await rejection(anthropic().messages.create({ model: 'claude-haiku+status-429', max_tokens: 100, messages: ANTHROPIC_MESSAGES }));
    expect(e).toBeInstanceOf(Anthropic.RateLimitError);
    expect(up.requests.at(-1)?.faults).toEqual(['status-429']);
  });
});

describe('fault: huge-event', () => {
  const hugeLines = (text: string) => text.split('\n').filter((line) => line.length >= HUGE);

  it('puts one 2 MiB data line mid chat stream, which carries no output', async () => {
    const chunks = await collect(await openai().chat.completions.create({ model: 'gpt-4o-mini+huge-event', messages: CHAT_MESSAGES, stream: true, stream_options: { include_usage: true } }));
    expect(chunks).toHaveLength(8);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('alpha bravo charlie delta echo');
    expect(chunks.at(-1)?.usage?.completion_tokens).toBe(5);
    const huge = chunks[2] as unknown as { padding?: string; choices: unknown[] };
    expect(huge.padding?.length).toBeGreaterThan(HUGE - 300);
    await up.streamsSettled();
    expect(lastStream()).toMatchObject({ chunksWritten: 9, deltasWritten: 5, ended: true });
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-4o-mini+huge-event', messages: CHAT_MESSAGES, stream: true }, { authorization: `Bearer ${KEY}` });
    const lines = hugeLines(raw.text);
    expect(lines).toHaveLength(1);
    expect(Buffer.byteLength(lines[0] as string)).toBe(HUGE);
    expect(lines[0]?.startsWith('data: {')).toBe(true);
  });

  it('passes through the Responses and Anthropic SDK stream helpers', async () => {
    const response = await openai().responses.stream({ model: 'gpt-4.1+huge-event', input: 'hi' }).finalResponse();
    expect(response.output[0]).toMatchObject({ content: [{ type: 'output_text', text: 'alpha bravo charlie delta echo' }] });
    expect(response.usage?.input_tokens).toBe(1);
    const message = await anthropic().messages.stream({ model: 'claude-haiku+huge-event', max_tokens: 100, messages: ANTHROPIC_MESSAGES }).finalMessage();
    expect(message.content[0]).toMatchObject({ text: 'alpha bravo charlie delta echo' });
    expect(message.usage.output_tokens).toBe(5);
    const raw = await rawPost('/v1/messages', { model: 'claude-haiku+huge-event', max_tokens: 100, messages: ANTHROPIC_MESSAGES, stream: true }, { 'x-api-key': KEY });
    const lines = hugeLines(raw.text);
    expect(lines).toHaveLength(1);
    expect(Buffer.byteLength(lines[0] as string)).toBe(HUGE);
    expect(raw.text).toContain(`event: ping\n${(lines[0] as string).slice(0, 20)}`);
  });
});

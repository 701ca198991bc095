import { splitBytes } from '../helpers/chunks.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { costOf, PricingSchema, reservationFor } from '../../src/metering/pricing.js';
import { createSseUsageTap, MAX_EVENT_BYTES, parseUsageBlock, usageFromJson, UsageError, type SseUsageTapOptions } from '../../src/metering/usage.js';

/** Feeds `chunks` through a tap; returns what came out, and the output seen after each input chunk. */
async function tap(options: SseUsageTapOptions, chunks: Buffer[]) {
  const t = createSseUsageTap(options);
  const out: Buffer[] = [];
  const seenAfter: number[] = [];
  t.on('data', (chunk: Buffer) => out.push(Buffer.from(chunk)));
  for (const chunk of chunks) {
    await new Promise<void>((resolve) => t.write(chunk, () => resolve()));
    seenAfter.push(Buffer.concat(out).length);
  }
  await new Promise<void>((resolve) => t.end(resolve));
  return { output: Buffer.concat(out), seenAfter, result: t.result() };
}

const sse = (...events: unknown[]) => events.map((e) => (typeof e === 'string' ? `data: ${e}\n\n` : `data: ${JSON.stringify(e)}\n\n`)).join('');

const split = splitBytes;

const OPENAI_CHAT_STREAM = sse(
  { id: 'c1', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content: 'Héllo ' } }] },
  { id: 'c1', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [{ index: 0, delta: { content: 'wörld 😀' } }] },
  { id: 'c1', object: 'chat.completion.chunk', model: 'gpt-4o-mini', choices: [], usage: { prompt_tokens: 12, completion_tokens: 5, prompt_tokens_details: { cached_tokens: 4 } } },
  '[DONE]',
);

describe('usage of JSON responses', () => {
  it('reads chat completions, the Responses API, embeddings and Anthropic messages', () => {
    expect(usageFromJson({ model: 'gpt-4o', usage: { prompt_tokens: 100, completion_tokens: 20, prompt_tokens_details: { cached_tokens: 64 } } })).toEqual({
      model: 'gpt-4o',
      usage: { inputTokens: 100, outputTokens: 20, cachedInputTokens: 64 },
    });
    expect(usageFromJson({ model: 'gpt-4.1', usage: { input_tokens: 30, output_tokens: 7, input_tokens_details: { cached_tokens: 0 } } }).usage).toEqual({ inputTokens: 30, outputTokens: 7, cachedInputTokens: 0 });
    expect(usageFromJson({ model: 'text-embedding-3-small', usage: { prompt_tokens: 8, total_tokens: 8 } }).usage).toEqual({ inputTokens: 8, outputTokens: 0, cachedInputTokens: 0 });
    // Anthropic counts cache reads and writes outside input_tokens; all are input, reads are cached.
    expect(usageFromJson({ model: 'claude-sonnet-4', usage: { input_tokens: 10, output_tokens: 3, cache_read_input_tokens: 50, cache_creation_input_tokens: 5 } }).usage).toEqual({
      inputTokens: 65,
      outputTokens: 3,
      cachedInputTokens: 50,
    });
  });

  it.each<[string, unknown]>([
    ['no usage', { model: 'm' }],
    ['usage not an object', { usage: 'lots' }],
    ['a negative count', { usage: { prompt_tokens: -1, completion_tokens: 1 } }],
    ['a fractional count', { usage: { prompt_tokens: 1.5, completion_tokens: 1 } }],
    ['a count as text', { usage: { input_tokens: '10', output_tokens: 1 } }],
    ['a huge count', { usage: { input_tokens: 1e12, output_tokens: 1 } }],
    ['more cached than input', { usage: { prompt_tokens: 5, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 6 } } }],
    ['an array', [1, 2]],
  ])('refuses a lying or malformed usage block: %s', (_what, body) => {
    expect(() => usageFromJson(body)).toThrow(UsageError);
  });
});

describe('the SSE usage tap', () => {
  it('passes an OpenAI chat stream through byte for byte, chunk by chunk, and reads its usage, however it is split', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { maxLength: 12 }), async (cuts) => {
        const chunks = split(OPENAI_CHAT_STREAM, cuts);
        const { output, seenAfter, result } = await tap({ dialect: 'openai' }, chunks);
        expect(output.equals(Buffer.from(OPENAI_CHAT_STREAM))).toBe(true);
        // Nothing is held back: after each chunk, everything written so far has come out.
        let written = 0;
        chunks.forEach((chunk, i) => {
          written += chunk.length;
          expect(seenAfter[i]).toBe(written);
        });
        expect(result).toMatchObject({ model: 'gpt-4o-mini', usage: { inputTokens: 12, outputTokens: 5, cachedInputTokens: 4 }, error: null, stripped: false, final: true, ended: true, bytes: Buffer.byteLength(OPENAI_CHAT_STREAM) });
      }),
      { numRuns: 100 },
    );
  });

  it('holds back only the usage-only chunk when the gateway asked for it on the agent’s behalf', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { maxLength: 12 }), async (cuts) => {
        const { output, result } = await tap({ dialect: 'openai', stripUsageChunk: true }, split(OPENAI_CHAT_STREAM, cuts));
        const events = OPENAI_CHAT_STREAM.split('\n\n');
        const expected = [...events.slice(0, 2), ...events.slice(3)].join('\n\n');
        expect(output.toString('utf8')).toBe(expected);
        expect(result.usage).toEqual({ inputTokens: 12, outputTokens: 5, cachedInputTokens: 4 });
        expect(result.stripped).toBe(true);
      }),
      { numRuns: 100 },
    );
  });

  it('reads the Responses API stream and Anthropic message streams (input from message_start, output from the last message_delta)', async () => {
    const responses = sse(
      { type: 'response.created', response: { model: 'gpt-4.1' } },
      { type: 'response.output_text.delta', delta: 'hi' },
      { type: 'response.completed', response: { model: 'gpt-4.1', usage: { input_tokens: 9, output_tokens: 2, input_tokens_details: { cached_tokens: 1 } } } },
    );
    expect((await tap({ dialect: 'openai' }, [Buffer.from(responses)])).result).toMatchObject({ model: 'gpt-4.1', usage: { inputTokens: 9, outputTokens: 2, cachedInputTokens: 1 }, error: null });
    const anthropic = [
      'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-haiku","usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":5}}}\n\n',
      'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"Hi"}}\n\n',
      'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n',
      'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}\n\n',
      'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ].join('');
    const { output, result } = await tap({ dialect: 'anthropic' }, split(anthropic, [7, 100, 101, 250]));
    expect(output.toString()).toBe(anthropic);
    expect(result).toMatchObject({ model: 'claude-haiku', usage: { inputTokens: 30, outputTokens: 15, cachedInputTokens: 5 }, error: null });
  });

  it.each<[string, SseUsageTapOptions['dialect'], string, RegExp]>([
    ['an event that is not JSON', 'openai', sse('{"choices": [', { usage: { prompt_tokens: 1, completion_tokens: 1 } }), /not JSON/],
    ['a lying usage block', 'openai', sse({ choices: [], usage: { prompt_tokens: -4, completion_tokens: 1 } }), /not a token count/],
    ['message_delta before message_start', 'anthropic', sse({ type: 'message_delta', usage: { output_tokens: 3 } }), /before message_start/],
    ['a stream cut inside an event', 'openai', 'data: {"choices":[{"delta"', /ended inside an event/],
    ['an oversized event', 'openai', `data: "${'x'.repeat(MAX_EVENT_BYTES + 10)}"\n\n`, /larger than the tap reads/],
  ])('reports %s, leaves the bytes untouched and never throws', async (_what, dialect, stream, reason) => {
    for (const stripUsageChunk of [false, true]) {
      const { output, result } = await tap({ dialect, stripUsageChunk }, split(stream, [3, 1000, 70_000]));
      expect(output.toString()).toBe(stream);
      expect(result.error).toMatch(reason);
    }
  });
});

describe('prices and costs', () => {
  const pricing = PricingSchema.parse({
    currency: 'usd',
    perRequest: '0.0001',
    models: { 'gpt-4o-mini': { input: '0.15', output: '0.60', cachedInput: '0.075' }, cheap: { input: 0, output: '0.000001', reservation: '0.05' } },
    unknownModelReservation: '0.10',
  });

  it('charges tokens at the model prices, cached input at its own price, rounding up to the micro-unit', () => {
    // 1,000 input of which 400 cached, 500 output: 600 × 0.15 + 400 × 0.075 + 500 × 0.60 per million, plus 100 per request.
    expect(costOf(pricing, 'gpt-4o-mini', { inputTokens: 1_000, outputTokens: 500, cachedInputTokens: 400 })).toEqual({ micros: 100 + 90 + 30 + 300, currency: 'USD' });
    // One output token at 0.000001 per million is 10^-6 micro-units: rounded up to one.
    expect(costOf(pricing, 'cheap', { inputTokens: 0, outputTokens: 1, cachedInputTokens: 0 })).toEqual({ micros: 101, currency: 'USD' });
    expect(costOf(pricing, null, null)).toEqual({ micros: 100, currency: 'USD' });
    expect(costOf(pricing, 'not-listed', { inputTokens: 1, outputTokens: 1, cachedInputTokens: 0 })).toBeNull();
  });

  it('reserves the most a call can cost, or refuses to guess', () => {
    expect(reservationFor(pricing, 'gpt-4o-mini', { promptTokens: 1_000, maxOutputTokens: 1_000 })).toBe(100 + 150 + 600);
    expect(reservationFor(pricing, 'cheap', { promptTokens: 10, maxOutputTokens: null })).toBe(100 + 50_000);
    expect(reservationFor(pricing, 'gpt-4o-mini', { promptTokens: 10, maxOutputTokens: null })).toBeNull();
    expect(reservationFor(pricing, 'elsewhere', { promptTokens: 10, maxOutputTokens: 10 })).toBe(100 + 100_000);
    expect(reservationFor(pricing, null, null)).toBe(100);
  });

  it.each<[string, unknown, RegExp]>([
    ['a negative price', { perRequest: '-1' }, /positive decimal amount/],
    ['an exponent', { models: { m: { input: '1e3', output: '1' } } }, /positive decimal amount/],
    ['NaN', { perRequest: 'NaN' }, /positive decimal amount/],
    ['a huge price', { perRequest: '99999999999' }, /at most/],
    ['an unknown currency', { currency: 'XYZ' }, /ISO 4217/],
    ['an unknown field', { models: { m: { input: '1', output: '1', discount: '2' } } }, /unrecognized/i],
  ])('refuses %s in a price table with a clear message', (_what, table, message) => {
    const parsed = PricingSchema.safeParse(table);
    expect(parsed.success).toBe(false);
    expect(parsed.error!.issues.map((i) => i.message).join('; ')).toMatch(message);
  });
});

it('parseUsageBlock takes any valid counts and keeps cached within input', () => {
  fc.assert(
    fc.property(fc.nat(1e6), fc.nat(1e6), fc.nat(1e6), (input, output, cached) => {
      const block = { prompt_tokens: input, completion_tokens: output, prompt_tokens_details: { cached_tokens: cached } };
      if (cached > input) expect(() => parseUsageBlock(block)).toThrow(UsageError);
      else expect(parseUsageBlock(block)).toEqual({ inputTokens: input, outputTokens: output, cachedInputTokens: cached });
    }),
  );
});

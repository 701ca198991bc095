/**
 * Token usage as the upstream reports it, read from a JSON response or from a server-sent-event stream as it passes
 * (never buffered: each chunk goes on to the agent as it comes; only the current event's text is kept, capped).
 * Usage blocks are checked strictly: counts are non-negative integers of at most MAX_TOKENS, or the block is refused
 * and the call is settled at its reservation, flagged estimated.
 *
 *   openai     chat completions `usage.{prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens}`
 *              (streamed: the last chunk, with stream_options.include_usage), the Responses API
 *              `usage.{input_tokens, output_tokens, input_tokens_details.cached_tokens}` (streamed:
 *              `response.completed`), embeddings `usage.prompt_tokens`
 *   anthropic  messages `usage.{input_tokens, output_tokens, cache_read_input_tokens}`; streamed: `message_start`
 *              (input) then `message_delta` (output, cumulative)
 */
import { Transform, type TransformCallback } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';

export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
  /** Of the input tokens, those the provider served from its cache. */
  cachedInputTokens: number;
}

export type UsageDialect = 'openai' | 'anthropic';

/** More tokens than any one call can use: a bigger count is a lying usage block. */
export const MAX_TOKENS = 100_000_000;
/** The longest single SSE event the tap reads; a longer one stops the reading (the stream itself goes on). */
export const MAX_EVENT_BYTES = 1 << 20;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

type Json = Record<string, unknown>;
const isObject = (value: unknown): value is Json => typeof value === 'object' && value !== null && !Array.isArray(value);
/** A chat chunk's choice that carries output (text, a refusal or a tool call). */
const hasDelta = (choice: unknown): boolean =>
  isObject(choice) && isObject(choice.delta) && ((typeof choice.delta.content === 'string' && choice.delta.content.length > 0) || (typeof choice.delta.refusal === 'string' && choice.delta.refusal.length > 0) || Array.isArray(choice.delta.tool_calls));

function count(value: unknown, what: string, optional = false): number {
  if (value === undefined || value === null) {
    if (optional) return 0;
    throw new UsageError(`usage has no ${what}`);
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_TOKENS) {
    throw new UsageError(`usage ${what} is not a token count (${JSON.stringify(value)?.slice(0, 40)})`);
  }
  return value;
}

/** A usage block of either API shape; throws UsageError for anything else. */
export function parseUsageBlock(usage: unknown): TokenUsage {
  if (!isObject(usage)) throw new UsageError('usage is not an object');
  let result: TokenUsage;
  if ('prompt_tokens' in usage) {
    // Chat completions and embeddings (which have no completion tokens).
    const details = isObject(usage.prompt_tokens_details) ? usage.prompt_tokens_details : {};
    result = {
      inputTokens: count(usage.prompt_tokens, 'prompt_tokens'),
      outputTokens: count(usage.completion_tokens, 'completion_tokens', true),
      cachedInputTokens: count(details.cached_tokens, 'cached_tokens', true),
    };
  } else {
    // The Responses API and Anthropic messages; Anthropic counts cache reads outside input_tokens.
    const details = isObject(usage.input_tokens_details) ? usage.input_tokens_details : {};
    const cacheRead = count(usage.cache_read_input_tokens, 'cache_read_input_tokens', true);
    const cacheWrite = count(usage.cache_creation_input_tokens, 'cache_creation_input_tokens', true);
    const input = count(usage.input_tokens, 'input_tokens');
    result = {
      inputTokens: input + cacheRead + cacheWrite,
      outputTokens: count(usage.output_tokens, 'output_tokens', true),
      cachedInputTokens: count(details.cached_tokens, 'cached_tokens', true) + cacheRead,
    };
  }
  if (result.cachedInputTokens > result.inputTokens) throw new UsageError('usage counts more cached tokens than input tokens');
  if (result.inputTokens > MAX_TOKENS) throw new UsageError('usage counts more input tokens than any call has');
  return result;
}

/** The model and usage of a JSON response body (chat completion, response, embeddings list, message). */
export function usageFromJson(body: unknown): { model: string | null; usage: TokenUsage } {
  if (!isObject(body)) throw new UsageError('the response is not a JSON object');
  return { model: typeof body.model === 'string' ? body.model : null, usage: parseUsageBlock(body.usage) };
}

/** What a tap learned from a stream, as far as it got. */
export interface StreamUsage {
  model: string | null;
  usage: TokenUsage | null;
  /** Why the usage could not be read (a broken or lying stream), if it could not. */
  error: string | null;
  /** A usage-only chunk was held back from the agent (`stripUsageChunk`). */
  stripped: boolean;
  /** Output deltas seen (a token each, give or take): what an aborted stream is settled for. */
  deltas: number;
  /** The usage read is the call's final count (OpenAI's usage chunk or `response.completed`, Anthropic's `message_delta`). */
  final: boolean;
  /** Bytes of the stream that went on to the agent's side of the tap. */
  bytes: number;
  /** The stream reached its end (not cut by an abort or an upstream failure). */
  ended: boolean;
}

export interface SseUsageTapOptions {
  dialect: UsageDialect;
  /**
   * OpenAI chat streams: the gateway asked for the usage chunk (`stream_options.include_usage`) on the agent's behalf,
   * so the usage-only chunk (`choices: []`) is held back from the agent, which did not ask for it.
   */
  stripUsageChunk?: boolean;
}

/**
 * A Transform for a `text/event-stream` response body: bytes go through unchanged and at once, except — with
 * `stripUsageChunk` — the one usage-only event, which is dropped (then each event is forwarded whole when its blank
 * line arrives). `result()` says what was read. A malformed or oversized event stops the reading, never the stream.
 */
export function createSseUsageTap(options: SseUsageTapOptions): Transform & { result(): StreamUsage } {
  const state: StreamUsage = { model: null, usage: null, error: null, stripped: false, deltas: 0, final: false, bytes: 0, ended: false };
  const decoder = new StringDecoder('utf8');
  let line = '';
  let data: string[] = [];
  let eventBytes = 0;
  let held = ''; // only with stripUsageChunk: the current event's raw text
  let reading = true;
  let strip = options.stripUsageChunk === true;
  let anthropicInput: TokenUsage | null = null;

  const fail = (message: string) => {
    if (state.error === null) state.error = message;
    reading = false;
  };

  /** One complete event's data; returns true when the event must not reach the agent. */
  const onEvent = (payload: string): boolean => {
    if (!reading || payload.length === 0 || payload === '[DONE]') return false;
    let event: unknown;
    try {
      event = JSON.parse(payload);
    } catch {
      fail('a stream event is not JSON');
      return false;
    }
    if (!isObject(event)) return false;
    try {
      if (options.dialect === 'openai') {
        if (typeof event.model === 'string') state.model ??= event.model;
        if (event.type === 'response.output_text.delta' || (Array.isArray(event.choices) && event.choices.some(hasDelta))) state.deltas++;
        if (event.type === 'response.completed' && isObject(event.response)) {
          if (typeof event.response.model === 'string') state.model = event.response.model;
          state.usage = parseUsageBlock(event.response.usage);
          state.final = true;
        } else if (event.usage !== undefined && event.usage !== null) {
          state.usage = parseUsageBlock(event.usage);
          state.final = true;
          if (strip && Array.isArray(event.choices) && event.choices.length === 0) {
            state.stripped = true;
            return true;
          }
        }
      } else if (event.type === 'message_start' && isObject(event.message)) {
        if (typeof event.message.model === 'string') state.model = event.message.model;
        anthropicInput = parseUsageBlock(event.message.usage);
        state.usage = anthropicInput;
      } else if (event.type === 'content_block_delta') {
        state.deltas++;
      } else if (event.type === 'message_delta' && isObject(event.usage)) {
        if (!anthropicInput) throw new UsageError('message_delta before message_start');
        const output = count(event.usage.output_tokens, 'output_tokens');
        state.usage = { ...anthropicInput, outputTokens: output };
        state.final = true;
      }
    } catch (err) {
      fail(err instanceof UsageError ? err.message : 'a stream event could not be read');
    }
    return false;
  };

  const tap = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      state.bytes += chunk.length;
      const text = decoder.write(chunk);
      let out = strip ? '' : null;
      if (out === null) this.push(chunk); // passed on at once, whatever the parsing makes of it
      let start = 0;
      for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', start)) {
        const raw = line + text.slice(start, i);
        start = i + 1;
        line = '';
        const content = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
        if (out !== null) held += `${raw}\n`;
        if (content === '') {
          const drop = onEvent(data.join('\n'));
          if (out !== null) {
            if (!drop) out += held;
            held = '';
          }
          data = [];
          eventBytes = 0;
        } else if (reading && content.startsWith('data:')) {
          const value = content.slice(content[5] === ' ' ? 6 : 5);
          eventBytes += value.length;
          if (eventBytes > MAX_EVENT_BYTES) {
            fail('a stream event is larger than the tap reads');
            data = [];
          } else data.push(value);
        }
      }
      const rest = text.slice(start);
      if (line.length + rest.length > MAX_EVENT_BYTES) fail('a stream line is larger than the tap reads');
      line += rest;
      if (out === null && !reading) line = ''; // the bytes went on already; nothing is read any more
      if (out !== null) {
        if (!reading) {
          // Parsing gave up: what is held goes out, and from now on every chunk passes at once.
          out += held + line;
          held = '';
          line = '';
          strip = false;
        }
        if (out.length > 0) this.push(out);
      }
      callback();
    },
    flush(callback: TransformCallback) {
      state.ended = true;
      const rest = decoder.end();
      if (strip) {
        const tail = held + line + rest;
        if (tail.length > 0) this.push(tail);
      }
      if (line.length > 0 || data.length > 0) {
        if (state.usage === null) fail('the stream ended inside an event');
      }
      callback();
    },
  });
  return Object.assign(tap, { result: () => ({ ...state, usage: state.usage ? { ...state.usage } : null }) });
}

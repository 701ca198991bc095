import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A local stand-in for the model providers in metering tests: one server that answers the OpenAI chat completions,
 * Responses and embeddings APIs and Anthropic's messages API, as JSON and as server-sent-event streams, closely
 * enough that the official `openai` (6.x) and `@anthropic-ai/sdk` clients parse its answers. Every answer reports a
 * deterministic usage (see `countInputWords` and `outputTokensFor`) so a test can compute the exact expected cost,
 * and faults can be switched on per instance or per request (`MeteredFault`) to see how metering copes.
 *
 * Routes (POST, JSON body), matched on how the path ends so any prefix (`/v1`, `/proxy/x/v1`) works:
 *   `…/chat/completions`  OpenAI chat; streamed as `data:` chunks, one per output token, then `[DONE]`
 *   `…/responses`         OpenAI Responses API; streamed as `event:` + `data:` events with `sequence_number`
 *   `…/embeddings`        OpenAI embeddings (float or base64 vectors, as `encoding_format` asks)
 *   `…/messages`          Anthropic messages; streamed as `event:` + `data:` events
 * Credentials are checked as the providers do: `authorization: Bearer <key>` on the OpenAI routes, `x-api-key: <key>`
 * on `…/messages` — where `authorization: Bearer <key>` is taken too, since that is how the installed
 * @anthropic-ai/sdk (1.10) sends its `apiKey`; anything else is a 401 in the provider's error shape. Other paths
 * are a 404.
 */

export type MeteredRoute = 'chat' | 'responses' | 'embeddings' | 'messages';

/**
 * A fault to inject. Set them for every request with `MeteredLlmUpstreamOptions.faults`, or for one request by
 * suffixing its `model` with `+<fault>` (several may follow each other: `gpt-4o-mini+slow+no-usage`). A request's
 * suffixes REPLACE the instance's faults; the suffix `+none` clears them for that request. The model reported back
 * never carries the suffixes.
 *
 *   no-usage     no usage anywhere: JSON bodies lack `usage`; chat streams send no usage chunk (even when asked),
 *                Responses streams' `response.completed` has no `usage`, Anthropic's `message_start` message and
 *                `message_delta` have no `usage`
 *   lying-usage  the input count is -5 (`prompt_tokens` / `input_tokens`; totals follow), everything else as usual
 *   broken-sse   a stream sends its first two events, then `data: {not json` (with the route's `event:` line, if
 *                it uses them, and a blank line) and ends: no `[DONE]`, no final event
 *   slow         `slowDelayMs` (default 50 ms) between stream events, so a client can abort halfway
 *   status-<n>   the answer is HTTP status n (200–599) with the provider's error JSON, streamed request or not
 *   huge-event   one event whose `data:` line is `hugeEventBytes` (default 2 MiB) long, in the middle of the
 *                stream (after half the token deltas); it carries no output: a chat chunk with an empty delta, a
 *                Responses `response.in_progress`, an Anthropic `ping`, each with a `padding` string field
 */
export type MeteredFault = 'no-usage' | 'lying-usage' | 'broken-sse' | 'slow' | 'huge-event' | `status-${number}`;

const SIMPLE_FAULTS = new Set<string>(['no-usage', 'lying-usage', 'broken-sse', 'slow', 'huge-event']);

/** Whether `name` is a fault name (`status-<n>` with n from 200 to 599 included). */
export function isMeteredFault(name: string): name is MeteredFault {
  if (SIMPLE_FAULTS.has(name)) return true;
  const match = /^status-(\d{3})$/.exec(name);
  return match !== null && Number(match[1]) >= 200 && Number(match[1]) <= 599;
}

/** The JSON body of a request (an empty object when the body is not a JSON object). */
export type JsonBody = Record<string, unknown>;

export interface MeteredLlmUpstreamOptions {
  /**
   * The credential: `authorization: Bearer <apiKey>` on OpenAI routes; `x-api-key: <apiKey>` (or, as the
   * Anthropic SDK 1.x sends it, `authorization: Bearer <apiKey>`) on `…/messages`.
   */
  apiKey: string;
  /** The credential for `…/messages`, when it differs from `apiKey`. */
  anthropicApiKey?: string;
  /** Faults for every request (a request's `+fault` model suffixes replace them). Default none. */
  faults?: MeteredFault[];
  /** Input tokens of a request; default `countInputWords`. */
  inputTokens?: (route: MeteredRoute, body: JsonBody) => number;
  /**
   * Of the input tokens, those reported as served from the cache (OpenAI `cached_tokens`, Anthropic
   * `cache_read_input_tokens`). Default 0. Clamped to the input tokens.
   */
  cachedInputTokens?: number | ((route: MeteredRoute, body: JsonBody) => number);
  /** Anthropic only: of the input tokens, those reported as written to the cache. Default 0. Clamped. */
  cacheCreationInputTokens?: number;
  /** Output tokens when the request asks for no fewer (see `outputTokensFor`). Default 5. */
  outputTokens?: number;
  /** The model to report instead of the requested one (given the requested model, suffixes removed). */
  reportModel?: string | ((requestedModel: string) => string);
  /** The delay between stream events under the `slow` fault. Default 50 ms. */
  slowDelayMs?: number;
  /** The length of the huge event's `data:` line (bytes, without its newline). Default 2 MiB. */
  hugeEventBytes?: number;
}

/** One request as the upstream received it. */
export interface MeteredRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  /** The raw body. */
  body: string;
  /** The body parsed, or null when it is not a JSON object. */
  json: JsonBody | null;
  route: MeteredRoute | null;
  /** The requested model without fault suffixes (null when the body names none). */
  model: string | null;
  /** The faults applied to this request (the instance's, or the request's suffixes). */
  faults: MeteredFault[];
}

/** One streamed answer, as far as it went. */
export interface MeteredStream {
  request: MeteredRequest;
  route: MeteredRoute;
  /** The model reported. */
  model: string;
  /**
   * The true usage, in the gateway's terms (Anthropic's cache reads and writes included in `inputTokens`): what the
   * stream reports unless a no-usage or lying-usage fault says otherwise.
   */
  usage: { inputTokens: number; outputTokens: number; cachedInputTokens: number };
  /** SSE events the full stream has (each `[DONE]`, `event:`+`data:` pair or `data:` chunk is one). */
  chunksPlanned: number;
  /** SSE events written before the stream ended (all of them, or those before the client went away). */
  chunksWritten: number;
  /** Of those, the output token deltas (one per output token). */
  deltasWritten: number;
  /** The client went away before the stream's end. */
  aborted: boolean;
  /** The server wrote the whole stream (a broken-sse stream included) and ended the response. */
  ended: boolean;
  /** Resolves once the stream is over, ended or aborted. */
  done: Promise<void>;
}

export interface MeteredLlmUpstream {
  url: string;
  readonly requests: MeteredRequest[];
  readonly streams: MeteredStream[];
  /** How many streams the client went away from before their end. */
  readonly aborted: number;
  /** Resolves once every stream started so far is over. */
  streamsSettled(): Promise<void>;
  close(): Promise<void>;
}

const DEFAULT_OUTPUT_TOKENS = 5;
const DEFAULT_SLOW_DELAY_MS = 50;
const DEFAULT_HUGE_EVENT_BYTES = 2 * 1024 * 1024;
const CREATED = 1_700_000_000;
const EMBEDDING_DIMENSIONS = 8;

const WORDS = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india', 'juliet', 'kilo', 'lima', 'mike', 'november', 'oscar', 'papa'];

/** The `i`th (0-based) output token's text: a word, with a leading space after the first. */
export function replyToken(i: number): string {
  const word = WORDS[i % WORDS.length] as string;
  return i === 0 ? word : ` ${word}`;
}

/** The whole reply of `n` output tokens: `n` words ("alpha bravo charlie …"), cycling through 16. */
export function replyText(n: number): string {
  let text = '';
  for (let i = 0; i < n; i++) text += replyToken(i);
  return text;
}

const isObject = (value: unknown): value is JsonBody => typeof value === 'object' && value !== null && !Array.isArray(value);
const words = (text: string): number => text.split(/\s+/).filter((w) => w.length > 0).length;

/** Words of a message `content`: a string, or an array of parts of which those with a string `text` count. */
function contentWords(content: unknown): number {
  if (typeof content === 'string') return words(content);
  if (!Array.isArray(content)) return 0;
  let n = 0;
  for (const part of content) {
    if (typeof part === 'string') n += words(part);
    else if (isObject(part) && typeof part.text === 'string') n += words(part.text);
  }
  return n;
}

/**
 * The default input token count: whitespace-separated words (`/\s+/`) of the request's texts.
 *   chat        every `messages[].content` (system messages included): a string, or the `text` of its parts
 *   responses   `instructions` (a string) plus `input`: a string, or items whose `content` is a string or parts
 *               with a `text` (items without `content` count nothing)
 *   embeddings  `input`: a string or each string of an array; token-id arrays count one token per id
 *   messages    `system` (a string, or the `text` of its blocks) plus every `messages[].content` (a string, or the
 *               `text` of its blocks; other blocks count nothing)
 * Role names, model names, tool definitions and other fields count nothing.
 */
export function countInputWords(route: MeteredRoute, body: JsonBody): number {
  const messages = (list: unknown): number => (Array.isArray(list) ? list.reduce((n: number, m: unknown) => n + (isObject(m) ? contentWords(m.content) : 0), 0) : 0);
  switch (route) {
    case 'chat':
      return messages(body.messages);
    case 'responses':
      return (typeof body.instructions === 'string' ? words(body.instructions) : 0) + (typeof body.input === 'string' ? words(body.input) : messages(body.input));
    case 'embeddings': {
      const input = body.input;
      if (typeof input === 'string') return words(input);
      if (!Array.isArray(input)) return 0;
      let n = 0;
      for (const item of input) {
        if (typeof item === 'string') n += words(item);
        else if (typeof item === 'number') n += 1;
        else if (Array.isArray(item)) n += item.length;
      }
      return n;
    }
    case 'messages':
      return contentWords(body.system) + messages(body.messages);
  }
}

/**
 * Output tokens of a request: the request's limit (`max_completion_tokens`, else `max_tokens` for chat;
 * `max_output_tokens` for responses; `max_tokens` for messages) when it is a non-negative integer smaller than
 * `defaultTokens`, else `defaultTokens`. Embeddings have none.
 */
export function outputTokensFor(route: MeteredRoute, body: JsonBody, defaultTokens = DEFAULT_OUTPUT_TOKENS): number {
  if (route === 'embeddings') return 0;
  const limit = route === 'chat' ? (body.max_completion_tokens ?? body.max_tokens) : route === 'responses' ? body.max_output_tokens : body.max_tokens;
  return typeof limit === 'number' && Number.isInteger(limit) && limit >= 0 && limit < defaultTokens ? limit : defaultTokens;
}

/** The route of a request path (query removed), by how it ends. */
function routeOf(path: string): MeteredRoute | null {
  const p = path.replace(/\/+$/, '');
  if (p.endsWith('/chat/completions')) return 'chat';
  if (p.endsWith('/responses')) return 'responses';
  if (p.endsWith('/embeddings')) return 'embeddings';
  if (p.endsWith('/messages')) return 'messages';
  return null;
}

/** Splits `model+fault+fault` into the model and the faults (only known fault names, from the end, are taken). */
function splitModel(model: string): { model: string; faults: MeteredFault[] | null } {
  const parts = model.split('+');
  const faults: MeteredFault[] = [];
  let none = false;
  while (parts.length > 1) {
    const last = parts[parts.length - 1] as string;
    if (last === 'none') none = true;
    else if (isMeteredFault(last)) faults.unshift(last);
    else break;
    parts.pop();
  }
  return { model: parts.join('+'), faults: faults.length > 0 || none ? faults : null };
}

/** One SSE event before it is written: `data` is JSON-encoded unless it is a raw string (`[DONE]`, the broken line). */
interface SseEvent {
  name: string | null;
  data: JsonBody | string;
  /** An output token delta. */
  delta: boolean;
  /** Pad `data.padding` so that the `data:` line is this many bytes long. */
  padTo?: number;
}

type Answer = { kind: 'json'; status: number; body: unknown } | { kind: 'stream'; events: string[]; deltas: boolean[]; stream: MeteredStream };

/** The event's text; with `padTo`, its `data:` line is exactly that long (or as short as it gets). */
function serialize(event: SseEvent): string {
  let data: string;
  if (typeof event.data === 'string') data = event.data;
  else if (event.padTo === undefined) data = JSON.stringify(event.data);
  else {
    const bare = JSON.stringify({ ...event.data, padding: '' });
    data = JSON.stringify({ ...event.data, padding: 'x'.repeat(Math.max(0, event.padTo - 'data: '.length - bare.length)) });
  }
  return `${event.name === null ? '' : `event: ${event.name}\n`}data: ${data}\n\n`;
}

function openAiError(status: number, message: string, code: string | null = null) {
  const type = status === 401 ? 'invalid_request_error' : status === 429 ? 'requests' : status >= 500 ? 'server_error' : 'invalid_request_error';
  return { error: { message, type, param: null, code } };
}

const ANTHROPIC_ERROR_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'billing_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  500: 'api_error',
  504: 'timeout_error',
  529: 'overloaded_error',
};
function anthropicError(status: number, message: string) {
  return { type: 'error', error: { type: ANTHROPIC_ERROR_TYPES[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error'), message } };
}

/** Starts the fake provider on 127.0.0.1, on a free port. */
export async function startMeteredLlmUpstream(options: MeteredLlmUpstreamOptions): Promise<MeteredLlmUpstream> {
  const requests: MeteredRequest[] = [];
  const streams: MeteredStream[] = [];
  const defaultOutput = options.outputTokens ?? DEFAULT_OUTPUT_TOKENS;
  const slowDelay = options.slowDelayMs ?? DEFAULT_SLOW_DELAY_MS;
  const hugeBytes = options.hugeEventBytes ?? DEFAULT_HUGE_EVENT_BYTES;
  let serial = 0;

  const answer = (request: MeteredRequest): Answer => {
    const route = request.route;
    const path = request.url.split('?', 1)[0] ?? '';
    if (route === 'messages') {
      const key = options.anthropicApiKey ?? options.apiKey;
      if (request.headers['x-api-key'] !== key && request.headers.authorization !== `Bearer ${key}`) {
        return { kind: 'json', status: 401, body: anthropicError(401, 'invalid x-api-key') };
      }
    } else if (request.headers.authorization !== `Bearer ${options.apiKey}`) {
      return { kind: 'json', status: 401, body: openAiError(401, 'Incorrect API key provided.', 'invalid_api_key') };
    }
    if (route === null || request.method !== 'POST') {
      return { kind: 'json', status: 404, body: openAiError(404, `Unknown request URL: ${request.method} ${path}.`, 'unknown_url') };
    }
    const faults = new Set<string>(request.faults);
    const statusFault = request.faults.find((f) => f.startsWith('status-'));
    if (statusFault !== undefined) {
      const status = Number(statusFault.slice('status-'.length));
      const message = `Injected fault: status ${status}.`;
      return { kind: 'json', status, body: route === 'messages' ? anthropicError(status, message) : openAiError(status, message, status === 429 ? 'rate_limit_exceeded' : null) };
    }
    const body = request.json ?? {};
    const n = ++serial;
    const requested = request.model ?? 'unknown';
    const model = typeof options.reportModel === 'function' ? options.reportModel(requested) : (options.reportModel ?? requested);
    const input = Math.max(0, Math.trunc((options.inputTokens ?? countInputWords)(route, body)));
    const cachedOption = typeof options.cachedInputTokens === 'function' ? options.cachedInputTokens(route, body) : (options.cachedInputTokens ?? 0);
    const cached = Math.min(input, Math.max(0, Math.trunc(cachedOption)));
    const cacheWrite = route === 'messages' ? Math.min(input - cached, Math.max(0, Math.trunc(options.cacheCreationInputTokens ?? 0))) : 0;
    const output = outputTokensFor(route, body, defaultOutput);
    const truncated = output < defaultOutput;
    const text = replyText(output);
    const noUsage = faults.has('no-usage');
    const reportedInput = faults.has('lying-usage') ? -5 : input;
    const streamed = body.stream === true && route !== 'embeddings';

    const events: SseEvent[] = [];
    let deltaStart = 0; // index in `events` of the first token delta, for the huge event's place
    let huge: SseEvent | undefined; // the huge-event fault's event
    let brokenEventName: string | null = null;

    if (route === 'chat') {
      const id = `chatcmpl-metered-${n}`;
      const usage = { prompt_tokens: reportedInput, completion_tokens: output, total_tokens: reportedInput + output, prompt_tokens_details: { cached_tokens: cached } };
      const finish = truncated ? 'length' : 'stop';
      if (!streamed) {
        const json: JsonBody = {
          id,
          object: 'chat.completion',
          created: CREATED,
          model,
          choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null, annotations: [] }, logprobs: null, finish_reason: finish }],
          system_fingerprint: null,
        };
        if (!noUsage) json.usage = usage;
        return { kind: 'json', status: 200, body: json };
      }
      const includeUsage = isObject(body.stream_options) && body.stream_options.include_usage === true;
      const chunk = (choices: unknown[], extra: JsonBody = {}) => ({ id, object: 'chat.completion.chunk', created: CREATED, model, system_fingerprint: null, choices, ...(includeUsage ? { usage: null } : {}), ...extra });
      for (let i = 0; i < output; i++) {
        const delta = i === 0 ? { role: 'assistant', content: replyToken(i) } : { content: replyToken(i) };
        events.push({ name: null, data: chunk([{ index: 0, delta, logprobs: null, finish_reason: null }]), delta: true });
      }
      events.push({ name: null, data: chunk([{ index: 0, delta: output === 0 ? { role: 'assistant', content: '' } : {}, logprobs: null, finish_reason: finish }]), delta: false });
      if (includeUsage && !noUsage) events.push({ name: null, data: chunk([], { usage }), delta: false });
      events.push({ name: null, data: '[DONE]', delta: false });
      huge = { name: null, data: chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: null }]), delta: false, padTo: hugeBytes };
    } else if (route === 'responses') {
      const id = `resp_metered_${n}`;
      const itemId = `msg_metered_${n}`;
      const usage = { input_tokens: reportedInput, input_tokens_details: { cached_tokens: cached }, output_tokens: output, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: reportedInput + output };
      const part = (t: string) => ({ type: 'output_text', text: t, annotations: [], logprobs: [] });
      const item = (status: string, content: unknown[]) => ({ id: itemId, type: 'message', status, role: 'assistant', content });
      const response = (status: string, outputItems: unknown[], withUsage: boolean): JsonBody => {
        const r: JsonBody = {
          id,
          object: 'response',
          created_at: CREATED,
          status,
          error: null,
          incomplete_details: null,
          instructions: typeof body.instructions === 'string' ? body.instructions : null,
          max_output_tokens: typeof body.max_output_tokens === 'number' ? body.max_output_tokens : null,
          model,
          output: outputItems,
          parallel_tool_calls: true,
          previous_response_id: null,
          temperature: 1,
          top_p: 1,
          tool_choice: 'auto',
          tools: [],
          text: { format: { type: 'text' } },
          truncation: 'disabled',
          metadata: {},
        };
        if (!noUsage) r.usage = withUsage ? usage : null;
        return r;
      };
      const full = () => response('completed', [item('completed', [part(text)])], true);
      if (!streamed) return { kind: 'json', status: 200, body: full() };
      // sequence_number is set once the events are in their final order (below).
      const ev = (type: string, data: JsonBody, delta = false): SseEvent => ({ name: type, data: { type, sequence_number: 0, ...data }, delta });
      events.push(ev('response.created', { response: response('in_progress', [], false) }));
      events.push(ev('response.output_item.added', { output_index: 0, item: item('in_progress', []) }));
      events.push(ev('response.content_part.added', { item_id: itemId, output_index: 0, content_index: 0, part: part('') }));
      deltaStart = events.length;
      for (let i = 0; i < output; i++) events.push(ev('response.output_text.delta', { item_id: itemId, output_index: 0, content_index: 0, delta: replyToken(i), logprobs: [] }, true));
      huge = { ...ev('response.in_progress', { response: response('in_progress', [], false) }), padTo: hugeBytes };
      events.push(ev('response.output_text.done', { item_id: itemId, output_index: 0, content_index: 0, text, logprobs: [] }));
      events.push(ev('response.content_part.done', { item_id: itemId, output_index: 0, content_index: 0, part: part(text) }));
      events.push(ev('response.output_item.done', { output_index: 0, item: item('completed', [part(text)]) }));
      events.push(ev('response.completed', { response: full() }));
      brokenEventName = 'response.output_text.delta';
    } else if (route === 'embeddings') {
      const inputs = typeof body.input === 'string' ? [body.input] : Array.isArray(body.input) ? body.input : [];
      const dimensions = typeof body.dimensions === 'number' && Number.isInteger(body.dimensions) && body.dimensions > 0 ? body.dimensions : EMBEDDING_DIMENSIONS;
      const base64 = body.encoding_format === 'base64';
      const data = inputs.map((_, index) => {
        const vector = Array.from({ length: dimensions }, (_v, d) => ((index + 1) * (d + 1)) / 64);
        return { object: 'embedding', index, embedding: base64 ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector };
      });
      const json: JsonBody = { object: 'list', data, model };
      if (!noUsage) json.usage = { prompt_tokens: reportedInput, total_tokens: reportedInput };
      return { kind: 'json', status: 200, body: json };
    } else {
      const id = `msg_metered_${n}`;
      const anthropicInput = faults.has('lying-usage') ? -5 : input - cached - cacheWrite;
      const usage = (out: number) => ({ input_tokens: anthropicInput, output_tokens: out, cache_read_input_tokens: cached, cache_creation_input_tokens: cacheWrite });
      const stopReason = truncated ? 'max_tokens' : 'end_turn';
      const message = (content: unknown[], stop: string | null, out: number): JsonBody => {
        const m: JsonBody = { id, type: 'message', role: 'assistant', model, content, stop_reason: stop, stop_sequence: null };
        if (!noUsage) m.usage = usage(out);
        return m;
      };
      if (!streamed) return { kind: 'json', status: 200, body: message([{ type: 'text', text, citations: null }], stopReason, output) };
      const ev = (type: string, data: JsonBody, delta = false): SseEvent => ({ name: type, data: { type, ...data }, delta });
      events.push(ev('message_start', { message: message([], null, 1) }));
      events.push(ev('content_block_start', { index: 0, content_block: { type: 'text', text: '', citations: null } }));
      deltaStart = events.length;
      for (let i = 0; i < output; i++) events.push(ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: replyToken(i) } }, true));
      events.push(ev('content_block_stop', { index: 0 }));
      events.push(ev('message_delta', { delta: { stop_reason: stopReason, stop_sequence: null }, ...(noUsage ? {} : { usage: { output_tokens: output } }) }));
      events.push(ev('message_stop', {}));
      huge = { ...ev('ping', {}), padTo: hugeBytes };
      brokenEventName = 'content_block_delta';
    }

    if (faults.has('huge-event') && huge !== undefined) events.splice(deltaStart + Math.floor(output / 2), 0, huge);
    if (route === 'responses') {
      let seq = 0;
      for (const event of events) if (typeof event.data !== 'string') event.data.sequence_number = seq++;
    }
    if (faults.has('broken-sse')) {
      events.splice(2);
      events.push({ name: brokenEventName, data: '{not json', delta: false });
    }
    const stream: MeteredStream = {
      request,
      route,
      model,
      usage: { inputTokens: input, outputTokens: output, cachedInputTokens: cached },
      chunksPlanned: events.length,
      chunksWritten: 0,
      deltasWritten: 0,
      aborted: false,
      ended: false,
      done: Promise.resolve(),
    };
    return { kind: 'stream', events: events.map(serialize), deltas: events.map((e) => e.delta), stream };
  };

  const writeStream = async (res: http.ServerResponse, events: string[], deltas: boolean[], stream: MeteredStream, delayMs: number): Promise<void> => {
    let gone = false;
    let wake: (() => void) | null = null;
    res.on('close', () => {
      if (!res.writableFinished) gone = true;
      wake?.();
    });
    const pause = (wait: (resolve: () => void) => void) =>
      new Promise<void>((resolve) => {
        wake = resolve;
        wait(resolve);
      }).finally(() => {
        wake = null;
      });
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.flushHeaders();
    for (let i = 0; i < events.length; i++) {
      if (i > 0 && delayMs > 0 && !gone) {
        let timer: NodeJS.Timeout | undefined;
        await pause((resolve) => {
          timer = setTimeout(resolve, delayMs);
        });
        clearTimeout(timer);
      }
      if (gone || res.destroyed) break;
      const flushed = res.write(events[i] as string);
      stream.chunksWritten++;
      if (deltas[i] === true) stream.deltasWritten++;
      if (!flushed && !gone) await pause((resolve) => res.once('drain', resolve));
    }
    if (!gone && !res.destroyed) {
      await pause((resolve) => res.end(resolve));
      stream.ended = !gone;
    }
    stream.aborted = !stream.ended;
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('error', () => {});
    res.on('error', () => {});
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      let json: JsonBody | null = null;
      try {
        const value: unknown = JSON.parse(body);
        if (isObject(value)) json = value;
      } catch {
        json = null;
      }
      const url = req.url ?? '';
      const rawModel = json !== null && typeof json.model === 'string' ? json.model : null;
      const split = rawModel === null ? null : splitModel(rawModel);
      const request: MeteredRequest = {
        method: req.method ?? '',
        url,
        headers: req.headers,
        body,
        json,
        route: routeOf(url.split('?', 1)[0] ?? ''),
        model: split?.model ?? null,
        faults: split?.faults ?? [...(options.faults ?? [])],
      };
      requests.push(request);
      let result: Answer;
      try {
        result = answer(request);
      } catch (err) {
        result = { kind: 'json', status: 500, body: { error: { message: (err as Error).message, type: 'server_error', param: null, code: null } } };
      }
      if (result.kind === 'json') {
        const text = JSON.stringify(result.body);
        res.writeHead(result.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
        res.end(text);
        return;
      }
      const { stream, events, deltas } = result;
      stream.done = writeStream(res, events, deltas, stream, request.faults.includes('slow') ? slowDelay : 0).catch(() => {
        stream.aborted = !stream.ended;
      });
      streams.push(stream);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${address.port}`,
    requests,
    streams,
    get aborted() {
      return streams.filter((s) => s.aborted).length;
    },
    streamsSettled: async () => {
      await Promise.all(streams.map((s) => s.done));
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

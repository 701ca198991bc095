/**
 * Metering on the request path: what an allowed call to a priced upstream costs, from the gateway's own reading.
 *
 *   before   an LLM call's body is read (after the decision, bounded by the body limit) for its model, its token cap
 *            and whether it streams; a streamed OpenAI chat completion is made to ask for usage
 *            (`stream_options.include_usage`) when the agent did not, and that extra chunk is held back from it
 *   during   the response passes through a tap that reads the usage as it goes by (SSE) or keeps a bounded copy (JSON)
 *   after    the cost: the usage at the table's prices (exact); the reservation when no usage could be read; what was
 *            delivered when the client went away (estimated) — then the budgets are settled and one metering event
 *            is published
 *
 * A price, cost or model sent by the agent is never used for money: the model the agent names only picks the
 * reservation and, when the upstream reports another name the table lacks, the price of what it served.
 */
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import type { UpstreamDialect } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import type { MeteringData } from '../events/cloudevents.js';
import { costOf, reservationFor, type Pricing } from '../metering/pricing.js';
import { createSseUsageTap, MAX_TOKENS, usageFromJson, UsageError, type StreamUsage, type TokenUsage, type UsageDialect } from '../metering/usage.js';
import { BodyTooLarge } from './body-limit.js';

export type LlmEndpoint = 'chat' | 'responses' | 'embeddings' | 'messages';

/** The LLM endpoint a POST goes to, by the end of its upstream path; null for anything else (priced per request). */
export function llmEndpointOf(dialect: UpstreamDialect, method: string, path: string): LlmEndpoint | null {
  if (method !== 'POST') return null;
  const bare = path.split('?', 1)[0]!.replace(/\/+$/, '');
  if (dialect === 'openai') {
    if (bare.endsWith('/chat/completions')) return 'chat';
    if (bare.endsWith('/responses')) return 'responses';
    if (bare.endsWith('/embeddings')) return 'embeddings';
  } else if (dialect === 'anthropic' && bare.endsWith('/messages')) return 'messages';
  return null;
}

/** What the gateway read of an LLM request: enough to reserve, nothing it trusts for money. */
export interface LlmRequestFacts {
  endpoint: LlmEndpoint;
  model: string;
  stream: boolean;
  /** The request's own cap on output tokens; 0 for embeddings (they have no output). */
  maxOutputTokens: number | null;
  /** An upper bound of the prompt's tokens: its bytes (a token is at least one byte in the providers' tokenizers). */
  promptTokens: number;
  /** The gateway added `stream_options.include_usage`: the usage-only chunk is not the agent's to see. */
  stripUsage: boolean;
  /** The bytes that go upstream: the agent's own, or with the usage request added. */
  body: Buffer;
}

const bad = (message: string, reason = 'bad_llm_request') => new CaracalError('CARACAL_BAD_REQUEST', message, { reasons: [reason] });

/** Reads a whole request body, failing with BodyTooLarge past `limit` bytes. */
export function readBody(body: Readable, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    body.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        body.destroy();
        reject(new BodyTooLarge(limit));
      } else chunks.push(chunk);
    });
    body.on('error', (err) => reject(err instanceof CaracalError ? err : bad('the request body could not be read', 'body_unreadable')));
    body.on('end', () => resolve(Buffer.concat(chunks, size)));
  });
}

function tokenCap(value: unknown, name: string): number | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_TOKENS) throw bad(`${name} must be a non-negative integer of at most ${MAX_TOKENS}`);
  return value;
}

/** Checks and reads an LLM request body; anything the gateway cannot meter is a 400 naming what is wrong. */
export function readLlmRequest(endpoint: LlmEndpoint, raw: Buffer): LlmRequestFacts {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw bad('the request body is not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw bad('the request body is not a JSON object');
  const body = parsed as Record<string, unknown>;
  if (typeof body.model !== 'string' || body.model.length === 0 || body.model.length > 256) throw bad('model must be a string of 1-256 characters');
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw bad('stream must be true or false');
  const stream = body.stream === true;
  let maxOutputTokens: number | null;
  if (endpoint === 'chat') maxOutputTokens = tokenCap(body.max_completion_tokens, 'max_completion_tokens') ?? tokenCap(body.max_tokens, 'max_tokens');
  else if (endpoint === 'responses') maxOutputTokens = tokenCap(body.max_output_tokens, 'max_output_tokens');
  else if (endpoint === 'messages') maxOutputTokens = tokenCap(body.max_tokens, 'max_tokens');
  else maxOutputTokens = 0;
  let out = raw;
  let stripUsage = false;
  if (endpoint === 'chat' && stream) {
    const options = body.stream_options;
    if (options !== undefined && options !== null && (typeof options !== 'object' || Array.isArray(options))) throw bad('stream_options must be an object');
    const asked = (options as Record<string, unknown> | null | undefined)?.include_usage;
    if (asked !== true) {
      stripUsage = true;
      // The agent's bytes, with the one member changed. Rewritten from the parsed object only when the agent sent
      // stream_options itself; otherwise the member is added in front and nothing else moves.
      out =
        options === undefined
          ? Buffer.concat([Buffer.from('{"stream_options":{"include_usage":true},'), raw.subarray(raw.indexOf('{') + 1)])
          : Buffer.from(JSON.stringify({ ...body, stream_options: { ...(options as object), include_usage: true } }));
    }
  }
  return { endpoint, model: body.model, stream, maxOutputTokens, promptTokens: raw.length, stripUsage, body: out };
}

/** The most the call can cost, or null when nothing bounds it. */
export function llmReservation(pricing: Pricing, facts: LlmRequestFacts | null): number | null {
  return reservationFor(pricing, facts?.model ?? null, facts ? { promptTokens: facts.promptTokens, maxOutputTokens: facts.maxOutputTokens } : null);
}

/** JSON bodies past this are passed on but not read for usage (the call is settled at its reservation). */
export const MAX_JSON_CAPTURE_BYTES = 16 << 20;

export interface ResponseReading {
  model: string | null;
  usage: TokenUsage | null;
  error: string | null;
  deltas: number;
  final: boolean;
  bytes: number;
  ended: boolean;
}

export interface ResponseTap {
  stream: Transform;
  result(): ResponseReading;
}

/** A JSON body passes on at once; a copy (bounded) is parsed for usage at its end. */
function jsonTap(): ResponseTap {
  const chunks: Buffer[] = [];
  let bytes = 0;
  let ended = false;
  let reading: Pick<ResponseReading, 'model' | 'usage' | 'error'> = { model: null, usage: null, error: 'the response ended before it was read' };
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      bytes += chunk.length;
      if (bytes <= MAX_JSON_CAPTURE_BYTES) chunks.push(chunk);
      callback(null, chunk);
    },
    flush(callback: TransformCallback) {
      ended = true;
      if (bytes > MAX_JSON_CAPTURE_BYTES) reading = { model: null, usage: null, error: 'the response is larger than the gateway reads for usage' };
      else {
        try {
          const json: unknown = JSON.parse(Buffer.concat(chunks, bytes).toString('utf8'));
          const { model, usage } = usageFromJson(json);
          reading = { model, usage, error: null };
        } catch (err) {
          reading = { model: null, usage: null, error: err instanceof UsageError ? err.message : 'the response is not JSON' };
        }
      }
      chunks.length = 0;
      callback();
    },
  });
  return { stream: tap, result: () => ({ ...reading, deltas: 0, final: reading.usage !== null, bytes, ended }) };
}

/** Counts what passes (a response the gateway does not read: another content type, or an error). */
function countingTap(): ResponseTap {
  let bytes = 0;
  let ended = false;
  const tap = new PassThrough();
  tap.on('data', (chunk: Buffer) => (bytes += chunk.length));
  tap.on('end', () => (ended = true));
  return { stream: tap, result: () => ({ model: null, usage: null, error: null, deltas: 0, final: false, bytes, ended }) };
}

/** The tap for an upstream's response to a metered call. */
export function responseTap(dialect: UpstreamDialect, llm: LlmRequestFacts | null, status: number, contentType: string | undefined): ResponseTap {
  const type = (contentType ?? '').split(';', 1)[0]!.trim().toLowerCase();
  if (!llm || status >= 400 || (dialect !== 'openai' && dialect !== 'anthropic')) return countingTap();
  if (type === 'text/event-stream') {
    const tap = createSseUsageTap({ dialect: dialect as UsageDialect, stripUsageChunk: llm.stripUsage });
    return { stream: tap, result: (): ResponseReading => fromStream(tap.result()) };
  }
  if (type === 'application/json' || type.endsWith('+json')) return jsonTap();
  return countingTap();
}

function fromStream(read: StreamUsage): ResponseReading {
  return { model: read.model, usage: read.usage, error: read.error, deltas: read.deltas, final: read.final, bytes: read.bytes, ended: read.ended };
}

export type CallOutcome = MeteringData['outcome'];

export interface CallCost {
  micros: number;
  exact: boolean;
  estimateReason: string | null;
  model: string | null;
  usage: TokenUsage | null;
}

/**
 * What a call that ended costs.
 *   - no answer from the upstream: nothing
 *   - a plain call (no LLM endpoint): the per-request price
 *   - usage read in full: the tokens at the model's prices (the upstream's model name, else the requested one), exact
 *   - cut short (the client went away, the upstream broke off): what was delivered — the input (the usage's count,
 *     else the prompt's bound) and the output deltas seen at the output price, never more than the reservation
 *   - otherwise (no usage, a usage block refused, a model not priced): the reservation, estimated
 */
export function costOfCall(pricing: Pricing, llm: LlmRequestFacts | null, reservationMicros: number, answered: boolean, status: number | null, reading: ResponseReading | null): CallCost {
  const none = { model: llm?.model ?? null, usage: null };
  if (!answered) return { micros: 0, exact: true, estimateReason: null, ...none };
  if (!llm) return { micros: pricing.perRequest ?? 0, exact: true, estimateReason: null, ...none };
  if (status !== null && status >= 400) {
    // Providers do not bill refused calls; the gateway charges its per-request price only.
    return { micros: pricing.perRequest ?? 0, exact: true, estimateReason: null, ...none };
  }
  const read = reading ?? { model: null, usage: null, error: 'the response was not read', deltas: 0, final: false, bytes: 0, ended: false };
  const priced = (model: string | null) => (model !== null && pricing.models[model] ? model : null);
  const model = priced(read.model) ?? priced(llm.model);
  if (read.usage && read.final && read.error === null) {
    const cost = costOf(pricing, model, read.usage);
    if (cost) return { micros: cost.micros, exact: true, estimateReason: null, model: read.model ?? llm.model, usage: read.usage };
    return { micros: reservationMicros, exact: false, estimateReason: 'model_not_priced', model: read.model ?? llm.model, usage: read.usage };
  }
  if (!read.ended && model !== null) {
    const delivered: TokenUsage = {
      inputTokens: read.usage?.inputTokens ?? llm.promptTokens,
      cachedInputTokens: read.usage?.cachedInputTokens ?? 0,
      outputTokens: Math.max(read.usage?.outputTokens ?? 0, read.deltas),
    };
    const cost = costOf(pricing, model, delivered);
    const micros = cost ? Math.min(cost.micros, Math.max(reservationMicros, pricing.perRequest ?? 0)) : reservationMicros;
    return { micros, exact: false, estimateReason: 'cut_short', model: read.model ?? llm.model, usage: delivered };
  }
  const reason = read.error ? `usage_unreadable: ${read.error}` : read.ended ? 'no_usage' : 'cut_short';
  return { micros: reservationMicros, exact: false, estimateReason: reason.slice(0, 256), model: read.model ?? llm.model, usage: read.usage };
}

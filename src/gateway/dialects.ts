import type { UpstreamDialect } from '../config/schema.js';
import type { CaracalError } from '../errors/catalog.js';
import { errorBody } from './error-body.js';

/**
 * How the gateway speaks to agents of each upstream dialect. Agents point their usual SDK at the
 * gateway, so the gateway must (1) find the agent's credential where that SDK puts it and (2) shape
 * its own errors the way that SDK reads errors, or the agent sees "403 [object Object]" instead of
 * the reason it was denied.
 */

/**
 * Every header an agent's SDK may carry its credential in: `authorization: Bearer` (OpenAI, most
 * clients), `x-api-key` (Anthropic), `api-key` (Azure OpenAI). All are stripped before the
 * upstream, whatever the dialect, and the upstream's own credential is injected instead.
 */
export const AGENT_CREDENTIAL_HEADERS = ['authorization', 'x-api-key', 'api-key', 'proxy-authorization'] as const;

const BEARER = /^Bearer ([^\s]+)$/i;
const RAW_KEY = /^[^\s]+$/;

/**
 * The agent's bearer credential from whichever header its SDK used, or null. Two headers carrying
 * different values are ambiguous: the caller treats that as malformed (401), never picks one.
 */
export function agentCredential(headers: Record<string, string | string[] | undefined>): string | null {
  let found: string | null = null;
  const take = (value: string | null): void => {
    if (value === null) return;
    if (found !== null && found !== value) throw new AmbiguousCredential();
    found = value;
  };
  const authorization = headers.authorization;
  if (typeof authorization === 'string') take(BEARER.exec(authorization)?.[1] ?? null);
  for (const name of ['x-api-key', 'api-key'] as const) {
    const value = headers[name];
    if (typeof value === 'string' && RAW_KEY.test(value)) take(value);
  }
  return found;
}

export class AmbiguousCredential extends Error {
  constructor() {
    super('the request carries different credentials in authorization, x-api-key or api-key');
    this.name = 'AmbiguousCredential';
  }
}

/** Error `type`s the SDKs know, by HTTP status (both OpenAI and Anthropic use these names). */
function errorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 404) return 'not_found_error';
  if (status === 413) return 'request_too_large';
  if (status === 429) return 'rate_limit_error';
  if (status === 503 || status === 502 || status === 504) return 'overloaded_error';
  if (status >= 500) return 'api_error';
  return 'invalid_request_error';
}

/**
 * The error body in the dialect of the upstream the request was for. Caracal's own fields (code,
 * reasons, decision id, request id) are inside the SDK's error object, so they survive into the
 * exception the agent catches (`err.error.reasons`, `err.code`, …).
 *
 * - `openai`: `{"error": {"message", "type", "code", "param", …}}` — the OpenAI SDK reads
 *   `error.message` and `error.code`.
 * - `anthropic`: `{"type": "error", "error": {"type", "message", …}, "request_id"}`.
 * - `http` and `mcp` (HTTP-level errors): Caracal's flat shape.
 */
export function dialectErrorBody(dialect: UpstreamDialect | undefined, error: CaracalError, requestId: string): unknown {
  const flat = errorBody(error, requestId);
  if (dialect === 'openai') {
    const { error: code, message, ...rest } = flat;
    return { error: { message: `${message} [${code}]`, type: errorType(error.statusCode), code, param: null, ...rest } };
  }
  if (dialect === 'anthropic') {
    const { error: code, message, ...rest } = flat;
    return { type: 'error', error: { type: errorType(error.statusCode), message: `${message} [${code}]`, code, ...rest }, request_id: requestId };
  }
  return flat;
}

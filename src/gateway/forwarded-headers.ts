import type { IncomingHttpHeaders } from 'node:http';
import { isClientCertHeader } from './authenticators.js';
import { AGENT_CREDENTIAL_HEADERS } from './dialects.js';

/**
 * What crosses the gateway in each direction. The upstream must receive exactly the request that
 * was judged, with none of the agent's credentials; the agent must receive only the upstream's
 * end-to-end headers, never something that impersonates the gateway.
 */

/** Hop-by-hop headers (RFC 9110 §7.6.1) and their common non-standard cousins: never forwarded. */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings', 'proxy-authenticate'];

/**
 * Headers that ask a server to act on another method or URL than the one on the request line:
 * the policy judged the method and URL, so these would let an agent act outside its decision.
 */
const REQUEST_REWRITE = ['x-http-method-override', 'x-method-override', 'x-http-method', 'x-original-url', 'x-rewrite-url', 'x-original-method'];

/** Never forwarded upstream: credentials, cookies, the agent's mandate and the headers above. */
const DROPPED_UPSTREAM = new Set<string>([...AGENT_CREDENTIAL_HEADERS, 'cookie', 'caracal-mandate', ...HOP_BY_HOP, ...REQUEST_REWRITE]);

/** Never passed from the upstream to the agent: framing is the gateway's, ids are the gateway's. */
const DROPPED_DOWNSTREAM = new Set<string>([...HOP_BY_HOP, 'x-request-id']);

/** The shortest agent credential that is searched for inside other header values. */
const MIN_SECRET_LENGTH = 16;

export interface UpstreamHeaderContext {
  requestId: string;
  decisionId: string;
  /** The credential the agent presented (bearer token, mandate); no header carrying it is forwarded. */
  agentSecrets: readonly string[];
  /** The upstream's own credential, injected last so nothing the agent sent can replace it. */
  credential: { header: string; value: string } | null;
}

/**
 * The headers the upstream receives: a new object with what may pass, then Caracal's own. Built
 * rather than deleted from the proxy library's copy: deleting properties turns an object into a
 * slow dictionary, and every request does it.
 */
export function upstreamRequestHeaders(headers: IncomingHttpHeaders, context: UpstreamHeaderContext): IncomingHttpHeaders {
  const forwarded: IncomingHttpHeaders = {};
  for (const name of Object.keys(headers)) {
    if (DROPPED_UPSTREAM.has(name) || name.startsWith('x-caracal-') || isClientCertHeader(name)) continue;
    // An agent that copies its token into another header (x-auth, a custom field) does not get it
    // past the gateway either.
    const value = headers[name];
    if (value !== undefined && carriesSecret(value, context.agentSecrets)) continue;
    forwarded[name] = value;
  }
  forwarded['x-request-id'] = context.requestId;
  forwarded['x-caracal-decision-id'] = context.decisionId;
  if (context.credential) forwarded[context.credential.header] = context.credential.value;
  return forwarded;
}

/** A header value carries one of the secrets. (A number — the proxy's own content-length for a body it was given — carries none.) */
function carriesSecret(value: string | string[] | number, secrets: readonly string[]): boolean {
  if (typeof value === 'number') return false;
  for (const secret of secrets) {
    if (secret.length < MIN_SECRET_LENGTH) continue;
    if (typeof value === 'string' ? value.includes(secret) : value.some((v) => v.includes(secret))) return true;
  }
  return false;
}

/** The upstream's response headers the agent receives, as a new object (see upstreamRequestHeaders). */
export function agentResponseHeaders<H extends IncomingHttpHeaders>(headers: H): H {
  const connection = headers.connection;
  // Headers the upstream named in its own Connection header are hop-by-hop too.
  const listed = typeof connection === 'string' ? connection.toLowerCase().split(',').map((s) => s.trim()) : NONE;
  const passed: IncomingHttpHeaders = {};
  for (const name of Object.keys(headers)) {
    if (DROPPED_DOWNSTREAM.has(name) || name.startsWith('x-caracal-') || listed.includes(name)) continue;
    passed[name] = headers[name];
  }
  return passed as H;
}

const NONE: readonly string[] = [];

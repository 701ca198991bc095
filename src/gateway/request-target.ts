import type { UpstreamConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';

/**
 * The one upstream URL of a request, built once from the raw request target. The allowlist, the
 * policy input, the decision event and the proxy all receive this same value, so what was judged
 * is exactly what is sent. Anything that could be read two ways is refused rather than guessed:
 *
 * - a fragment (`#`): never part of a request target; an allowlist would see it, the upstream not;
 * - the upstream name written in any way but plainly (`/proxy/%75p/…`);
 * - characters outside RFC 3986's path / query sets (spaces, quotes, `\`, non-ASCII, controls);
 * - malformed percent-encodings (`%zz`, `%c0%ae`-style overlong or invalid UTF-8 decodes to
 *   nothing sensible, so any encoding of a control character, `\` or NUL is refused too);
 * - dot segments, plain or encoded (`..`, `%2e%2e`, `.%2E`), also between encoded slashes;
 * - `;` in the path: servlet containers and some frameworks strip `;params` before routing, so
 *   `/files/secret.txt;.pdf` would be judged as a PDF and served as the text file.
 *
 * Normalisation (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded, the hex of
 * the remaining encodings is upper-cased and doubled slashes in the path collapse to one. The query
 * is validated but forwarded byte for byte.
 */
export interface UpstreamTarget {
  /** Path sent to the upstream, including the upstream's own base path. */
  readonly path: string;
  /** Query string without `?`; empty when there is none. */
  readonly query: string;
  /** `path` plus `?query` when there is one: the request target the upstream receives. */
  readonly pathAndQuery: string;
  /** Origin plus path, no query: what the allowlist matches. */
  readonly url: string;
  /** Origin plus path and query: what the decision event records. */
  readonly fullUrl: string;
}

const PATH_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$/;
const QUERY_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/;
const PERCENT = /%([0-9A-Fa-f]{2})/g;
const BAD_PERCENT = /%(?![0-9A-Fa-f]{2})/;
// A segment that is `.` or `..`, and (as the proxy library also refuses them) any `..` next to a
// slash, plain or encoded.
const DOT_SEGMENT = /(?:^|\/|%2F)\.(?:\/|%2F|$)|(?:^|\/|%2F)\.\.|\.\.(?:\/|%2F|$)/i;
const UNRESERVED = /[A-Za-z0-9\-._~]/;

function refuse(reason: string, message: string): never {
  throw new CaracalError('CARACAL_BAD_REQUEST', message, { reasons: [reason] });
}

/** Decodes unreserved characters, upper-cases the rest; refuses encoded controls, `\` and NUL. */
function normalisePercent(segment: string): string {
  return segment.replace(PERCENT, (_match, hex: string) => {
    const code = Number.parseInt(hex, 16);
    // An encoded backslash or NUL can end or climb out of a path on the upstream's side.
    if (code === 0x5c || code === 0) refuse('path_traversal', 'the request path encodes a backslash or NUL');
    if (code < 0x20 || code === 0x7f) refuse('bad_encoding', 'the request path encodes a control character or NUL');
    const char = String.fromCharCode(code);
    return code < 0x80 && UNRESERVED.test(char) ? char : `%${hex.toUpperCase()}`;
  });
}

export class UpstreamTargetBuilder {
  private readonly prefix: string;
  private readonly origin: string;
  private readonly basePath: string;

  constructor(upstream: Pick<UpstreamConfig, 'name' | 'url'>) {
    const base = new URL(upstream.url);
    this.prefix = `/proxy/${upstream.name}`;
    this.origin = base.origin;
    this.basePath = base.pathname.replace(/\/+$/, '');
  }

  /** The upstream target for a raw request target (`request.raw.url`), or a 400 naming why not. */
  build(rawUrl: string): UpstreamTarget {
    if (rawUrl.includes('#')) refuse('fragment', 'the request target contains a fragment (#)');
    const queryAt = rawUrl.indexOf('?');
    const rawPath = queryAt < 0 ? rawUrl : rawUrl.slice(0, queryAt);
    const query = queryAt < 0 ? '' : rawUrl.slice(queryAt + 1);
    if (!rawPath.startsWith(this.prefix) || (rawPath.length > this.prefix.length && rawPath[this.prefix.length] !== '/')) {
      refuse('non_canonical_target', `the upstream must be named plainly, as ${this.prefix}/…`);
    }
    const rest = rawPath.slice(this.prefix.length);
    if (rest.includes('\\')) refuse('path_traversal', 'the request path contains a backslash');
    if (rest.includes(';')) refuse('path_parameters', 'the request path contains ";" (path parameters are not forwarded)');
    if (!PATH_CHARS.test(rest)) refuse('bad_characters', 'the request path contains characters that must be percent-encoded');
    if (BAD_PERCENT.test(rest)) refuse('bad_encoding', 'the request path contains a malformed percent-encoding');
    const normalised = normalisePercent(rest).replace(/\/{2,}/g, '/');
    if (DOT_SEGMENT.test(normalised)) refuse('path_traversal', 'the request path contains dot segments');
    if (query.length > 0) {
      if (!QUERY_CHARS.test(query)) refuse('bad_characters', 'the query contains characters that must be percent-encoded');
      if (BAD_PERCENT.test(query)) refuse('bad_encoding', 'the query contains a malformed percent-encoding');
    }
    const path = `${this.basePath}${normalised}` || '/';
    const pathAndQuery = query.length > 0 ? `${path}?${query}` : path;
    return { path, query, pathAndQuery, url: `${this.origin}${path}`, fullUrl: `${this.origin}${pathAndQuery}` };
  }
}

const DEFAULT_ACTIONS: Record<string, string> = {
  GET: 'read',
  HEAD: 'read',
  OPTIONS: 'read',
  POST: 'write',
  PUT: 'write',
  PATCH: 'write',
  DELETE: 'delete',
};

/** The methods an upstream accepts: the default map plus whatever its `actionMap` names. */
export function upstreamMethods(upstream: UpstreamConfig): string[] {
  return [...new Set([...Object.keys(DEFAULT_ACTIONS), ...Object.keys(upstream.actionMap ?? {})])].map((m) => m.toUpperCase());
}

/** What the policy is asked about: the upstream's resource name and the action of this method. */
export function resourceAndAction(upstream: UpstreamConfig, method: string): { resource: string; action: string } {
  const action = upstream.actionMap?.[method] ?? DEFAULT_ACTIONS[method];
  if (action === undefined) throw new CaracalError('CARACAL_METHOD_NOT_ALLOWED', `${method} is not mapped to an action for this upstream`);
  return { resource: upstream.resource ?? `api:external/${upstream.name}`, action };
}

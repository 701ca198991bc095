import type { UpstreamConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';

/**
 * Dot segments, backslashes and NULs in the proxied path are refused outright: WHATWG URL parsing
 * resolves `..`, `%2e%2e` and `\` when the upstream URL is built, which would let a request climb
 * out of the upstream's base path.
 */
const DOT_SEGMENT = /(?:^|\/|%2f)(?:\.|%2e){1,2}(?:\/|%2f|$)/i;
const FORBIDDEN = /\\|%5c|%00|\u0000/i;

export function assertSafePath(rawUrl: string): void {
  const pathPart = rawUrl.split('?', 1)[0]!;
  if (DOT_SEGMENT.test(pathPart) || FORBIDDEN.test(pathPart)) {
    throw new CaracalError('CARACAL_BAD_REQUEST', 'the request path contains dot segments, backslashes or NUL bytes', {
      reasons: ['path_traversal'],
    });
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

/** What the policy is asked about: the upstream's resource name and the action of this method. */
export function resourceAndAction(upstream: UpstreamConfig, method: string): { resource: string; action: string } {
  return {
    resource: upstream.resource ?? `api:external/${upstream.name}`,
    action: upstream.actionMap?.[method] ?? DEFAULT_ACTIONS[method] ?? 'write',
  };
}

/**
 * The admin listener as a bundle server: this gateway's bundle store over OPA's bundle service API, so another
 * gateway (`policy.store: http://…/admin/v1/bundles/active`) or an OPA (`services` + `bundles.<name>.resource`)
 * downloads the active revision and re-polls cheaply.
 *
 * - `GET|HEAD /admin/v1/bundles/active`, `/admin/v1/bundles/shadow`: the revision the store names (404 when none);
 * - `GET|HEAD /admin/v1/bundles/revisions/:revision`: any stored revision (the name is checked against
 *   REVISION_PATTERN before the store is asked).
 *
 * Each answer carries `ETag: "<sha256 of the bundle file>"`; a request whose `If-None-Match` names it (or `*`) gets
 * 304 with no body — OPA's client sends back the ETag it last activated. Behind the admin bearer credential like
 * every admin route. The store is the gateway's own `policy.store` (db or dir; the db store when unset); a gateway
 * that takes its bundles from a bundle server itself has no store to serve (404).
 */
import type { FastifyInstance, FastifyReply, FastifySchema } from 'fastify';

import type { AppContext } from '../context.js';
import { CaracalError } from '../errors/catalog.js';
import { sha256Hex } from '../policy/bundle.js';
import type { BundleStore } from '../policy/bundle-store.js';
import { REVISION_PATTERN } from '../policy/bundle-store.js';
import { describeBundleStoreSpec, openBundleStore, parseBundleStoreSpec } from '../policy/bundle-store-open.js';

export const ADMIN_BUNDLES_PREFIX = '/admin/v1/bundles';

/** The store the routes serve, or why there is none. */
export type ServedStore = { store: BundleStore } | { elsewhere: string };

/** The store named by `policy.store` (the db store when unset); an http(s) store is another gateway's. */
export function servedStoreOf(ctx: AppContext): ServedStore {
  const spec = parseBundleStoreSpec(ctx.config.policy.store ?? 'db');
  if (spec.kind === 'http') return { elsewhere: describeBundleStoreSpec(spec) };
  return { store: openBundleStore(spec, { db: ctx.db }) };
}

/** Registers the bundle routes on the admin app; the store is closed with the app. */
export function registerBundleServer(app: FastifyInstance, served: ServedStore): void {
  const store = (): BundleStore => {
    // Not a URL leak: only an authenticated admin caller gets here.
    if ('elsewhere' in served) throw new CaracalError('CARACAL_NOT_FOUND', 'this gateway takes its bundles from elsewhere (policy.store is a bundle server); it has no bundle store to serve');
    return served.store;
  };
  if ('store' in served) app.addHook('onClose', async () => served.store.close?.());

  const slot = (name: 'active' | 'shadow') => async (request: { headers: Record<string, string | string[] | undefined> }, reply: FastifyReply) => {
    const s = store();
    const pointer = (await s.pointers())[name];
    if (!pointer) throw new CaracalError('CARACAL_NOT_FOUND', `the bundle store has no ${name} revision`);
    if (matchesEtag(request.headers['if-none-match'], pointer.sha256)) return notModified(reply, pointer.revision, pointer.sha256);
    // A revision's bytes never change (bundle-store.ts), so they are those the pointer's SHA-256 names.
    return send(reply, pointer.revision, pointer.sha256, await s.fetch(pointer.revision));
  };

  app.get(`${ADMIN_BUNDLES_PREFIX}/active`, documented('admin:bundle-active', 'The active bundle revision (OPA bundle service API)'), slot('active'));
  app.get(`${ADMIN_BUNDLES_PREFIX}/shadow`, documented('admin:bundle-shadow', 'The shadow bundle revision (OPA bundle service API)'), slot('shadow'));
  app.get<{ Params: { revision: string } }>(
    `${ADMIN_BUNDLES_PREFIX}/revisions/:revision`,
    documented('admin:bundle-revision', 'A stored bundle revision', {
      params: { type: 'object', properties: { revision: { type: 'string', pattern: REVISION_PATTERN.source } }, required: ['revision'] },
    }),
    async (request, reply) => {
      const { revision } = request.params;
      // Checked before the store sees it: a directory store names files by revision.
      if (typeof revision !== 'string' || !REVISION_PATTERN.test(revision)) {
        throw new CaracalError('CARACAL_VALIDATION', 'the revision is not a plain token (letters, digits, ".", "_", "-"; at most 128)', { reasons: ['revision'] });
      }
      const bytes = await store().fetch(revision);
      const sha = sha256Hex(bytes);
      if (matchesEtag(request.headers['if-none-match'], sha)) return notModified(reply, revision, sha);
      return send(reply, revision, sha, bytes);
    },
  );
}

function headers(reply: FastifyReply, revision: string, sha: string): void {
  reply.header('etag', `"${sha}"`);
  reply.header('cache-control', 'no-cache');
  reply.header('x-caracal-bundle-revision', revision);
}

function notModified(reply: FastifyReply, revision: string, sha: string): FastifyReply {
  headers(reply, revision, sha);
  return reply.code(304).send();
}

function send(reply: FastifyReply, revision: string, sha: string, bytes: Buffer): FastifyReply {
  headers(reply, revision, sha);
  reply.header('content-type', 'application/gzip');
  return reply.code(200).send(bytes);
}

/**
 * RFC 9110 If-None-Match: `*`, or a list of entity tags, each possibly weak (`W/"…"`; weak comparison is what
 * If-None-Match uses). Anything unparseable simply does not match (the bundle is sent).
 */
export function matchesEtag(header: string | string[] | undefined, sha: string): boolean {
  if (header === undefined) return false;
  const value = Array.isArray(header) ? header.join(',') : header;
  if (value.length > 8192) return false;
  for (const raw of value.split(',')) {
    let tag = raw.trim();
    if (tag === '*') return true;
    if (tag.startsWith('W/')) tag = tag.slice(2);
    if (tag === `"${sha}"`) return true;
  }
  return false;
}

/** Described in the admin OpenAPI document; not validated by Fastify (the handler checks, with Caracal's errors). */
function documented(operationId: string, summary: string, extra: Record<string, unknown> = {}) {
  const schema: FastifySchema = {
    operationId,
    summary,
    tags: ['bundles'],
    ...extra,
    response: {
      200: { description: 'The bundle (gzip tarball); ETag is "<sha256>"', content: { 'application/gzip': { schema: { type: 'string', format: 'binary' } } } },
      304: { description: 'Not modified: If-None-Match named the current ETag' },
      400: { description: 'Invalid revision', $ref: '#/components/schemas/ErrorBody' },
      401: { description: 'The admin credential is missing or wrong', $ref: '#/components/schemas/ErrorBody' },
      404: { description: 'No such revision (or no store served here)', $ref: '#/components/schemas/ErrorBody' },
    },
  } as FastifySchema;
  return { config: { swaggerTransform: ({ url }: { url: string }) => ({ url, schema }) } };
}

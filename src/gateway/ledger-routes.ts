import type { FastifyInstance } from 'fastify';
import type { CaracalConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import { isDecisionId, lookupReceipt } from '../ledger/receipts.js';
import { latestCheckpoint } from '../ledger/store.js';
import { parseTilePath, readTile, TilePathError } from '../ledger/tiles.js';
import type { Queryable } from '../store/db.js';
import type { Authenticator } from './authenticate.js';
import { rateLimited, type SourceLimiter } from './limits.js';
import { resolveMandate, type MandateBindingDeps } from './mandate-binding.js';

export interface LedgerRoutesDeps extends MandateBindingDeps {
  config: Readonly<CaracalConfig>;
  db: Queryable;
  authenticator: Authenticator;
  isClosing: () => boolean;
  /** Failed authentications per source, shared with the proxy routes: a source that keeps failing gets 429. */
  sourceLimiter: SourceLimiter;
}

const RECEIPTS_PREFIX = '/v1/receipts/';
const LEDGER_PREFIX = '/ledger/';
const FULL_TILE_CACHE = 'public, max-age=31536000, immutable';
/** A partial tile's bytes never change either, but clients should move on to the full tile once there is one. */
const PARTIAL_TILE_CACHE = 'public, max-age=60';

/**
 * The ledger over HTTP on the agent-facing app (see src/ledger/README.md, "Receipts and tiles over HTTP"):
 *
 * - `GET /v1/receipts/<decision-id>`: authenticated exactly like a proxied call (the same authenticator and the same
 *   mandate binding), and only for the caller's own decisions. 200 with the receipt once a signed checkpoint covers
 *   the decision; 202 (`Retry-After`) while it is on its way; 404 for an id that is unknown or another principal's —
 *   those two are indistinguishable (see `lookupReceipt`); 400 for an id the gateway could not have minted.
 * - `GET /ledger/<origin>/checkpoint` and `/ledger/<origin>/tile/…`: c2sp.org/tlog-tiles, public and read-only —
 *   they are what monitors and verifiers fetch, and reveal nothing the tree's signed checkpoint does not commit to…
 *   except the entries themselves (`tile/entries/…`), which a public tiled log publishes by design. Only what the
 *   newest checkpoint covers is served.
 */
export function registerLedgerRoutes(app: FastifyInstance, deps: LedgerRoutesDeps): void {
  const { origin, batchMaxMs } = deps.config.ledger;
  const retryAfterSeconds = Math.max(1, Math.ceil(batchMaxMs / 1000));
  // A decision id not (yet) in the ledger is "pending" for this long after its time, then unknown.
  const pendingWindowMs = Math.min(3_600_000, Math.max(5_000, 30 * batchMaxMs));
  const originSegments = origin.split('/');

  app.get(`${RECEIPTS_PREFIX}*`, async (request, reply) => {
    if (deps.isClosing()) throw new CaracalError('CARACAL_SHUTTING_DOWN');
    // Nothing is read before the caller is known: the credential, then its mandate binding (a delegated mandate is
    // not a credential, as on the proxy).
    let auth: Awaited<ReturnType<Authenticator['authenticate']>>;
    try {
      auth = await deps.authenticator.authenticate(request);
      await resolveMandate(request, auth, deps);
    } catch (err) {
      const source = deps.sourceLimiter.take(request.ip);
      throw source.ok ? err : rateLimited('unauthenticated_rate_limited', source.retryAfterSeconds);
    }
    // The raw path: a valid id never needs percent-encoding, so nothing is decoded.
    const decisionId = request.url.split('?', 1)[0]!.slice(RECEIPTS_PREFIX.length);
    if (!isDecisionId(decisionId)) {
      throw new CaracalError('CARACAL_BAD_REQUEST', 'a decision id is a lowercase UUID, as in the x-caracal-decision-id header', { reasons: ['bad_decision_id'] });
    }
    const found = await lookupReceipt(deps.db, { origin, decisionId, principalId: auth.principalId, pendingWindowMs });
    reply.header('cache-control', 'no-store');
    if (found.status === 'not_found') throw new CaracalError('CARACAL_NOT_FOUND', 'no decision of yours with that id is in the ledger', { reasons: ['receipt_not_found'] });
    if (found.status === 'pending') {
      reply.code(202).header('retry-after', String(retryAfterSeconds));
      return { status: 'pending', decision_id: decisionId, retry_after_seconds: retryAfterSeconds, message: 'not in a signed checkpoint yet; retry after Retry-After seconds' };
    }
    return found.receipt;
  });

  if (!deps.config.ledger.serveTiles) return;
  app.get(`${LEDGER_PREFIX}*`, async (request, reply) => {
    const notFound = () => new CaracalError('CARACAL_NOT_FOUND', 'no such ledger resource', { reasons: ['ledger_resource_not_found'] });
    const parts = request.url.split('?', 1)[0]!.slice(LEDGER_PREFIX.length).split('/');
    // The origin may hold "/" and characters a URL escapes: its segments are compared decoded, the rest is not decoded.
    if (parts.length <= originSegments.length) throw notFound();
    for (let i = 0; i < originSegments.length; i++) {
      let segment: string;
      try {
        segment = decodeURIComponent(parts[i]!);
      } catch {
        throw notFound();
      }
      if (segment !== originSegments[i]) throw notFound();
    }
    const rest = parts.slice(originSegments.length).join('/');
    if (rest === 'checkpoint') {
      const checkpoint = await latestCheckpoint(deps.db, origin);
      if (checkpoint === null) throw notFound();
      reply.header('cache-control', 'no-store').type('text/plain; charset=utf-8');
      return checkpoint.note;
    }
    let tile;
    try {
      tile = parseTilePath(rest);
    } catch (err) {
      if (err instanceof TilePathError) throw new CaracalError('CARACAL_BAD_REQUEST', err.message, { reasons: ['bad_tile_path'] });
      throw err;
    }
    const content = await readTile(deps.db, origin, tile);
    if (content === null) throw notFound();
    reply.header('cache-control', content.full ? FULL_TILE_CACHE : PARTIAL_TILE_CACHE).type('application/octet-stream');
    return content.body;
  });
}

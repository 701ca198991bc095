import Fastify from 'fastify';
import { acceptRequestId } from '../util/ids.js';

/**
 * Options every Caracal Fastify instance shares: no per-request log lines from Fastify itself (the
 * error handler and our hooks log what matters, at the right level) and request ids that are
 * accepted only when safe.
 */
export function baseFastifyOptions() {
  return {
    logController: new Fastify.LogController({ disableRequestLogging: true }),
    genReqId: (req: { headers: Record<string, string | string[] | undefined> }) => acceptRequestId(req.headers['x-request-id']),
  };
}

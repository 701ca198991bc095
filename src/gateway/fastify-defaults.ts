import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify';
import { CaracalError } from '../errors/catalog.js';
import { acceptRequestId } from '../util/ids.js';
import { errorBody } from './error-body.js';

/**
 * Options every Caracal Fastify instance shares: no per-request log lines from Fastify itself (the
 * error handler and our hooks log what matters, at the right level), request ids that are
 * accepted only when safe, and Caracal's error shape for what Fastify rejects before routing (a URL
 * that does not decode, such as `%c0%ae` or `%zz`).
 */
export function baseFastifyOptions() {
  return {
    logController: new Fastify.LogController({ disableRequestLogging: true }),
    genReqId: (req: { headers: Record<string, string | string[] | undefined> }) => acceptRequestId(req.headers['x-request-id']),
    frameworkErrors: (_error: Error, request: FastifyRequest, reply: FastifyReply) => {
      const error = new CaracalError('CARACAL_BAD_REQUEST', 'the request URL is not validly percent-encoded', { reasons: ['bad_encoding'] });
      reply.header('x-request-id', request.id);
      reply.code(error.statusCode).send(errorBody(error, request.id));
    },
  };
}

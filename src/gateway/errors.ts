import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import type { UpstreamDialect } from '../config/schema.js';
import { ZodError } from 'zod';
import { CaracalError } from '../errors/catalog.js';
import type { Logger } from '../logging/logger.js';
import { dialectErrorBody } from './dialects.js';
import { errorBody } from './error-body.js';

export { errorBody, type ErrorBody } from './error-body.js';

/** Anything thrown becomes a catalog error; unknown errors become a 500 that says nothing internal. */
export function toCaracalError(err: unknown): CaracalError {
  if (err instanceof CaracalError) return err;
  if (err instanceof ZodError) {
    const problems = err.issues.map((issue) => `${issue.path.join('.') || 'value'}: ${issue.message}`);
    return new CaracalError('CARACAL_VALIDATION', problems.join('; '), { reasons: problems });
  }
  const fastifyError = err as Partial<FastifyError>;
  const status = fastifyError.statusCode ?? 500;
  if (status === 413) return new CaracalError('CARACAL_PAYLOAD_TOO_LARGE', undefined, { cause: err });
  if (status === 431) return new CaracalError('CARACAL_HEADERS_TOO_LARGE', undefined, { cause: err });
  if (status === 404) return new CaracalError('CARACAL_NOT_FOUND', undefined, { cause: err });
  if (status >= 400 && status < 500) {
    return new CaracalError('CARACAL_BAD_REQUEST', fastifyError.message ?? undefined, { cause: err });
  }
  return new CaracalError('CARACAL_INTERNAL', undefined, { cause: err });
}

/**
 * The one error handler: JSON bodies with `request_id`, 4xx logged at info, 5xx at error, and 404s
 * of unknown routes in the same shape. `dialectOf` names the upstream dialect a request was for,
 * so the body is one that dialect's SDK can read (see dialects.ts); a 429 carries `Retry-After`.
 */
export function installErrorHandling(
  app: FastifyInstance,
  logger: Logger,
  options: { dialectOf?: (request: FastifyRequest) => UpstreamDialect | undefined; notFound?: boolean } = {},
): void {
  const { dialectOf, notFound = true } = options;
  const log = logger.child({ component: 'errors' });
  app.setErrorHandler((err, request, reply) => {
    const error = toCaracalError(err);
    const fields = { request_id: request.id, code: error.code, status: error.statusCode, reasons: error.reasons };
    // Not `request.raw.destroyed`: Node sets that once a body has been read, with the client waiting.
    if (request.raw.socket?.destroyed === true) {
      // The client went away mid-request (reset, timeout on its side): not a server error.
      log.info(fields, `client aborted: ${error.message}`);
      return;
    }
    if (error.statusCode >= 500) log.error({ ...fields, err }, error.message);
    else log.info(fields, error.message);
    const retryAfter = error.details.retry_after_seconds;
    if (typeof retryAfter === 'number') reply.header('retry-after', String(retryAfter));
    const dialect = dialectOf?.(request);
    // The Anthropic SDK reads the request id from `request-id` (it shows it in its errors).
    if (dialect === 'anthropic') reply.header('request-id', request.id);
    reply.code(error.statusCode).send(dialectErrorBody(dialect, error, request.id));
  });
  if (!notFound) return;
  app.setNotFoundHandler((request, reply) => {
    const error = new CaracalError('CARACAL_ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]!.slice(0, 256)}`);
    reply.code(error.statusCode).send(errorBody(error, request.id));
  });
}

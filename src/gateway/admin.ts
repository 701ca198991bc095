import { timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { AppContext } from '../context.js';
import { CaracalError } from '../errors/catalog.js';
import { OPERATIONS, runOperation } from '../operations/index.js';
import { installErrorHandling } from './errors.js';
import { baseFastifyOptions } from './fastify-defaults.js';

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * The admin API: the operator operations over HTTP, on its own listener (loopback by default)
 * with its own bearer credential, separate from agent traffic.
 */
export async function buildAdminApp(ctx: AppContext, adminToken: string): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: ctx.logger.child({ component: 'admin' }) as FastifyBaseLogger,
    ...baseFastifyOptions(),
    bodyLimit: 1024 * 1024,
  });
  installErrorHandling(app, ctx.logger);
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    if (request.url === '/health') return;
    const header = request.headers.authorization ?? '';
    const given = header.startsWith('Bearer ') ? header.slice(7) : '';
    if (!given || !sameSecret(given, adminToken)) throw new CaracalError('CARACAL_ADMIN_UNAUTHENTICATED');
  });
  app.get('/health', async () => ({ status: 'ok' }));
  app.get('/admin/v1/ops', async () =>
    Object.entries(OPERATIONS).map(([name, operation]) => ({ name, description: operation.description })),
  );
  app.post<{ Params: { name: string } }>('/admin/v1/ops/:name', async (request) => ({
    result: await runOperation(ctx, request.params.name, request.body ?? {}),
  }));
  return app;
}

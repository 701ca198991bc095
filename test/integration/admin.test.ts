import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { AppContext } from '../../src/context.js';
import { topicSpecs } from '../../src/events/topics.js';
import { buildAdminApp } from '../../src/gateway/admin.js';
import { createLogger } from '../../src/logging/logger.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';

describe('admin API (operations over HTTP, own credential)', () => {
  let ctx: AppContext;
  let app: FastifyInstance;
  const token = 'admin-test-credential-0123456789';
  const auth = { authorization: `Bearer ${token}` };

  beforeAll(async () => {
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-admin-'));
    const db = await PgliteDb.open();
    ctx = await AppContext.fromConfig(loadConfig({ env: {}, cwd: home, overrides: { home } }), { db, logger: createLogger('silent') });
    await migrateUp(db);
    await (await ctx.events()).createTopics(topicSpecs(ctx.config));
    app = await buildAdminApp(ctx, token);
  });
  afterAll(async () => {
    await app?.close();
    await ctx?.close();
  });

  it('refuses requests without the admin credential, or with a wrong one of any length', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: `Bearer ${token}x` }, { authorization: token }]) {
      const response = await app.inject({ method: 'GET', url: '/admin/v1/ops', headers });
      expect(response.statusCode).toBe(401);
      expect(response.json()).toMatchObject({ error: 'CARACAL_ADMIN_UNAUTHENTICATED' });
      expect(response.json().request_id).toBeTruthy();
    }
  });

  it('lists and runs operations', async () => {
    const ops = (await app.inject({ method: 'GET', url: '/admin/v1/ops', headers: auth })).json() as { name: string }[];
    expect(ops.map((o) => o.name)).toEqual(expect.arrayContaining(['agent.register', 'policy.create', 'token.issue', 'db.health-check']));
    const created = await app.inject({ method: 'POST', url: '/admin/v1/ops/agent.register', headers: auth, payload: { name: 'admin-made', owner: 'ops@example.com' } });
    expect(created.statusCode).toBe(200);
    expect(created.json().result).toMatchObject({ name: 'admin-made', status: 'active' });
  });

  it('answers malformed, hostile and oversize bodies with a 4xx naming the problem', async () => {
    const post = (url: string, payload: string, headers: Record<string, string> = {}) =>
      app.inject({ method: 'POST', url, headers: { ...auth, 'content-type': 'application/json', ...headers }, payload });
    const malformed = await post('/admin/v1/ops/agent.register', '{"name": ');
    expect(malformed.statusCode).toBe(400);
    expect(malformed.json().error).toBe('CARACAL_BAD_REQUEST');
    const unknownOp = await post('/admin/v1/ops/agent.obliterate', '{}');
    expect(unknownOp.statusCode).toBe(404);
    const badArgs = await post('/admin/v1/ops/policy.create', JSON.stringify({ principalId: 'x', resources: [], actions: ['READ'], maxValiditySeconds: 'soon', extra: 1 }));
    expect(badArgs.statusCode).toBe(400);
    expect(badArgs.json().error).toBe('CARACAL_VALIDATION');
    expect(badArgs.json().message).toMatch(/resources.*actions\.0.*maxValiditySeconds|unknown argument/);
    const proto = await post('/admin/v1/ops/agent.register', '{"__proto__": {"admin": true}, "name": "p", "owner": "o"}');
    expect(proto.statusCode).toBe(400);
    const huge = await post('/admin/v1/ops/agent.register', JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024), owner: 'o' }));
    expect(huge.statusCode).toBe(413);
    expect(huge.json().error).toBe('CARACAL_PAYLOAD_TOO_LARGE');
    const notJson = await post('/admin/v1/ops/agent.list', 'name=x', { 'content-type': 'application/x-www-form-urlencoded' });
    expect(notJson.statusCode).toBeGreaterThanOrEqual(400);
    expect(notJson.statusCode).toBeLessThan(500);
  });
});

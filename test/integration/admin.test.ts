import { ADMIN_ACTION_TYPE } from '../../src/audit/admin-actions.js';
import { queryAudit } from '../../src/audit/audit-store.js';
import { PACKAGE_ROOT } from '../../src/paths.js';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.js';
import { createOutput } from '../../src/cli/output.js';
import { callAdminApi } from '../../src/cli/runtime.js';
import { loadConfig } from '../../src/config/load.js';
import { AppContext } from '../../src/context.js';
import { topicSpecs } from '../../src/events/topics.js';
import { buildAdminApp } from '../../src/gateway/admin.js';
import { createLogger } from '../../src/logging/logger.js';
import { OPERATIONS } from '../../src/operations/index.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- OpenAPI/JSON documents of arbitrary shape, walked freely by the assertions
type Json = Record<string, any>;

/** Ajv for JSON Schema 2020-12 (OpenAPI 3.1's dialect) over a document: `#/components/schemas/X` resolves. */
function schemaChecker(document: Json) {
  const ajv = new Ajv2020({ allErrors: true, strict: true, strictTypes: false, validateFormats: false });
  const toLocal = (node: unknown): unknown =>
    Array.isArray(node)
      ? node.map(toLocal)
      : node && typeof node === 'object'
        ? Object.fromEntries(Object.entries(node).map(([k, v]) => [k, k === '$ref' && typeof v === 'string' ? v.replace('#/components/schemas/', 'urn:caracal:components#/$defs/') : toLocal(v)]))
        : node;
  ajv.addSchema({ $id: 'urn:caracal:components', $defs: toLocal(document.components?.schemas ?? {}) as Json });
  return (schema: unknown) => ajv.compile(toLocal(schema) as Json);
}

interface Run {
  code: number;
  out: string;
  err: string;
}

async function caracal(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  let out = '';
  let err = '';
  const code = await main(['node', 'caracal', ...args], { out: createOutput((t) => (out += t)), err: (t) => (err += t), env });
  return { code, out, err };
}

function expectOneLineError(run: Run, pattern: RegExp): void {
  expect(run.code).toBe(1);
  expect(run.out).toBe('');
  expect(run.err.trimEnd().split('\n')).toHaveLength(1);
  expect(run.err).toMatch(/^caracal: /);
  expect(run.err).toMatch(pattern);
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
}

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

  it('writes every operation into the audit log: who (a credential fingerprint), what, when, from where, outcome', async () => {
    const ok = await app.inject({ method: 'POST', url: '/admin/v1/ops/agent.register', headers: { ...auth, 'x-request-id': 'audit-me-1' }, payload: { name: 'audited', owner: 'ops@example.com' } });
    expect(ok.statusCode).toBe(200);
    const failed = await app.inject({ method: 'POST', url: '/admin/v1/ops/allowlist.test', headers: { ...auth, 'x-request-id': 'audit-me-2' }, payload: { principalId: '01a23706-0000-7000-8000-000000000000', url: 'http://upstream.test/x' } });
    expect(failed.statusCode).toBe(404);
    const window = { start: new Date(Date.now() - 60_000), end: new Date(Date.now() + 60_000), limit: 100 };
    const [done] = await queryAudit(ctx.db, { ...window, requestId: 'audit-me-1' });
    const [refused] = await queryAudit(ctx.db, { ...window, requestId: 'audit-me-2' });
    expect(done).toMatchObject({ eventType: ADMIN_ACTION_TYPE, topic: null, actor: expect.stringMatching(/^admin_token:sha256:[0-9a-f]{16}$/), origin: '127.0.0.1' });
    expect(done!.data).toMatchObject({ operation: 'agent.register', transport: 'admin_api', outcome: 'ok', error_code: null, origin: { address: '127.0.0.1', host: null, request_id: 'audit-me-1' } });
    expect(refused!.data).toMatchObject({ operation: 'allowlist.test', outcome: 'error', error_code: 'CARACAL_NOT_FOUND' });
    expect(refused!.subject).toBe('01a23706-0000-7000-8000-000000000000');
    // The credential itself is never recorded, and the record matches the published schema.
    expect(JSON.stringify([done, refused])).not.toContain(token);
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    const schemaDir = path.join(PACKAGE_ROOT, 'schemas', 'events');
    for (const file of readdirSync(schemaDir).filter((f) => f.endsWith('.json'))) ajv.addSchema(JSON.parse(readFileSync(path.join(schemaDir, file), 'utf8')));
    const validate = ajv.getSchema('urn:caracal:schema:admin.action:v1#/$defs/data')!;
    for (const record of [done, refused]) expect(validate(record!.data), JSON.stringify(validate.errors)).toBe(true);
  });

  it('answers malformed, hostile and oversize bodies with a 4xx naming the problem', async () => {
    const post = (url: string, payload: string, headers: Record<string, string> = {}) =>
      app.inject({ method: 'POST', url, headers: { ...auth, 'content-type': 'application/json', ...headers }, payload });
    const malformed = await post('/admin/v1/ops/agent.register', '{"name": ');
    expect(malformed.statusCode).toBe(400);
    expect(malformed.json().error).toBe('CARACAL_BAD_REQUEST');
    const unknownOp = await post('/admin/v1/ops/agent.obliterate', '{}');
    expect(unknownOp.statusCode).toBe(404);
    // Unknown routes and undecodable URLs answer in Caracal's shape too, with a request id.
    for (const url of ['/nowhere', '/admin/v2/ops', '/admin/v1/ops/%zz', '/%c0%ae']) {
      const lost = await app.inject({ method: 'GET', url, headers: auth });
      expect(lost.statusCode, url).toBeGreaterThanOrEqual(400);
      expect(lost.statusCode, url).toBeLessThan(500);
      expect(lost.json(), url).toMatchObject({ error: expect.stringMatching(/^CARACAL_/), request_id: expect.any(String) });
    }
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
  describe('OpenAPI document', () => {
    let document: Json;
    beforeAll(async () => {
      const response = await app.inject({ method: 'GET', url: '/admin/v1/openapi.json', headers: auth });
      expect(response.statusCode).toBe(200);
      expect(response.headers['content-type']).toMatch(/^application\/json/);
      document = response.json();
    });

    it('is served only with the admin credential', async () => {
      for (const headers of [{}, { authorization: 'Bearer wrong' }]) {
        const response = await app.inject({ method: 'GET', url: '/admin/v1/openapi.json', headers });
        expect(response.statusCode).toBe(401);
        expect(response.json()).toMatchObject({ error: 'CARACAL_ADMIN_UNAUTHENTICATED' });
      }
    });

    it('is a valid OpenAPI 3.1 document whose schemas are valid JSON Schema 2020-12', async () => {
      expect(document.openapi).toBe('3.1.0');
      expect(await new Validator().validate(document)).toEqual({ valid: true });
      const compile = schemaChecker(document);
      for (const [url, item] of Object.entries(document.paths as Json)) {
        for (const [method, operation] of Object.entries(item as Json)) {
          for (const media of Object.values((operation.requestBody?.content ?? {}) as Json)) expect(() => compile(media.schema), `${method} ${url} body`).not.toThrow();
          for (const [status, response] of Object.entries(operation.responses as Json)) {
            for (const media of Object.values((response.content ?? {}) as Json)) expect(() => compile(media.schema), `${method} ${url} ${status}`).not.toThrow();
          }
        }
      }
    });

    it('has a documented path for every operation of the table, and bearer security', () => {
      expect(document.components.securitySchemes.adminToken).toEqual(expect.objectContaining({ type: 'http', scheme: 'bearer' }));
      expect(document.security).toEqual([{ adminToken: [] }]);
      expect(document.paths['/health'].get.security).toEqual([]);
      expect(document.paths['/admin/v1/ops/{name}']).toBeUndefined();
      for (const [name, operation] of Object.entries(OPERATIONS)) {
        const post = document.paths[`/admin/v1/ops/${name}`]?.post;
        expect(post, name).toBeDefined();
        expect(post.operationId).toBe(name);
        expect(post.summary).toBe(operation.description);
        expect(post.requestBody.content['application/json'].schema).toBeTypeOf('object');
        expect(post.responses['200'].content['application/json'].schema).toMatchObject({ type: 'object', required: ['result'] });
        for (const status of ['400', '401', '4XX', '5XX']) {
          expect(post.responses[status].content['application/json'].schema, `${name} ${status}`).toEqual({ $ref: '#/components/schemas/ErrorBody' });
        }
      }
      expect(document.components.schemas.ErrorBody.required).toEqual(['error', 'message', 'reasons', 'request_id']);
    });

    it('agrees with the operations: a body valid per the document runs, an invalid one gets 400 naming its fields', async () => {
      const compile = schemaChecker(document);
      const errorBody = compile(document.components.schemas.ErrorBody);
      const bodySchema = (name: string) => compile(document.paths[`/admin/v1/ops/${name}`].post.requestBody.content['application/json'].schema);
      const run = (name: string, payload: unknown) => app.inject({ method: 'POST', url: `/admin/v1/ops/${name}`, headers: auth, payload: payload as Json });

      const register = bodySchema('agent.register');
      const agent = { name: 'documented-agent', owner: 'ops@example.com', kind: 'service' };
      expect(register(agent)).toBe(true);
      const registered = await run('agent.register', agent);
      expect(registered.statusCode).toBe(200);
      expect(registered.json().result).toMatchObject({ name: 'documented-agent', kind: 'service', status: 'active' });
      const badAgent = { name: '', owner: 5, colour: 'red' };
      expect(register(badAgent)).toBe(false);
      const refused = await run('agent.register', badAgent);
      expect(refused.statusCode).toBe(400);
      expect(errorBody(refused.json())).toBe(true);
      expect(refused.json().error).toBe('CARACAL_VALIDATION');
      expect(refused.json().reasons.join('\n')).toMatch(/^name: /m);
      expect(refused.json().reasons.join('\n')).toMatch(/^owner: /m);
      expect(refused.json().reasons.join('\n')).toMatch(/colour/);

      const create = bodySchema('policy.create');
      const policy = { principalId: registered.json().result.id, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 };
      expect(create(policy)).toBe(true);
      const created = await run('policy.create', policy);
      expect(created.statusCode).toBe(200);
      expect(created.json().result).toMatchObject({ principalId: policy.principalId, actions: ['read'] });
      const badPolicy = { principalId: policy.principalId, resources: [], actions: ['READ'], maxValiditySeconds: 0 };
      expect(create(badPolicy)).toBe(false);
      const badCreate = await run('policy.create', badPolicy);
      expect(badCreate.statusCode).toBe(400);
      expect(errorBody(badCreate.json())).toBe(true);
      expect(badCreate.json().reasons.join('\n')).toMatch(/^resources: [\s\S]*^actions\.0: [\s\S]*^maxValiditySeconds: /m);

      const lag = bodySchema('kafka.consumer-lag');
      expect(lag({ consumerGroup: 'ledger-writer-group' })).toBe(true);
      expect((await run('kafka.consumer-lag', { consumerGroup: 'ledger-writer-group' })).statusCode).toBe(200);
      expect(lag({ consumerGroup: 'no spaces!' })).toBe(false);
      const badLag = await run('kafka.consumer-lag', { consumerGroup: 'no spaces!' });
      expect(badLag.statusCode).toBe(400);
      expect(badLag.json().reasons).toEqual([expect.stringMatching(/^consumerGroup: /)]);
    });

    it('lists the same operations at /admin/v1/ops as it documents', async () => {
      const listed = ((await app.inject({ method: 'GET', url: '/admin/v1/ops', headers: auth })).json() as { name: string }[]).map((o) => o.name);
      const documented = Object.keys(document.paths).filter((p) => p.startsWith('/admin/v1/ops/')).map((p) => p.slice('/admin/v1/ops/'.length));
      expect(documented.sort()).toEqual(listed.sort());
    });
  });

  describe('CLI through CARACAL_ADMIN_URL (a real listener; DATABASE_URL points nowhere)', () => {
    let adminUrl: string;
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-admin-cli-'));
    // If the CLI opened a database it would fail on DATABASE_URL, or create PGlite under CARACAL_HOME.
    const base = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent', DATABASE_URL: 'postgres://127.0.0.1:1/x' };
    let env: NodeJS.ProcessEnv;
    beforeAll(async () => {
      await app.listen({ host: '127.0.0.1', port: 0 });
      const address = app.server.address();
      adminUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
      env = { ...base, CARACAL_ADMIN_URL: `${adminUrl}/`, CARACAL_ADMIN_TOKEN: token };
    });

    it('runs agent register, agent list and policy create through the admin API', async () => {
      const registered = await caracal(env, 'agent', 'register', '--name', 'remote-agent', '--owner', 'laptop@example.com', '--json');
      expect(registered.err).toBe('');
      expect(registered.code).toBe(0);
      const id = JSON.parse(registered.out).id as string;
      const listed = await caracal(env, 'agent', 'list', '--json');
      expect(listed.code).toBe(0);
      expect(JSON.parse(listed.out)).toEqual(expect.arrayContaining([expect.objectContaining({ id, name: 'remote-agent', owner: 'laptop@example.com' })]));
      const policy = await caracal(env, 'policy', 'create', '--agent-id', id, '--resources', 'api:external/echo', '--actions', 'read', '--max-validity', '60', '--json');
      expect(policy.code).toBe(0);
      expect(JSON.parse(policy.out)).toMatchObject({ principalId: id, resources: ['api:external/echo'] });
      // The gateway's database has them; nothing was created locally.
      expect((await ctx.db.query('SELECT name FROM principals WHERE id = $1', [id])).rows).toEqual([{ name: 'remote-agent' }]);
      expect(readdirSync(home)).toEqual([]);
    });

    it('keeps the error mapping of the catalog: the same one line as a local run', async () => {
      expectOneLineError(await caracal(env, 'agent', 'register', '--name', 'evil\u001b[2Jname', '--owner', 'a@b'), /name: must not contain control characters/);
      expectOneLineError(await caracal(env, 'agent', 'register', '--name', 'remote-agent', '--owner', 'a@b'), /already exists/);
      expectOneLineError(await caracal(env, 'agent', 'get', '0190f0f0-0000-7000-8000-000000000000'), /not found/);
    });

    it('a wrong credential is one line naming CARACAL_ADMIN_TOKEN, exit 1, and does not echo it', async () => {
      const run = await caracal({ ...env, CARACAL_ADMIN_TOKEN: 'not-the-credential' }, 'agent', 'list');
      expectOneLineError(run, /refused the admin credential \(401\): check CARACAL_ADMIN_TOKEN/);
      expect(run.err).not.toContain('not-the-credential');
      expectOneLineError(await caracal({ ...env, CARACAL_ADMIN_TOKEN: '' }, 'agent', 'list'), /CARACAL_ADMIN_TOKEN is empty/);
      expectOneLineError(await caracal({ ...env, CARACAL_ADMIN_URL: 'ftp://example.invalid' }, 'agent', 'list'), /must be an http:\/\/ or https:\/\/ URL/);
    });

    it('a closed port is one line, exit 1, within seconds', async () => {
      const probe = createServer();
      const closedUrl = await listen(probe);
      await new Promise((resolve) => probe.close(resolve));
      const started = Date.now();
      const run = await caracal({ ...env, CARACAL_ADMIN_URL: closedUrl }, 'agent', 'list');
      expect(Date.now() - started).toBeLessThan(5_000);
      expectOneLineError(run, /admin API at http:\/\/127\.0\.0\.1:\d+ \(CARACAL_ADMIN_URL\) is not reachable \(ECONNREFUSED\)/);
    });

    it('an answer that is not Caracal JSON is one line, exit 1', async () => {
      const html = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>\n<h1>Welcome</h1>\n</html>'));
      const url = await listen(html);
      try {
        expectOneLineError(await caracal({ ...env, CARACAL_ADMIN_URL: url }, 'agent', 'list'), /answered 200 with text\/html, not JSON/);
      } finally {
        await new Promise((resolve) => html.close(resolve));
      }
    });

    it('gives up when the admin API does not answer in time (bounded)', async () => {
      const silent = createServer(() => {});
      const url = await listen(silent);
      try {
        const started = Date.now();
        await expect(callAdminApi({ url, token, source: 'env' }, 'agent.list', {}, { timeoutMs: 300 })).rejects.toMatchObject({
          code: 'CARACAL_DEPENDENCY',
          message: expect.stringMatching(/did not answer within 300 ms$/),
        });
        expect(Date.now() - started).toBeLessThan(3_000);
      } finally {
        silent.closeAllConnections();
        await new Promise((resolve) => silent.close(resolve));
      }
    });

    it('refuses commands that open a database while CARACAL_ADMIN_URL is set', async () => {
      expectOneLineError(await caracal(env, 'db', 'migrate', 'up'), /not through the admin API; unset CARACAL_ADMIN_URL/);
    });
  });
});

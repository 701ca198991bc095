/**
 * Gateways that take their policy from a bundle store (src/policy/bundle-sources.ts, bundle-watcher.ts) and the
 * admin listener serving the store as a bundle server (src/gateway/bundle-server.ts): activate, rollback and shadow
 * reach a running gateway; a bad revision is refused while the last good one serves; a second gateway follows the
 * first over HTTP with ETag / 304; the real `opa` downloads the active revision from the admin listener.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { buildAdminApp } from '../../src/gateway/admin.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import { readBundleFiles, signBundle, writeBundleTarball } from '../../src/policy/bundle.js';
import type { BundleStore } from '../../src/policy/bundle-store.js';
import { openBundleStore, parseBundleStoreSpec } from '../../src/policy/bundle-store-open.js';
import { PolicyEngine, SMOKE_INPUT } from '../../src/policy/engine.js';
import { parseSigningKey } from '../../src/policy/signing.js';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';
import { closedPort } from '../helpers/ports.js';
import { eventually } from '../helpers/eventually.js';

const ADMIN_TOKEN = 'bundle-store-test-admin-token-0123456789';
const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

/** The committed default bundle with another revision (and optional edits); a manifest without `wasm` keeps `opa run` able to activate it. */
async function variant(revision: string, edit?: (files: Map<string, Buffer>) => void, options: { dropWasmManifest?: boolean } = {}): Promise<Buffer> {
  const files = await readBundleFiles(await readFile(DEFAULT_BUNDLE));
  files.delete('.signatures.json');
  const { wasm, ...manifest } = JSON.parse(files.get('.manifest')?.toString('utf8') ?? '{}') as Record<string, unknown>;
  files.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, ...(options.dropWasmManifest ? {} : { wasm }), revision })));
  edit?.(files);
  return writeBundleTarball(files);
}

const denying = (files: Map<string, Buffer>) => files.set('data.json', Buffer.from(JSON.stringify({ caracal: { authz: { extra_deny_reasons: ['store_deny'] } } })));


interface Observed {
  status: number;
  revision: string | undefined;
  body: string;
}

interface ReadyBody {
  bundle_revision: string;
  checks: { policy: { ok: boolean; error?: string; revision?: string; last_load_error?: { message: string; sha256: string | null } } };
}

/** A gateway on the harness with one agent allowed to call the echo upstream. */
async function gatewayWith(policy: Record<string, unknown>): Promise<{ h: Harness; call: () => Promise<Observed>; ready: () => Promise<ReadyBody> }> {
  const h = await createHarness({ configOverrides: { policy } });
  const agent = await h.registerAgent();
  await h.grant(agent, ['api:external/echo'], ['read']);
  const token = await h.token(agent, 3600);
  return {
    h,
    call: async () => {
      const response = await h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/store', headers: { authorization: `Bearer ${token}` } });
      const revision = response.headers['x-caracal-bundle-revision'];
      return { status: response.statusCode, revision: typeof revision === 'string' ? revision : undefined, body: response.body };
    },
    ready: async () => (await h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' })).json() as ReadyBody,
  };
}

const loadErrors = async (h: Harness) => (await h.assembled.metrics.bundleLoadErrors.get()).values.reduce((sum, v) => sum + v.value, 0);
const shadowGauge = async (h: Harness) => (await h.assembled.metrics.shadowBundleInfo.get()).values.filter((v) => v.value === 1).map((v) => v.labels.revision);

let dir: string;
let defaultRevision: string;
let allowBytes: Buffer;
let denyBytes: Buffer;
/** Signed by a key the gateways do not trust (they have one trusted key and accept unsigned bundles). */
let foreignBytes: Buffer;
let trustedPub: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-store-gw-'));
  defaultRevision = (await PolicyEngine.fromBundleFile(DEFAULT_BUNDLE)).revision;
  allowBytes = await variant('store-allow');
  denyBytes = await variant('store-deny', denying);
  const pair = () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    return { priv: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), pub: publicKey.export({ format: 'pem', type: 'spki' }).toString() };
  };
  const trusted = pair();
  const foreign = pair();
  trustedPub = path.join(dir, 'trusted.pub.pem');
  await writeFile(trustedPub, trusted.pub);
  const unsigned = path.join(dir, 'bad.unsigned.tar.gz');
  await writeFile(unsigned, await variant('store-bad'));
  const signed = path.join(dir, 'bad.signed.tar.gz');
  await signBundle({ inFile: unsigned, outFile: signed, key: parseSigningKey(foreign.priv, 'default') });
  foreignBytes = await readFile(signed);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const signing = () => ({ publicKeys: [{ keyId: 'default', path: trustedPub }], allowUnsigned: true });

describe.each(['dir', 'db'] as const)('a gateway on a %s bundle store', (kind) => {
  let gw: Awaited<ReturnType<typeof gatewayWith>>;
  let store: BundleStore;

  beforeAll(async () => {
    const folder = path.join(dir, `store-${Math.random().toString(36).slice(2)}`);
    if (kind === 'dir') await mkdir(folder);
    const spec = kind === 'dir' ? `dir:${folder}` : 'db';
    gw = await gatewayWith({ store: spec, reload: { intervalMs: 100 }, signing: signing() });
    // The test's own handle on the same store (the db one on the gateway's database).
    store = openBundleStore(parseBundleStoreSpec(spec), { db: gw.h.ctx.db });
  }, 120_000);
  afterAll(async () => {
    await gw?.h.close();
  });

  const serving = (revision: string, status: number) => eventually(gw.call, (o) => o.revision === revision && o.status === status);

  it('starts on the bundle file while the store has no active revision', async () => {
    expect(gw.h.assembled.bundleWatcher).toBeDefined();
    expect(gw.h.assembled.bundleWatcher!.status()).toMatchObject({ revision: defaultRevision, shadowRevision: null, lastLoadError: null });
    expect(await gw.call()).toMatchObject({ status: 200, revision: defaultRevision });
    // Nothing is active in the store: the bundle file is what the operators meant, and the gateway is ready.
    expect((await gw.ready()).checks.policy).toMatchObject({ ok: true, revision: defaultRevision });
    expect((await gw.ready()).checks.policy.last_load_error).toBeUndefined();
  });

  it('activate A → A serves; activate B → B denies; rollback → A again', async () => {
    await store.publish(allowBytes);
    await store.publish(denyBytes);
    // Published is not active.
    await gw.h.assembled.bundleWatcher!.check();
    expect(await gw.call()).toMatchObject({ status: 200, revision: defaultRevision });

    await store.activate('store-allow');
    expect(await serving('store-allow', 200)).toMatchObject({ status: 200, revision: 'store-allow' });

    await store.activate('store-deny');
    const denied = await serving('store-deny', 403);
    expect(denied).toMatchObject({ status: 403, revision: 'store-deny' });
    expect(denied.body).toContain('store_deny');
    expect(gw.h.assembled.bundleWatcher!.status().sha256).toBe(sha256(denyBytes));

    await store.rollback();
    expect(await serving('store-allow', 200)).toMatchObject({ status: 200, revision: 'store-allow' });
    const ready = await gw.ready();
    expect(ready.bundle_revision).toBe('store-allow');
    expect(ready.checks.policy.last_load_error).toBeUndefined();
  }, 30_000);

  it('a wrongly signed revision is refused when activated: A keeps serving, /ready shows last_load_error', async () => {
    const before = await loadErrors(gw.h);
    await store.publish(foreignBytes);
    await store.activate('store-bad');
    const ready = await eventually(gw.ready, (r) => r.checks.policy.last_load_error !== undefined);
    expect(ready.checks.policy.last_load_error).toMatchObject({ sha256: sha256(foreignBytes) });
    expect(ready.checks.policy.last_load_error!.message).toMatch(/signature|sign/i);
    expect(ready.checks.policy).toMatchObject({ ok: true, revision: 'store-allow' });
    expect(await gw.call()).toMatchObject({ status: 200, revision: 'store-allow' });
    expect(await loadErrors(gw.h)).toBe(before + 1);
    // Polled again and again: counted once.
    for (let i = 0; i < 3; i++) await gw.h.assembled.bundleWatcher!.check();
    expect(await loadErrors(gw.h)).toBe(before + 1);

    // Rolled back to what serves: the error is cleared.
    await store.rollback();
    await eventually(gw.ready, (r) => r.checks.policy.last_load_error === undefined);
    expect((await gw.ready()).checks.policy.last_load_error).toBeUndefined();
    expect(await gw.call()).toMatchObject({ status: 200, revision: 'store-allow' });
  }, 30_000);

  it('a shadow revision is loaded alongside (never enforced), a bad one refused, and cleared', async () => {
    const watcher = gw.h.assembled.bundleWatcher!;
    await store.setShadow('store-deny');
    await eventually(async () => watcher.status(), (s) => s.shadowRevision === 'store-deny');
    expect(watcher.status()).toMatchObject({ revision: 'store-allow', shadowRevision: 'store-deny', shadowSha256: sha256(denyBytes), shadowLoadError: null });
    expect(gw.h.assembled.engine.shadow?.revision).toBe('store-deny');
    expect(await shadowGauge(gw.h)).toEqual(['store-deny']);
    // Enforced: still the active revision.
    expect(await gw.call()).toMatchObject({ status: 200, revision: 'store-allow' });

    await store.setShadow('store-bad');
    await eventually(async () => watcher.status(), (s) => s.shadowLoadError !== null);
    expect(watcher.status()).toMatchObject({ shadowRevision: 'store-deny', shadowLoadError: { sha256: sha256(foreignBytes) } });
    expect(watcher.status().lastLoadError).toBeNull();

    await store.setShadow(null);
    await eventually(async () => watcher.status(), (s) => s.shadowRevision === null);
    expect(watcher.status()).toMatchObject({ shadowRevision: null, shadowSha256: null, shadowLoadError: null });
    expect(gw.h.assembled.engine.shadow).toBeNull();
    expect(await shadowGauge(gw.h)).toEqual([]);
  }, 30_000);
});

/** The admin listener of a harness gateway, on loopback, counting its bundle answers by status. */
async function listenAdmin(h: Harness): Promise<{ app: FastifyInstance; url: string; answers: { url: string; status: number; agent: string }[] }> {
  const app = await buildAdminApp(h.ctx, ADMIN_TOKEN);
  const answers: { url: string; status: number; agent: string }[] = [];
  app.addHook('onResponse', async (request, reply) => {
    if (request.url.startsWith('/admin/v1/bundles/')) answers.push({ url: request.url, status: reply.statusCode, agent: String(request.headers['user-agent'] ?? '') });
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, answers };
}

describe('the admin listener as a bundle server', () => {
  let one: Awaited<ReturnType<typeof gatewayWith>>;
  let two: Awaited<ReturnType<typeof gatewayWith>> | undefined;
  let admin: Awaited<ReturnType<typeof listenAdmin>>;
  let store: BundleStore;
  const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

  beforeAll(async () => {
    await mkdir(path.join(dir, 'served-store'));
    const spec = `dir:${path.join(dir, 'served-store')}`;
    one = await gatewayWith({ store: spec, reload: { intervalMs: 100 } });
    store = openBundleStore(parseBundleStoreSpec(spec), {});
    admin = await listenAdmin(one.h);
  }, 120_000);
  afterAll(async () => {
    await two?.h.close();
    await admin?.app.close();
    await one?.h.close();
  });

  it('serves the active revision with ETag, answers 304 to If-None-Match (lists, weak, *), HEAD without a body', async () => {
    const none = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/active', headers: auth });
    expect(none.statusCode).toBe(404);
    expect(none.json()).toMatchObject({ error: 'CARACAL_NOT_FOUND' });

    await store.publish(allowBytes);
    await store.publish(denyBytes);
    await store.activate('store-allow');
    const etag = `"${sha256(allowBytes)}"`;
    const got = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/active', headers: auth });
    expect(got.statusCode).toBe(200);
    expect(got.headers).toMatchObject({ etag, 'content-type': 'application/gzip', 'cache-control': 'no-cache', 'x-caracal-bundle-revision': 'store-allow' });
    expect(got.rawPayload.equals(allowBytes)).toBe(true);

    for (const inm of [etag, `W/${etag}`, `"nope", ${etag}`, '*']) {
      const r = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/active', headers: { ...auth, 'if-none-match': inm } });
      expect({ inm, status: r.statusCode, body: r.body.length, etag: r.headers.etag }).toEqual({ inm, status: 304, body: 0, etag });
    }
    for (const inm of ['garbage', `"${sha256(denyBytes)}"`, etag.slice(1, -1), '"', ',,,', 'W/', 'x'.repeat(6000)]) {
      const r = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/active', headers: { ...auth, 'if-none-match': inm } });
      expect({ inm: inm.slice(0, 20), status: r.statusCode }).toEqual({ inm: inm.slice(0, 20), status: 200 });
      expect(r.rawPayload.equals(allowBytes)).toBe(true);
    }

    const head = await admin.app.inject({ method: 'HEAD', url: '/admin/v1/bundles/active', headers: auth });
    expect(head.statusCode).toBe(200);
    expect(head.headers).toMatchObject({ etag, 'x-caracal-bundle-revision': 'store-allow' });
    expect(head.body).toBe('');

    const byRevision = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/revisions/store-deny', headers: auth });
    expect(byRevision.statusCode).toBe(200);
    expect(byRevision.headers).toMatchObject({ etag: `"${sha256(denyBytes)}"`, 'x-caracal-bundle-revision': 'store-deny' });
    expect(byRevision.rawPayload.equals(denyBytes)).toBe(true);
    const byRevision304 = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/revisions/store-deny', headers: { ...auth, 'if-none-match': `"${sha256(denyBytes)}"` } });
    expect(byRevision304.statusCode).toBe(304);

    const shadow = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/shadow', headers: auth });
    expect(shadow.statusCode).toBe(404);
    expect(shadow.json()).toMatchObject({ error: 'CARACAL_NOT_FOUND', message: expect.stringMatching(/no shadow revision/) });
  });

  it('refuses hostile requests with a 4xx: no or wrong credential, path tricks in :revision, unknown revisions', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: `Basic ${ADMIN_TOKEN}` }, { authorization: `Bearer ${ADMIN_TOKEN}x` }]) {
      for (const url of ['/admin/v1/bundles/active', '/admin/v1/bundles/shadow', '/admin/v1/bundles/revisions/store-allow']) {
        for (const method of ['GET', 'HEAD'] as const) {
          const r = await admin.app.inject({ method, url, headers });
          expect({ url, method, status: r.statusCode }).toEqual({ url, method, status: 401 });
          expect(r.headers.etag).toBeUndefined();
        }
      }
    }
    const hostile = [
      '..%2F..%2Fetc%2Fpasswd',
      '..%2Factive',
      '..',
      '.hidden',
      'store-allow%00',
      '%00',
      'a%2Fb',
      'a'.repeat(300),
      'a'.repeat(129),
      '%c0%ae%c0%ae',
      'store-allow.tar.gz%2F..',
      '-leading-dash',
    ];
    for (const revision of hostile) {
      const r = await admin.app.inject({ method: 'GET', url: `/admin/v1/bundles/revisions/${revision}`, headers: auth });
      expect({ revision: revision.slice(0, 30), status: r.statusCode >= 400 && r.statusCode < 500 }).toEqual({ revision: revision.slice(0, 30), status: true });
      expect(r.json()).toHaveProperty('error');
    }
    const unknown = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/revisions/never-published', headers: auth });
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json()).toMatchObject({ error: 'CARACAL_NOT_FOUND' });
    // The revision names a file in a directory store: a name with a dot in it is fine, a traversal never reaches it.
    const traversal = await admin.app.inject({ method: 'GET', url: '/admin/v1/bundles/revisions/..%2Fserved-store', headers: auth });
    expect(traversal.statusCode).toBe(400);
  });

  it('a second gateway follows the first over HTTP (storeToken), re-polls answered 304; a gateway on http serves no store', async () => {
    await store.activate('store-allow');
    two = await gatewayWith({ store: `${admin.url}/admin/v1/bundles/active`, storeToken: ADMIN_TOKEN, reload: { intervalMs: 100 } });
    const follow = (revision: string, status: number) => eventually(two!.call, (o) => o.revision === revision && o.status === status);
    expect(await follow('store-allow', 200)).toMatchObject({ status: 200, revision: 'store-allow' });
    expect(two.h.assembled.bundleWatcher!.status()).toMatchObject({ revision: 'store-allow', sha256: sha256(allowBytes), lastLoadError: null, shadowRevision: null });

    // Its polls after the first download are 304s.
    const activeAnswers = () => admin.answers.filter((a) => a.url === '/admin/v1/bundles/active' && a.agent !== 'lightMyRequest');
    const firstOk = activeAnswers().findIndex((a) => a.status === 200);
    await eventually(async () => activeAnswers().length, (n) => n >= firstOk + 6);
    const later = activeAnswers().slice(firstOk + 1);
    expect(later.length).toBeGreaterThanOrEqual(5);
    expect(later.every((a) => a.status === 304)).toBe(true);

    await store.activate('store-deny');
    expect(await follow('store-deny', 403)).toMatchObject({ status: 403, revision: 'store-deny' });

    // The shadow URL (…/shadow) is followed too; 404 there means none.
    await store.setShadow('store-allow');
    await eventually(async () => two!.h.assembled.bundleWatcher!.status(), (s) => s.shadowRevision === 'store-allow');
    expect(two.h.assembled.bundleWatcher!.status().shadowRevision).toBe('store-allow');
    await store.setShadow(null);
    await eventually(async () => two!.h.assembled.bundleWatcher!.status(), (s) => s.shadowRevision === null);
    expect(two.h.assembled.bundleWatcher!.status()).toMatchObject({ shadowRevision: null, shadowLoadError: null });

    await store.rollback();
    expect(await follow('store-allow', 200)).toMatchObject({ status: 200, revision: 'store-allow' });

    // Gateway 2 takes its bundles from elsewhere: its own admin listener has no store to serve.
    const admin2 = await buildAdminApp(two.h.ctx, ADMIN_TOKEN);
    try {
      const r = await admin2.inject({ method: 'GET', url: '/admin/v1/bundles/active', headers: auth });
      expect(r.statusCode).toBe(404);
      expect(r.json().message).toMatch(/takes its bundles from elsewhere/);
    } finally {
      await admin2.close();
    }
  }, 60_000);

  it('a gateway on a bundle server with a wrong token: refused like a bad bundle, the bundle file keeps serving', async () => {
    const three = await gatewayWith({ store: `${admin.url}/admin/v1/bundles/active`, storeToken: 'wrong-token', reload: { intervalMs: 100 } });
    try {
      const ready = await eventually(three.ready, (r) => r.checks.policy.last_load_error !== undefined);
      expect(ready.checks.policy.last_load_error!.message).toMatch(/HTTP 401/);
      expect(ready.checks.policy.last_load_error!.message).not.toContain('wrong-token');
      // Not the revision the store names: /ready fails (no traffic should come), naming why.
      expect(ready.checks.policy).toMatchObject({ ok: false, revision: defaultRevision });
      expect(ready.checks.policy.error).toMatch(/not serving the active revision of http:.*HTTP 401/);
      expect(await three.call()).toMatchObject({ status: 200, revision: defaultRevision });
    } finally {
      await three.h.close();
    }
  }, 60_000);
});

describe('a gateway whose store names a revision it cannot load at start', () => {
  it('is not ready (serving the fallback) until a loadable revision is activated', async () => {
    const storeDir = path.join(dir, `store-refused-${Math.random().toString(36).slice(2)}`);
    const store = openBundleStore(parseBundleStoreSpec(`dir:${storeDir}`), {});
    await store.publish(foreignBytes);
    await store.activate('store-bad');
    const gw = await gatewayWith({ store: `dir:${storeDir}`, reload: { intervalMs: 100 }, signing: signing() });
    try {
      const notReady = await gw.h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' });
      expect(notReady.statusCode).toBe(503);
      const policy = (notReady.json() as ReadyBody).checks.policy;
      expect(policy).toMatchObject({ ok: false, revision: defaultRevision, last_load_error: { sha256: sha256(foreignBytes) } });
      expect(policy.error).toMatch(/not serving the active revision of dir:.*serving the fallback/);

      await store.publish(allowBytes);
      await store.activate('store-allow');
      const ready = await eventually(gw.ready, (r) => r.bundle_revision === 'store-allow');
      expect(ready.checks.policy).toMatchObject({ ok: true, revision: 'store-allow' });
      expect((await gw.h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' })).statusCode).toBe(200);
    } finally {
      await gw.h.close();
    }
  }, 60_000);
});

describe('the bundle read credential (admin.bundleReadToken)', () => {
  it('opens the bundle routes for GET and HEAD, and nothing else of the admin API', async () => {
    const readToken = 'bundle-read-credential-0123456789abcdef';
    const h = await createHarness({ configOverrides: { admin: { bundleReadToken: readToken } } });
    const app = await buildAdminApp(h.ctx, ADMIN_TOKEN);
    try {
      const store = openBundleStore(parseBundleStoreSpec('db'), { db: h.ctx.db });
      await store.publish(allowBytes);
      await store.activate('store-allow');
      const read = { authorization: `Bearer ${readToken}` };
      for (const url of ['/admin/v1/bundles/active', '/admin/v1/bundles/revisions/store-allow']) {
        for (const method of ['GET', 'HEAD'] as const) expect({ url, method, status: (await app.inject({ method, url, headers: read })).statusCode }).toEqual({ url, method, status: 200 });
      }
      const refused = [
        ['POST', '/admin/v1/ops/bundle.activate'],
        ['POST', '/admin/v1/ops/agent.list'],
        ['POST', '/admin/v1/ops/bundle.publish'],
        ['GET', '/admin/v1/ops'],
        ['GET', '/admin/v1/openapi.json'],
        ['GET', '/admin/v1/bundles/../ops'],
        ['GET', '/admin/v1/bundles/%2e%2e/ops'],
        ['GET', '/admin/v1/bundles/active/../../ops'],
        ['POST', '/admin/v1/bundles/active'],
        ['DELETE', '/admin/v1/bundles/active'],
      ] as const;
      for (const [method, url] of refused) {
        const r = await app.inject({ method, url, headers: { ...read, 'content-type': 'application/json' }, ...(method === 'POST' ? { payload: '{}' } : {}) });
        expect({ method, url, status: r.statusCode }).toEqual({ method, url, status: 401 });
      }
      // The admin credential still opens everything, the bundle routes included.
      expect((await app.inject({ method: 'GET', url: '/admin/v1/bundles/active', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode).toBe(200);
      expect((await app.inject({ method: 'GET', url: '/admin/v1/ops', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).statusCode).toBe(200);
    } finally {
      await app.close();
      await h.close();
    }
  }, 60_000);
});

describe('a gateway whose store folder is missing (a typo, a volume not mounted)', () => {
  it('is not ready: an unreadable store is not an empty one', async () => {
    const missing = path.join(dir, `not-mounted-${Math.random().toString(36).slice(2)}`);
    const gw = await gatewayWith({ store: `dir:${missing}`, reload: { intervalMs: 100 } });
    try {
      const response = await gw.h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' });
      expect(response.statusCode).toBe(503);
      const policy = (response.json() as ReadyBody).checks.policy;
      expect(policy).toMatchObject({ ok: false, revision: defaultRevision });
      expect(policy.error).toMatch(/not serving the active revision of dir:.*does not exist/);
    } finally {
      await gw.h.close();
    }
  }, 60_000);
});

describe('interop: the real opa downloads the active bundle from the admin listener', () => {
  let gw: Awaited<ReturnType<typeof gatewayWith>>;
  let admin: Awaited<ReturnType<typeof listenAdmin>>;
  let store: BundleStore;
  let opa: ChildProcess | undefined;
  let opaLog = '';
  let opaUrl: string;
  const opaBin = process.env.CARACAL_OPA_BIN ?? 'opa';
  let interop1: Buffer;
  let interop2: Buffer;

  beforeAll(async () => {
    await mkdir(path.join(dir, 'opa-store'));
    const spec = `dir:${path.join(dir, 'opa-store')}`;
    gw = await gatewayWith({ store: spec, reload: { intervalMs: 100 } });
    store = openBundleStore(parseBundleStoreSpec(spec), {});
    admin = await listenAdmin(gw.h);
    // Without `wasm` in the manifest: this opa has no WebAssembly runtime, and evaluates the bundle's Rego instead.
    interop1 = await variant('interop-1', undefined, { dropWasmManifest: true });
    interop2 = await variant('interop-2', denying, { dropWasmManifest: true });
    await store.publish(interop1);
    await store.publish(interop2);

    const port = await closedPort();
    opaUrl = `http://127.0.0.1:${port}`;
    const config = path.join(dir, 'opa-config.yaml');
    await writeFile(
      config,
      [
        'services:',
        '  caracal:',
        `    url: ${admin.url}`,
        '    credentials:',
        '      bearer:',
        `        token: ${ADMIN_TOKEN}`,
        'bundles:',
        '  authz:',
        '    service: caracal',
        '    resource: admin/v1/bundles/active',
        '    polling:',
        '      min_delay_seconds: 1',
        '      max_delay_seconds: 1',
        '',
      ].join('\n'),
    );
    opa = spawn(opaBin, ['run', '--server', '--addr', `127.0.0.1:${port}`, '--config-file', config, '--log-level', 'debug', '--skip-version-check', '--disable-telemetry'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: dir,
    });
    opa.stdout!.on('data', (d) => (opaLog += d));
    opa.stderr!.on('data', (d) => (opaLog += d));
    const up = await eventually(
      () => fetch(`${opaUrl}/health`).then((r) => r.status, () => 0),
      (s) => s !== 0 || opa!.exitCode !== null,
      15_000,
    );
    if (up === 0) throw new Error(`opa did not start:\n${opaLog.slice(-4000)}`);
  }, 120_000);

  afterAll(async () => {
    if (opa && opa.exitCode === null) {
      const exited = new Promise((resolve) => opa!.once('exit', resolve));
      opa.kill('SIGTERM');
      const timer = setTimeout(() => opa!.kill('SIGKILL'), 5_000);
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 8_000))]);
      clearTimeout(timer);
    }
    await admin?.app.close();
    await gw?.h.close();
  });

  const bundlesHealthy = () => fetch(`${opaUrl}/health?bundles`).then((r) => r.status);
  const opaRevision = () => fetch(`${opaUrl}/v1/data/system/bundles/authz/manifest/revision`).then(async (r) => ((await r.json()) as { result?: string }).result);
  /** opa evaluates the bundle's Rego: the package document holds the same allow and reasons as the WASM decision. */
  const opaDecision = async (input: unknown) => {
    const r = await fetch(`${opaUrl}/v1/data/caracal/authz`, { method: 'POST', body: JSON.stringify({ input }), headers: { 'content-type': 'application/json' } });
    return ((await r.json()) as { result?: { allow?: boolean; reasons?: string[] } }).result;
  };
  const opaAnswers = () => admin.answers.filter((a) => a.url === '/admin/v1/bundles/active' && a.agent.startsWith('Open-Policy-Agent/'));

  it('opa is not bundle-healthy before a revision is active, downloads it once activated, then gets 304s', async () => {
    // Its first polls (they start with opa) find nothing active.
    await eventually(async () => opaAnswers().length, (n) => n > 0, 15_000);
    expect(await bundlesHealthy()).toBe(500);
    expect(opaAnswers().length).toBeGreaterThan(0);
    expect(opaAnswers().every((a) => a.status === 404)).toBe(true);

    await store.activate('interop-1');
    expect(await eventually(bundlesHealthy, (s) => s === 200, 20_000)).toBe(200);
    expect(await opaRevision()).toBe('interop-1');
    // The same bytes the gateway enforces: the same answer to the smoke input (deny, decided).
    await eventually(gw.call, (o) => o.revision === 'interop-1');
    const ours = (await PolicyEngine.fromBundleBytes(interop1, 'interop-1')).evaluate({ ...SMOKE_INPUT, now: Math.floor(Date.now() / 1000) });
    const theirs = await opaDecision({ ...SMOKE_INPUT, now: Math.floor(Date.now() / 1000) });
    expect(theirs?.allow).toBe(false);
    expect(theirs?.allow).toBe(ours.allow);
    expect([...(theirs?.reasons ?? [])].sort()).toEqual([...ours.reasons].sort());

    // Re-polls carry the ETag: answered 304, and opa says so in its debug log.
    const firstOk = opaAnswers().findIndex((a) => a.status === 200);
    expect(firstOk).toBeGreaterThanOrEqual(0);
    await eventually(async () => opaAnswers().length, (n) => n >= firstOk + 3, 15_000);
    const later = opaAnswers().slice(firstOk + 1);
    expect(later.length).toBeGreaterThanOrEqual(2);
    expect(later.every((a) => a.status === 304)).toBe(true);
    expect(opaLog).toMatch(/not modified/i);
  }, 60_000);

  it('opa follows an activation to a new revision (a new ETag) and a rollback', async () => {
    await store.activate('interop-2');
    expect(await eventually(opaRevision, (r) => r === 'interop-2', 20_000)).toBe('interop-2');
    const denied = await opaDecision({ ...SMOKE_INPUT, now: Math.floor(Date.now() / 1000) });
    expect(denied?.reasons).toContain('store_deny');
    await store.rollback();
    expect(await eventually(opaRevision, (r) => r === 'interop-1', 20_000)).toBe('interop-1');
    expect(opa!.exitCode).toBeNull();
  }, 60_000);
});

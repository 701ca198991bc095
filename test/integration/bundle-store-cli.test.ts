import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { AppContext } from '../../src/context.js';
import { topicSpecs } from '../../src/events/topics.js';
import { buildAdminApp } from '../../src/gateway/admin.js';
import { createLogger } from '../../src/logging/logger.js';
import { runOperation } from '../../src/operations/index.js';
import { migrateUp } from '../../src/store/migrate.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import { readBundleFileMembers, writeBundleTarball } from '../../src/policy/bundle.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';
import { testBundle } from './bundle-store.contract.js';

const root = mkdtempSync(path.join(tmpdir(), 'caracal-bundle-store-cli-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Bundle files r1, r2, r3 (revisions `cli-r1` …), a conflicting r1, and some things that are not bundles. */
const files = {
  r1: path.join(root, 'r1.tar.gz'),
  r2: path.join(root, 'r2.tar.gz'),
  r3: path.join(root, 'r3.tar.gz'),
  r1Other: path.join(root, 'r1-other.tar.gz'),
  garbage: path.join(root, 'garbage.tar.gz'),
  truncated: path.join(root, 'truncated.tar.gz'),
  badRevision: path.join(root, 'bad-revision.tar.gz'),
  aDirectory: path.join(root, 'a-directory'),
};

beforeAll(async () => {
  await writeFile(files.r1, await testBundle('cli-r1'));
  await writeFile(files.r2, await testBundle('cli-r2'));
  await writeFile(files.r3, await testBundle('cli-r3'));
  await writeFile(files.r1Other, await testBundle('cli-r1', 'other bytes'));
  await writeFile(files.garbage, 'definitely not a gzip tarball\n');
  const r1 = await readFile(files.r1);
  await writeFile(files.truncated, r1.subarray(0, r1.length - 200));
  await writeFile(files.badRevision, await testBundle('../../etc'));
  mkdirSync(files.aDirectory);
});

/** The whole life of a store through the CLI: `store` is the --to/--store value, or undefined for the default. */
function roundTrip(label: string, env: () => Record<string, string>, store: string | undefined, storeName: RegExp): void {
  const caracal = cliRunner(env);
  const at = (flag: '--to' | '--store') => (store === undefined ? [] : [flag, store]);

  it(`${label}: publish → list → activate → rollback → shadow → fetch`, async () => {
    const first = await caracal('bundle', 'publish', files.r1, ...at('--to'));
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    expect(first.out).toMatch(new RegExp(`^published cli-r1 sha256=[0-9a-f]{64} to ${storeName.source} \\(new\\)\\n$`));
    const again = await caracal('bundle', 'publish', files.r1, ...at('--to'));
    expect(again.out).toMatch(/^published cli-r1 .* \(already published\)\n$/);

    const second = await caracal('bundle', 'publish', files.r2, ...at('--to'), '--activate');
    expect(second.err).toBe('');
    expect(second.out.split('\n')).toEqual([expect.stringMatching(/^published cli-r2 .*\(new\)$/), 'activated cli-r2 (was none)', '']);
    const json = await caracal('bundle', 'publish', files.r3, ...at('--to'), '--json');
    expect(JSON.parse(json.out)).toMatchObject({ revision: 'cli-r3', created: true, activation: null, size: (await readFile(files.r3)).length });

    const table = await caracal('bundle', 'list', ...at('--store'));
    expect(table.err).toBe('');
    const lines = table.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^REVISION\s+PUBLISHED\s+SIZE\s+SIGNED$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['cli-r3', 'cli-r2', 'cli-r1']);
    expect(lines[2]).toMatch(/^cli-r2\s+\d{4}-\d\d-\d\dT\S+Z\s+\d+\s+no\s+ACTIVE$/);
    expect(lines[1]).not.toMatch(/ACTIVE|SHADOW/);

    expect((await caracal('bundle', 'activate', '--revision', 'cli-r1', ...at('--store'))).out).toBe('activated cli-r1 (was cli-r2)\n');
    expect((await caracal('bundle', 'activate', '--revision', 'cli-r3', ...at('--store'))).out).toBe('activated cli-r3 (was cli-r1)\n');
    expect((await caracal('bundle', 'rollback', ...at('--store'))).out).toBe('rolled back to cli-r1 (was cli-r3)\n');
    expect((await caracal('bundle', 'rollback', ...at('--store'))).out).toBe('rolled back to cli-r2 (was cli-r1)\n');
    expectOneLineError(await caracal('bundle', 'rollback', ...at('--store')), /nothing to roll back to.*cli-r2 is the only revision activated/);

    expect((await caracal('bundle', 'shadow', '--revision', 'cli-r3', ...at('--store'))).out).toBe('shadow cli-r3 (was none)\n');
    const listing = JSON.parse((await caracal('bundle', 'list', ...at('--store'), '--json')).out) as {
      active: { revision: string; sha256: string };
      shadow: { revision: string };
      history: { action: string; revision: string | null; actor: string | null }[];
    };
    expect(listing.active.revision).toBe('cli-r2');
    // Who acted: the CLI's operating-system user (directly on a folder or the database).
    for (const entry of listing.history) expect(entry.actor).toMatch(/^os_user:./);
    expect(listing.shadow.revision).toBe('cli-r3');
    expect(listing.history.map((e) => `${e.action}:${e.revision}`)).toEqual([
      'shadow:cli-r3',
      'rollback:cli-r2',
      'rollback:cli-r1',
      'activate:cli-r3',
      'activate:cli-r1',
      'activate:cli-r2',
    ]);
    expect((await caracal('bundle', 'list', ...at('--store'))).out).toMatch(/\ncli-r3 .*SHADOW\n/);
    expect((await caracal('bundle', 'shadow', '--off', ...at('--store'))).out).toBe('shadow off (was cli-r3)\n');

    const out = path.join(root, `${label.replace(/\W+/g, '-')}-fetched.tar.gz`);
    const fetched = await caracal('bundle', 'fetch', '--revision', 'cli-r2', '--out', out, ...at('--store'));
    expect(fetched.err).toBe('');
    expect(fetched.out).toMatch(new RegExp(`^fetched cli-r2 sha256=${listing.active.sha256} to ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(\\d+ bytes\\)\\n$`));
    expect((await readFile(out)).equals(await readFile(files.r2))).toBe(true);
  }, 120_000);

  it(`${label}: refusals are one line each and change nothing`, async () => {
    const before = (await caracal('bundle', 'list', ...at('--store'), '--json')).out;
    expectOneLineError(await caracal('bundle', 'publish', files.r1Other, ...at('--to')), /cli-r1 is already published .* with other bytes/);
    expectOneLineError(await caracal('bundle', 'activate', '--revision', 'cli-nope', ...at('--store')), /revision cli-nope is not published/);
    expectOneLineError(await caracal('bundle', 'shadow', '--revision', 'cli-nope', ...at('--store')), /revision cli-nope is not published/);
    expectOneLineError(await caracal('bundle', 'fetch', '--revision', 'cli-nope', '--out', path.join(root, 'nope.tar.gz'), ...at('--store')), /not published/);
    expect(readdirSync(root)).not.toContain('nope.tar.gz');
    expect((await caracal('bundle', 'list', ...at('--store'), '--json')).out).toBe(before);
  }, 60_000);
}

describe('caracal bundle publish/list/activate/rollback/shadow/fetch', () => {
  const home = mkdtempSync(path.join(root, 'home-'));
  const baseEnv = () => ({ CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' });
  const caracal = cliRunner(baseEnv);

  describe('a directory store', () => {
    const dir = path.join(root, 'dir-store');
    roundTrip('dir:', baseEnv, `dir:${dir}`, new RegExp(`dir:${dir}`));

    it('lays the folder out as revisions/ + state.json', () => {
      expect(readdirSync(dir).sort()).toEqual(['revisions', 'state.json']);
      expect(readdirSync(path.join(dir, 'revisions')).sort()).toEqual(['cli-r1.tar.gz', 'cli-r2.tar.gz', 'cli-r3.tar.gz']);
    });

    it('is the default when policy.store names it', async () => {
      const listed = await cliRunner(() => ({ ...baseEnv(), CARACAL_POLICY_STORE: `dir:${dir}` }))('bundle', 'list', '--json');
      expect(listed.err).toBe('');
      expect((JSON.parse(listed.out) as { store: string; bundles: unknown[] }).store).toBe(`dir:${dir}`);
      // --store db while the operations would act on that folder: refused rather than acting on another store.
      expectOneLineError(await cliRunner(() => ({ ...baseEnv(), CARACAL_POLICY_STORE: `dir:${dir}` }))('bundle', 'list', '--store', 'db'), /policy\.store is dir:/);
    });
  });

  describe('the database store (embedded PGlite under CARACAL_HOME)', () => {
    roundTrip('db', baseEnv, undefined, /db/);

    it('--store db is the same store', async () => {
      const listed = JSON.parse((await caracal('bundle', 'list', '--store', 'db', '--json')).out) as { store: string; bundles: { revision: string }[] };
      expect(listed.store).toBe('db');
      expect(listed.bundles.map((b) => b.revision)).toEqual(['cli-r3', 'cli-r2', 'cli-r1']);
    });

    it('a config that pulls from a URL has no store of its own to publish to', async () => {
      const follower = cliRunner(() => ({ ...baseEnv(), CARACAL_POLICY_STORE: 'http://127.0.0.1:9/' }));
      expectOneLineError(await follower('bundle', 'publish', files.r1), /takes its bundles from http:\/\/127\.0\.0\.1:9: publish there/);
    });
  });

  describe('hostile input', () => {
    const dirStore = `dir:${path.join(root, 'hostile-store')}`;
    it('files that are not bundles are refused before anything is sent', async () => {
      expectOneLineError(await caracal('bundle', 'publish', path.join(root, 'missing.tar.gz'), '--to', dirStore), /cannot read .*missing\.tar\.gz: no such file/);
      expectOneLineError(await caracal('bundle', 'publish', files.aDirectory, '--to', dirStore), /a-directory is a directory/);
      expectOneLineError(await caracal('bundle', 'publish', files.garbage, '--to', dirStore), /not a gzip file/);
      expectOneLineError(await caracal('bundle', 'publish', files.truncated, '--to', dirStore), /truncated|corrupt/);
      expectOneLineError(await caracal('bundle', 'publish', files.badRevision, '--to', dirStore), /revision "\.\.\/\.\.\/etc" is not a plain token/);
      // Refused locally: an unreachable gateway is never contacted, and the store folder is never created.
      expectOneLineError(await caracal('bundle', 'publish', files.garbage, '--to', 'http://127.0.0.1:9'), /not a gzip file/);
      expect(readdirSync(root)).not.toContain('hostile-store');
    });

    it('a revision no gateway could load is stored but never made active or shadow (dir: checked by the CLI; db: by the operation)', async () => {
      const store = `dir:${path.join(root, 'unloadable-store')}`;
      // Stored as any bundle is (it has /policy.wasm and a revision), but its WASM is not WebAssembly.
      const files = await readBundleFileMembers(DEFAULT_BUNDLE);
      files.set('policy.wasm', Buffer.from('not wasm'));
      files.set('.manifest', Buffer.from(JSON.stringify({ ...(JSON.parse(files.get('.manifest')!.toString()) as object), revision: 'cli-broken' })));
      const broken = path.join(root, 'broken.tar.gz');
      await writeFile(broken, writeBundleTarball(files));
      expect((await caracal('bundle', 'publish', broken, '--to', store)).code).toBe(0);
      for (const args of [['activate', '--revision', 'cli-broken'], ['shadow', '--revision', 'cli-broken']]) {
        expectOneLineError(await caracal('bundle', ...args, '--store', store), /revision cli-broken .*cannot load the policy WASM.* a gateway would refuse to load it/);
      }
      expectOneLineError(await caracal('bundle', 'publish', broken, '--to', store, '--activate'), /a gateway would refuse to load it/);
      expect(JSON.parse((await caracal('bundle', 'list', '--store', store, '--json')).out)).toMatchObject({ active: null, shadow: null, history: [] });
      // The same through the operations (the embedded database, no gateway running).
      expect((await caracal('bundle', 'publish', broken)).code).toBe(0);
      expectOneLineError(await caracal('bundle', 'activate', '--revision', 'cli-broken'), /a gateway would refuse to load it/);
      expectOneLineError(await caracal('bundle', 'shadow', '--revision', 'cli-broken'), /a gateway would refuse to load it/);
      expect(JSON.parse((await caracal('bundle', 'list', '--json')).out)).not.toMatchObject({ active: { revision: 'cli-broken' } });
    });

    it('revisions that are not plain tokens, and contradictory flags', async () => {
      expectOneLineError(await caracal('bundle', 'activate', '--revision', '../../etc', '--store', dirStore), /invalid revision "\.\.\/\.\.\/etc"/);
      expectOneLineError(await caracal('bundle', 'fetch', '--revision', '../../etc', '--out', path.join(root, 'x'), '--store', dirStore), /invalid revision/);
      expectOneLineError(await caracal('bundle', 'shadow', '--revision', 'a/b', '--store', dirStore), /invalid revision/);
      expectOneLineError(await caracal('bundle', 'shadow', '--revision', 'cli-r1', '--off', '--store', dirStore), /exactly one of --revision <rev> and --off/);
      expectOneLineError(await caracal('bundle', 'shadow', '--store', dirStore), /exactly one of --revision <rev> and --off/);
      expectOneLineError(await caracal('bundle', 'activate', '--store', dirStore), /required option '--revision <rev>'/);
      expectOneLineError(await caracal('bundle', 'fetch', '--revision', 'cli-r1', '--out', files.aDirectory, '--store', dirStore), /is a directory/);
      expect(readdirSync(root)).not.toContain('hostile-store');
    });

    it('unknown store specs and an http store without its credential', async () => {
      expectOneLineError(await caracal('bundle', 'publish', files.r1, '--to', 'ftp://x'), /unknown bundle store "ftp:\/\/x": use db, dir:<path>/);
      expectOneLineError(await caracal('bundle', 'list', '--store', 'somewhere'), /unknown bundle store "somewhere"/);
      expectOneLineError(await caracal('bundle', 'list', '--store', 'http://user:pw@127.0.0.1:9'), /must not carry credentials/);
      // The credential is read from the CLI's own environment (baseEnv has none; an empty one is none either).
      expectOneLineError(await caracal('bundle', 'publish', files.r1, '--to', 'http://127.0.0.1:9'), /set CARACAL_ADMIN_TOKEN/);
      const emptyToken = cliRunner(() => ({ ...baseEnv(), CARACAL_ADMIN_TOKEN: ' ' }));
      expectOneLineError(await emptyToken('bundle', 'list', '--store', 'http://127.0.0.1:9'), /set CARACAL_ADMIN_TOKEN/);
    });
  });

  describe('an http store: another gateway\'s admin API', () => {
    let ctx: AppContext;
    let app: FastifyInstance;
    let url = '';
    const token = 'bundle-store-cli-admin-credential-0123';

    beforeAll(async () => {
      const gwHome = mkdtempSync(path.join(root, 'gw-'));
      const db = await PgliteDb.open();
      ctx = await AppContext.fromConfig(loadConfig({ env: {}, cwd: gwHome, overrides: { home: gwHome } }), { db, logger: createLogger('silent') });
      await migrateUp(db);
      await (await ctx.events()).createTopics(topicSpecs(ctx.config));
      app = await buildAdminApp(ctx, token);
      await app.listen({ host: '127.0.0.1', port: 0 });
      const address = app.server.address();
      url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    });
    afterAll(async () => {
      await app?.close();
      await ctx?.close();
    });

    it('publishes, activates and fetches through the admin API; the gateway\'s database has them', async () => {
      const caracal = cliRunner(() => ({ ...baseEnv(), CARACAL_ADMIN_TOKEN: token }));
      const published = await caracal('bundle', 'publish', files.r1, '--to', url, '--activate');
      expect(published.err).toBe('');
      expect(published.out.split('\n')).toEqual([expect.stringMatching(new RegExp(`^published cli-r1 sha256=[0-9a-f]{64} to ${url} \\(new\\)$`)), 'activated cli-r1 (was none)', '']);
      expect((await runOperation(ctx, 'bundle.list', {})) as unknown).toMatchObject({ store: 'db', active: { revision: 'cli-r1' } });
      await caracal('bundle', 'publish', files.r2, '--to', url);
      expect((await caracal('bundle', 'activate', '--revision', 'cli-r2', '--store', url)).out).toBe('activated cli-r2 (was cli-r1)\n');
      expect((await caracal('bundle', 'list', '--store', url)).out).toMatch(/\ncli-r2 .*ACTIVE\n/);
      const out = path.join(root, 'http-fetched.tar.gz');
      expect((await caracal('bundle', 'fetch', '--revision', 'cli-r1', '--out', out, '--store', url)).code).toBe(0);
      expect((await readFile(out)).equals(await readFile(files.r1))).toBe(true);
      expectOneLineError(await caracal('bundle', 'activate', '--revision', 'cli-nope', '--store', url), /revision cli-nope is not published in db/);
      // The store's history names who acted: the admin credential (by its digest, never itself).
      const listing = (await runOperation(ctx, 'bundle.list', {})) as { history: { action: string; actor: string | null }[] };
      expect(listing.history.map((h) => h.action)).toEqual(['activate', 'activate']);
      for (const entry of listing.history) expect(entry.actor).toMatch(/^admin_token:sha256:[0-9a-f]{16}$/);
      expect(JSON.stringify(listing)).not.toContain(token);
    });

    it('a wrong credential is one line naming CARACAL_ADMIN_TOKEN', async () => {
      const caracal = cliRunner(() => ({ ...baseEnv(), CARACAL_ADMIN_TOKEN: 'not-the-credential' }));
      expectOneLineError(await caracal('bundle', 'list', '--store', url), /refused the admin credential \(401\): check CARACAL_ADMIN_TOKEN/);
    });

    it('bundle.diff runs one at a time in a gateway: a second while one runs is a 409, and the next one runs', async () => {
      const args = { bundle: (await testBundle('diff-once')).toString('base64'), startTime: '2026-01-01T00:00:00Z', endTime: '2026-01-02T00:00:00Z' };
      const [first, second] = await Promise.allSettled([runOperation(ctx, 'bundle.diff', args), runOperation(ctx, 'bundle.diff', args)]);
      expect(first).toMatchObject({ status: 'fulfilled', value: { totals: { decisions: 0 }, candidate: { revision: 'diff-once' } } });
      expect(second).toMatchObject({ status: 'rejected', reason: { code: 'CARACAL_CONFLICT', message: expect.stringMatching(/already running/) as string } });
      await expect(runOperation(ctx, 'bundle.diff', args)).resolves.toMatchObject({ totals: { decisions: 0 } });
      await expect(runOperation(ctx, 'bundle.diff', { ...args, maxChanges: 10_001 })).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
      await expect(runOperation(ctx, 'bundle.diff', { ...args, endTime: args.startTime })).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/endTime/) as string });
    });

    it('the operations refuse what is not strict base64 and name the argument', async () => {
      for (const bundle of ['not base64!', 'QUJD=', '====', 'QQ', '']) {
        await expect(runOperation(ctx, 'bundle.publish', { bundle }), bundle).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/^bundle: /) as string });
      }
      await expect(runOperation(ctx, 'bundle.publish', { bundle: Buffer.from('hello').toString('base64') })).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/not a gzip/) as string });
      await expect(runOperation(ctx, 'bundle.shadow', {})).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
      await expect(runOperation(ctx, 'bundle.fetch', { revision: '../../etc/passwd' })).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
      await expect(runOperation(ctx, 'bundle.list', { extra: 1 })).rejects.toMatchObject({ code: 'CARACAL_VALIDATION' });
    });
  });
});

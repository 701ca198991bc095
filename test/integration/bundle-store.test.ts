import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DirectoryBundleStore } from '../../src/policy/bundle-store-dir.js';
import { DatabaseBundleStore } from '../../src/policy/bundle-store-db.js';
import { inspectBundleForStore, openBundleStore, parseBundleStoreSpec } from '../../src/policy/bundle-store-open.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgDb } from '../../src/store/pg-db.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { randomName, requireServices } from '../helpers/services.js';
import { bundleStoreContract, testBundle } from './bundle-store.contract.js';

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'caracal-bundle-store-'));
  tempDirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

bundleStoreContract('directory', async () => {
  // An empty folder: what a gateway polls before anything is published (a missing folder is refused, see below).
  const dir = path.join(tempDir(), 'store');
  mkdirSync(dir);
  return { store: new DirectoryBundleStore(dir), other: new DirectoryBundleStore(dir), close: async () => {} };
});

bundleStoreContract('database on PGlite', async () => {
  const db = await PgliteDb.open();
  await migrateUp(db);
  return { store: new DatabaseBundleStore(db), other: new DatabaseBundleStore(db), close: () => db.close() };
});

bundleStoreContract('database on PostgreSQL (two pools)', async () => {
  const url = requireServices().databaseUrl;
  const schema = randomName('bundles');
  const first = new PgDb({ url, schema, poolSize: 4 });
  await first.ensureSchema();
  await migrateUp(first);
  const second = new PgDb({ url, schema, poolSize: 4 });
  return {
    store: new DatabaseBundleStore(first),
    other: new DatabaseBundleStore(second),
    async close() {
      await second.close();
      await first.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await first.close();
    },
  };
});

describe('bundle store specs', () => {
  it('a store folder that does not exist is unreadable, not empty: pointers() refuses; the first publish creates it', async () => {
    const dir = path.join(tempDir(), 'not-mounted');
    const store = new DirectoryBundleStore(dir);
    await expect(store.pointers()).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY', message: expect.stringMatching(/does not exist/) as string });
    await store.publish(await testBundle('nm-1'));
    expect(await store.pointers()).toEqual({ active: null, shadow: null });
  });

  it('a bundle file replaced by hand with other bytes is refused by its size before it is read', async () => {
    const dir = path.join(tempDir(), 'tampered');
    const store = new DirectoryBundleStore(dir);
    await store.publish(await testBundle('tp-1'));
    writeFileSync(path.join(dir, 'revisions', 'tp-1.tar.gz'), Buffer.alloc(1024 * 1024));
    await expect(store.fetch('tp-1')).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/not the \d+ recorded/) as string });
  });

  it('parses db, dir:, plain paths and http(s) URLs', () => {
    expect(parseBundleStoreSpec('db')).toEqual({ kind: 'db' });
    expect(parseBundleStoreSpec('dir:/srv/bundles')).toEqual({ kind: 'dir', path: '/srv/bundles' });
    expect(parseBundleStoreSpec('dir:rel')).toEqual({ kind: 'dir', path: path.resolve('rel') });
    expect(parseBundleStoreSpec('./out/store')).toEqual({ kind: 'dir', path: path.resolve('out/store') });
    expect(parseBundleStoreSpec('/abs/store')).toEqual({ kind: 'dir', path: '/abs/store' });
    expect(parseBundleStoreSpec('http://127.0.0.1:9090/')).toEqual({ kind: 'http', url: 'http://127.0.0.1:9090' });
    expect(parseBundleStoreSpec('https://gw.example:8443')).toEqual({ kind: 'http', url: 'https://gw.example:8443' });
  });

  it('refuses anything else with a usage error naming the accepted forms', () => {
    for (const bad of ['ftp://x', 'database', '', 'dir:', 's3://bucket/key', 'http://', 'http://user:pw@host:1', 'file:///tmp/x']) {
      let err: unknown;
      try {
        parseBundleStoreSpec(bad);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toMatchObject({ code: 'CARACAL_USAGE' });
      expect((err as Error).message, bad).not.toContain('\n');
    }
    try {
      parseBundleStoreSpec('ftp://x');
    } catch (e) {
      expect((e as Error).message).toMatch(/db, dir:<path>.*http\(s\)/);
    }
  });

  it('openBundleStore: db needs a database; http is not opened here', () => {
    expect(() => openBundleStore({ kind: 'db' })).toThrow(expect.objectContaining({ code: 'CARACAL_USAGE' }) as Error);
    expect(() => openBundleStore({ kind: 'http', url: 'http://127.0.0.1:1' })).toThrow(expect.objectContaining({ code: 'CARACAL_USAGE' }) as Error);
    expect(openBundleStore({ kind: 'dir', path: '/tmp/x' }).description).toBe('dir:/tmp/x');
  });

  it('inspectBundleForStore reports revision, digest, size and metadata', async () => {
    const bytes = await testBundle('v1.2.3');
    const info = await inspectBundleForStore(bytes);
    expect(info).toMatchObject({ revision: 'v1.2.3', size: bytes.length, signed: false });
    expect(info.sha256).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('directory store on disk', () => {
  it('lays out revisions/<rev>.tar.gz and state.json, leaving no temporary files or lock', async () => {
    const dir = tempDir();
    const store = new DirectoryBundleStore(dir);
    const bytes = await testBundle('layout-1');
    await store.publish(bytes);
    await store.activate('layout-1');
    expect((await readFile(path.join(dir, 'revisions', 'layout-1.tar.gz'))).equals(bytes)).toBe(true);
    const state = JSON.parse(await readFile(path.join(dir, 'state.json'), 'utf8')) as { active: string; stack: string[] };
    expect(state).toMatchObject({ active: 'layout-1', stack: ['layout-1'] });
    const { readdir } = await import('node:fs/promises');
    expect((await readdir(dir)).sort()).toEqual(['revisions', 'state.json']);
    expect(await readdir(path.join(dir, 'revisions'))).toEqual(['layout-1.tar.gz']);
  });

  it('a state.json that is not JSON is an error naming the file, and is left as it is', async () => {
    const dir = tempDir();
    await writeFile(path.join(dir, 'state.json'), '{"active": "trunc');
    const store = new DirectoryBundleStore(dir);
    for (const call of [() => store.list(), () => store.pointers(), async () => store.publish(await testBundle('after-corrupt')), () => store.activate('x')]) {
      await expect(call()).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringContaining(path.join(dir, 'state.json')) as string });
    }
    expect(await readFile(path.join(dir, 'state.json'), 'utf8')).toBe('{"active": "trunc');
    await writeFile(path.join(dir, 'state.json'), '{"format": 1, "active": "../../etc"}');
    await expect(store.pointers()).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/malformed/) as string });
  });

  it('bytes changed behind the store are refused on fetch', async () => {
    const dir = tempDir();
    const store = new DirectoryBundleStore(dir);
    await store.publish(await testBundle('tamper-1'));
    await writeFile(path.join(dir, 'revisions', 'tamper-1.tar.gz'), await testBundle('tamper-1', 'evil'));
    await expect(store.fetch('tamper-1')).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/sha256 recorded|bytes, not the \d+ recorded/) as string });
  });

  it('a path that is a file is refused with a clear error', async () => {
    const file = path.join(tempDir(), 'not-a-dir');
    await writeFile(file, 'x');
    await expect(new DirectoryBundleStore(file).publish(await testBundle('nd-1'))).rejects.toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/not a directory/) as string });
  });

  it('waits for a held lock, gives up with a retriable conflict, and takes over a stale one', async () => {
    const dir = tempDir();
    await mkdir(dir, { recursive: true });
    const store = new DirectoryBundleStore(dir, { staleLockMs: 2_000, lockWaitMs: 300 });
    await store.publish(await testBundle('lock-1'));
    const lock = path.join(dir, '.lock');
    await writeFile(lock, 'otherhost 1 held');
    const started = Date.now();
    await expect(store.activate('lock-1')).rejects.toMatchObject({ code: 'CARACAL_CONFLICT', retriable: true, message: expect.stringContaining('otherhost 1 held') as string });
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(await readFile(lock, 'utf8')).toBe('otherhost 1 held');

    // The holder died long ago: its lock is taken over and removed afterwards.
    const old = new Date(Date.now() - 60_000);
    await utimes(lock, old, old);
    expect(await store.activate('lock-1')).toEqual({ active: 'lock-1', previous: null });
    await expect(readFile(lock)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('directory store: a live writer keeps its lock', () => {
  it('a write that lasts longer than staleLockMs is not taken over: the other writer waits for it', { timeout: 30_000 }, async () => {
    const dir = tempDir();
    await mkdir(dir, { recursive: true });
    // Generous for a busy machine: a takeover would need the event loop to stall for a whole second.
    const slow = new DirectoryBundleStore(dir, { staleLockMs: 1_000, lockWaitMs: 10_000 });
    const other = new DirectoryBundleStore(dir, { staleLockMs: 1_000, lockWaitMs: 10_000 });
    await slow.publish(await testBundle('live-1'));
    await slow.publish(await testBundle('live-2'));
    let slowDone = 0;
    // A writer that holds the lock for 3 s (3 × staleLockMs), as a large bundle on a slow volume would.
    const holding = (slow as unknown as { locked<T>(fn: () => Promise<T>): Promise<T> }).locked(async () => {
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      slowDone = Date.now();
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    const activated = await other.activate('live-2');
    const otherDone = Date.now();
    await holding;
    expect(activated).toEqual({ active: 'live-2', previous: null });
    expect(slowDone).toBeGreaterThan(0);
    expect(otherDone).toBeGreaterThanOrEqual(slowDone);
    await expect(readFile(path.join(dir, '.lock'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('database store tables (migration 0012)', () => {
  it('before `db migrate up`: a one-line NOT_READY saying what to run', async () => {
    const db = await PgliteDb.open();
    try {
      const store = new DatabaseBundleStore(db);
      for (const call of [() => store.list(), () => store.pointers(), () => store.activate('v1'), async () => store.publish(await testBundle('v1'))]) {
        await expect(call()).rejects.toMatchObject({ code: 'CARACAL_NOT_READY', message: expect.stringContaining('db migrate up') as string });
      }
    } finally {
      await db.close();
    }
  });

  it('published bytes and the history cannot be rewritten, and pointers must name stored revisions', async () => {
    const db = await PgliteDb.open();
    try {
      await migrateUp(db);
      const store = new DatabaseBundleStore(db);
      await store.publish(await testBundle('v1'));
      await store.activate('v1');
      await expect(db.query(`UPDATE policy_bundles SET sha256 = repeat('0', 64)`)).rejects.toThrow(/append-only/);
      await expect(db.query('DELETE FROM policy_bundle_history')).rejects.toThrow(/append-only/);
      await expect(db.query('DELETE FROM policy_bundles')).rejects.toThrow(/append-only/);
      await expect(db.query('TRUNCATE policy_bundles CASCADE')).rejects.toThrow(/append-only/);
      await expect(db.query(`UPDATE policy_bundle_state SET active = 'v2', stack = '{v2}'`)).rejects.toThrow(/foreign key/);
      await expect(db.query(`INSERT INTO policy_bundle_state (id) VALUES (false)`)).rejects.toThrow(/check constraint/);
      expect(await store.pointers()).toMatchObject({ active: { revision: 'v1' } });
    } finally {
      await db.close();
    }
  });
});

import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { readBundleFiles, writeBundleTarball } from '../../src/policy/bundle.js';
import type { BundleStore } from '../../src/policy/bundle-store.js';
import { DEFAULT_BUNDLE as DEFAULT_BUNDLE_FILE } from '../../src/paths.js';

/**
 * The `BundleStore` contract (src/policy/bundle-store.ts), run against every implementation by
 * test/integration/bundle-store.test.ts. Each test uses revisions of its own (a random prefix), so the tests of one
 * suite share one store without seeing each other's bundles — except for the pointers, which are global: tests that
 * move them run in order and assert on what they set.
 */
export interface BundleStoreHarness {
  /** Two handles on the same store (two connections / two objects on one folder), for the concurrency tests. */
  store: BundleStore;
  other: BundleStore;
  close(): Promise<void>;
}

const DEFAULT_BUNDLE = readFileSync(DEFAULT_BUNDLE_FILE);
let defaultFiles: Map<string, Buffer> | undefined;

/** The default bundle under another revision; `variant` changes the bytes (not the revision). */
export async function testBundle(revision: string, variant = ''): Promise<Buffer> {
  defaultFiles ??= await readBundleFiles(DEFAULT_BUNDLE);
  const files = new Map(defaultFiles);
  const manifest = JSON.parse(files.get('.manifest')!.toString('utf8')) as Record<string, unknown>;
  files.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, revision, ...(variant ? { variant } : {}) }), 'utf8'));
  return writeBundleTarball(files);
}

async function refusal(promise: Promise<unknown>): Promise<CaracalError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(CaracalError);
  return err as CaracalError;
}

let counter = 0;
function rev(label: string): string {
  counter += 1;
  return `t${process.pid}-${Date.now().toString(36)}-${counter}-${label}`;
}

export function bundleStoreContract(name: string, open: () => Promise<BundleStoreHarness>): void {
  describe(`BundleStore contract: ${name}`, () => {
    let h: BundleStoreHarness;
    beforeAll(async () => {
      h = await open();
    });
    afterAll(async () => {
      await h?.close();
    });

    it('an empty store lists nothing and has no pointers', async () => {
      // Runs first: nothing is published yet in this harness.
      expect(await h.store.pointers()).toEqual({ active: null, shadow: null });
      const listing = await h.store.list();
      expect(listing.bundles).toEqual([]);
      expect(listing.history).toEqual([]);
      await expect(h.store.rollback()).rejects.toMatchObject({ code: 'CARACAL_CONFLICT' });
    });

    it('publishes a bundle once; the same bytes again are a no-op; fetch returns the bytes', async () => {
      const r = rev('pub');
      const bytes = await testBundle(r);
      const first = await h.store.publish(bytes);
      expect(first).toMatchObject({ revision: r, size: bytes.length, created: true });
      expect(first.sha256).toMatch(/^[0-9a-f]{64}$/);
      const again = await h.other.publish(Buffer.from(bytes));
      expect(again).toEqual({ ...first, created: false });
      expect((await h.other.fetch(r)).equals(bytes)).toBe(true);
      const info = (await h.store.list()).bundles.find((b) => b.revision === r);
      expect(info).toMatchObject({ revision: r, sha256: first.sha256, size: bytes.length, signed: false });
      expect(Number.isNaN(Date.parse(info!.publishedAt))).toBe(false);
    });

    it('refuses other bytes under a published revision (409) and keeps the first', async () => {
      const r = rev('conflict');
      const bytes = await testBundle(r);
      await h.store.publish(bytes);
      const err = await refusal(h.other.publish(await testBundle(r, 'other')));
      expect(err.code).toBe('CARACAL_CONFLICT');
      expect(err.statusCode).toBe(409);
      expect(err.message).toContain(r);
      expect((await h.store.fetch(r)).equals(bytes)).toBe(true);
    });

    it('records build metadata and whether the bundle is signed', async () => {
      const r = rev('meta');
      const files = new Map(await readBundleFiles(await testBundle(r)));
      const manifest = JSON.parse(files.get('.manifest')!.toString('utf8')) as Record<string, unknown>;
      files.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, metadata: { caracal: { build_time: '2026-01-02T03:04:05.000Z', opa_version: '1.2.3' } } })));
      // Not a valid signature: the store records its presence, gateways verify it.
      files.set('.signatures.json', Buffer.from('{"signatures":[]}'));
      await h.store.publish(writeBundleTarball(files));
      const info = (await h.store.list()).bundles.find((b) => b.revision === r);
      expect(info).toMatchObject({ buildTime: '2026-01-02T03:04:05.000Z', opaVersion: '1.2.3', signed: true });
    });

    it('refuses what is not a loadable bundle, each with a one-line validation error', async () => {
      const good = await testBundle(rev('good'));
      const noWasm = new Map(await readBundleFiles(good));
      noWasm.delete('policy.wasm');
      const noRevision = new Map(await readBundleFiles(good));
      noRevision.set('.manifest', Buffer.from(JSON.stringify({ roots: [''] })));
      const cases: [string, Buffer, RegExp][] = [
        ['garbage', Buffer.from('this is not a bundle at all, just some text'), /not a gzip/],
        ['empty', Buffer.alloc(0), /not a gzip/],
        ['truncated gzip', good.subarray(0, Math.floor(good.length / 2)), /truncated|corrupt/],
        ['gzip of a non-tar', gzipSync(Buffer.from('hello world '.repeat(100))), /tar/],
        ['tar without policy.wasm', writeBundleTarball(noWasm), /policy\.wasm/],
        ['no revision', writeBundleTarball(noRevision), /no revision/],
        ['revision ../x', await testBundle('../x'), /revision/],
        ['revision with a slash', await testBundle('a/b'), /revision/],
        ['revision too long', await testBundle('a'.repeat(129)), /revision/],
      ];
      for (const [label, bytes, pattern] of cases) {
        const err = await refusal(h.store.publish(bytes));
        expect(err.code, label).toBe('CARACAL_VALIDATION');
        expect(err.message, label).toMatch(pattern);
        expect(err.message, label).not.toContain('\n');
      }
      const listing = await h.store.list();
      expect(listing.bundles.some((b) => b.revision.includes('..') || b.revision.includes('/'))).toBe(false);
    });

    it('refuses a bundle larger than the file cap before reading it', async () => {
      const err = await refusal(h.store.publish(Buffer.alloc(64 * 1024 * 1024 + 1, 0x1f)));
      expect(err.code).toBe('CARACAL_VALIDATION');
      expect(err.message).toMatch(/more than/);
    });

    it('lists bundles newest first', async () => {
      const [a, b, c] = [rev('la'), rev('lb'), rev('lc')];
      for (const r of [a, b, c]) await h.store.publish(await testBundle(r));
      const order = (await h.other.list()).bundles.map((x) => x.revision).filter((x) => [a, b, c].includes(x));
      expect(order).toEqual([c, b, a]);
    });

    it('fetch and activate of an unknown or malformed revision: 404 / 400', async () => {
      const missing = rev('missing');
      expect((await refusal(h.store.fetch(missing))).code).toBe('CARACAL_NOT_FOUND');
      const err = await refusal(h.store.activate(missing));
      expect(err.code).toBe('CARACAL_NOT_FOUND');
      expect(err.statusCode).toBe(404);
      expect((await refusal(h.store.setShadow(missing))).code).toBe('CARACAL_NOT_FOUND');
      for (const bad of ['../x', '../../etc/passwd', '', '.hidden', 'a b', 'x'.repeat(200)]) {
        expect((await refusal(h.store.fetch(bad))).code, bad).toBe('CARACAL_VALIDATION');
        expect((await refusal(h.store.activate(bad))).code, bad).toBe('CARACAL_VALIDATION');
        expect((await refusal(h.store.setShadow(bad))).code, bad).toBe('CARACAL_VALIDATION');
      }
    });

    it('activations form a stack: A→B→C, rollback → B, → A, then an error; pointers carry sha256; history records it', async () => {
      const [a, b, c] = [rev('sa'), rev('sb'), rev('sc')];
      const sha: Record<string, string> = {};
      for (const r of [a, b, c]) sha[r] = (await h.store.publish(await testBundle(r))).sha256;
      const before = (await h.store.pointers()).active?.revision ?? null;
      const seqBefore = (await h.store.list()).history[0]?.seq ?? 0;

      expect(await h.store.activate(a, { actor: 'tester' })).toEqual({ active: a, previous: before });
      expect(await h.other.activate(b)).toEqual({ active: b, previous: a });
      expect(await h.store.activate(c)).toEqual({ active: c, previous: b });
      expect((await h.other.pointers()).active).toEqual({ revision: c, sha256: sha[c] });
      // Activating the active revision again changes nothing.
      expect(await h.store.activate(c)).toEqual({ active: c, previous: c });

      expect(await h.store.rollback()).toEqual({ active: b, previous: c });
      expect((await h.store.pointers()).active).toEqual({ revision: b, sha256: sha[b] });
      expect(await h.other.rollback({ actor: 'tester' })).toEqual({ active: a, previous: b });
      expect((await h.other.pointers()).active).toEqual({ revision: a, sha256: sha[a] });
      if (before === null) {
        // A was the first activation of this store: nothing under it.
        const err = await refusal(h.store.rollback());
        expect(err.code).toBe('CARACAL_CONFLICT');
        expect(err.message).toContain(a);
        expect((await h.store.pointers()).active?.revision).toBe(a);
      }

      const history = (await h.store.list()).history.filter((e) => e.seq > seqBefore);
      expect(history.map((e) => [e.action, e.revision, e.previous])).toEqual([
        ['rollback', a, b],
        ['rollback', b, c],
        ['activate', c, b],
        ['activate', b, a],
        ['activate', a, before],
      ]);
      expect(history.map((e) => e.seq)).toEqual([seqBefore + 5, seqBefore + 4, seqBefore + 3, seqBefore + 2, seqBefore + 1]);
      expect(history[0]!.actor).toBe('tester');
      expect(history[4]!.actor).toBe('tester');
      expect(history[1]!.actor).toBeNull();
      for (const e of history) expect(Number.isNaN(Date.parse(e.at))).toBe(false);
    });

    it('the shadow is independent of the stack; null clears it', async () => {
      const [s, t] = [rev('sh1'), rev('sh2')];
      const shaS = (await h.store.publish(await testBundle(s))).sha256;
      await h.store.publish(await testBundle(t));
      const active = (await h.store.pointers()).active;
      const prevShadow = (await h.store.pointers()).shadow?.revision ?? null;

      expect(await h.store.setShadow(s, { actor: 'ops' })).toEqual({ shadow: s, previous: prevShadow });
      expect(await h.other.pointers()).toEqual({ active, shadow: { revision: s, sha256: shaS } });
      expect(await h.other.setShadow(t)).toEqual({ shadow: t, previous: s });
      // Activations and rollbacks leave the shadow where it is.
      await h.store.activate(s);
      expect((await h.store.pointers()).shadow?.revision).toBe(t);
      await h.store.rollback();
      expect((await h.store.pointers()).shadow?.revision).toBe(t);
      expect((await h.store.pointers()).active).toEqual(active);

      expect(await h.store.setShadow(null)).toEqual({ shadow: null, previous: t });
      expect((await h.store.pointers()).shadow).toBeNull();
      // Clearing again changes nothing and records nothing.
      const seq = (await h.store.list()).history[0]!.seq;
      expect(await h.store.setShadow(null)).toEqual({ shadow: null, previous: null });
      const history = (await h.store.list()).history;
      expect(history[0]!.seq).toBe(seq);
      expect(history[0]).toMatchObject({ action: 'unshadow', revision: null, previous: t });
      expect(history.find((e) => e.action === 'shadow' && e.revision === s)).toMatchObject({ actor: 'ops', previous: prevShadow });
    });

    it('two handles activating in parallel leave a consistent state', async () => {
      const revs = [rev('ca'), rev('cb'), rev('cc'), rev('cd')];
      const sha: Record<string, string> = {};
      for (const r of revs) sha[r] = (await h.store.publish(await testBundle(r))).sha256;
      const seqBefore = (await h.store.list()).history[0]?.seq ?? 0;
      const rounds = 8;
      const calls: Promise<unknown>[] = [];
      for (let i = 0; i < rounds; i++) {
        calls.push(h.store.activate(revs[i % 4]!), h.other.activate(revs[(i + 1) % 4]!), h.store.setShadow(revs[(i + 2) % 4]!));
      }
      const outcomes = await Promise.allSettled(calls);
      expect(outcomes.filter((o) => o.status === 'rejected')).toEqual([]);

      const listing = await h.other.list();
      const changes = listing.history.filter((e) => e.seq > seqBefore).reverse();
      // Gapless, in order, and each change starts where the one before ended: no lost update.
      expect(changes.map((e) => e.seq)).toEqual(changes.map((_, i) => seqBefore + 1 + i));
      const activations = changes.filter((e) => e.action === 'activate');
      for (let i = 1; i < activations.length; i++) expect(activations[i]!.previous).toBe(activations[i - 1]!.revision);
      const shadows = changes.filter((e) => e.action === 'shadow');
      for (let i = 1; i < shadows.length; i++) expect(shadows[i]!.previous).toBe(shadows[i - 1]!.revision);
      const last = activations[activations.length - 1]!;
      expect(listing.active).toEqual({ revision: last.revision, sha256: sha[last.revision!] });
      expect(listing.shadow?.revision).toBe(shadows[shadows.length - 1]?.revision ?? listing.shadow?.revision);

      // The stack is consistent too: rolling back walks the activations backwards.
      const rolled = await h.store.rollback();
      expect(rolled).toEqual({ active: activations[activations.length - 2]!.revision, previous: last.revision });
    });

    it('parallel publishes of one revision: one creates it, the rest are no-ops; other bytes conflict', async () => {
      const r = rev('pp');
      const bytes = await testBundle(r);
      const other = await testBundle(r, 'x');
      const results = await Promise.allSettled([h.store.publish(bytes), h.other.publish(bytes), h.store.publish(bytes), h.other.publish(other)]);
      const created = results.filter((x) => x.status === 'fulfilled' && x.value.created).length;
      const conflicts = results.filter((x) => x.status === 'rejected' && (x.reason as CaracalError).code === 'CARACAL_CONFLICT').length;
      const stored = await h.store.fetch(r);
      if (stored.equals(bytes)) {
        expect(created).toBe(1);
        expect(conflicts).toBe(1);
      } else {
        // The other bytes won the race: all three identical publishes conflict.
        expect(stored.equals(other)).toBe(true);
        expect(created).toBe(1);
        expect(conflicts).toBe(3);
      }
    });
  });
}

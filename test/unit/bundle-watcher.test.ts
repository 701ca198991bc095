/**
 * The bundle watcher on its own (src/policy/bundle-watcher.ts): what it refuses, what it swaps,
 * the metrics it moves. The committed default bundle is the good one; no opa build needed.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ConfigSchema } from '../../src/config/schema.js';
import { createLogger } from '../../src/logging/logger.js';
import { GatewayMetrics } from '../../src/metrics/metrics.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import { type BundleSource, StoreBundleSource } from '../../src/policy/bundle-sources.js';
import { DirectoryBundleStore } from '../../src/policy/bundle-store-dir.js';
import { BundleWatcher } from '../../src/policy/bundle-watcher.js';
import { readBundleFiles, signBundle, writeBundleTarball } from '../../src/policy/bundle.js';
import { parseSigningKey } from '../../src/policy/signing.js';

/** The default bundle's files with another revision in the manifest (optionally other edits). */
async function variant(source: Buffer, revision: string, edit?: (files: Map<string, Buffer>) => void): Promise<Buffer> {
  const files = await readBundleFiles(source);
  files.delete('.signatures.json');
  const manifest = JSON.parse(files.get('.manifest')?.toString('utf8') ?? '{}') as Record<string, unknown>;
  files.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, revision })));
  edit?.(files);
  return writeBundleTarball(files);
}

describe('BundleWatcher', () => {
  let dir: string;
  let original: Buffer;
  let n = 0;
  const logger = createLogger('silent');

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'caracal-watcher-'));
    original = await readFile(DEFAULT_BUNDLE);
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  async function install(file: string, bytes: Buffer): Promise<void> {
    const tmp = `${file}.${n++}.tmp`;
    await writeFile(tmp, bytes);
    await rename(tmp, file);
  }

  const errorCount = async (metrics: GatewayMetrics) => (await metrics.bundleLoadErrors.get()).values.reduce((s, v) => s + v.value, 0);
  const activeRevisions = async (metrics: GatewayMetrics) => (await metrics.bundleInfo.get()).values.filter((v) => v.value === 1).map((v) => v.labels.revision);

  it('config: reload is off by default and at least 100 ms when on', () => {
    const base = { home: dir };
    expect(ConfigSchema.parse(base).policy.reload.intervalMs).toBe(0);
    expect(ConfigSchema.parse({ ...base, policy: { reload: { intervalMs: 250 } } }).policy.reload.intervalMs).toBe(250);
    expect(() => ConfigSchema.parse({ ...base, policy: { reload: { intervalMs: 50 } } })).toThrow(/at least 100/);
    expect(() => ConfigSchema.parse({ ...base, policy: { reload: { intervalMs: -1 } } })).toThrow();
  });

  it('swaps a changed bundle, ignores an unchanged one, refuses non-WASM content and keeps the last good engine', async () => {
    const file = path.join(dir, 'plain.tar.gz');
    await install(file, await variant(original, 'rev-a'));
    const metrics = new GatewayMetrics(false);
    const watcher = await BundleWatcher.open({ file, intervalMs: 60_000, logger, metrics });
    try {
      expect(watcher.holder.current.revision).toBe('rev-a');
      expect(await activeRevisions(metrics)).toEqual(['rev-a']);
      expect(await watcher.check()).toBe('unchanged');

      await install(file, await variant(original, 'rev-b'));
      expect(await watcher.check()).toBe('swapped');
      expect(watcher.holder.current.revision).toBe('rev-b');
      expect(await activeRevisions(metrics)).toEqual(['rev-b']);

      // A bundle without the WASM module (a rego-only bundle).
      const good = watcher.holder.current;
      await install(file, await variant(original, 'rev-c', (files) => files.delete('policy.wasm')));
      expect(await watcher.check()).toBe('refused');
      expect(watcher.holder.current).toBe(good);
      expect(watcher.status().lastLoadError?.message).toMatch(/no WASM module/);
      expect(await errorCount(metrics)).toBe(1);
      // The same refused content is not tried (nor counted) again.
      expect(await watcher.check()).toBe('unchanged');
      expect(await errorCount(metrics)).toBe(1);

      // A missing file: refused, retried.
      await rm(file);
      expect(await watcher.check()).toBe('refused');
      expect(watcher.holder.current).toBe(good);
      expect(watcher.status().lastLoadError?.message).toMatch(/cannot read/);

      // Back to the served content: nothing to load, the error is cleared.
      await install(file, await variant(original, 'rev-b'));
      expect(await watcher.check()).toBe('unchanged');
      expect(watcher.status()).toMatchObject({ revision: 'rev-b', lastLoadError: null });
    } finally {
      await watcher.stop();
    }
  });

  it('with public keys configured, refuses an unsigned or foreign-signed bundle', async () => {
    const pair = () => {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      return { priv: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), pub: publicKey.export({ format: 'pem', type: 'spki' }).toString() };
    };
    const ours = pair();
    const theirs = pair();
    const pubFile = path.join(dir, 'ours.pub.pem');
    await writeFile(pubFile, ours.pub);
    const file = path.join(dir, 'signed.tar.gz');
    const unsigned = path.join(dir, 'unsigned.tar.gz');
    const signedBy = async (pem: string, revision: string) => {
      await writeFile(unsigned, await variant(original, revision));
      const out = path.join(dir, `signed-${revision}.tar.gz`);
      await signBundle({ inFile: unsigned, outFile: out, key: parseSigningKey(pem, 'default') });
      return readFile(out);
    };
    await install(file, await signedBy(ours.priv, 'signed-1'));
    const metrics = new GatewayMetrics(false);
    const watcher = await BundleWatcher.open({
      file,
      intervalMs: 60_000,
      signing: { publicKeys: [{ keyId: 'default', path: pubFile }], allowUnsigned: false },
      logger,
      metrics,
    });
    try {
      expect(watcher.holder.current.revision).toBe('signed-1');

      await install(file, await variant(original, 'unsigned-2'));
      expect(await watcher.check()).toBe('refused');
      expect(watcher.holder.current.revision).toBe('signed-1');

      await install(file, await signedBy(theirs.priv, 'foreign-3'));
      expect(await watcher.check()).toBe('refused');
      expect(watcher.holder.current.revision).toBe('signed-1');
      expect(await errorCount(metrics)).toBe(2);

      await install(file, await signedBy(ours.priv, 'signed-4'));
      expect(await watcher.check()).toBe('swapped');
      expect(watcher.holder.current.revision).toBe('signed-4');
      expect(watcher.status().lastLoadError).toBeNull();
    } finally {
      await watcher.stop();
    }
  });

  it('on a store: starts on the fallback when the active revision is refused, loads the shadow, swaps each slot on its own', async () => {
    const store = new DirectoryBundleStore(path.join(dir, 'store'));
    const fallback = path.join(dir, 'fallback.tar.gz');
    await install(fallback, await variant(original, 'fallback-1'));
    // A bundle the store takes (it has /policy.wasm) that no gateway can load: the WASM is not WebAssembly.
    const broken = await variant(original, 'broken-1', (files) => files.set('policy.wasm', Buffer.from('not wasm')));
    await store.publish(broken);
    await store.publish(await variant(original, 'good-1'));
    await store.publish(await variant(original, 'good-2'));
    await store.activate('broken-1');
    await store.setShadow('good-2');
    const metrics = new GatewayMetrics(false);
    const watcher = await BundleWatcher.open({ source: new StoreBundleSource(store), fallbackFile: fallback, intervalMs: 60_000, logger, metrics });
    try {
      expect(watcher.status()).toMatchObject({ revision: 'fallback-1', shadowRevision: 'good-2', shadowLoadError: null, source: store.description });
      expect(watcher.status().lastLoadError?.message).toMatch(/WASM/);
      expect(watcher.holder.shadow?.revision).toBe('good-2');
      expect(await errorCount(metrics)).toBe(1);
      expect(await activeRevisions(metrics)).toEqual(['fallback-1']);
      expect((await metrics.shadowBundleInfo.get()).values.map((v) => v.labels.revision)).toEqual(['good-2']);
      // Nothing moved: nothing fetched, nothing counted again.
      expect(await watcher.check()).toBe('unchanged');
      expect(await errorCount(metrics)).toBe(1);

      await store.activate('good-1');
      expect(await watcher.check()).toBe('swapped');
      expect(watcher.status()).toMatchObject({ revision: 'good-1', lastLoadError: null, shadowRevision: 'good-2' });

      // A refused shadow keeps the previous one; a cleared shadow is null.
      const shadow = watcher.holder.shadow;
      await store.setShadow('broken-1');
      expect(await watcher.check()).toBe('refused');
      expect(watcher.holder.shadow).toBe(shadow);
      expect(watcher.status().shadowLoadError?.message).toMatch(/WASM/);
      expect(watcher.status().lastLoadError).toBeNull();
      await store.setShadow(null);
      expect(await watcher.check()).toBe('swapped');
      expect(watcher.holder.shadow).toBeNull();
      expect(watcher.status()).toMatchObject({ shadowRevision: null, shadowSha256: null, shadowLoadError: null });
      expect((await metrics.shadowBundleInfo.get()).values).toEqual([]);
      expect(watcher.holder.current.revision).toBe('good-1');
    } finally {
      await watcher.stop();
    }
  });

  it('a refused revision is tried again after retryRefusedMs (a load that failed for a passing reason); a lasting refusal is counted once', async () => {
    const store = new DirectoryBundleStore(path.join(dir, 'retry-store'));
    await store.publish(await variant(original, 'retry-1'));
    await store.activate('retry-1');
    const inner = new StoreBundleSource(store);
    // The first hand-over of the active revision arrives damaged; the store itself is fine.
    let handed = 0;
    const flaky: BundleSource = {
      kind: 'store',
      description: inner.description,
      forget: (slot) => inner.forget(slot),
      async poll() {
        const polled = await inner.poll();
        if (polled.active.kind !== 'bytes') return polled;
        return handed++ === 0 ? { ...polled, active: { ...polled.active, bytes: Buffer.from('damaged on the way') } } : polled;
      },
    };
    const fallback = path.join(dir, 'retry-fallback.tar.gz');
    await install(fallback, await variant(original, 'fallback-r'));
    const metrics = new GatewayMetrics(false);
    const watcher = await BundleWatcher.open({ source: flaky, fallbackFile: fallback, intervalMs: 60_000, retryRefusedMs: 200, logger, metrics });
    try {
      expect(watcher.status()).toMatchObject({ revision: 'fallback-r', awaitingStore: true });
      // Within the retry delay nothing is fetched again.
      expect(await watcher.check()).toBe('unchanged');
      expect(handed).toBe(1);
      await new Promise((resolve) => setTimeout(resolve, 250));
      expect(await watcher.check()).toBe('swapped');
      expect(handed).toBe(2);
      expect(watcher.status()).toMatchObject({ revision: 'retry-1', lastLoadError: null, awaitingStore: false });

      // A revision that can never load: tried again after the delay, refused again, counted and logged once.
      await store.publish(await variant(original, 'never-1', (files) => files.set('policy.wasm', Buffer.from('not wasm'))));
      await store.activate('never-1');
      expect(await watcher.check()).toBe('refused');
      const errors = await errorCount(metrics);
      await new Promise((resolve) => setTimeout(resolve, 250));
      expect(await watcher.check()).toBe('refused');
      expect(await errorCount(metrics)).toBe(errors);
      expect(watcher.holder.current.revision).toBe('retry-1');
    } finally {
      await watcher.stop();
    }
  });

  it('polls on its own and stops', async () => {
    const file = path.join(dir, 'polled.tar.gz');
    await install(file, await variant(original, 'poll-1'));
    const watcher = await BundleWatcher.open({ file, intervalMs: 100, logger, metrics: new GatewayMetrics(false) });
    watcher.start();
    try {
      await install(file, await variant(original, 'poll-2'));
      const deadline = Date.now() + 5_000;
      while (watcher.holder.current.revision !== 'poll-2' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(watcher.holder.current.revision).toBe('poll-2');
    } finally {
      await watcher.stop();
    }
    await install(file, await variant(original, 'poll-3'));
    await new Promise((r) => setTimeout(r, 300));
    expect(watcher.holder.current.revision).toBe('poll-2');
  });
});

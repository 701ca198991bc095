/**
 * Hot swap of the policy bundle (src/policy/bundle-watcher.ts): the bundle file is replaced under
 * load and every response names the revision of the engine that decided it; a bad bundle is
 * refused while the last good one keeps serving.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { buildBundle, readBundleFiles, writeBundleTarball } from '../../src/policy/bundle.js';
import { POLICIES_DIR } from '../../src/paths.js';
import { createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';
import { requireServices } from '../helpers/services.js';
import { eventually } from '../helpers/eventually.js';

const ALLOW = 'hot-swap-allow';
const DENY = 'hot-swap-deny';

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

interface Observed {
  status: number;
  revision: string | undefined;
  decisionId: string | undefined;
  reasons: string[];
}

describe('policy bundle hot swap (embedded backend)', () => {
  let dir: string;
  let live: string;
  let allowBytes: Buffer;
  let denyBytes: Buffer;
  let h: Harness;
  let token: string;
  let swapCounter = 0;

  /** Replaces the live bundle atomically (write a temporary file, rename over). */
  async function install(bytes: Buffer): Promise<void> {
    const tmp = path.join(dir, `live.${swapCounter++}.tmp`);
    await writeFile(tmp, bytes);
    await rename(tmp, live);
  }

  async function call(): Promise<Observed> {
    const response = await h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/hot', headers: { authorization: `Bearer ${token}` } });
    const revision = response.headers['x-caracal-bundle-revision'];
    const decisionId = response.headers['x-caracal-decision-id'];
    let reasons: string[] = [];
    if (response.statusCode === 403) reasons = ((response.json() as { error?: { reasons?: string[] }; reasons?: string[] }).error?.reasons ?? (response.json() as { reasons?: string[] }).reasons ?? []);
    return { status: response.statusCode, revision: typeof revision === 'string' ? revision : undefined, decisionId: typeof decisionId === 'string' ? decisionId : undefined, reasons };
  }

  async function ready(): Promise<{ statusCode: number; body: { bundle_revision: string; checks: { policy: { ok: boolean; revision?: string; last_load_error?: { message: string; sha256: string | null } } } } }> {
    const response = await h.assembled.gateway.app.inject({ method: 'GET', url: '/ready' });
    return { statusCode: response.statusCode, body: response.json() };
  }


  /** Waits until the watcher serves exactly `bytes` (the file holds them and they were loaded). */
  async function settledOn(bytes: Buffer): Promise<void> {
    const sha = sha256(bytes);
    // check() runs after any poll under way, so this sees the file as it is now.
    await h.assembled.bundleWatcher!.check();
    expect(h.assembled.bundleWatcher!.status().sha256).toBe(sha);
  }

  async function loadErrors(): Promise<number> {
    return (await h.assembled.metrics.bundleLoadErrors.get()).values.reduce((sum, v) => sum + v.value, 0);
  }

  beforeAll(async () => {
    const opaBin = process.env.CARACAL_OPA_BIN ?? requireServices().opaBin;
    dir = await mkdtemp(path.join(os.tmpdir(), 'caracal-hot-swap-'));
    // One opa build. The denying revision is the same WASM with bundle data that fills the
    // policy's extension point `data.caracal.authz.extra_deny_reasons` (any member denies).
    const built = await buildBundle({ opaBin, policiesDir: POLICIES_DIR, outFile: path.join(dir, 'allow.tar.gz'), revision: ALLOW });
    allowBytes = await readFile(built.outFile);
    const files = await readBundleFiles(allowBytes);
    const manifest = JSON.parse(files.get('.manifest')!.toString('utf8')) as Record<string, unknown>;
    files.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, revision: DENY })));
    files.set('data.json', Buffer.from(JSON.stringify({ caracal: { authz: { extra_deny_reasons: ['hot_swap_deny'] } } })));
    denyBytes = writeBundleTarball(files);

    live = path.join(dir, 'live.tar.gz');
    await install(allowBytes);
    h = await createHarness({
      configOverrides: {
        policy: { bundlePath: live, reload: { intervalMs: 100 } },
        // The load below is one agent's: its per-principal rate limit is not under test here.
        gateway: {
          limits: {
            unauthenticatedPerSource: { ratePerSecond: 100_000, burst: 100_000 },
            perPrincipal: { maxConcurrent: 64, rate: { ratePerSecond: 100_000, burst: 100_000 } },
          },
        },
      },
    });
    const agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
    token = await h.token(agent);
  }, 120_000);

  afterAll(async () => {
    await h?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('starts on the bundle file with the watcher on and reports the revision', async () => {
    expect(h.assembled.bundleWatcher).toBeDefined();
    const first = await call();
    expect(first).toMatchObject({ status: 200, revision: ALLOW });
    const r = await ready();
    expect(r.statusCode).toBe(200);
    expect(r.body.bundle_revision).toBe(ALLOW);
    expect(r.body.checks.policy).toMatchObject({ ok: true, revision: ALLOW });
    expect(r.body.checks.policy.last_load_error).toBeUndefined();
  });

  it('swaps every 100 ms under load: no failures, each response names the revision that decided it', async () => {
    const observed: Observed[] = [];
    let stop = false;
    const swapper = (async () => {
      const started = Date.now();
      for (let i = 0; Date.now() - started < 3_000; i++) {
        await install(i % 2 === 0 ? denyBytes : allowBytes);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      stop = true;
    })();
    const workers = Array.from({ length: 10 }, async () => {
      // Bounded: 10 in flight, a short pause between calls (the decision events are read back below).
      while (!stop) {
        observed.push(await call());
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    });
    await Promise.all([swapper, ...workers]);

    expect(observed.length).toBeGreaterThan(50);
    const failures = observed.filter((o) => o.status !== 200 && o.status !== 403);
    expect(failures).toEqual([]);
    const mismatched = observed.filter((o) => (o.status === 200 ? o.revision !== ALLOW : o.revision !== DENY || !o.reasons.includes('hot_swap_deny')));
    expect(mismatched).toEqual([]);
    const allowed = observed.filter((o) => o.status === 200).length;
    const denied = observed.filter((o) => o.status === 403).length;
    expect(allowed).toBeGreaterThan(0);
    expect(denied).toBeGreaterThan(0);
    expect(await loadErrors()).toBe(0);

    // The decision events carry the same engine's revision as the header.
    const byId = new Map(observed.map((o) => [o.decisionId!, o]));
    const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (ds) => ds.filter((d) => byId.has(d.decision_id)).length >= byId.size, 45_000);
    const ours = decisions.filter((d) => byId.has(d.decision_id));
    expect(ours.length).toBe(byId.size);
    for (const d of ours) {
      const o = byId.get(d.decision_id)!;
      expect({ id: d.decision_id, revision: d.bundle_revision, allow: d.allow }).toEqual({ id: d.decision_id, revision: o.revision, allow: o.status === 200 });
    }

    // Settle on the allowing revision (a load of an earlier file may still be under way: wait
    // until the watcher serves exactly these bytes); the info gauge names only the active one.
    await install(allowBytes);
    await settledOn(allowBytes);
    expect(await call()).toMatchObject({ status: 200, revision: ALLOW });
    const info = (await h.assembled.metrics.bundleInfo.get()).values;
    expect(info.filter((v) => v.value === 1).map((v) => v.labels.revision)).toEqual([ALLOW]);
  }, 90_000);

  it('refuses a truncated or garbage bundle written in place; the last good revision keeps serving', async () => {
    const before = await loadErrors();
    // Truncated in place (not atomic): the gzip stream ends early.
    const truncated = denyBytes.subarray(0, Math.floor(denyBytes.length / 2));
    await writeFile(live, truncated);
    let r = await eventually(ready, (x) => x.body.checks.policy.last_load_error?.sha256 === sha256(truncated));
    expect(r.body.checks.policy.last_load_error?.sha256).toBe(sha256(truncated));
    expect(r.statusCode).toBe(200);
    expect(r.body.checks.policy).toMatchObject({ ok: true, revision: ALLOW });
    expect(r.body.checks.policy.last_load_error?.message).toMatch(/bundle/);
    expect(r.body.bundle_revision).toBe(ALLOW);
    expect(await call()).toMatchObject({ status: 200, revision: ALLOW });
    const afterTruncated = await loadErrors();
    expect(afterTruncated).toBeGreaterThan(before);

    // Not a bundle at all.
    const garbage = Buffer.from('this is not a policy bundle\n'.repeat(10));
    await writeFile(live, garbage);
    r = await eventually(ready, (x) => x.body.checks.policy.last_load_error?.sha256 === sha256(garbage));
    expect(r.body.checks.policy.last_load_error?.message).toMatch(/not a gzip/);
    expect(r.body.checks.policy).toMatchObject({ ok: true, revision: ALLOW });
    expect(await call()).toMatchObject({ status: 200, revision: ALLOW });
    expect(await loadErrors()).toBeGreaterThan(afterTruncated);
    const info = (await h.assembled.metrics.bundleInfo.get()).values;
    expect(info.filter((v) => v.value === 1).map((v) => v.labels.revision)).toEqual([ALLOW]);

    // A good bundle again: swapped in, the error cleared.
    await install(denyBytes);
    await settledOn(denyBytes);
    expect(await call()).toMatchObject({ status: 403, revision: DENY });
    r = await ready();
    expect(r.body.checks.policy.revision).toBe(DENY);
    expect(r.body.checks.policy.last_load_error).toBeUndefined();
  }, 60_000);
});

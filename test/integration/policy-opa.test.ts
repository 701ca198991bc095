import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual, promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { buildBundle, gitRevision, readBundle } from '../../src/policy/bundle.js';
import { type Decision, type DecisionInput, PolicyEngine } from '../../src/policy/engine.js';
import { DEFAULT_BUNDLE, POLICIES_DIR } from '../../src/paths.js';
import { randomName, requireServices } from '../helpers/services.js';
import { loadFixtures, validInput } from '../helpers/fixtures.js';

const execFileAsync = promisify(execFile);

const fixtures = await loadFixtures();

/** `opa eval` of the source, the reference interpreter the WASM must agree with. */
async function opaEval(opaBin: string, inputFile: string): Promise<{ allow: boolean; reasons: string[]; policy_ids: string[] }> {
  const { stdout } = await execFileAsync(opaBin, [
    'eval',
    '--format=json',
    '-d',
    path.join(POLICIES_DIR, 'caracal', 'authz.rego'),
    '--input',
    inputFile,
    'data.caracal.authz.decision',
  ]);
  const out = JSON.parse(stdout) as { result?: { expressions: { value: unknown }[] }[] };
  const value = out.result?.[0]?.expressions[0]?.value;
  if (value === undefined) throw new Error(`opa eval returned no decision for ${inputFile}: ${stdout}`);
  return value as { allow: boolean; reasons: string[]; policy_ids: string[] };
}

function plain(d: Decision): { allow: boolean; reasons: string[]; policy_ids: string[] } {
  return { allow: d.allow, reasons: d.reasons, policy_ids: d.policyIds };
}

/** Write a one-file policy folder and build it; returns the bundle path. */
async function buildSnippet(opaBin: string, root: string, rego: string): Promise<string> {
  const dir = path.join(root, randomName('policy'));
  await mkdir(path.join(dir, 'caracal'), { recursive: true });
  await writeFile(path.join(dir, 'caracal', 'authz.rego'), rego);
  const outFile = path.join(dir, 'out', 'bundle.tar.gz');
  await buildBundle({ opaBin, policiesDir: dir, outFile, revision: 'snippet' });
  return outFile;
}

describe('policy bundle with the real opa binary', () => {
  let opaBin: string;
  let tmp: string;
  let fresh: PolicyEngine;
  let freshSha: string;
  const BUILD_TIME = new Date('2026-01-01T00:00:00Z');

  beforeAll(async () => {
    // Fails (never skips) the suite when the services, opa included, were not provided.
    opaBin = requireServices().opaBin;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-policy-opa-'));
    const built = await buildBundle({
      opaBin,
      policiesDir: POLICIES_DIR,
      outFile: path.join(tmp, 'fresh', 'bundle.tar.gz'),
      revision: 'test-fresh',
      // The build time is recorded in the manifest; pinned, the same sources give the same bytes.
      buildTime: BUILD_TIME,
    });
    expect(built.revision).toBe('test-fresh');
    expect(built.sha256).toMatch(/^[0-9a-f]{64}$/);
    freshSha = built.sha256;
    fresh = await PolicyEngine.fromBundleFile(built.outFile);
    expect(fresh.revision).toBe('test-fresh');
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('builds reproducibly', async () => {
    const again = await buildBundle({
      opaBin,
      policiesDir: POLICIES_DIR,
      outFile: path.join(tmp, 'again', 'bundle.tar.gz'),
      revision: 'test-fresh',
      // The build time is recorded in the manifest; pinned, the same sources give the same bytes.
      buildTime: BUILD_TIME,
    });
    expect(again.sha256).toBe(freshSha);
  });

  it('bundles only the Rego sources, not tests, fixtures or docs', async () => {
    const b = await readBundle(path.join(tmp, 'fresh', 'bundle.tar.gz'));
    const names = [...b.files.keys()];
    expect(names.filter((n) => n.endsWith('_test.rego') || n.includes('fixtures') || n.endsWith('.md'))).toEqual([]);
    expect(names).toContain('caracal/authz.rego');
    expect(b.manifest.wasm).toEqual([{ entrypoint: 'caracal/authz/decision', module: '/policy.wasm' }]);
  });

  it('WASM, opa eval and the fixtures agree on every fixture', async () => {
    const inputs = path.join(tmp, 'inputs');
    await mkdir(inputs, { recursive: true });
    const mismatches: string[] = [];
    for (const [i, f] of fixtures.entries()) {
      const file = path.join(inputs, `${i}.json`);
      await writeFile(file, JSON.stringify(f.input));
      const wasm = fresh.evaluate(f.input as DecisionInput);
      const interp = await opaEval(opaBin, file);
      expect(wasm.outcome, f.name).toBe('result');
      if (!isDeepStrictEqual(plain(wasm), interp)) {
        mismatches.push(`${f.name}: wasm ${JSON.stringify(plain(wasm))} vs opa eval ${JSON.stringify(interp)}`);
      }
      expect({ allow: interp.allow, reasons: interp.reasons }, f.name).toEqual({
        allow: f.expected.allow,
        reasons: f.expected.reasons,
      });
      if (f.expected.policy_ids !== undefined) expect(interp.policy_ids, f.name).toEqual(f.expected.policy_ids);
    }
    expect(mismatches).toEqual([]);
  });

  it('the committed default bundle is up to date with policies/', async () => {
    const committed = await readBundle(DEFAULT_BUNDLE);
    const freshBundle = await readBundle(path.join(tmp, 'fresh', 'bundle.tar.gz'));
    // Same Rego modules as a fresh build (opa stores them normalised: comments dropped, so
    // comment-only edits do not make the bundle stale) ...
    const rego = (files: ReadonlyMap<string, Buffer>): Map<string, string> =>
      new Map([...files].filter(([name]) => name.endsWith('.rego')).map(([name, body]) => [name, body.toString('utf8')]));
    expect(rego(committed.files), 'bundles/default/bundle.tar.gz is stale: rebuild it (see bundles/README.md)').toEqual(
      rego(freshBundle.files),
    );
    // ... covering every non-test .rego under policies/ but the examples (rule sets teams bundle on their own) ...
    const sources: string[] = [];
    for (const entry of await readdir(POLICIES_DIR, { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith('.rego') || entry.name.endsWith('_test.rego')) continue;
      const relative = path.relative(POLICIES_DIR, path.join(entry.parentPath, entry.name)).split(path.sep).join('/');
      if (!relative.startsWith('examples/')) sources.push(relative);
    }
    expect([...rego(committed.files).keys()].sort()).toEqual(sources.sort());
    // ... and the same decisions as a fresh build.
    const engine = await PolicyEngine.fromBundle(committed);
    for (const f of fixtures) {
      expect(plain(engine.evaluate(f.input as DecisionInput)), f.name).toEqual(plain(fresh.evaluate(f.input as DecisionInput)));
    }
    expect(engine.revision).toMatch(/^[0-9a-f]{40}$/);
  });

  it('an unsupported builtin fails the build with a clear error, not a request', async () => {
    for (const [builtin, expr] of [
      ['http.send', 'http.send({"method": "get", "url": "http://127.0.0.1:1"}).status_code == 200'],
      ['time.now_ns', 'time.now_ns() > 0'],
    ] as const) {
      const rego = `package caracal.authz\n\ndecision := {"allow": ${expr}, "reasons": [], "policy_ids": []}\n`;
      const err = await buildSnippet(opaBin, tmp, rego).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, builtin).toBeInstanceOf(Error);
      expect((err as Error).message).toContain(`undefined function ${builtin}`);
      expect((err as Error).message).toMatch(/WASM target/);
      expect((err as { code?: string }).code).toBe('CARACAL_VALIDATION');
    }
  });

  it('a Rego syntax error fails the build and leaves an existing bundle in place', async () => {
    const dir = path.join(tmp, randomName('broken'));
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'authz.rego'), 'package caracal.authz\n\ndecision := {\n');
    const outFile = path.join(tmp, 'keep', 'bundle.tar.gz');
    await mkdir(path.dirname(outFile), { recursive: true });
    await writeFile(outFile, 'previous');
    await expect(buildBundle({ opaBin, policiesDir: dir, outFile, revision: 'r' })).rejects.toThrow(/opa build failed/);
    expect(await readFile(outFile, 'utf8')).toBe('previous');
    expect((await readdir(path.dirname(outFile))).sort()).toEqual(['bundle.tar.gz']);
  });

  it('a missing opa binary is a dependency error', async () => {
    await expect(
      buildBundle({ opaBin: path.join(tmp, 'no-opa'), policiesDir: POLICIES_DIR, outFile: path.join(tmp, 'x.tar.gz'), revision: 'r' }),
    ).rejects.toMatchObject({ code: 'CARACAL_DEPENDENCY' });
  });

  it('maps an entry point that is undefined to engine_undefined', async () => {
    const file = await buildSnippet(
      opaBin,
      tmp,
      'package caracal.authz\n\ndecision := {"allow": true, "reasons": [], "policy_ids": []} if input.never == 42\n',
    );
    const engine = await PolicyEngine.fromBundleFile(file);
    expect(engine.evaluate(validInput)).toEqual({ allow: false, reasons: ['engine_undefined'], policyIds: [], outcome: 'undefined' });
  });

  it('maps a wrongly shaped result to engine_malformed_result', async () => {
    const file = await buildSnippet(
      opaBin,
      tmp,
      'package caracal.authz\n\ndecision := {"allow": "true", "reasons": "none"}\n',
    );
    const engine = await PolicyEngine.fromBundleFile(file);
    expect(engine.evaluate(validInput)).toMatchObject({ allow: false, reasons: ['engine_malformed_result'], outcome: 'malformed' });
  });

  it('denies a well-formed result whose allow is not exactly true', async () => {
    const file = await buildSnippet(
      opaBin,
      tmp,
      'package caracal.authz\n\ndecision := {"allow": false, "reasons": ["custom"], "policy_ids": []}\n',
    );
    const engine = await PolicyEngine.fromBundleFile(file);
    expect(engine.evaluate(validInput)).toEqual({ allow: false, reasons: ['custom'], policyIds: [], outcome: 'result' });
  });

  it('maps a WASM abort (a thrown string: conflicting values) to engine_error', async () => {
    const file = await buildSnippet(
      opaBin,
      tmp,
      [
        'package caracal.authz',
        '',
        'decision := {"allow": true, "reasons": [], "policy_ids": ["a"]} if input.a',
        '',
        'decision := {"allow": true, "reasons": [], "policy_ids": ["b"]} if input.b',
        '',
      ].join('\n'),
    );
    const engine = await PolicyEngine.fromBundleFile(file);
    const d = engine.evaluate({ ...validInput, a: true, b: true });
    expect(d).toMatchObject({ allow: false, reasons: ['engine_error'], policyIds: [], outcome: 'error' });
    expect(d.error?.message).toMatch(/conflict/);
    // The instance is still usable after an abort.
    expect(engine.evaluate({ ...validInput, a: true }).allow).toBe(true);
  });

  it('denies when the policy runs out of its capped memory inside WASM, and recovers', async () => {
    const file = await buildSnippet(
      opaBin,
      tmp,
      'package caracal.authz\n\ndecision := {"allow": count(numbers.range(1, input.n)) > 0, "reasons": [], "policy_ids": []}\n',
    );
    const engine = await PolicyEngine.fromBundle(await readBundle(file), { initialMemoryPages: 16, maximumMemoryPages: 64 });
    const d = engine.evaluate({ ...validInput, n: 5_000_000 });
    expect(d).toMatchObject({ allow: false, reasons: ['engine_error'], outcome: 'error' });
    expect(engine.wasmMemoryBytes).toBeLessThanOrEqual(64 * 65536);
    expect(engine.evaluate({ ...validInput, n: 10 })).toMatchObject({ allow: true, outcome: 'result' });
  });

  it('keeps memory bounded over 20k evaluations', () => {
    const inputs = fixtures.map((f) => f.input as DecisionInput);
    for (let i = 0; i < 2_000; i++) fresh.evaluate(inputs[i % inputs.length]!);
    const wasmBefore = fresh.wasmMemoryBytes;
    const heapBefore = process.memoryUsage().heapUsed;
    const started = process.hrtime.bigint();
    let allowed = 0;
    for (let i = 0; i < 20_000; i++) if (fresh.evaluate(inputs[i % inputs.length]!).allow) allowed++;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const heapGrowth = process.memoryUsage().heapUsed - heapBefore;
    expect(allowed).toBeGreaterThan(0);
    // opa-wasm resets its heap per evaluation: the linear memory must not grow once warm.
    expect(fresh.wasmMemoryBytes).toBe(wasmBefore);
    // JS garbage is collectable; a leak of even 1 KiB per call would be 20 MiB.
    expect(heapGrowth).toBeLessThan(16 * 1024 * 1024);
    console.log(
      `policy eval: ${Math.round(20_000 / seconds)} evaluations/s over the fixtures, heap growth ${(heapGrowth / 1024 / 1024).toFixed(1)} MiB, WASM memory ${(wasmBefore ?? 0) / 65536} pages`,
    );
  });
});

describe('gitRevision', () => {
  let tmp: string;
  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-gitrev-'));
  });
  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  async function git(cwd: string, ...args: string[]): Promise<string> {
    const { stdout } = await execFileAsync('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid', ...args], { cwd });
    return stdout.trim();
  }

  it('is "uncommitted" outside a repository and before the first commit, the sha after, "-dirty" with changes', async () => {
    const outside = path.join(tmp, 'plain');
    await mkdir(outside);
    expect(await gitRevision(outside)).toBe('uncommitted');

    const repo = path.join(tmp, 'repo');
    await mkdir(path.join(repo, 'policies'), { recursive: true });
    await git(repo, 'init', '-q');
    expect(await gitRevision(repo)).toBe('uncommitted');

    await writeFile(path.join(repo, 'policies', 'a.rego'), 'package a\n');
    await writeFile(path.join(repo, 'other.txt'), 'x');
    await git(repo, 'add', '.');
    await git(repo, 'commit', '-q', '-m', 'init');
    const sha = await git(repo, 'rev-parse', 'HEAD');
    expect(await gitRevision(repo)).toBe(sha);

    await writeFile(path.join(repo, 'other.txt'), 'changed outside policies/');
    expect(await gitRevision(repo)).toBe(sha);

    await writeFile(path.join(repo, 'policies', 'a.rego'), 'package a\n\nx := 1\n');
    expect(await gitRevision(repo)).toBe(`${sha}-dirty`);

    await writeFile(path.join(repo, 'policies', 'new.rego'), 'package b\n');
    await git(repo, 'checkout', '-q', '--', 'policies/a.rego');
    expect(await gitRevision(repo)).toBe(`${sha}-dirty`);
  });
});

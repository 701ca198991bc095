// `caracal bundle build` as a platform team runs it from CI: the revision is the git commit of the policies, a dirty
// tree is refused unless --allow-dirty (which marks the revision), and the manifest records the build time and the
// opa version. Runs the compiled CLI against a throw-away git repository holding a copy of policies/.
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { POLICIES_DIR } from '../../src/paths.js';
import { readBundle } from '../../src/policy/bundle.js';
import { runCli } from '../helpers/processes.js';
import { requireServices } from '../helpers/services.js';

const git = promisify(execFile);

describe('caracal bundle build from git (CLI)', () => {
  let repo: string;
  let commit: string;
  const opa = () => requireServices().opaBin;
  const build = (args: string[], env: Record<string, string> = {}) =>
    runCli(['bundle', 'build', '--policies', path.join(repo, 'policies'), '--opa', opa(), ...args], { ...process.env, CARACAL_ADMIN_URL: '', ...env });
  const expectOneLineError = (result: { code: number; stderr: string }, pattern: RegExp) => {
    expect(result.code, result.stderr).not.toBe(0);
    expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(pattern);
  };

  beforeAll(async () => {
    repo = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-build-'));
    await cp(POLICIES_DIR, path.join(repo, 'policies'), { recursive: true });
    const run = (...args: string[]) => git('git', ['-c', 'user.name=ci', '-c', 'user.email=ci@example.invalid', ...args], { cwd: repo });
    await run('init', '-q');
    await run('add', '.');
    await run('commit', '-q', '-m', 'policies');
    commit = (await run('rev-parse', 'HEAD')).stdout.trim();
  }, 60_000);

  afterAll(async () => {
    await rm(repo, { recursive: true, force: true });
  });

  it('stamps the commit as the revision and records the build time and opa version in the manifest', async () => {
    const out = path.join(repo, 'out') + '/';
    const result = await build(['--out', out, '--json'], { SOURCE_DATE_EPOCH: '1767225600' });
    expect(result.code, result.stderr).toBe(0);
    const printed = JSON.parse(result.stdout) as { outFile: string; revision: string };
    expect(printed).toMatchObject({ outFile: path.join(repo, 'out', 'bundle.tar.gz'), revision: commit });
    const bundle = await readBundle(printed.outFile);
    expect(bundle.manifest.revision).toBe(commit);
    expect(bundle.manifest.roots).toBeDefined();
    expect(bundle.manifest.wasm?.map((w) => w.entrypoint)).toEqual(['caracal/authz/decision']);
    expect(bundle.manifest.metadata).toMatchObject({ caracal: { build_time: '2026-01-01T00:00:00.000Z', opa_version: '1.22.2' } });
    // With SOURCE_DATE_EPOCH the build is reproducible, byte for byte.
    const again = await build(['--out', path.join(repo, 'again.tar.gz')], { SOURCE_DATE_EPOCH: '1767225600' });
    expect(again.code, again.stderr).toBe(0);
    expect((await readFile(path.join(repo, 'again.tar.gz'))).equals(await readFile(printed.outFile))).toBe(true);
  }, 120_000);

  it('refuses uncommitted policies unless --allow-dirty, which marks the revision', async () => {
    const rego = path.join(repo, 'policies', 'caracal', 'authz.rego');
    const original = await readFile(rego, 'utf8');
    await writeFile(rego, `${original}\n# an uncommitted change\n`);
    try {
      expectOneLineError(await build(['--out', path.join(repo, 'dirty.tar.gz')]), /uncommitted changes .*--allow-dirty/);
      const allowed = await build(['--out', path.join(repo, 'dirty.tar.gz'), '--allow-dirty']);
      expect(allowed.code, allowed.stderr).toBe(0);
      expect((await readBundle(path.join(repo, 'dirty.tar.gz'))).manifest.revision).toBe(`${commit}-dirty`);
    } finally {
      await writeFile(rego, original);
    }
  }, 120_000);

  it('refuses policies outside any git commit unless a revision is given', async () => {
    const loose = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-loose-'));
    try {
      await cp(POLICIES_DIR, path.join(loose, 'policies'), { recursive: true });
      const args = ['bundle', 'build', '--policies', path.join(loose, 'policies'), '--opa', opa(), '--out', path.join(loose, 'b.tar.gz')];
      const env = { ...process.env, CARACAL_ADMIN_URL: '', GIT_CEILING_DIRECTORIES: os.tmpdir() };
      expectOneLineError(await runCli(args, env), /not in a git commit/);
      const named = await runCli([...args, '--revision', 'release-7'], env);
      expect(named.code, named.stderr).toBe(0);
      expect((await readBundle(path.join(loose, 'b.tar.gz'))).manifest.revision).toBe('release-7');
    } finally {
      await rm(loose, { recursive: true, force: true });
    }
  }, 120_000);
});

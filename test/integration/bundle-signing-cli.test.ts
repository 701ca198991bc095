import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { DEFAULT_BUNDLE, POLICIES_DIR } from '../../src/paths.js';
import { readBundleFiles, writeBundleTarball } from '../../src/policy/bundle.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { runCli } from '../helpers/processes.js';

const execFileAsync = promisify(execFile);

/** `caracal bundle …` as a user runs it (the compiled bin), one line of output expected. */
async function caracal(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCli(['bundle', ...args], { ...process.env, CARACAL_ADMIN_URL: '' });
}

function expectOneLineError(result: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  expect(result.code, result.stderr).not.toBe(0);
  expect(result.stderr.trimEnd().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(pattern);
}

describe('caracal bundle sign / verify (CLI)', () => {
  let tmp: string;
  const key = (name: string): string => path.join(tmp, name);

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-sign-cli-'));
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    // SEC1 "EC PRIVATE KEY" and PKCS#1 "RSA PRIVATE KEY": what `openssl` writes by default.
    await writeFile(key('ec.pem'), ec.privateKey.export({ type: 'sec1', format: 'pem' }));
    await writeFile(key('ec.pub'), ec.publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(key('rsa.pem'), rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }));
    await writeFile(key('rsa.pub'), rsa.publicKey.export({ type: 'pkcs1', format: 'pem' }));
    await writeFile(key('other.pub'), other.publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(key('x25519.pem'), generateKeyPairSync('x25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await writeFile(key('garbage.pem'), 'not a key\n');
  });

  afterAll(async () => {
    await rm(tmp, { recursive: true, force: true });
  });

  for (const [kind, alg] of [
    ['ec', 'ES256'],
    ['rsa', 'RS256'],
  ] as const) {
    it(`signs with ${alg}; verify exits 0 and the gateway loader accepts the bundle`, async () => {
      const out = path.join(tmp, `${kind}-signed.tar.gz`);
      const signed = await caracal('sign', DEFAULT_BUNDLE, '--key', key(`${kind}.pem`), '--key-id', `ci-${kind}`, '--out', out);
      expect(signed.code, signed.stderr).toBe(0);
      expect(signed.stdout).toMatch(new RegExp(`^signed .* key_id=ci-${kind} alg=${alg} files=4 `));

      const verified = await caracal('verify', out, '--public-key', key(`${kind}.pub`), '--key-id', `ci-${kind}`);
      expect(verified.code, verified.stderr).toBe(0);
      expect(verified.stdout).toMatch(/^verified /);
      await expect(
        PolicyEngine.fromBundleFile(out, { signing: { publicKeys: [{ keyId: `ci-${kind}`, path: key(`${kind}.pub`) }], allowUnsigned: false } }),
      ).resolves.toBeInstanceOf(PolicyEngine);
    });
  }

  it('verify refuses, in one line: a tampered file, another key, a wrong key id, an unsigned bundle', async () => {
    const out = path.join(tmp, 'to-tamper.tar.gz');
    expect((await caracal('sign', DEFAULT_BUNDLE, '--key', key('ec.pem'), '--key-id', 'ci', '--out', out)).code).toBe(0);
    const files = await readBundleFiles(await readFile(out));
    const wasm = Buffer.from(files.get('policy.wasm')!);
    wasm[100] = wasm[100]! ^ 0xff;
    files.set('policy.wasm', wasm);
    const tampered = path.join(tmp, 'tampered.tar.gz');
    await writeFile(tampered, writeBundleTarball(files));

    expectOneLineError(await caracal('verify', tampered, '--public-key', key('ec.pub')), /file hash mismatch: policy\.wasm$/m);
    expectOneLineError(await caracal('verify', out, '--public-key', key('other.pub')), /bad signature/);
    expectOneLineError(await caracal('verify', out, '--public-key', key('ec.pub'), '--key-id', 'prod'), /unknown key id "ci"/);
    expectOneLineError(await caracal('verify', DEFAULT_BUNDLE, '--public-key', key('ec.pub')), /unsigned/);
  });

  it('sign fails with one line for a missing file, a non-bundle, a bad key, an unsupported key type', async () => {
    const out = path.join(tmp, 'never.tar.gz');
    expectOneLineError(await caracal('sign', path.join(tmp, 'missing.tar.gz'), '--key', key('ec.pem'), '--out', out), /cannot read/);
    const notBundle = path.join(tmp, 'not-a-bundle.tar.gz');
    await writeFile(notBundle, 'hello, this is not gzip at all');
    expectOneLineError(await caracal('sign', notBundle, '--key', key('ec.pem'), '--out', out), /not a gzip file/);
    expectOneLineError(await caracal('sign', DEFAULT_BUNDLE, '--key', key('garbage.pem'), '--out', out), /not a PEM private key/);
    expectOneLineError(await caracal('sign', DEFAULT_BUNDLE, '--key', key('missing.pem'), '--out', out), /cannot read .*missing\.pem \(ENOENT\)/);
    expectOneLineError(await caracal('sign', DEFAULT_BUNDLE, '--key', key('x25519.pem'), '--out', out), /unsupported key type x25519/);
    expectOneLineError(await caracal('verify', DEFAULT_BUNDLE, '--public-key', key('missing.pub')), /cannot read/);
  });

  describe('interoperability with the opa binary', () => {
    const opaBin = process.env.CARACAL_OPA_BIN;
    let policies: string;

    beforeAll(async () => {
      // Fails (never skips) without opa, as the other integration suites do.
      if (!opaBin) throw new Error('CARACAL_OPA_BIN is not set; run through `npm test` or source the services env');
      policies = path.join(tmp, 'policies');
      await mkdir(path.join(policies, 'caracal'), { recursive: true });
      await cp(path.join(POLICIES_DIR, 'caracal', 'authz.rego'), path.join(policies, 'caracal', 'authz.rego'));
    });

    it('a bundle signed by `opa build --signing-key` (ES256, no key id) verifies with Caracal and loads in the gateway', async () => {
      const out = path.join(tmp, 'opa-signed.tar.gz');
      // opa only signs in bundle mode (-b); it then names no key id and verifiers use "default".
      await execFileAsync(opaBin!, ['build', '-b', '-t', 'wasm', '-e', 'caracal/authz/decision', '--signing-key', key('ec.pem'), '--signing-alg', 'ES256', '-o', out, '.'], {
        cwd: policies,
      });
      const verified = await caracal('verify', out, '--public-key', key('ec.pub'), '--key-id', 'default');
      expect(verified.code, verified.stderr).toBe(0);
      await expect(
        PolicyEngine.fromBundleFile(out, { signing: { publicKeys: [{ keyId: 'default', path: key('ec.pub') }], allowUnsigned: false } }),
      ).resolves.toBeInstanceOf(PolicyEngine);
      expectOneLineError(await caracal('verify', out, '--public-key', key('other.pub')), /bad signature/);
    });

    it('a bundle signed by Caracal verifies with `opa build --verification-key`, and opa refuses a tampered one', async () => {
      const out = path.join(tmp, 'caracal-signed.tar.gz');
      expect((await caracal('sign', DEFAULT_BUNDLE, '--key', key('ec.pem'), '--key-id', 'ci', '--out', out)).code).toBe(0);
      const opaVerify = (file: string) =>
        execFileAsync(opaBin!, ['build', '-b', file, '--verification-key', key('ec.pub'), '--verification-key-id', 'ci', '--signing-alg', 'ES256', '-o', path.join(tmp, 'opa-out.tar.gz')]);
      await expect(opaVerify(out)).resolves.toBeDefined();

      const files = await readBundleFiles(await readFile(out));
      files.set('data.json', Buffer.from('{"tampered": true}'));
      const tampered = path.join(tmp, 'caracal-signed-tampered.tar.gz');
      await writeFile(tampered, writeBundleTarball(files));
      // opa reports load errors on stdout or stderr depending on the version: check both.
      const failure = (await opaVerify(tampered).then(
        () => expect.unreachable('opa accepted a tampered bundle'),
        (err: unknown) => err,
      )) as { stdout: string; stderr: string };
      expect(`${failure.stdout}${failure.stderr}`).toMatch(/data\.json: digest mismatch/);
    });

    it('Caracal re-signs an opa-signed bundle (the old signature is replaced) and opa accepts the result', async () => {
      const opaSigned = path.join(tmp, 'opa-signed-2.tar.gz');
      await execFileAsync(opaBin!, ['build', '-b', '-t', 'wasm', '-e', 'caracal/authz/decision', '--signing-key', key('rsa.pem'), '-o', opaSigned, '.'], { cwd: policies });
      const out = path.join(tmp, 'resigned.tar.gz');
      const signed = await caracal('sign', opaSigned, '--key', key('ec.pem'), '--key-id', 'ci', '--out', out);
      expect(signed.stdout).toMatch(/replaced the previous signature/);
      await execFileAsync(opaBin!, ['build', '-b', out, '--verification-key', key('ec.pub'), '--verification-key-id', 'ci', '--signing-alg', 'ES256', '-o', path.join(tmp, 'opa-out-2.tar.gz')]);
    });
  });
});

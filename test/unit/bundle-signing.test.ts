import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ConfigSchema } from '../../src/config/schema.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import { readBundle, readBundleFiles, signBundle, verifyBundleFile, writeBundleTarball } from '../../src/policy/bundle.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import {
  type BundleSigningConfig,
  canonicalJson,
  hashBundleFile,
  loadBundleVerification,
  loadSigningKey,
  parseSigningKey,
  parseVerificationKey,
  SIGNATURES_FILE,
} from '../../src/policy/signing.js';

type KeyKind = 'ec' | 'rsa' | 'ed25519';

function keyPair(kind: KeyKind): { privatePem: string; publicPem: string } {
  const pair: { privateKey: KeyObject; publicKey: KeyObject } =
    kind === 'ec'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : kind === 'rsa'
        ? generateKeyPairSync('rsa', { modulusLength: 2048 })
        : generateKeyPairSync('ed25519');
  return {
    privatePem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

let tmp: string;
let counter = 0;
const keys: Record<KeyKind | 'other', { privateFile: string; publicFile: string }> = {} as never;

async function tmpFile(name: string, content: string | Buffer): Promise<string> {
  const file = path.join(tmp, `${++counter}-${name}`);
  await writeFile(file, content);
  return file;
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-signing-'));
  for (const kind of ['ec', 'rsa', 'ed25519', 'other'] as const) {
    const pair = keyPair(kind === 'other' ? 'ec' : kind);
    keys[kind] = { privateFile: await tmpFile(`${kind}.pem`, pair.privatePem), publicFile: await tmpFile(`${kind}.pub`, pair.publicPem) };
  }
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function signing(publicKeys: { keyId: string; path: string }[], allowUnsigned = false): BundleSigningConfig {
  return { publicKeys, allowUnsigned };
}

/** Signs the committed default bundle with `kind`'s key under `keyId`; returns the signed file. */
async function signedDefault(kind: KeyKind | 'other' = 'ec', keyId = 'ci'): Promise<string> {
  const outFile = path.join(tmp, `${++counter}-signed.tar.gz`);
  await signBundle({ inFile: DEFAULT_BUNDLE, outFile, key: await loadSigningKey(keys[kind].privateFile, keyId) });
  return outFile;
}

/** Rewrites a bundle's members with `edit` (no re-signing) and returns the new file. */
async function rewritten(file: string, edit: (files: Map<string, Buffer>) => void): Promise<string> {
  const files = await readBundleFiles(await readFile(file));
  edit(files);
  return tmpFile('rewritten.tar.gz', writeBundleTarball(files));
}

const ecKeyConfig = (): BundleSigningConfig => signing([{ keyId: 'ci', path: keys.ec.publicFile }]);

async function loadError(file: string, config: BundleSigningConfig): Promise<string> {
  try {
    await PolicyEngine.fromBundleFile(file, { signing: config });
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error(`expected ${file} to be refused`);
}

/** A compact JWS with the given header and payload and a junk signature. */
function forgedToken(header: object, payload: object): string {
  const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64(header)}.${b64(payload)}.`;
}

describe('bundle signing: round trips through the gateway loader', () => {
  for (const [kind, alg] of [
    ['ec', 'ES256'],
    ['rsa', 'RS256'],
    ['ed25519', 'EdDSA'],
  ] as const) {
    it(`signs with ${alg} and the gateway loader accepts it`, async () => {
      const file = await signedDefault(kind, `key-${kind}`);
      const config = signing([
        { keyId: 'unrelated', path: keys.other.publicFile },
        { keyId: `key-${kind}`, path: keys[kind].publicFile },
      ]);
      const engine = await PolicyEngine.fromBundleFile(file, { signing: config });
      const unsigned = await PolicyEngine.fromBundleFile(DEFAULT_BUNDLE);
      expect(engine.revision).toBe(unsigned.revision);

      const bundle = await readBundle(file, { verification: await loadBundleVerification(config) });
      expect(bundle.signature).toEqual({ signed: true, keyId: `key-${kind}`, files: bundle.files.size - 1 });
      const token = JSON.parse(bundle.files.get(SIGNATURES_FILE)!.toString()).signatures[0] as string;
      expect(JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString())).toMatchObject({ alg, kid: `key-${kind}` });
      const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString());
      expect(payload.keyid).toBe(`key-${kind}`);
      expect(payload.files.map((f: { name: string }) => f.name).sort()).toEqual([...bundle.files.keys()].filter((n) => n !== SIGNATURES_FILE).sort());
      for (const f of payload.files) expect(f.algorithm).toBe('SHA-256');
    });
  }

  it('re-signing replaces the previous signature', async () => {
    const first = await signedDefault('other', 'old');
    const outFile = path.join(tmp, 'resigned.tar.gz');
    const result = await signBundle({ inFile: first, outFile, key: await loadSigningKey(keys.ec.privateFile, 'ci') });
    expect(result.replaced).toBe(true);
    await expect(PolicyEngine.fromBundleFile(outFile, { signing: ecKeyConfig() })).resolves.toBeInstanceOf(PolicyEngine);
    expect(await loadError(outFile, signing([{ keyId: 'old', path: keys.other.publicFile }]))).toMatch(/unknown key id "ci"/);
  });

  it('without keys configured, bundles load as before (the committed default bundle, unsigned)', async () => {
    await expect(PolicyEngine.fromBundleFile(DEFAULT_BUNDLE, { signing: signing([]) })).resolves.toBeInstanceOf(PolicyEngine);
    const config = ConfigSchema.parse({});
    expect(config.policy.signing).toEqual({ publicKeys: [], allowUnsigned: false });
    await expect(PolicyEngine.fromBundleFile(DEFAULT_BUNDLE, { signing: config.policy.signing })).resolves.toBeInstanceOf(PolicyEngine);
  });
});

describe('bundle signing: refusals', () => {
  it('refuses a tampered policy.wasm (hash mismatch)', async () => {
    const file = await rewritten(await signedDefault(), (files) => {
      const wasm = Buffer.from(files.get('policy.wasm')!);
      wasm[wasm.length - 1] = wasm[wasm.length - 1]! ^ 1;
      files.set('policy.wasm', wasm);
    });
    expect(await loadError(file, ecKeyConfig())).toMatch(/signature check failed: file hash mismatch: policy\.wasm$/);
  });

  it('refuses a truncated tarball', async () => {
    const signed = await readFile(await signedDefault());
    const file = await tmpFile('truncated.tar.gz', signed.subarray(0, Math.floor(signed.length / 2)));
    expect(await loadError(file, ecKeyConfig())).toMatch(/truncated/);
  });

  it('refuses an unsigned bundle when keys are configured, and accepts it with allowUnsigned', async () => {
    expect(await loadError(DEFAULT_BUNDLE, ecKeyConfig())).toMatch(/signature check failed: unsigned/);
    await expect(PolicyEngine.fromBundleFile(DEFAULT_BUNDLE, { signing: { ...ecKeyConfig(), allowUnsigned: true } })).resolves.toBeInstanceOf(PolicyEngine);
  });

  it('allowUnsigned still refuses a signed bundle that does not verify', async () => {
    const file = await rewritten(await signedDefault(), (files) => files.set('data.json', Buffer.from('{"x": 1}')));
    expect(await loadError(file, { ...ecKeyConfig(), allowUnsigned: true })).toMatch(/file hash mismatch: data\.json/);
  });

  it('refuses a bundle signed by another key under the same key id (bad signature)', async () => {
    const file = await signedDefault('other', 'ci');
    expect(await loadError(file, ecKeyConfig())).toMatch(/bad signature \(key "ci"\)/);
  });

  it('refuses a signature naming an unknown key id', async () => {
    const file = await signedDefault('ec', 'someone-else');
    expect(await loadError(file, ecKeyConfig())).toMatch(/unknown key id "someone-else"/);
  });

  it('refuses a signature whose algorithm does not match the configured key', async () => {
    const file = await signedDefault('ec', 'ci');
    expect(await loadError(file, signing([{ keyId: 'ci', path: keys.rsa.publicFile }]))).toMatch(/algorithm "ES256" does not match key "ci" \(RS256\)/);
  });

  it('refuses an extra file that the signature does not list', async () => {
    const file = await rewritten(await signedDefault(), (files) => files.set('extra/notes.txt', Buffer.from('hi')));
    expect(await loadError(file, ecKeyConfig())).toMatch(/file not listed in the signature: extra\/notes\.txt$/);
  });

  it('refuses a bundle missing a listed file', async () => {
    const file = await rewritten(await signedDefault(), (files) => files.delete('caracal/authz.rego'));
    expect(await loadError(file, ecKeyConfig())).toMatch(/listed file missing from the bundle: caracal\/authz\.rego$/);
  });

  it('refuses a .signatures.json that is not JSON, has no signatures, or carries an alg "none" JWT', async () => {
    const signed = await signedDefault();
    const variants: [string, string, RegExp][] = [
      ['not JSON', '{"signatures": [', /\.signatures\.json is not valid JSON/],
      ['empty list', '{"signatures": []}', /\.signatures\.json has no signatures/],
      ['no list', '{}', /\.signatures\.json has no signatures/],
      ['two JWTs', JSON.stringify({ signatures: ['a.b.c', 'a.b.c'] }), /has 2 signatures/],
      ['alg none', JSON.stringify({ signatures: [forgedToken({ alg: 'none', kid: 'ci' }, { files: [], keyid: 'ci' })] }), /algorithm "none" does not match key "ci"/],
      ['HS256', JSON.stringify({ signatures: [forgedToken({ alg: 'HS256', kid: 'ci' }, { files: [] })] }), /algorithm "HS256" does not match/],
    ];
    for (const [what, content, expected] of variants) {
      const file = await rewritten(signed, (files) => files.set(SIGNATURES_FILE, Buffer.from(content)));
      expect(await loadError(file, ecKeyConfig()), what).toMatch(expected);
    }
  });

  it('refuses a correctly algorithm-tagged JWT whose signature is junk', async () => {
    const signed = await signedDefault();
    const files = await readBundleFiles(await readFile(signed));
    const token = JSON.parse(files.get(SIGNATURES_FILE)!.toString()).signatures[0] as string;
    const [header, payload] = token.split('.');
    const file = await rewritten(signed, (f) => f.set(SIGNATURES_FILE, Buffer.from(JSON.stringify({ signatures: [`${header}.${payload}.AAAA`] }))));
    expect(await loadError(file, ecKeyConfig())).toMatch(/bad signature/);
  });

  it('signs and verifies a non-WASM (Rego-only) bundle, which the gateway loader still refuses', async () => {
    const regoOnly = await tmpFile(
      'rego-only.tar.gz',
      writeBundleTarball([
        ['data.json', Buffer.from('{}')],
        ['caracal/authz.rego', Buffer.from('package caracal.authz\n')],
        ['.manifest', Buffer.from('{"revision":"r1","roots":[""]}')],
      ]),
    );
    const outFile = path.join(tmp, 'rego-only-signed.tar.gz');
    await signBundle({ inFile: regoOnly, outFile, key: await loadSigningKey(keys.ec.privateFile, 'ci') });
    const verification = await loadBundleVerification(ecKeyConfig());
    await expect(verifyBundleFile(outFile, verification)).resolves.toEqual({ signed: true, keyId: 'ci', files: 3 });
    expect(await loadError(outFile, ecKeyConfig())).toMatch(/no WASM module/);
  });
});

describe('bundle signing: keys and config', () => {
  it('a configured key that cannot be read fails with one message naming the key', async () => {
    const missing = path.join(tmp, 'nope.pem');
    await expect(loadBundleVerification(signing([{ keyId: 'prod', path: missing }]))).rejects.toMatchObject({
      code: 'CARACAL_CONFIG_INVALID',
      message: expect.stringMatching(/^policy\.signing\.publicKeys\[0\] \(keyId "prod"\): cannot read .*nope\.pem \(ENOENT\)$/),
    });
    const garbage = await tmpFile('garbage.pem', 'not a key');
    await expect(loadBundleVerification(signing([{ keyId: 'g', path: garbage }]))).rejects.toMatchObject({
      code: 'CARACAL_CONFIG_INVALID',
      message: expect.stringMatching(/^policy\.signing\.publicKeys\[0\] \(keyId "g"\): not a PEM public key/),
    });
    expect(await loadError(DEFAULT_BUNDLE, signing([{ keyId: 'prod', path: missing }]))).toMatch(/keyId "prod"/);
  });

  it('the config schema validates policy.signing', () => {
    const parsed = ConfigSchema.parse({ policy: { signing: { publicKeys: [{ keyId: 'a', path: 'a.pem' }], allowUnsigned: true } } });
    expect(parsed.policy.signing).toEqual({ publicKeys: [{ keyId: 'a', path: 'a.pem' }], allowUnsigned: true });
    expect(() => ConfigSchema.parse({ policy: { signing: { publicKeys: [{ keyId: 'a', path: 'a.pem' }, { keyId: 'a', path: 'b.pem' }] } } })).toThrow(/unique/);
    expect(() => ConfigSchema.parse({ policy: { signing: { publicKeys: [{ keyId: '', path: 'a.pem' }] } } })).toThrow();
    expect(() => ConfigSchema.parse({ policy: { signing: { keys: [] } } })).toThrow();
  });

  it('detects the algorithm from the key and refuses unsupported keys', () => {
    expect(parseSigningKey(keyPair('ec').privatePem, 'k').algorithm).toBe('ES256');
    expect(parseSigningKey(keyPair('rsa').privatePem, 'k').algorithm).toBe('RS256');
    expect(parseSigningKey(keyPair('ed25519').privatePem, 'k').algorithm).toBe('EdDSA');
    const x25519 = generateKeyPairSync('x25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expect(() => parseSigningKey(x25519, 'k')).toThrow(/unsupported key type x25519/);
    const k256 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expect(() => parseSigningKey(k256, 'k')).toThrow(/unsupported EC curve secp256k1/);
    const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    expect(() => parseSigningKey(rsa1024, 'k')).toThrow(/too short/);
    expect(() => parseSigningKey('-----BEGIN NONSENSE-----', 'k')).toThrow(/not a PEM private key/);
    expect(() => parseVerificationKey('nope', 'k')).toThrow(/not a PEM public key/);
  });
});

describe('bundle signing: OPA canonical hashing of structured files', () => {
  it('hashes data.json and .manifest over a canonical form, other files byte for byte', () => {
    const a = hashBundleFile('data.json', Buffer.from('{ "b": [1, 2.50, {"y": true, "x": null}], "a": "s" }'));
    const b = hashBundleFile('data.json', Buffer.from('{"a":"s","b":[1,2.50,{"x":null,"y":true}]}'));
    expect(a).toBe(b);
    expect(hashBundleFile('nested/dir/data.json', Buffer.from('{"a": 1}'))).toBe(hashBundleFile('data.json', Buffer.from('{"a":1}')));
    expect(hashBundleFile('policy.rego', Buffer.from('{"a": 1}'))).not.toBe(hashBundleFile('policy.rego', Buffer.from('{"a":1}')));
    // The committed default bundle's data.json is "{}"; OPA 1.x signs it with this digest.
    expect(hashBundleFile('data.json', Buffer.from('{}\n'))).toBe('44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a');
  });

  it('keeps numbers as written and escapes strings as Go does', () => {
    expect(canonicalJson(Buffer.from('{"n": 2.50, "e": 1E+3, "big": 12345678901234567890}'))).toBe('{"big":12345678901234567890,"e":1E+3,"n":2.50}');
    expect(canonicalJson(Buffer.from('["<&>", "\\u0001\\b\\f\\n\\r\\t\\"\\\\", "\\u2028", "é"]'))).toBe('["<&>","\\u0001\\b\\f\\n\\r\\t\\"\\\\","\\u2028","é"]');
    expect(canonicalJson(Buffer.from('{"b":1,"a":2,"a":3}'))).toBe('{"a":3,"b":1}');
    // Keys in UTF-8 byte order (Go's sort.Strings), not UTF-16 order.
    expect(canonicalJson(Buffer.from('{"\uff61":1,"\ud83d\ude00":2}'))).toBe('{"\uff61":1,"\ud83d\ude00":2}');
    expect(() => canonicalJson(Buffer.from('{"a":1,}'))).toThrow(/not valid JSON/);
    expect(() => canonicalJson(Buffer.from('{"a":1} x'))).toThrow(/trailing/);
  });
});

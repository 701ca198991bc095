import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { calculateJwkThumbprint, exportJWK, type JWK } from 'jose';
import { CaracalError } from '../../errors/catalog.js';

/**
 * ES256 (P-256) signing keys. A PEM file named by config (`auth.signingKeyPath`) — SEC1
 * "EC PRIVATE KEY" from `openssl ecparam -name prime256v1 -genkey` or PKCS#8 — or, on the
 * embedded default, one generated under `<home>/keys` with mode 0600. Private keys live in files
 * (or mounted secrets), never in the database.
 */
export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: JWK;
}

export async function signingKeyFromPem(pem: string, source: string): Promise<SigningKey> {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (err) {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `auth.signingKeyPath: ${source} is not a PEM private key`, { cause: err });
  }
  const details = privateKey.asymmetricKeyDetails;
  if (privateKey.asymmetricKeyType !== 'ec' || details?.namedCurve !== 'prime256v1') {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `auth.signingKeyPath: ${source} must be an EC P-256 (prime256v1) key for ES256`);
  }
  const publicKey = createPublicKey(privateKey);
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { kid, privateKey, publicKey, publicJwk: { ...jwk, kid, alg: 'ES256', use: 'sig' } };
}

/** Writes a fresh P-256 key as PKCS#8 PEM, readable only by its owner. */
export function generateSigningKeyFile(file: string): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  writeFileSync(file, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
}

/** The configured key, or the embedded default's key under `<home>/keys` (created on first use). */
export async function loadSigningKey(options: { signingKeyPath?: string; home: string }): Promise<SigningKey> {
  const file = options.signingKeyPath ?? path.join(options.home, 'keys', 'signing-es256.pem');
  if (!existsSync(file)) {
    if (options.signingKeyPath) throw new CaracalError('CARACAL_CONFIG_INVALID', `auth.signingKeyPath: ${file} does not exist`);
    try {
      generateSigningKeyFile(file);
    } catch (err) {
      // Another process created it between our check and write: use theirs.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  return signingKeyFromPem(readFileSync(file, 'utf8'), file);
}

/**
 * The keys a gateway trusts: the current signing key, and earlier keys still accepted for
 * verification until their `validUntil` (the overlap of a rotation). The JWKS lists exactly these.
 */
export interface KeyRing {
  current: SigningKey;
  previous: { key: SigningKey; validUntil: number }[];
}

export async function loadKeyRing(options: {
  signingKeyPath?: string;
  home: string;
  previousKeys: readonly { path: string; validUntil: string }[];
}): Promise<KeyRing> {
  const current = await loadSigningKey(options);
  const previous = await Promise.all(
    options.previousKeys.map(async ({ path: file, validUntil }) => {
      let pem: string;
      try {
        pem = readFileSync(file, 'utf8');
      } catch {
        throw new CaracalError('CARACAL_CONFIG_INVALID', `auth.previousKeys: ${file} cannot be read`);
      }
      return { key: await signingKeyFromPem(pem, file), validUntil: Math.floor(Date.parse(validUntil) / 1000) };
    }),
  );
  return { current, previous };
}

/** Keys usable for verification at `nowSeconds`, current first. */
export function verificationKeys(ring: KeyRing, nowSeconds: number): SigningKey[] {
  return [ring.current, ...ring.previous.filter((p) => p.validUntil > nowSeconds && p.key.kid !== ring.current.kid).map((p) => p.key)];
}

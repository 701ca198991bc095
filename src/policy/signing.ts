/**
 * Signing and verifying policy bundles in OPA's format, so that a bundle signed by Caracal loads
 * in OPA (`opa build --verification-key …`, `opa run --verification-key …`) and a bundle signed
 * by `opa build --signing-key …` loads in Caracal.
 *
 * The format (openpolicyagent.org/docs/latest/management-bundles/#signing): the tarball holds
 * `/.signatures.json` = `{"signatures": ["<JWS compact>"]}` whose payload is
 * `{"files": [{"name", "hash", "algorithm"}], "keyid"?}`. Names are bundle-root relative without
 * a leading "/". Every file except `.signatures.json` must be listed, and every listed file must
 * be present. Files named `data.json`, `data.yaml` and `.manifest` (by base name) are "structured":
 * OPA hashes a canonical form of their JSON (keys sorted, no whitespace, numbers as written,
 * strings escaped as Go's encoding/json does) so that reformatting does not break a signature;
 * every other file is hashed byte for byte.
 *
 * Where Caracal differs from OPA, deliberately:
 * - hash algorithms: SHA-224/256/384/512 and SHA-512-224/256 only; OPA also accepts MD5 and SHA-1;
 * - `data.yaml` is refused (Caracal's loader does not read YAML data, so it could not be checked
 *   against what is loaded);
 * - the `scope` claim is not checked (OPA compares it with its configured scope; neither side uses
 *   it by default);
 * - HMAC keys are not supported: a bundle verifier must not hold the signing secret.
 */
import { createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { CompactSign, compactVerify, decodeProtectedHeader } from 'jose';

import { CaracalError, toError } from '../errors/catalog.js';

/** The member that carries the signatures; never listed in them. */
export const SIGNATURES_FILE = '.signatures.json';

/** OPA's `--verification-key-id` default: the key a signature naming no key id is checked with. */
export const DEFAULT_KEY_ID = 'default';

export type SigningAlgorithm = 'ES256' | 'ES384' | 'ES512' | 'RS256' | 'EdDSA';

/** OPA's hash algorithm names mapped to Node's; MD5 and SHA-1 are left out on purpose. */
const HASH_ALGORITHMS: Readonly<Record<string, string>> = {
  'SHA-224': 'sha224',
  'SHA-256': 'sha256',
  'SHA-384': 'sha384',
  'SHA-512': 'sha512',
  'SHA-512-224': 'sha512-224',
  'SHA-512-256': 'sha512-256',
};

export const SIGNING_HASH_ALGORITHM = 'SHA-256';

export interface BundleKey {
  keyId: string;
  key: KeyObject;
  algorithm: SigningAlgorithm;
}

export interface FileDigest {
  name: string;
  hash: string;
  algorithm: string;
}

/** How a loader checks bundles; `keys` empty = signatures are neither required nor checked. */
export interface BundleVerification {
  keys: readonly BundleKey[];
  /** Accept a bundle without `.signatures.json` even though keys are configured (development). */
  allowUnsigned: boolean;
  /**
   * Check the signature with `keys[0]` whatever key id it names (the CLI's `verify --public-key`
   * without `--key-id`, where the operator gave exactly one key).
   */
  ignoreKeyId?: boolean;
}

export type VerificationOutcome = { signed: false } | { signed: true; keyId: string; files: number };

// ------------------------------------------------------------------------------------------------
// Keys

function signingError(message: string, cause?: unknown): CaracalError {
  return new CaracalError('CARACAL_VALIDATION', message, cause !== undefined ? { cause } : {});
}

/** The JWS algorithm a key is used with; the key type decides it, never the signature's header. */
export function algorithmForKey(key: KeyObject, what: string): SigningAlgorithm {
  switch (key.asymmetricKeyType) {
    case 'ec': {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      if (curve === 'prime256v1') return 'ES256';
      if (curve === 'secp384r1') return 'ES384';
      if (curve === 'secp521r1') return 'ES512';
      throw signingError(`${what}: unsupported EC curve ${String(curve)} (use P-256, P-384 or P-521)`);
    }
    case 'rsa': {
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
      if (bits < 2048) throw signingError(`${what}: RSA key of ${bits} bits is too short (at least 2048)`);
      return 'RS256';
    }
    case 'ed25519':
      return 'EdDSA';
    default:
      throw signingError(`${what}: unsupported key type ${String(key.asymmetricKeyType)} (use an ECDSA, RSA or Ed25519 key)`);
  }
}

async function readPem(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw signingError(`${what}: cannot read ${file}${code ? ` (${code})` : ''}`, err);
  }
}

/** A private key PEM (PKCS#8, SEC1 "EC PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY"). */
export function parseSigningKey(pem: string, keyId: string, what = 'signing key'): BundleKey {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw signingError(`${what}: not a PEM private key (${oneLine(toError(err).message)})`, err);
  }
  return { keyId, key, algorithm: algorithmForKey(key, what) };
}

/** A public key PEM (SPKI "PUBLIC KEY" or PKCS#1 "RSA PUBLIC KEY"); a private key PEM also works. */
export function parseVerificationKey(pem: string, keyId: string, what = 'public key'): BundleKey {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw signingError(`${what}: not a PEM public key (${oneLine(toError(err).message)})`, err);
  }
  return { keyId, key, algorithm: algorithmForKey(key, what) };
}

export async function loadSigningKey(file: string, keyId: string): Promise<BundleKey> {
  const what = `signing key ${file}`;
  return parseSigningKey(await readPem(file, what), keyId, what);
}

export async function loadVerificationKey(file: string, keyId: string): Promise<BundleKey> {
  const what = `public key ${file}`;
  return parseVerificationKey(await readPem(file, what), keyId, what);
}

/** The `policy.signing` config section. */
export interface BundleSigningConfig {
  publicKeys: readonly { keyId: string; path: string }[];
  allowUnsigned: boolean;
}

/**
 * Reads every configured public key (at gateway start-up). A missing, unreadable or unsupported
 * key fails start-up with one message naming the key, rather than refusing bundles later.
 */
export async function loadBundleVerification(config: BundleSigningConfig, cwd = process.cwd()): Promise<BundleVerification> {
  const keys: BundleKey[] = [];
  for (const [i, entry] of config.publicKeys.entries()) {
    const file = path.resolve(cwd, entry.path);
    const what = `policy.signing.publicKeys[${i}] (keyId ${JSON.stringify(entry.keyId)})`;
    try {
      keys.push(parseVerificationKey(await readPem(file, `${what}`), entry.keyId, what));
    } catch (err) {
      const message = toError(err).message;
      throw new CaracalError('CARACAL_CONFIG_INVALID', message.startsWith(what) ? message : `${what}: ${message}`, { cause: err });
    }
  }
  return { keys, allowUnsigned: config.allowUnsigned };
}

// ------------------------------------------------------------------------------------------------
// Hashing

/** OPA's structured documents, by base name (bundle.IsStructuredDoc). */
export function isStructuredFile(name: string): boolean {
  const base = name.slice(name.lastIndexOf('/') + 1);
  return base === 'data.json' || base === 'data.yaml' || base === '.manifest';
}

/** Hex digest of one bundle file as OPA computes it (canonical JSON for structured files). */
export function hashBundleFile(name: string, bytes: Buffer, algorithm = SIGNING_HASH_ALGORITHM): string {
  const nodeAlgorithm = HASH_ALGORITHMS[algorithm];
  if (nodeAlgorithm === undefined) throw signingError(`unsupported hash algorithm ${JSON.stringify(algorithm)} for ${name}`);
  const hash = createHash(nodeAlgorithm);
  if (isStructuredFile(name)) {
    if (name.endsWith('data.yaml')) throw signingError(`${name}: YAML data files are not supported in signed bundles`);
    hash.update(canonicalJson(bytes, name), 'utf8');
  } else {
    hash.update(bytes);
  }
  return hash.digest('hex');
}

/**
 * OPA's hashing form of a JSON document (bundle/hash.go `walk`): objects as `{"k":v,…}` with keys
 * in byte order, arrays as `[v,…]`, no whitespace, numbers exactly as written (Go decodes with
 * UseNumber), strings re-encoded as Go's encoding/json does with HTML escaping off. Duplicate keys
 * keep the last value, as a Go map does. Parsed here by hand because JSON.parse loses number text.
 */
export function canonicalJson(bytes: Buffer, name = '<json>'): string {
  let text = bytes.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // OPA strips a UTF-8 BOM
  let pos = 0;
  const fail = (why: string): never => {
    throw signingError(`${name} is not valid JSON: ${why} at offset ${pos}`);
  };
  const skipWhitespace = (): void => {
    while (pos < text.length && (text[pos] === ' ' || text[pos] === '\t' || text[pos] === '\n' || text[pos] === '\r')) pos++;
  };
  const parseString = (): string => {
    const start = pos;
    pos++; // opening quote
    while (pos < text.length && text[pos] !== '"') {
      if (text[pos] === '\\') pos++;
      else if (text.charCodeAt(pos) < 0x20) fail('control character in string');
      pos++;
    }
    if (pos >= text.length) fail('unterminated string');
    pos++;
    return JSON.parse(text.slice(start, pos)) as string;
  };
  const value = (depth: number): string => {
    if (depth > 512) fail('nested too deeply');
    skipWhitespace();
    const c = text[pos];
    if (c === '{') {
      pos++;
      const members = new Map<string, string>();
      skipWhitespace();
      if (text[pos] === '}') {
        pos++;
        return '{}';
      }
      for (;;) {
        skipWhitespace();
        if (text[pos] !== '"') fail('expected a key');
        const key = parseString();
        skipWhitespace();
        if (text[pos] !== ':') fail('expected ":"');
        pos++;
        members.set(key, value(depth + 1));
        skipWhitespace();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === '}') {
          pos++;
          break;
        }
        fail('expected "," or "}"');
      }
      const keys = [...members.keys()].sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
      return `{${keys.map((k) => `${goJsonString(k)}:${members.get(k)!}`).join(',')}}`;
    }
    if (c === '[') {
      pos++;
      const items: string[] = [];
      skipWhitespace();
      if (text[pos] === ']') {
        pos++;
        return '[]';
      }
      for (;;) {
        items.push(value(depth + 1));
        skipWhitespace();
        if (text[pos] === ',') {
          pos++;
          continue;
        }
        if (text[pos] === ']') {
          pos++;
          break;
        }
        fail('expected "," or "]"');
      }
      return `[${items.join(',')}]`;
    }
    if (c === '"') return goJsonString(parseString());
    for (const literal of ['true', 'false', 'null']) {
      if (text.startsWith(literal, pos)) {
        pos += literal.length;
        return literal;
      }
    }
    const number = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(pos, pos + 1024));
    if (number === null) fail('unexpected character');
    pos += number![0].length;
    return number![0];
  };
  const out = value(0);
  skipWhitespace();
  if (pos !== text.length) fail('trailing characters');
  return out;
}

/** A string as Go's json.Encoder writes it with SetEscapeHTML(false). */
function goJsonString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    if (code === 0x22) out += '\\"';
    else if (code === 0x5c) out += '\\\\';
    else if (code === 0x0a) out += '\\n';
    else if (code === 0x0d) out += '\\r';
    else if (code === 0x09) out += '\\t';
    else if (code === 0x08) out += '\\b'; // Go ≥ 1.22
    else if (code === 0x0c) out += '\\f'; // Go ≥ 1.22
    else if (code < 0x20) out += `\\u00${code.toString(16).padStart(2, '0')}`;
    else if (code === 0x2028 || code === 0x2029) out += `\\u${code.toString(16)}`; // Go always escapes these
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < s.length && s.charCodeAt(i + 1) >= 0xdc00 && s.charCodeAt(i + 1) <= 0xdfff) {
      out += s[i]! + s[i + 1]!;
      i++;
    } else if (code >= 0xd800 && code <= 0xdfff) out += '\ufffd'; // Go decodes a lone surrogate as U+FFFD
    else out += s[i]!;
  }
  return `${out}"`;
}

// ------------------------------------------------------------------------------------------------
// Signing

/** The payload of a new signature: every file but `.signatures.json`, in name order. */
export function fileDigests(files: ReadonlyMap<string, Buffer>): FileDigest[] {
  const names = [...files.keys()].filter((name) => name !== SIGNATURES_FILE).sort();
  return names.map((name) => ({ name, hash: hashBundleFile(name, files.get(name)!), algorithm: SIGNING_HASH_ALGORITHM }));
}

/** The bytes of a `.signatures.json` signing `files` with `key` (kid in the header, keyid in the payload, as OPA writes). */
export async function createSignaturesFile(files: ReadonlyMap<string, Buffer>, key: BundleKey): Promise<Buffer> {
  const payload = { files: fileDigests(files), keyid: key.keyId };
  const token = await new CompactSign(Buffer.from(JSON.stringify(payload), 'utf8'))
    .setProtectedHeader({ alg: key.algorithm, kid: key.keyId })
    .sign(key.key);
  return Buffer.from(`${JSON.stringify({ signatures: [token] }, null, 1)}\n`, 'utf8');
}

// ------------------------------------------------------------------------------------------------
// Verifying

function refused(source: string, why: string, cause?: unknown): CaracalError {
  return new CaracalError('CARACAL_VALIDATION', `bundle ${source}: signature check failed: ${why}`, cause !== undefined ? { cause } : {});
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The one JWS of `.signatures.json` (OPA also accepts exactly one). */
function signatureToken(bytes: Buffer, source: string): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw refused(source, `${SIGNATURES_FILE} is not valid JSON`, err);
  }
  if (!isPlainObject(parsed)) throw refused(source, `${SIGNATURES_FILE} is not a JSON object`);
  // `opa build --signing-key` writes "_default", OPA's name for the JWT format used here.
  if (parsed.plugin !== undefined && parsed.plugin !== '' && parsed.plugin !== '_default') {
    throw refused(source, `${SIGNATURES_FILE} names signing plugin ${JSON.stringify(parsed.plugin)}; only the default JWT format is supported`);
  }
  const signatures = parsed.signatures;
  if (!Array.isArray(signatures) || signatures.length === 0) throw refused(source, `${SIGNATURES_FILE} has no signatures`);
  if (signatures.length > 1) throw refused(source, `${SIGNATURES_FILE} has ${signatures.length} signatures; exactly one is supported (as in OPA)`);
  const token: unknown = signatures[0];
  if (typeof token !== 'string' || token.split('.').length !== 3) throw refused(source, `${SIGNATURES_FILE} signature is not a compact JWS`);
  return token;
}

function parseDigests(payload: unknown, source: string): FileDigest[] {
  if (!isPlainObject(payload) || !Array.isArray(payload.files)) throw refused(source, 'signature payload has no "files" list');
  const digests: FileDigest[] = [];
  for (const entry of payload.files as unknown[]) {
    if (!isPlainObject(entry) || typeof entry.name !== 'string' || typeof entry.hash !== 'string' || typeof entry.algorithm !== 'string') {
      throw refused(source, 'signature payload has a malformed "files" entry (name, hash, algorithm must be strings)');
    }
    digests.push({ name: entry.name.replace(/^\/+/, ''), hash: entry.hash.toLowerCase(), algorithm: entry.algorithm });
  }
  return digests;
}

/**
 * Checks the signature of a parsed bundle (`files` as from parseTar: names without a leading "/").
 * With no keys configured, nothing is checked (bundles load as they always did). Otherwise an
 * unsigned bundle is refused unless `allowUnsigned`, and a signed one must verify completely —
 * also with `allowUnsigned`, since a signature that does not verify means tampering.
 */
export async function verifyBundleFiles(files: ReadonlyMap<string, Buffer>, verification: BundleVerification, source = '<buffer>'): Promise<VerificationOutcome> {
  if (verification.keys.length === 0) return { signed: false };
  const signaturesBytes = files.get(SIGNATURES_FILE);
  if (signaturesBytes === undefined) {
    if (verification.allowUnsigned) return { signed: false };
    throw refused(source, `unsigned (no /${SIGNATURES_FILE}); sign it with \`caracal bundle sign\`, or set policy.signing.allowUnsigned for development`);
  }
  const token = signatureToken(signaturesBytes, source);

  let header: ReturnType<typeof decodeProtectedHeader>;
  let claimedPayload: unknown;
  try {
    header = decodeProtectedHeader(token);
    claimedPayload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));
  } catch (err) {
    throw refused(source, 'signature is not a well-formed JWS', err);
  }
  // OPA's order: the header's kid, then the deprecated payload keyid, then the default key id.
  const claimedKeyId =
    typeof header.kid === 'string' && header.kid !== ''
      ? header.kid
      : isPlainObject(claimedPayload) && typeof claimedPayload.keyid === 'string' && claimedPayload.keyid !== ''
        ? claimedPayload.keyid
        : DEFAULT_KEY_ID;
  const key = verification.ignoreKeyId ? verification.keys[0]! : verification.keys.find((k) => k.keyId === claimedKeyId);
  if (key === undefined) {
    throw refused(source, `unknown key id ${JSON.stringify(claimedKeyId)} (configured: ${verification.keys.map((k) => k.keyId).join(', ')})`);
  }
  if (header.alg !== key.algorithm) {
    throw refused(source, `bad signature: algorithm ${JSON.stringify(header.alg ?? null)} does not match key ${JSON.stringify(key.keyId)} (${key.algorithm})`);
  }
  let payloadBytes: Uint8Array;
  try {
    // `algorithms` pins the one algorithm of this key: "none", HMAC and algorithm confusion fail here.
    ({ payload: payloadBytes } = await compactVerify(token, key.key, { algorithms: [key.algorithm] }));
  } catch (err) {
    throw refused(source, `bad signature (key ${JSON.stringify(key.keyId)}): ${oneLine(toError(err).message)}`, err);
  }
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(payloadBytes).toString('utf8'));
  } catch (err) {
    throw refused(source, 'signature payload is not JSON', err);
  }

  const listed = new Map<string, FileDigest>();
  for (const digest of parseDigests(payload, source)) listed.set(digest.name, digest);
  for (const [name, bytes] of files) {
    if (name === SIGNATURES_FILE) continue;
    const digest = listed.get(name);
    if (digest === undefined) throw refused(source, `file not listed in the signature: ${name}`);
    if (HASH_ALGORITHMS[digest.algorithm] === undefined) throw refused(source, `unsupported hash algorithm ${JSON.stringify(digest.algorithm)} for ${name}`);
    let actual: string;
    try {
      actual = hashBundleFile(name, bytes, digest.algorithm);
    } catch (err) {
      throw refused(source, toError(err).message, err);
    }
    if (actual !== digest.hash) throw refused(source, `file hash mismatch: ${name}`);
  }
  for (const name of listed.keys()) {
    if (!files.has(name)) throw refused(source, `listed file missing from the bundle: ${name}`);
  }
  return { signed: true, keyId: verification.ignoreKeyId ? claimedKeyId : key.keyId, files: listed.size };
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

/**
 * C2SP signed notes (c2sp.org/signed-note) with ECDSA signatures (signature type 0x02), and C2SP checkpoints
 * (c2sp.org/tlog-checkpoint).
 *
 * ECDSA type 0x02, as implemented by github.com/transparency-dev/witness and used by Sigstore's Rekor; followed from
 * C2SP signed-note.md § "Signature types" (0x02) and transparency-dev/formats note/note_verifier.go (NewECDSAVerifier,
 * keyHashECDSA):
 *  - key id = the first 4 bytes, big-endian, of SHA-256(DER SubjectPublicKeyInfo). Unlike the generic recommendation
 *    of signed-note.md § "Signatures" (SHA-256(name ‖ 0x0A ‖ type ‖ key)), neither the name nor the type byte is hashed.
 *  - signature = ASN.1 DER ECDSA signature over SHA-256(note text), the text including its final newline
 *    (ecdsa.VerifyASN1 over sha256.Sum256(msg)).
 *  - verifier key = <name>+<8 lowercase hex key id>+<base64(0x02 ‖ DER SPKI)> (signed-note.md § "Verifier keys").
 *  - curves: P-256, P-384 or P-521 (signed-note.md: MUST be one of those, SHOULD be P-256); the digest is SHA-256.
 * Parsing and verification follow signed-note.md § "Format" and § "Signatures", with golang.org/x/mod/sumdb/note Open
 * as the reference for the details the text leaves open (at most 100 signature lines; a signature line is the name up
 * to the first space, then the base64; duplicate known signatures are verified once).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { decodeBase64Strict, decodeUtf8Strict, encodeBase64, hasLoneSurrogate, parseDecimal } from './encoding.js';
import { LedgerError } from './errors.js';
import { HASH_SIZE } from './merkle.js';

export const ECDSA_SIGNATURE_TYPE = 0x02;

/** signed-note.md: verifiers SHOULD bound the number of signatures and MUST accept 16; sumdb/note allows 100. */
export const MAX_NOTE_SIGNATURES = 100;

/** Bounds the work done on untrusted input before any signature is checked (100 ECDSA P-521 lines are ~25 kB). */
export const MAX_NOTE_BYTES = 1024 * 1024;

const SIGNATURE_LINE_PREFIX = '\u2014 '; // em dash, space
const SUPPORTED_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
// Go's unicode.IsSpace, which sumdb/note uses for "Unicode spaces" (JS \s differs: it has U+FEFF, lacks U+0085).
const UNICODE_SPACE = /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/u;
const FORBIDDEN_CONTROL = /[\u0000-\u0009\u000b-\u001f]/u; // eslint-disable-line no-control-regex

export interface NoteSigner {
  readonly name: string;
  readonly keyId: number;
  /** Signature bytes over the note text (without the key id prefix). */
  sign(message: Buffer): Buffer;
}

export interface NoteVerifier {
  readonly name: string;
  readonly keyId: number;
  verify(message: Buffer, signature: Buffer): boolean;
}

export interface EcdsaNoteSigner extends NoteSigner {
  /** The verifier key string to publish for this signer. */
  readonly verifierKey: string;
}

export interface NoteSignature {
  readonly name: string;
  readonly keyId: number;
  /** The signature proper, without the 4-byte key id. */
  readonly signature: Buffer;
}

export interface ParsedNote {
  /** The signed text, including its final newline, excluding the blank separator line. */
  readonly text: string;
  readonly signatures: readonly NoteSignature[];
}

export interface VerifiedNote {
  readonly text: string;
  /** Signatures by the given verifiers, all checked. */
  readonly verified: readonly NoteSignature[];
  /** Signatures by keys not among the verifiers (witness cosignatures, rotated keys, …): ignored, not checked. */
  readonly unverified: readonly NoteSignature[];
}

// ---------------------------------------------------------------------------------------------------------------------
// Keys

/** SHA-256(DER SPKI)[:4] as a big-endian uint32 (note_verifier.go keyHashECDSA). */
export function ecdsaKeyId(spkiDer: Uint8Array): number {
  return createHash('sha256').update(spkiDer).digest().readUInt32BE(0);
}

/** `<name>+<hex key id>+<base64(0x02 ‖ DER SPKI)>` for an ECDSA public key (PEM text or KeyObject). */
export function ecdsaVerifierKey(name: string, publicKey: string | KeyObject): string {
  requireKeyName(name, 'KEY_INVALID');
  const spki = ecdsaSpki(typeof publicKey === 'string' ? parsePem(publicKey, createPublicKey) : publicKey);
  return formatVerifierKey(name, spki);
}

/** A signer for an ECDSA private key (PKCS#8 or SEC1 PEM text, or KeyObject). */
export function createEcdsaNoteSigner(name: string, privateKey: string | KeyObject): EcdsaNoteSigner {
  requireKeyName(name, 'KEY_INVALID');
  const key = typeof privateKey === 'string' ? parsePem(privateKey, createPrivateKey) : privateKey;
  if (key.type !== 'private') throw new LedgerError('KEY_INVALID', `expected an ECDSA private key, got a ${key.type} key`);
  const spki = ecdsaSpki(createPublicKey(key));
  return {
    name,
    keyId: ecdsaKeyId(spki),
    verifierKey: formatVerifierKey(name, spki),
    sign: (message) => sign('sha256', message, { key, dsaEncoding: 'der' }),
  };
}

/** Parses a verifier key string of signature type 0x02 and checks its key id against the key. */
export function parseVerifierKey(verifierKey: string): NoteVerifier {
  // The name holds no '+', the hex none, and base64 may: so split at the first two only.
  const firstPlus = verifierKey.indexOf('+');
  const secondPlus = verifierKey.indexOf('+', firstPlus + 1);
  if (firstPlus < 0 || secondPlus < 0) {
    throw new LedgerError('KEY_INVALID', 'verifier key must have the form <name>+<hex key id>+<base64 key>');
  }
  const name = verifierKey.slice(0, firstPlus);
  const keyIdHex = verifierKey.slice(firstPlus + 1, secondPlus);
  requireKeyName(name, 'KEY_INVALID');
  if (!/^[0-9a-f]{8}$/.test(keyIdHex)) {
    throw new LedgerError('KEY_INVALID', `verifier key id must be 8 lowercase hex digits, got ${JSON.stringify(keyIdHex)}`);
  }
  const keyBytes = decodeBase64Strict(verifierKey.slice(secondPlus + 1), 'verifier key material', 'KEY_INVALID');
  if (keyBytes.length < 2) throw new LedgerError('KEY_INVALID', 'verifier key material is too short');
  if (keyBytes[0] !== ECDSA_SIGNATURE_TYPE) {
    throw new LedgerError('KEY_INVALID', `verifier key has signature type 0x${hexByte(keyBytes[0]!)}; only 0x02 (ECDSA) is supported`);
  }
  const spkiDer = keyBytes.subarray(1);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  } catch (error) {
    throw new LedgerError('KEY_INVALID', 'verifier key material is not a DER SubjectPublicKeyInfo', { cause: error });
  }
  // Re-encoding must give the same bytes: the key id hashes this exact encoding, and Go's x509 parser accepts only
  // the uncompressed point form that node re-exports.
  if (!ecdsaSpki(key).equals(spkiDer)) throw new LedgerError('KEY_INVALID', 'verifier key SPKI is not in canonical DER form');
  const keyId = ecdsaKeyId(spkiDer);
  if (keyId !== Number.parseInt(keyIdHex, 16)) {
    throw new LedgerError('KEY_INVALID', `verifier key id ${keyIdHex} does not match its key (expected ${hex32(keyId)})`);
  }
  return {
    name,
    keyId,
    verify: (message, signature) => {
      try {
        return verify('sha256', message, { key, dsaEncoding: 'der' }, signature);
      } catch {
        return false; // malformed DER is a failed signature, not a crash
      }
    },
  };
}

/** A fresh P-256 key pair as PEM: PKCS#8 private key and SPKI public key. */
export function generateEcdsaKeyPairPem(): { privateKeyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', {
    namedCurve: 'prime256v1',
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

function formatVerifierKey(name: string, spkiDer: Buffer): string {
  return `${name}+${hex32(ecdsaKeyId(spkiDer))}+${encodeBase64(Buffer.concat([Buffer.from([ECDSA_SIGNATURE_TYPE]), spkiDer]))}`;
}

function parsePem(pem: string, parse: (pem: string) => KeyObject): KeyObject {
  try {
    return parse(pem);
  } catch (error) {
    throw new LedgerError('KEY_INVALID', 'key is not a valid PEM key', { cause: error });
  }
}

/** DER SPKI of an ECDSA public key on a supported curve. */
function ecdsaSpki(publicKey: KeyObject): Buffer {
  if (publicKey.asymmetricKeyType !== 'ec') {
    throw new LedgerError('KEY_INVALID', `expected an ECDSA key, got ${publicKey.asymmetricKeyType ?? 'a symmetric key'}`);
  }
  const curve = publicKey.asymmetricKeyDetails?.namedCurve;
  if (curve === undefined || !SUPPORTED_CURVES.has(curve)) {
    throw new LedgerError('KEY_INVALID', `ECDSA curve ${curve ?? '(unknown)'} is not P-256, P-384 or P-521`);
  }
  const key = publicKey.type === 'private' ? createPublicKey(publicKey) : publicKey;
  return key.export({ format: 'der', type: 'spki' });
}

// ---------------------------------------------------------------------------------------------------------------------
// Notes

/** Signs `text` (which must end in a newline) with each signer and returns the signed note. */
export function signNote(text: string, signers: readonly NoteSigner[]): string {
  if (signers.length === 0) throw new LedgerError('INVALID_ARGUMENT', 'a signed note needs at least one signer');
  if (signers.length > MAX_NOTE_SIGNATURES) throw new LedgerError('INVALID_ARGUMENT', `at most ${MAX_NOTE_SIGNATURES} signers`);
  requireNoteText(text, 'INVALID_ARGUMENT');
  const message = Buffer.from(text, 'utf8');
  const lines = signers.map((signer) => {
    requireKeyName(signer.name, 'INVALID_ARGUMENT');
    const keyId = Buffer.alloc(4);
    keyId.writeUInt32BE(signer.keyId);
    return `${SIGNATURE_LINE_PREFIX}${signer.name} ${encodeBase64(Buffer.concat([keyId, signer.sign(message)]))}\n`;
  });
  return `${text}\n${lines.join('')}`;
}

/** Splits a signed note into text and signatures, checking its form only (no signature is verified). */
export function parseNote(note: string | Uint8Array): ParsedNote {
  const { text, signatures } = splitNote(note);
  return { text: text.toString('utf8'), signatures };
}

/**
 * Verifies a signed note against trusted verifiers (c2sp.org/signed-note § "Signatures"): signatures whose (name, key
 * id) match no verifier are ignored and returned as unverified; a signature that matches a verifier must verify, or
 * the whole note is rejected (SIGNATURE_INVALID); at least one must verify (else NOTE_UNTRUSTED).
 */
export function openNote(note: string | Uint8Array, verifiers: readonly NoteVerifier[]): VerifiedNote {
  const { text, signatures } = splitNote(note);
  const byKey = new Map<string, NoteVerifier>();
  for (const verifier of verifiers) {
    const id = keyLabel(verifier.name, verifier.keyId);
    if (byKey.has(id)) throw new LedgerError('INVALID_ARGUMENT', `two verifiers share the name and key id ${id}`);
    byKey.set(id, verifier);
  }
  const verified: NoteSignature[] = [];
  const unverified: NoteSignature[] = [];
  const seen = new Set<string>();
  for (const signature of signatures) {
    const id = keyLabel(signature.name, signature.keyId);
    const verifier = byKey.get(id);
    if (verifier === undefined) {
      unverified.push(signature);
      continue;
    }
    if (seen.has(id)) continue;
    seen.add(id);
    if (!verifier.verify(text, signature.signature)) {
      throw new LedgerError('SIGNATURE_INVALID', `the signature by ${id} does not verify`);
    }
    verified.push(signature);
  }
  if (verified.length === 0) {
    const found = signatures.map((s) => keyLabel(s.name, s.keyId)).join(', ');
    const trusted = [...byKey.keys()].join(', ') || '(none)';
    throw new LedgerError('NOTE_UNTRUSTED', `the note has no signature by a trusted key (signed by ${found}; trusted: ${trusted})`);
  }
  return { text: text.toString('utf8'), verified, unverified };
}

function splitNote(note: string | Uint8Array): { text: Buffer; signatures: NoteSignature[] } {
  const bytes = toNoteBytes(note);
  if (bytes.length > MAX_NOTE_BYTES) throw malformed(`note is larger than ${MAX_NOTE_BYTES} bytes`);
  const decoded = decodeUtf8Strict(bytes, 'note', 'NOTE_MALFORMED');
  if (FORBIDDEN_CONTROL.test(decoded)) throw malformed('note contains a control character other than newline');
  // The text is separated from the signatures by the last empty line; the text keeps its final newline.
  const split = bytes.lastIndexOf('\n\n');
  if (split < 0) throw malformed('note has no blank line before its signatures');
  const text = bytes.subarray(0, split + 1);
  const signatureBlock = bytes.subarray(split + 2).toString('utf8');
  if (signatureBlock === '') throw malformed('note has no signature lines');
  if (!signatureBlock.endsWith('\n')) throw malformed('note does not end with a newline');
  const lines = signatureBlock.slice(0, -1).split('\n');
  if (lines.length > MAX_NOTE_SIGNATURES) throw malformed(`note has more than ${MAX_NOTE_SIGNATURES} signature lines`);
  return { text, signatures: lines.map(parseSignatureLine) };
}

function parseSignatureLine(line: string, lineIndex: number): NoteSignature {
  const where = `signature line ${lineIndex + 1}`;
  if (!line.startsWith(SIGNATURE_LINE_PREFIX)) throw malformed(`${where} does not start with an em dash and a space`);
  const rest = line.slice(SIGNATURE_LINE_PREFIX.length);
  const space = rest.indexOf(' ');
  if (space < 0) throw malformed(`${where} has no space between key name and signature`);
  const name = rest.slice(0, space);
  requireKeyName(name, 'NOTE_MALFORMED');
  const signature = decodeBase64Strict(rest.slice(space + 1), `${where} signature`, 'NOTE_MALFORMED');
  if (signature.length < 5) throw malformed(`${where} signature is shorter than a key id and one byte`);
  return { name, keyId: signature.readUInt32BE(0), signature: signature.subarray(4) };
}

function toNoteBytes(note: string | Uint8Array): Buffer {
  if (typeof note !== 'string') return Buffer.from(note.buffer, note.byteOffset, note.byteLength);
  if (hasLoneSurrogate(note)) throw malformed('note is not valid UTF-8 (unpaired surrogate)');
  return Buffer.from(note, 'utf8');
}

function requireNoteText(text: string, code: 'INVALID_ARGUMENT' | 'CHECKPOINT_INVALID'): void {
  if (!text.endsWith('\n')) throw new LedgerError(code, 'note text must end with a newline');
  if (hasLoneSurrogate(text)) throw new LedgerError(code, 'note text is not valid UTF-8 (unpaired surrogate)');
  if (FORBIDDEN_CONTROL.test(text)) throw new LedgerError(code, 'note text contains a control character other than newline');
}

/** signed-note.md: key names are non-empty and contain no Unicode space and no '+'. */
function requireKeyName(name: string, code: 'KEY_INVALID' | 'NOTE_MALFORMED' | 'INVALID_ARGUMENT'): void {
  if (name === '' || UNICODE_SPACE.test(name) || name.includes('+') || hasLoneSurrogate(name) || FORBIDDEN_CONTROL.test(name)) {
    throw new LedgerError(code, `key name ${JSON.stringify(name)} must be non-empty, without spaces or '+'`);
  }
}

function keyLabel(name: string, keyId: number): string {
  return `${name}+${hex32(keyId)}`;
}

function hex32(value: number): string {
  return value.toString(16).padStart(8, '0');
}

function hexByte(value: number): string {
  return value.toString(16).padStart(2, '0');
}

function malformed(reason: string): LedgerError {
  return new LedgerError('NOTE_MALFORMED', reason);
}

// ---------------------------------------------------------------------------------------------------------------------
// Checkpoints (c2sp.org/tlog-checkpoint § "Note text")

export interface Checkpoint {
  /** The log identity; by convention a schema-less URL such as `caracal.example/ledger`. */
  readonly origin: string;
  readonly size: number;
  readonly rootHash: Buffer;
  /** Optional non-empty extension lines (NOT RECOMMENDED by the spec; kept for round trips). */
  readonly extensions?: readonly string[];
}

/** The checkpoint note text: `<origin>\n<size>\n<base64 root>\n` followed by any extension lines. */
export function formatCheckpoint(checkpoint: Checkpoint): string {
  const { origin, size, rootHash, extensions = [] } = checkpoint;
  if (origin === '' || origin.includes('\n')) throw checkpointInvalid('origin must be a non-empty single line');
  if (!Number.isSafeInteger(size) || size < 0) throw checkpointInvalid(`size must be a non-negative safe integer, got ${size}`);
  if (rootHash.length !== HASH_SIZE) throw checkpointInvalid(`root hash must be ${HASH_SIZE} bytes`);
  for (const line of extensions) {
    if (line === '' || line.includes('\n')) throw checkpointInvalid('extension lines must be non-empty single lines');
  }
  const text = [origin, String(size), encodeBase64(rootHash), ...extensions].map((line) => `${line}\n`).join('');
  requireNoteText(text, 'CHECKPOINT_INVALID');
  return text;
}

/** Parses checkpoint note text strictly: the inverse of formatCheckpoint, byte for byte. */
export function parseCheckpoint(text: string): Checkpoint {
  if (!text.endsWith('\n')) throw checkpointInvalid('checkpoint text must end with a newline');
  const lines = text.slice(0, -1).split('\n');
  if (lines.length < 3) throw checkpointInvalid('checkpoint text needs an origin, a size and a root hash line');
  const [origin, sizeLine, rootLine, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin === '') throw checkpointInvalid('checkpoint origin is empty');
  const size = parseDecimal(sizeLine, 'checkpoint size', 'CHECKPOINT_INVALID');
  const rootHash = decodeBase64Strict(rootLine, 'checkpoint root hash', 'CHECKPOINT_INVALID');
  if (rootHash.length !== HASH_SIZE) throw checkpointInvalid(`checkpoint root hash is ${rootHash.length} bytes, not ${HASH_SIZE}`);
  if (extensions.some((line) => line === '')) throw checkpointInvalid('checkpoint extension lines must be non-empty');
  requireNoteText(text, 'CHECKPOINT_INVALID');
  return extensions.length > 0 ? { origin, size, rootHash, extensions } : { origin, size, rootHash };
}

/** The signed checkpoint note. */
export function signCheckpoint(checkpoint: Checkpoint, signers: readonly NoteSigner[]): string {
  return signNote(formatCheckpoint(checkpoint), signers);
}

/**
 * Verifies a signed checkpoint: the note must verify against `verifiers` (see openNote), its text must be a
 * well-formed checkpoint, and its origin must equal `origin` (tlog-checkpoint: the origin identifies the log).
 */
export function openCheckpoint(
  signedCheckpoint: string | Uint8Array,
  origin: string,
  verifiers: readonly NoteVerifier[],
): { checkpoint: Checkpoint; note: VerifiedNote } {
  const note = openNote(signedCheckpoint, verifiers);
  const checkpoint = parseCheckpoint(note.text);
  if (checkpoint.origin !== origin) {
    throw checkpointInvalid(`checkpoint origin ${JSON.stringify(checkpoint.origin)} is not ${JSON.stringify(origin)}`);
  }
  return { checkpoint, note };
}

function checkpointInvalid(reason: string): LedgerError {
  return new LedgerError('CHECKPOINT_INVALID', reason);
}

import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  MAX_NOTE_SIGNATURES,
  createEcdsaNoteSigner,
  ecdsaKeyId,
  ecdsaVerifierKey,
  formatCheckpoint,
  generateEcdsaKeyPairPem,
  openCheckpoint,
  openNote,
  parseCheckpoint,
  parseNote,
  parseVerifierKey,
  signCheckpoint,
  signNote,
  type LedgerErrorCode,
  type NoteSigner,
} from '../../src/ledger/index.js';

// Published vectors from transparency-dev/formats note/note_verifier_test.go (commit 0b850f1a): the Sigstore Rekor
// and Pixel 6 transparency log ECDSA P-256 keys and a checkpoint signed by each.
const REKOR_KEY_MATERIAL =
  'AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNhtmPtrWm3U1eQXBogSMdGvXwBcK5AW5i0hrZLOC96l+smGNM7nwZ4QvFK/4sueRoVj//QP22Ni4Qt9DPfkWLc=';
const REKOR_VKEY = `rekor.sigstore.dev+c0d23d6a+${REKOR_KEY_MATERIAL}`;
const REKOR_NOTE =
  'Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n— rekor.sigstore.dev wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n';
const PIXEL_VKEY =
  'pixel6_transparency_log+91c16e30+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABN+4x0Jk1yTwvLFI9A4NDdGZcX0aiWVdWM5XJVy0M4VWD3AvyW5Q6Hs9A0mcDkpUoYgn+KKPNzFC0H3nN3q6JQ8=';
const PIXEL_NOTE =
  'DEFAULT\n10\nbsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=\n\n— pixel6_transparency_log kcFuMDBFAiEAhqMAP8P6qf6QxtUJhzMhbN+MbZ9dwfUHzGQJmffJHtoCIGD0cNe47dHWBoPwYdgBCepB06/+g5O1FmYjXl06owL4\n';

// c2sp.org/signed-note and c2sp.org/tlog-checkpoint examples (Ed25519, type 0x01: parsed here, not verified).
const C2SP_NOTE =
  'This is an example message.\n\n— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n';
const C2SP_ED25519_VKEY = 'example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k';
const C2SP_CHECKPOINT_TEXT = 'example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n';

function codeOf(action: () => unknown): LedgerErrorCode | 'no error' {
  try {
    action();
    return 'no error';
  } catch (error) {
    return (error as { code: LedgerErrorCode }).code;
  }
}

const ORIGIN = 'caracal.example/ledger';
const { privateKeyPem, publicKeyPem } = generateEcdsaKeyPairPem();
const signer = createEcdsaNoteSigner(ORIGIN, privateKeyPem);
const verifier = parseVerifierKey(signer.verifierKey);
const other = createEcdsaNoteSigner(ORIGIN, generateEcdsaKeyPairPem().privateKeyPem);
const TEXT = `${ORIGIN}\n3\n${Buffer.alloc(32, 7).toString('base64')}\n`;
const NOTE = signNote(TEXT, [signer]);

describe('published ECDSA note vectors (transparency-dev/formats)', () => {
  it('derive the key id as SHA-256(DER SPKI)[:4]', () => {
    const spki = Buffer.from(REKOR_KEY_MATERIAL, 'base64').subarray(1);
    expect(ecdsaKeyId(spki).toString(16)).toBe('c0d23d6a');
    const pem = createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' });
    expect(ecdsaVerifierKey('rekor.sigstore.dev', pem.toString())).toBe(REKOR_VKEY);
  });

  it('verify the Rekor and Pixel checkpoints', () => {
    const rekor = openNote(REKOR_NOTE, [parseVerifierKey(REKOR_VKEY)]);
    expect(rekor.verified.map((s) => s.name)).toEqual(['rekor.sigstore.dev']);
    expect(parseCheckpoint(rekor.text)).toMatchObject({ origin: 'Rekor', size: 798034 });
    const pixel = openCheckpoint(PIXEL_NOTE, 'DEFAULT', [parseVerifierKey(PIXEL_VKEY)]);
    expect(pixel.checkpoint.size).toBe(10);
    expect(pixel.checkpoint.rootHash.toString('base64')).toBe('bsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=');
  });

  it('reject a verifier with another name and a garbled signature', () => {
    const renamed = parseVerifierKey(`bananas.sigstore.dev+c0d23d6a+${REKOR_KEY_MATERIAL}`);
    expect(codeOf(() => openNote(REKOR_NOTE, [renamed]))).toBe('NOTE_UNTRUSTED');
    // Upstream's "invalid signature" case: the garbage also replaces the key id, so no trusted signature is left.
    const upstreamGarbage = REKOR_NOTE.replace(
      'wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp',
      'THIS/IS/PROBABLY/NOT/A/VALID/SIGNATURE/ANy/MOREowGp',
    );
    expect(codeOf(() => openNote(upstreamGarbage, [parseVerifierKey(REKOR_VKEY)]))).toBe('NOTE_UNTRUSTED');
    // Same key id, one signature character changed: the trusted signature fails, so the whole note is rejected.
    const garbled = REKOR_NOTE.replace('wNI9ajBEAiARInWI', 'wNI9ajBEAiARInWJ');
    expect(codeOf(() => openNote(garbled, [parseVerifierKey(REKOR_VKEY)]))).toBe('SIGNATURE_INVALID');
    expect(codeOf(() => openNote(REKOR_NOTE, [parseVerifierKey(PIXEL_VKEY)]))).toBe('NOTE_UNTRUSTED');
  });

  it('reject the malformed verifier keys of the upstream tests', () => {
    for (const vkey of [
      'bananas.sigstore.dev+12344556',
      'rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!',
      'rekor.sigstore.dev+12345678+AwEB',
      `rekor.sigstore.dev+NOT_A_NUMBER+${REKOR_KEY_MATERIAL}`,
      `rekor.sigstore.dev+00000000+${REKOR_KEY_MATERIAL}`,
      `rekor.sigstore.dev+C0D23D6A+${REKOR_KEY_MATERIAL}`, // hex must be lowercase (signed-note.md conventions)
      `rekor sigstore+c0d23d6a+${REKOR_KEY_MATERIAL}`,
      `+c0d23d6a+${REKOR_KEY_MATERIAL}`,
      C2SP_ED25519_VKEY, // type 0x01: not supported by this implementation
    ]) {
      expect(codeOf(() => parseVerifierKey(vkey)), vkey).toBe('KEY_INVALID');
    }
  });
});

describe('C2SP examples', () => {
  it('parse the signed-note example and its key id', () => {
    const note = parseNote(C2SP_NOTE);
    expect(note.text).toBe('This is an example message.\n');
    expect(note.signatures).toHaveLength(1);
    expect(note.signatures[0]).toMatchObject({ name: 'example.com/foo', keyId: 0x530d903a });
    expect(note.signatures[0]!.signature).toHaveLength(64);
    expect(codeOf(() => openNote(C2SP_NOTE, [verifier]))).toBe('NOTE_UNTRUSTED');
  });

  it('round-trips the tlog-checkpoint example text', () => {
    const checkpoint = parseCheckpoint(C2SP_CHECKPOINT_TEXT);
    expect(checkpoint).toMatchObject({ origin: 'example.com/behind-the-sofa', size: 20852163 });
    expect(formatCheckpoint(checkpoint)).toBe(C2SP_CHECKPOINT_TEXT);
  });
});

describe('ECDSA signed notes', () => {
  it('round-trip: key id, verifier key, signature', () => {
    const spki = createPublicKey(publicKeyPem).export({ format: 'der', type: 'spki' });
    expect(signer.keyId).toBe(createHash('sha256').update(spki).digest().readUInt32BE(0));
    expect(signer.verifierKey).toBe(`${ORIGIN}+${signer.keyId.toString(16).padStart(8, '0')}+${Buffer.concat([Buffer.from([2]), spki]).toString('base64')}`);
    expect(ecdsaVerifierKey(ORIGIN, publicKeyPem)).toBe(signer.verifierKey);
    expect(verifier).toMatchObject({ name: ORIGIN, keyId: signer.keyId });
    expect(NOTE.startsWith(`${TEXT}\n— ${ORIGIN} `)).toBe(true);
    expect(NOTE.endsWith('\n')).toBe(true);
    const opened = openNote(NOTE, [verifier]);
    expect(opened.text).toBe(TEXT);
    expect(opened.verified).toHaveLength(1);
    expect(opened.unverified).toEqual([]);
    expect(openNote(Buffer.from(NOTE), [verifier]).text).toBe(TEXT);
  });

  it('signs with P-384 too, and rejects non-ECDSA and unsupported-curve keys', () => {
    const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey;
    const p384Signer = createEcdsaNoteSigner('p384.example', p384);
    expect(openNote(signNote(TEXT, [p384Signer]), [parseVerifierKey(p384Signer.verifierKey)]).verified).toHaveLength(1);
    const ed25519 = generateKeyPairSync('ed25519').privateKey;
    expect(codeOf(() => createEcdsaNoteSigner('x', ed25519))).toBe('KEY_INVALID');
    const k256 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey;
    expect(codeOf(() => createEcdsaNoteSigner('x', k256))).toBe('KEY_INVALID');
    expect(codeOf(() => createEcdsaNoteSigner('x', 'not a pem'))).toBe('KEY_INVALID');
    expect(codeOf(() => createEcdsaNoteSigner('x', publicKeyPem))).toBe('KEY_INVALID');
    expect(codeOf(() => createEcdsaNoteSigner('bad name', privateKeyPem))).toBe('KEY_INVALID');
  });

  it('keeps unknown signatures (witness cosignatures) as unverified and accepts 16 of them', () => {
    const witnesses: NoteSigner[] = Array.from({ length: 15 }, (_, i) =>
      createEcdsaNoteSigner(`witness${i}.example`, generateEcdsaKeyPairPem().privateKeyPem),
    );
    const note = signNote(TEXT, [...witnesses, signer]);
    const opened = openNote(note, [verifier]);
    expect(opened.verified).toHaveLength(1);
    expect(opened.unverified.map((s) => s.name)).toEqual(witnesses.map((w) => w.name));
  });

  it.each<[string, () => unknown, LedgerErrorCode, RegExp]>([
    ['a verifier with the right name but another key id', () => openNote(NOTE, [parseVerifierKey(other.verifierKey)]), 'NOTE_UNTRUSTED', /no signature by a trusted key/],
    ['a verifier with the right key but another name', () => openNote(NOTE, [parseVerifierKey(ecdsaVerifierKey('elsewhere.example', publicKeyPem))]), 'NOTE_UNTRUSTED', /no signature by a trusted key/],
    ['no verifiers', () => openNote(NOTE, []), 'NOTE_UNTRUSTED', /trusted: \(none\)/],
    ['a signature by another key under our name and key id', () => openNote(signNote(TEXT, [{ ...other, name: signer.name, keyId: signer.keyId }]), [verifier]), 'SIGNATURE_INVALID', /does not verify/],
    ['a modified text', () => openNote(NOTE.replace(`${ORIGIN}\n3\n`, `${ORIGIN}\n4\n`), [verifier]), 'SIGNATURE_INVALID', /does not verify/],
    ['text modified by one byte before the blank line', () => openNote(NOTE.replace('=\n\n', '=\nx\n\n'), [verifier]), 'SIGNATURE_INVALID', /does not verify/],
    ['a missing trailing newline', () => openNote(NOTE.slice(0, -1), [verifier]), 'NOTE_MALFORMED', /does not end with a newline/],
    ['a missing blank line', () => openNote(NOTE.replace('\n\n', '\n'), [verifier]), 'NOTE_MALFORMED', /no blank line/],
    ['no signature lines', () => openNote(`${TEXT}\n`, [verifier]), 'NOTE_MALFORMED', /no signature lines/],
    ['bad base64 in the signature', () => openNote(NOTE.replace(/ (\S+)\n$/, ' $1!\n'), [verifier]), 'NOTE_MALFORMED', /not valid base64/],
    ['URL-safe base64 in the signature', () => openNote(NOTE.replace(/ (\S+)\n$/, (_m, b64: string) => ` ${b64.replaceAll('+', '-').replaceAll('/', '_')}X\n`), [verifier]), 'NOTE_MALFORMED', /not valid base64/],
    ['a signature shorter than 5 bytes', () => openNote(`${TEXT}\n— ${ORIGIN} AAAAAA==\n`, [verifier]), 'NOTE_MALFORMED', /shorter than a key id/],
    ['a hyphen instead of the em dash', () => openNote(NOTE.replace('—', '-'), [verifier]), 'NOTE_MALFORMED', /em dash/],
    ['a signature line without a space', () => openNote(`${TEXT}\n— ${ORIGIN}\n`, [verifier]), 'NOTE_MALFORMED', /no space/],
    ['a key name with a plus', () => openNote(NOTE.replace(`— ${ORIGIN}`, '— a+b'), [verifier]), 'NOTE_MALFORMED', /key name/],
    ['a key name with a no-break space', () => openNote(NOTE.replace(`— ${ORIGIN}`, '— a\u00a0b'), [verifier]), 'NOTE_MALFORMED', /key name/],
    ['too many signature lines', () => openNote(NOTE + NOTE.slice(NOTE.lastIndexOf('— ')).repeat(MAX_NOTE_SIGNATURES), [verifier]), 'NOTE_MALFORMED', /more than 100 signature lines/],
    ['invalid UTF-8', () => openNote(Buffer.concat([Buffer.from([0xff]), Buffer.from(NOTE)]), [verifier]), 'NOTE_MALFORMED', /not valid UTF-8/],
    ['an overlong UTF-8 encoding', () => openNote(Buffer.concat([Buffer.from([0xc0, 0xaf]), Buffer.from(NOTE)]), [verifier]), 'NOTE_MALFORMED', /not valid UTF-8/],
    ['an unpaired surrogate in a string', () => openNote(`\ud800${NOTE}`, [verifier]), 'NOTE_MALFORMED', /unpaired surrogate/],
    ['a carriage return', () => openNote(NOTE.replace(`${ORIGIN}\n3`, `${ORIGIN}\r\n3`), [verifier]), 'NOTE_MALFORMED', /control character/],
    ['a tab', () => openNote(`\t${NOTE}`, [verifier]), 'NOTE_MALFORMED', /control character/],
    ['a NUL byte', () => openNote(`\0${NOTE}`, [verifier]), 'NOTE_MALFORMED', /control character/],
    ['CRLF line endings', () => openNote(NOTE.replaceAll('\n', '\r\n'), [verifier]), 'NOTE_MALFORMED', /control character/],
    ['two verifiers with the same name and key id', () => openNote(NOTE, [verifier, verifier]), 'INVALID_ARGUMENT', /share the name and key id/],
  ])('rejects %s', (_what, action, code, reason) => {
    expect(codeOf(action)).toBe(code);
    expect(action).toThrow(reason);
  });

  it('accepts exactly MAX_NOTE_SIGNATURES lines', () => {
    const line = NOTE.slice(NOTE.lastIndexOf('— '));
    expect(openNote(NOTE + line.repeat(MAX_NOTE_SIGNATURES - 1), [verifier]).verified).toHaveLength(1);
  });

  it('treats the last blank line as the separator, so texts may hold empty lines', () => {
    const text = 'first\n\nthird\n';
    expect(openNote(signNote(text, [signer]), [verifier]).text).toBe(text);
  });

  it('refuses to sign what it could not verify', () => {
    expect(codeOf(() => signNote('no newline', [signer]))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => signNote('tab\t\n', [signer]))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => signNote('lone \udc00\n', [signer]))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => signNote(TEXT, []))).toBe('INVALID_ARGUMENT');
  });
});

describe('checkpoints', () => {
  const root = Buffer.alloc(32, 0xab);

  it('format byte-exactly and round-trip, with extension lines', () => {
    expect(formatCheckpoint({ origin: ORIGIN, size: 0, rootHash: root })).toBe(`${ORIGIN}\n0\n${root.toString('base64')}\n`);
    const withExtensions = { origin: ORIGIN, size: 12, rootHash: root, extensions: ['ext one', 'two'] };
    const text = formatCheckpoint(withExtensions);
    expect(text).toBe(`${ORIGIN}\n12\n${root.toString('base64')}\next one\ntwo\n`);
    expect(parseCheckpoint(text)).toEqual(withExtensions);
  });

  it('sign and open with origin check', () => {
    const signed = signCheckpoint({ origin: ORIGIN, size: 5, rootHash: root }, [signer]);
    expect(openCheckpoint(signed, ORIGIN, [verifier]).checkpoint).toEqual({ origin: ORIGIN, size: 5, rootHash: root });
    expect(codeOf(() => openCheckpoint(signed, 'other.example/log', [verifier]))).toBe('CHECKPOINT_INVALID');
    const notACheckpoint = signNote('hello\n', [signer]);
    expect(codeOf(() => openCheckpoint(notACheckpoint, ORIGIN, [verifier]))).toBe('CHECKPOINT_INVALID');
  });

  const b64root = root.toString('base64');
  it.each([
    ['no trailing newline', `${ORIGIN}\n1\n${b64root}`],
    ['only two lines', `${ORIGIN}\n1\n`],
    ['empty origin', `\n1\n${b64root}\n`],
    ['a leading zero', `${ORIGIN}\n01\n${b64root}\n`],
    ['a sign', `${ORIGIN}\n+1\n${b64root}\n`],
    ['a negative size', `${ORIGIN}\n-1\n${b64root}\n`],
    ['a space in the size', `${ORIGIN}\n 1\n${b64root}\n`],
    ['a size beyond 2^53', `${ORIGIN}\n9007199254740993\n${b64root}\n`],
    ['a short root', `${ORIGIN}\n1\n${Buffer.alloc(31).toString('base64')}\n`],
    ['an unpadded root', `${ORIGIN}\n1\n${b64root.replace('=', '')}\n`],
    ['non-canonical base64', `${ORIGIN}\n1\n${b64root.slice(0, 42)}r=\n`],
    ['an empty extension line', `${ORIGIN}\n1\n${b64root}\n\next\n`],
    ['a trailing empty line', `${ORIGIN}\n1\n${b64root}\n\n`],
    ['a control character', `${ORIGIN}\x7f\x01\n1\n${b64root}\n`],
  ])('parse rejects %s', (_what, text) => {
    expect(codeOf(() => parseCheckpoint(text))).toBe('CHECKPOINT_INVALID');
  });

  it('format rejects what parse would', () => {
    expect(codeOf(() => formatCheckpoint({ origin: '', size: 1, rootHash: root }))).toBe('CHECKPOINT_INVALID');
    expect(codeOf(() => formatCheckpoint({ origin: 'a\nb', size: 1, rootHash: root }))).toBe('CHECKPOINT_INVALID');
    expect(codeOf(() => formatCheckpoint({ origin: ORIGIN, size: -1, rootHash: root }))).toBe('CHECKPOINT_INVALID');
    expect(codeOf(() => formatCheckpoint({ origin: ORIGIN, size: 1, rootHash: root.subarray(1) }))).toBe('CHECKPOINT_INVALID');
    expect(codeOf(() => formatCheckpoint({ origin: ORIGIN, size: 1, rootHash: root, extensions: [''] }))).toBe('CHECKPOINT_INVALID');
  });
});

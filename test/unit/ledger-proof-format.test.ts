import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  MemoryHashStore,
  MerkleFrontier,
  TLOG_PROOF_HEADER,
  createEcdsaNoteSigner,
  eventLeafHash,
  formatTlogProof,
  generateEcdsaKeyPairPem,
  inclusionProof,
  parseTlogProof,
  parseVerifierKey,
  signCheckpoint,
  signNote,
  verifyTlogProof,
  type LedgerErrorCode,
} from '../../src/ledger/index.js';

function codeOf(action: () => unknown): LedgerErrorCode | 'no error' {
  try {
    action();
    return 'no error';
  } catch (error) {
    return (error as { code: LedgerErrorCode }).code;
  }
}

const sha256 = (text: string): Buffer => createHash('sha256').update(text).digest();

describe('tlog-proof format', () => {
  // The expected texts of transparency-dev/formats proof/tlog_proof_test.go (TestMarshal), commit 0b850f1a.
  const h1 = sha256('hash1');
  const h2 = sha256('hash2');
  it.each([
    [{ index: 5, inclusionProof: [h1, h2], signedCheckpoint: 'test checkpoint\n' }, `c2sp.org/tlog-proof@v1\nindex 5\n${h1.toString('base64')}\n${h2.toString('base64')}\n\ntest checkpoint\n`],
    [
      { index: 10, inclusionProof: [h1], signedCheckpoint: 'checkpoint data\n', extra: Buffer.from('extra information') },
      `c2sp.org/tlog-proof@v1\nextra ${Buffer.from('extra information').toString('base64')}\nindex 10\n${h1.toString('base64')}\n\ncheckpoint data\n`,
    ],
    [{ index: 0, inclusionProof: [], signedCheckpoint: 'checkpoint\n' }, 'c2sp.org/tlog-proof@v1\nindex 0\n\ncheckpoint\n'],
  ])('formats and parses byte-exactly (%#)', (proof, text) => {
    expect(formatTlogProof(proof)).toBe(text);
    expect(parseTlogProof(text)).toEqual(proof);
  });

  it('parses the example of c2sp.org/tlog-proof', () => {
    const example = [
      TLOG_PROOF_HEADER,
      'extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ',
      'index 73894',
      'gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=',
      'B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=',
      'EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=',
      'RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=',
      'AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=',
      '',
      'example.com/fancylog',
      '109482',
      'sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=',
      '',
      '— example.com/fancylog hI2DJw[...]1roloI=',
      '',
    ].join('\n');
    const proof = parseTlogProof(example);
    expect(proof.index).toBe(73894);
    expect(proof.inclusionProof).toHaveLength(5);
    expect(proof.extra?.toString('latin1').startsWith('age-v1.2.1-darwin-arm64.tar.gz')).toBe(true);
    expect(proof.signedCheckpoint.startsWith('example.com/fancylog\n109482\n')).toBe(true);
    expect(formatTlogProof(proof)).toBe(example);
  });

  const hash = h1.toString('base64');
  it.each([
    ['a wrong header', 'wrong-header\nindex 0\n\ncheckpoint\n', /first line/],
    ['invalid extra data', `${TLOG_PROOF_HEADER}\nextra !!notbase64!!\nindex 0\n\ncheckpoint\n`, /extra data is not valid base64/],
    ['a missing index', `${TLOG_PROOF_HEADER}\n\n\ncheckpoint\n`, /index line is missing/],
    ['a non-numeric index', `${TLOG_PROOF_HEADER}\nindex notanumber\n\ncheckpoint\n`, /decimal/],
    ['a negative index', `${TLOG_PROOF_HEADER}\nindex -5\n\ncheckpoint\n`, /decimal/],
    ['a leading zero', `${TLOG_PROOF_HEADER}\nindex 05\n\ncheckpoint\n`, /leading zeroes/],
    ['two spaces', `${TLOG_PROOF_HEADER}\nindex  5\n\ncheckpoint\n`, /decimal/],
    ['an invalid hash', `${TLOG_PROOF_HEADER}\nindex 0\n!!notbase64!!\n\ncheckpoint\n`, /hash 0 is not valid base64/],
    ['a 64-byte hash', `${TLOG_PROOF_HEADER}\nindex 0\n${Buffer.alloc(64).toString('base64')}\n\ncheckpoint\n`, /64 bytes/],
    ['no empty line', `${TLOG_PROOF_HEADER}\nindex 0\n${hash}`, /empty line before the checkpoint/],
    ['no checkpoint', `${TLOG_PROOF_HEADER}\nindex 0\n${hash}\n\n`, /checkpoint is missing/],
    ['65 hashes', `${TLOG_PROOF_HEADER}\nindex 0\n${`${hash}\n`.repeat(65)}\ncheckpoint\n`, /more than 64 hashes/],
  ])('rejects %s', (_what, text, reason) => {
    expect(() => parseTlogProof(text)).toThrow(reason);
    expect(codeOf(() => parseTlogProof(text))).toBe('TLOG_PROOF_MALFORMED');
  });
});

describe('tlog-proof verification, end to end', () => {
  const ORIGIN = 'caracal.example/ledger';
  const logSigner = createEcdsaNoteSigner(ORIGIN, generateEcdsaKeyPairPem().privateKeyPem);
  const log = { origin: ORIGIN, verifiers: [parseVerifierKey(logSigner.verifierKey)] };
  const events = Array.from({ length: 13 }, (_, i) => ({ type: 'dev.caracal.decision.v1', id: `event-${i}`, data: { allowed: i % 3 !== 0 } }));

  async function proofFor(index: number, signers = [logSigner]): Promise<string> {
    const store = new MemoryHashStore();
    const frontier = MerkleFrontier.empty();
    for (const event of events) store.put(frontier.append(eventLeafHash(event)));
    const signedCheckpoint = signCheckpoint({ origin: ORIGIN, size: frontier.size, rootHash: frontier.root() }, signers);
    return formatTlogProof({ index, inclusionProof: await inclusionProof(index, frontier.size, store), signedCheckpoint });
  }

  it('verifies every entry of a signed tree', async () => {
    for (let index = 0; index < events.length; index++) {
      const verified = verifyTlogProof(await proofFor(index), eventLeafHash(events[index]), log);
      expect(verified).toMatchObject({ index, checkpoint: { origin: ORIGIN, size: events.length } });
    }
  });

  it('ignores unknown cosignatures and reports them', async () => {
    const witness = createEcdsaNoteSigner('witness.example', generateEcdsaKeyPairPem().privateKeyPem);
    const verified = verifyTlogProof(await proofFor(4, [logSigner, witness]), eventLeafHash(events[4]), log);
    expect(verified.note.unverified.map((s) => s.name)).toEqual(['witness.example']);
  });

  it('rejects another entry, index, origin, key, or a tampered checkpoint', async () => {
    const text = await proofFor(5);
    const leaf = eventLeafHash(events[5]);
    expect(codeOf(() => verifyTlogProof(text, eventLeafHash(events[6]), log))).toBe('PROOF_INVALID');
    expect(codeOf(() => verifyTlogProof(text.replace('index 5', 'index 4'), leaf, log))).toBe('PROOF_INVALID');
    expect(codeOf(() => verifyTlogProof(text.replace('index 5', 'index 13'), leaf, log))).toBe('PROOF_INVALID');
    expect(codeOf(() => verifyTlogProof(text, leaf, { ...log, origin: 'other.example/log' }))).toBe('CHECKPOINT_INVALID');
    const stranger = parseVerifierKey(createEcdsaNoteSigner(ORIGIN, generateEcdsaKeyPairPem().privateKeyPem).verifierKey);
    expect(codeOf(() => verifyTlogProof(text, leaf, { ...log, verifiers: [stranger] }))).toBe('NOTE_UNTRUSTED');
    expect(codeOf(() => verifyTlogProof(text.replace(`${ORIGIN}\n13\n`, `${ORIGIN}\n14\n`), leaf, log))).toBe('SIGNATURE_INVALID');
    // A checkpoint correctly signed by the log but for a different tree.
    const otherTree = signCheckpoint({ origin: ORIGIN, size: 13, rootHash: Buffer.alloc(32) }, [logSigner]);
    const parsed = parseTlogProof(text);
    expect(codeOf(() => verifyTlogProof({ ...parsed, signedCheckpoint: otherTree }, leaf, log))).toBe('PROOF_INVALID');
    // A note that is signed by the log but is not a checkpoint.
    expect(codeOf(() => verifyTlogProof({ ...parsed, signedCheckpoint: signNote(`${ORIGIN}\n`, [logSigner]) }, leaf, log))).toBe(
      'CHECKPOINT_INVALID',
    );
  });
});

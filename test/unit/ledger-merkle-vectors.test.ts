// RFC 6962 / RFC 9162 test vectors from transparency-dev/merkle (see ../shared/test-vectors/rfc6962/README.md).
import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  MemoryHashStore,
  MerkleFrontier,
  consistencyProof,
  inclusionProof,
  isLedgerError,
  leafHash,
  rootAt,
  rootFromLeafHashes,
  verifyConsistency,
  verifyInclusion,
} from '../../src/ledger/index.js';

const VECTORS = new URL('../../../shared/test-vectors/rfc6962/', import.meta.url);

interface InclusionVector {
  leafIdx: number;
  treeSize: number;
  root: string;
  leafHash: string;
  proof: string[] | null;
  desc: string;
  wantErr: boolean;
}

interface ConsistencyVector {
  size1: number;
  size2: number;
  root1: string;
  root2: string;
  proof: string[] | null;
  desc: string;
  wantErr: boolean;
}

function loadVectors<T>(kind: 'inclusion' | 'consistency'): Array<{ file: string; vector: T }> {
  const dir = new URL(`${kind}/`, VECTORS);
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .filter((file) => file.endsWith('.json'))
    .sort()
    .map((file) => ({ file, vector: JSON.parse(readFileSync(new URL(file, dir), 'utf8')) as T }));
}

// Vectors hold deliberately invalid base64 ("don't care") too: decode leniently, as the upstream Go tests do.
const b64 = (text: string): Buffer => Buffer.from(text, 'base64');
const proofOf = (proof: string[] | null): Buffer[] => (proof ?? []).map(b64);

function outcome(verify: () => void): 'ok' | 'rejected' {
  try {
    verify();
    return 'ok';
  } catch (error) {
    if (isLedgerError(error, 'PROOF_INVALID')) return 'rejected';
    throw error;
  }
}

const roots = JSON.parse(readFileSync(new URL('roots.json', VECTORS), 'utf8')) as {
  leafInputsHex: string[];
  rootHashesHex: string[];
};
const leafHashes = roots.leafInputsHex.map((hex) => leafHash(Buffer.from(hex, 'hex')));

function storeOfAllLeaves(): MemoryHashStore {
  const store = new MemoryHashStore();
  const frontier = MerkleFrontier.empty();
  for (const hash of leafHashes) store.put(frontier.append(hash));
  return store;
}

describe('RFC 6962 roots.json', () => {
  it('has the root of every prefix, by definition, by frontier and from stored hashes', async () => {
    const store = storeOfAllLeaves();
    const frontier = MerkleFrontier.empty();
    for (let size = 0; size <= leafHashes.length; size++) {
      const expected = roots.rootHashesHex[size];
      expect(rootFromLeafHashes(leafHashes.slice(0, size)).toString('hex'), `size ${size}`).toBe(expected);
      expect(frontier.root().toString('hex'), `frontier at size ${size}`).toBe(expected);
      expect((await rootAt(size, store)).toString('hex'), `rootAt ${size}`).toBe(expected);
      if (size < leafHashes.length) frontier.append(leafHashes[size]!);
    }
  });
});

describe('RFC 6962 inclusion vectors', () => {
  const vectors = loadVectors<InclusionVector>('inclusion');

  it('loads the whole set', () => {
    expect(vectors.length).toBeGreaterThan(80);
    expect(vectors.some(({ vector }) => !vector.wantErr)).toBe(true);
  });

  it.each(vectors.map(({ file, vector }) => [file, vector] as const))('%s', (_file, v) => {
    const result = outcome(() => verifyInclusion(b64(v.leafHash), v.leafIdx, v.treeSize, proofOf(v.proof), b64(v.root)));
    expect(result).toBe(v.wantErr ? 'rejected' : 'ok');
  });

  it('generates exactly the happy-path proofs', async () => {
    const store = storeOfAllLeaves();
    for (const { file, vector } of vectors.filter(({ file }) => file.endsWith('happy-path.json'))) {
      const proof = await inclusionProof(vector.leafIdx, vector.treeSize, store);
      expect(proof.map((hash) => hash.toString('base64')), file).toEqual(vector.proof ?? []);
      expect(leafHashes[vector.leafIdx]!.toString('base64')).toBe(vector.leafHash);
    }
  });
});

describe('RFC 6962 consistency vectors', () => {
  const vectors = loadVectors<ConsistencyVector>('consistency');

  it('loads the whole set', () => {
    expect(vectors.length).toBeGreaterThan(80);
  });

  it.each(vectors.map(({ file, vector }) => [file, vector] as const))('%s', (_file, v) => {
    const result = outcome(() => verifyConsistency(v.size1, v.size2, proofOf(v.proof), b64(v.root1), b64(v.root2)));
    expect(result).toBe(v.wantErr ? 'rejected' : 'ok');
  });

  it('generates exactly the happy-path proofs', async () => {
    const store = storeOfAllLeaves();
    for (const { file, vector } of vectors.filter(({ file }) => file.endsWith('happy-path.json'))) {
      const proof = await consistencyProof(vector.size1, vector.size2, store);
      expect(proof.map((hash) => hash.toString('base64')), file).toEqual(vector.proof ?? []);
    }
  });
});

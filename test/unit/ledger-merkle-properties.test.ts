// Property tests of the Merkle core against the recursive definitions of RFC 9162 §2.1, with fast-check.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MemoryHashStore,
  MerkleFrontier,
  consistencyProof,
  frontierNodeIds,
  inclusionProof,
  isLedgerError,
  leafHash,
  rootAt,
  rootFromLeafHashes,
  verifyConsistency,
  verifyInclusion,
  type HashReader,
  type NodeId,
} from '../../src/ledger/index.js';

const MAX_LEAVES = 10_000;

interface Tree {
  leaves: Buffer[];
  store: MemoryHashStore;
  /** The root at `size`, from the stored hashes (rootAt is checked against the recursive definition above). */
  root(size: number): Promise<Buffer>;
}

/** Distinct leaves (the index is part of the input), so no two siblings can hash alike by accident. */
function buildTree(size: number, seed: number): Tree {
  const leaves: Buffer[] = [];
  const store = new MemoryHashStore();
  const frontier = MerkleFrontier.empty();
  for (let i = 0; i < size; i++) {
    const hash = leafHash(Buffer.from(`leaf ${seed} ${i}`));
    leaves.push(hash);
    store.put(frontier.append(hash));
  }
  return { leaves, store, root: (n) => rootAt(n, store) };
}

// Proof properties draw a size and pick one of these, so every run does not pay for building 10k leaves; any tree
// of size n is the prefix of a larger one, and proofs for size n read only nodes inside [0, n).
let largeTrees: Tree[] | undefined;
const someLargeTree = (seed: number): Tree => {
  largeTrees ??= [buildTree(MAX_LEAVES, 11), buildTree(MAX_LEAVES, 12)];
  return largeTrees[Math.abs(seed) % largeTrees.length]!;
};

function rejects(verify: () => void): boolean {
  try {
    verify();
    return false;
  } catch (error) {
    if (isLedgerError(error, 'PROOF_INVALID')) return true;
    throw error;
  }
}

function flipBit(bytes: Buffer, bit: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[Math.floor(bit / 8) % copy.length]! ^= 1 << bit % 8;
  return copy;
}

const largestPowerOfTwoBelow = (n: number): number => 2 ** Math.ceil(Math.log2(n) - 1);

/** Sibling sides of leaf i's audit path in a tree of n leaves, leaf to root, from the recursive PATH definition. */
function pathShape(i: number, n: number): string {
  if (n === 1) return '';
  const k = largestPowerOfTwoBelow(n);
  return i < k ? `${pathShape(i, k)}R` : `${pathShape(i - k, n - k)}L`;
}

/** What a consistency proof from m to n is made of, from the recursive SUBPROOF definition. */
function consistencyShape(m: number, n: number): string {
  const sub = (mm: number, nn: number, isOldTree: boolean): string => {
    if (mm === nn) return isOldTree ? 'old-root:' : 'seed:';
    const k = largestPowerOfTwoBelow(nn);
    return mm <= k ? `${sub(mm, k, isOldTree)}R` : `${sub(mm - k, nn - k, false)}L`;
  };
  return sub(m, n, true);
}

/** Counts the nodes a proof asks for, to check the O(log n) bound. */
function countingReader(store: MemoryHashStore): HashReader & { reads: number; nodes: number } {
  const reader = {
    reads: 0,
    nodes: 0,
    readHashes(nodes: readonly NodeId[]) {
      reader.reads++;
      reader.nodes += nodes.length;
      return store.readHashes(nodes);
    },
  };
  return reader;
}

describe('frontier', () => {
  it('gives the root of every prefix and stores every complete subtree (exhaustive to 300 leaves)', async () => {
    const tree = buildTree(300, 1);
    const frontier = MerkleFrontier.empty();
    for (let size = 1; size <= 300; size++) {
      const expectedRoot = rootFromLeafHashes(tree.leaves.slice(0, size));
      const created = frontier.append(tree.leaves[size - 1]!);
      // One node per level the append completed: the trailing one-bits of the old size, plus the leaf.
      expect(created.length).toBe(1 + Math.log2(((size - 1) ^ size) + 1) - 1);
      expect(frontier.root()).toEqual(expectedRoot);
      expect(await rootAt(size, tree.store)).toEqual(expectedRoot);
      const restored = await MerkleFrontier.load(size, tree.store);
      expect(restored.hashes()).toEqual(frontier.hashes());
    }
  });

  it('matches full recomputation on random trees up to 10k leaves', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAX_LEAVES }), fc.integer(), (size, seed) => {
        const tree = buildTree(size, seed);
        const frontier = MerkleFrontier.fromHashes(size, tree.store.readHashes(frontierNodeIds(size)));
        expect(frontier.root()).toEqual(rootFromLeafHashes(tree.leaves));
      }),
      { numRuns: 6 },
    );
  });

  it('rejects restoring with the wrong number of hashes', () => {
    expect(() => MerkleFrontier.fromHashes(3, [Buffer.alloc(32)])).toThrow(/has 2 frontier hashes/);
  });
});

describe('inclusion proofs', () => {
  it('verify for every leaf of every tree up to 64 leaves, and fail for every other index (to 16)', async () => {
    const tree = buildTree(64, 2);
    for (let size = 1; size <= 64; size++) {
      const root = await tree.root(size);
      for (let index = 0; index < size; index++) {
        const proof = await inclusionProof(index, size, tree.store);
        verifyInclusion(tree.leaves[index]!, index, size, proof, root);
        for (let other = 0; size <= 16 && other < size; other++) {
          if (other !== index) expect(rejects(() => verifyInclusion(tree.leaves[index]!, other, size, proof, root))).toBe(true);
        }
      }
    }
  });

  it('verify on random trees up to 10k leaves; any bit flip, other index or other-shaped size is rejected', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: MAX_LEAVES }),
        fc.integer(),
        fc.nat(),
        fc.nat(),
        fc.nat(),
        fc.integer({ min: 1, max: MAX_LEAVES * 2 }),
        async (size, seed, indexSeed, otherIndexSeed, bit, otherSize) => {
          const tree = someLargeTree(seed);
          const index = indexSeed % size;
          const root = await tree.root(size);
          const leaf = tree.leaves[index]!;
          const reader = countingReader(tree.store);
          const proof = await inclusionProof(index, size, reader);
          expect(reader.reads).toBe(1);
          expect(reader.nodes).toBeLessThanOrEqual(2 * Math.ceil(Math.log2(size)) + 1);
          verifyInclusion(leaf, index, size, proof, root);

          if (proof.length > 0) {
            const at = bit % proof.length;
            const mutated = proof.map((hash, i) => (i === at ? flipBit(hash, bit) : hash));
            expect(rejects(() => verifyInclusion(leaf, index, size, mutated, root))).toBe(true);
            expect(rejects(() => verifyInclusion(leaf, index, size, proof.slice(1), root))).toBe(true);
          }
          expect(rejects(() => verifyInclusion(leaf, index, size, [...proof, root], root))).toBe(true);
          expect(rejects(() => verifyInclusion(leaf, index, size, proof, flipBit(root, bit)))).toBe(true);
          expect(rejects(() => verifyInclusion(flipBit(leaf, bit), index, size, proof, root))).toBe(true);

          const otherIndex = otherIndexSeed % size;
          if (otherIndex !== index) expect(rejects(() => verifyInclusion(leaf, otherIndex, size, proof, root))).toBe(true);
          expect(rejects(() => verifyInclusion(leaf, size + (otherIndexSeed % 5), size, proof, root))).toBe(true);

          // RFC 9162 §2.1.3.2 reads the tree size only through the shape of the path, so another size that gives
          // the leaf the same path shape is indistinguishable (callers take the size from the signed checkpoint);
          // every other size must be rejected.
          if (otherSize !== size && index < otherSize) {
            const sameShape = pathShape(index, otherSize) === pathShape(index, size);
            expect(rejects(() => verifyInclusion(leaf, index, otherSize, proof, root))).toBe(!sameShape);
          }
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('consistency proofs', () => {
  it('verify for every pair of sizes up to 64 leaves, and fail against any other old size (to 16)', async () => {
    const tree = buildTree(64, 3);
    const roots = await Promise.all(Array.from({ length: 65 }, (_, size) => tree.root(size)));
    for (let newSize = 1; newSize <= 64; newSize++) {
      for (let oldSize = 1; oldSize <= newSize; oldSize++) {
        const proof = await consistencyProof(oldSize, newSize, tree.store);
        verifyConsistency(oldSize, newSize, proof, roots[oldSize]!, roots[newSize]!);
        for (let other = 1; newSize <= 16 && other <= newSize; other++) {
          if (other === oldSize) continue;
          const accepted = !rejects(() => verifyConsistency(other, newSize, proof, roots[other]!, roots[newSize]!));
          expect(accepted, `${oldSize}→${newSize} proof accepted as ${other}→${newSize}`).toBe(false);
        }
      }
    }
  });

  it('verify on random trees up to 10k leaves; any bit flip or other-shaped sizes are rejected', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: MAX_LEAVES }),
        fc.integer(),
        fc.nat(),
        fc.nat(),
        fc.integer({ min: -3, max: 3 }),
        fc.integer({ min: -3, max: 3 }),
        async (newSize, seed, oldSeed, bit, oldDelta, newDelta) => {
          const tree = someLargeTree(seed);
          const oldSize = 1 + (oldSeed % (newSize - 1)); // 0 < oldSize < newSize
          const oldRoot = await tree.root(oldSize);
          const newRoot = await tree.root(newSize);
          const reader = countingReader(tree.store);
          const proof = await consistencyProof(oldSize, newSize, reader);
          expect(reader.reads).toBe(1);
          expect(reader.nodes).toBeLessThanOrEqual(3 * Math.ceil(Math.log2(newSize)) + 1);
          verifyConsistency(oldSize, newSize, proof, oldRoot, newRoot);

          const at = bit % proof.length;
          const mutated = proof.map((hash, i) => (i === at ? flipBit(hash, bit) : hash));
          expect(rejects(() => verifyConsistency(oldSize, newSize, mutated, oldRoot, newRoot))).toBe(true);
          expect(rejects(() => verifyConsistency(oldSize, newSize, proof, flipBit(oldRoot, bit), newRoot))).toBe(true);
          expect(rejects(() => verifyConsistency(oldSize, newSize, proof, oldRoot, flipBit(newRoot, bit)))).toBe(true);
          expect(rejects(() => verifyConsistency(oldSize, newSize, proof.slice(0, -1), oldRoot, newRoot))).toBe(true);
          expect(rejects(() => verifyConsistency(oldSize, newSize, [...proof, newRoot], oldRoot, newRoot))).toBe(true);
          expect(rejects(() => verifyConsistency(newSize, oldSize, proof, newRoot, oldRoot))).toBe(true);
          expect(rejects(() => verifyConsistency(0, newSize, proof, oldRoot, newRoot))).toBe(true);

          // As for inclusion: sizes enter only through the shape of the proof.
          const otherOld = oldSize + oldDelta;
          const otherNew = newSize + newDelta;
          if ((oldDelta !== 0 || newDelta !== 0) && otherOld > 0 && otherOld < otherNew) {
            const sameShape = consistencyShape(otherOld, otherNew) === consistencyShape(oldSize, newSize);
            expect(rejects(() => verifyConsistency(otherOld, otherNew, proof, oldRoot, newRoot))).toBe(!sameShape);
          }
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('argument checks', () => {
  it('refuse impossible requests and malformed input', async () => {
    const tree = buildTree(5, 4);
    await expect(inclusionProof(5, 5, tree.store)).rejects.toThrow(/not below tree size/);
    await expect(inclusionProof(-1, 5, tree.store)).rejects.toThrow(/non-negative safe integer/);
    await expect(consistencyProof(0, 5, tree.store)).rejects.toThrow(/empty tree/);
    await expect(consistencyProof(6, 5, tree.store)).rejects.toThrow(/larger than new size/);
    expect(await consistencyProof(5, 5, tree.store)).toEqual([]);
    await expect(rootAt(6, tree.store)).rejects.toThrow(/not stored/);
    const short: HashReader = { readHashes: () => [] };
    await expect(inclusionProof(0, 5, short)).rejects.toThrow(/asked for 3 hashes, got 0/);
    const proof = await inclusionProof(1, 5, tree.store);
    const root = await tree.root(5);
    expect(rejects(() => verifyInclusion(tree.leaves[1]!, 1.5, 5, proof, root))).toBe(true);
    expect(rejects(() => verifyInclusion(tree.leaves[1]!.subarray(1), 1, 5, proof, root))).toBe(true);
    expect(rejects(() => verifyInclusion(tree.leaves[1]!, 1, 5, [proof[0]!.subarray(0, 31), ...proof.slice(1)], root))).toBe(true);
    expect(() => MerkleFrontier.empty().append(Buffer.alloc(31))).toThrow(/32 bytes/);
  });

  it('handles sizes beyond 2^32 without 32-bit truncation', () => {
    const size = 2 ** 40 + 3;
    const nodes = frontierNodeIds(size);
    expect(nodes).toEqual([
      { level: 40, index: 0 },
      { level: 1, index: 2 ** 39 },
      { level: 0, index: 2 ** 40 + 2 },
    ]);
  });
});

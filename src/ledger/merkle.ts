/**
 * RFC 6962 §2.1 / RFC 9162 §2.1 Merkle tree hashing over SHA-256, proof generation from stored subtree hashes, proof
 * verification (RFC 9162 §2.1.3.2 and §2.1.4.2, step by step), and an append-only frontier for writers.
 *
 * Sizes and indices are JS numbers limited to safe integers (2^53 - 1 leaves); no bitwise operators are used on them,
 * because those truncate to 32 bits.
 */
import { createHash } from 'node:crypto';
import { LedgerError } from './errors.js';

export const HASH_SIZE = 32;

const LEAF_PREFIX = Buffer.from([0x00]);
const NODE_PREFIX = Buffer.from([0x01]);

/** MTH({d}) = SHA-256(0x00 ‖ d) — RFC 6962 §2.1. The 0x00/0x01 prefixes keep leaves and inner nodes apart. */
export function leafHash(leafInput: Uint8Array): Buffer {
  return createHash('sha256').update(LEAF_PREFIX).update(leafInput).digest();
}

/** SHA-256(0x01 ‖ left ‖ right) — RFC 6962 §2.1. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Buffer {
  requireHash(left, 'left child hash');
  requireHash(right, 'right child hash');
  return hashChildren(left, right);
}

/** MTH({}) = SHA-256() — the root of the empty tree. A fresh Buffer each call: Buffers are mutable. */
export function emptyTreeRoot(): Buffer {
  return createHash('sha256').digest();
}

/**
 * The Merkle Tree Hash of a list of leaf hashes, computed straight from the recursive definition (split at the largest
 * power of two smaller than n). O(n): meant for tests, small trees and cross-checking; writers use MerkleFrontier.
 */
export function rootFromLeafHashes(leafHashes: readonly Uint8Array[]): Buffer {
  leafHashes.forEach((hash, i) => requireHash(hash, `leaf hash ${i}`));
  if (leafHashes.length === 0) return emptyTreeRoot();
  const mth = (start: number, end: number): Buffer => {
    if (end - start === 1) return Buffer.from(leafHashes[start]!);
    const k = largestPowerOfTwoBelow(end - start);
    return hashChildren(mth(start, start + k), mth(start + k, end));
  };
  return mth(0, leafHashes.length);
}

// ---------------------------------------------------------------------------------------------------------------------
// Stored hashes

/**
 * A complete (perfect) subtree: the 2^level leaves [index·2^level, (index+1)·2^level). Level 0 nodes are leaf hashes.
 * These are exactly the hashes a tlog-tiles store holds: the node (level L, index N) with L = 8·t is entry N mod 256
 * of tile (t, ⌊N/256⌋); nodes of other levels are recomputed from the tile below (c2sp.org/tlog-tiles).
 */
export interface NodeId {
  readonly level: number;
  readonly index: number;
}

export interface StoredNode extends NodeId {
  readonly hash: Buffer;
}

/**
 * Read access to stored complete-subtree hashes. Every proof asks for O(log n) nodes in a single call, so a storage
 * layer can batch them (one query, or one fetch per distinct tile). It may be synchronous or asynchronous. It must
 * return one 32-byte hash per requested node, in request order, and may throw if a node is not stored.
 */
export interface HashReader {
  readHashes(nodes: readonly NodeId[]): readonly Uint8Array[] | Promise<readonly Uint8Array[]>;
}

/** Keeps every complete-subtree hash in memory; the reference HashReader for tests and small tools. */
export class MemoryHashStore implements HashReader {
  private readonly levels: Buffer[][] = [];

  put(nodes: readonly StoredNode[]): void {
    for (const node of nodes) {
      requireHash(node.hash, `hash of node ${node.level}/${node.index}`);
      (this.levels[node.level] ??= [])[node.index] = Buffer.from(node.hash);
    }
  }

  readHashes(nodes: readonly NodeId[]): Buffer[] {
    return nodes.map(({ level, index }) => {
      const hash = this.levels[level]?.[index];
      if (hash === undefined) throw new LedgerError('HASH_READER', `node ${level}/${index} is not stored`);
      return Buffer.from(hash); // a copy: callers must not be able to alter the stored tree
    });
  }
}

/** The complete subtrees that make up a tree of `size` leaves, largest (leftmost) first: one per set bit of size. */
export function frontierNodeIds(size: number): NodeId[] {
  requireCount(size, 'size');
  return completeSubtrees(0, size);
}

/** The root of the tree of `size` leaves, from at most log2(size) stored hashes. */
export async function rootAt(size: number, reader: HashReader): Promise<Buffer> {
  requireCount(size, 'size');
  if (size === 0) return emptyTreeRoot();
  const [root] = await hashRanges([[0, size]], reader);
  return root!;
}

// ---------------------------------------------------------------------------------------------------------------------
// Proof generation

/**
 * The audit path PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered from the leaf's sibling up to the root's child
 * (the order RFC 9162 §2.1.3.2 and c2sp.org/tlog-proof expect).
 */
export async function inclusionProof(index: number, size: number, reader: HashReader): Promise<Buffer[]> {
  requireCount(index, 'index');
  requireCount(size, 'size');
  if (index >= size) throw new LedgerError('INVALID_ARGUMENT', `index ${index} is not below tree size ${size}`);
  return hashRanges(inclusionRanges(index, size), reader);
}

/**
 * The consistency proof PROOF(oldSize, D[0:newSize]) of RFC 9162 §2.1.4.1. Empty when the sizes are equal. RFC 9162
 * defines no proof from the empty tree (0 < m), and verifyConsistency rejects one, so oldSize 0 is an error here too.
 */
export async function consistencyProof(oldSize: number, newSize: number, reader: HashReader): Promise<Buffer[]> {
  requireCount(oldSize, 'old size');
  requireCount(newSize, 'new size');
  if (oldSize === 0) throw new LedgerError('INVALID_ARGUMENT', 'there is no consistency proof from the empty tree');
  if (oldSize > newSize) throw new LedgerError('INVALID_ARGUMENT', `old size ${oldSize} is larger than new size ${newSize}`);
  const ranges: LeafRange[] = [];
  collectConsistencyRanges(oldSize, 0, newSize, true, ranges);
  return hashRanges(ranges, reader);
}

/** A half-open range [start, end) of leaves whose MTH is one proof element. */
type LeafRange = readonly [start: number, end: number];

function inclusionRanges(index: number, size: number): LeafRange[] {
  // PATH(m, D[n]): split at k; the sibling side goes into the proof, descend into the side holding m.
  const fromRoot: LeafRange[] = [];
  let start = 0;
  let end = size;
  while (end - start > 1) {
    const middle = start + largestPowerOfTwoBelow(end - start);
    if (index < middle) {
      fromRoot.push([middle, end]);
      end = middle;
    } else {
      fromRoot.push([start, middle]);
      start = middle;
    }
  }
  return fromRoot.reverse();
}

/** SUBPROOF(m, D[start:end], b) of RFC 9162 §2.1.4.1, with m counted from `start`. */
function collectConsistencyRanges(m: number, start: number, end: number, isOldTree: boolean, out: LeafRange[]): void {
  if (m === end - start) {
    if (!isOldTree) out.push([start, end]);
    return;
  }
  const k = largestPowerOfTwoBelow(end - start);
  if (m <= k) {
    collectConsistencyRanges(m, start, start + k, isOldTree, out);
    out.push([start + k, end]);
  } else {
    collectConsistencyRanges(m - k, start + k, end, false, out);
    out.push([start, start + k]);
  }
}

/**
 * The MTH of each range, from stored complete subtrees. Every range produced above is a node of the RFC 6962 tree
 * shape (it starts at a multiple of the largest power of two not above its length), so its complete subtrees have
 * strictly decreasing sizes and its MTH is their right-to-left fold. Only one range per proof is incomplete, so a
 * proof needs O(log n) stored hashes, all fetched in one read.
 */
async function hashRanges(ranges: readonly LeafRange[], reader: HashReader): Promise<Buffer[]> {
  const nodesPerRange = ranges.map(([start, end]) => completeSubtrees(start, end));
  const wanted = nodesPerRange.flat();
  const hashes = await reader.readHashes(wanted);
  if (hashes.length !== wanted.length) {
    throw new LedgerError('HASH_READER', `asked for ${wanted.length} hashes, got ${hashes.length}`);
  }
  hashes.forEach((hash, i) => {
    if (hash.length !== HASH_SIZE) {
      throw new LedgerError('HASH_READER', `hash of node ${wanted[i]!.level}/${wanted[i]!.index} is ${hash.length} bytes, not ${HASH_SIZE}`);
    }
  });
  let offset = 0;
  return nodesPerRange.map((nodes) => {
    const part = hashes.slice(offset, offset + nodes.length);
    offset += nodes.length;
    return foldRight(part);
  });
}

function foldRight(hashes: readonly Uint8Array[]): Buffer {
  let hash: Buffer = Buffer.from(hashes[hashes.length - 1]!);
  for (let i = hashes.length - 2; i >= 0; i--) hash = hashChildren(hashes[i]!, hash);
  return hash;
}

/** Splits [start, end) into maximal aligned complete subtrees, left to right. */
function completeSubtrees(start: number, end: number): NodeId[] {
  const nodes: NodeId[] = [];
  while (start < end) {
    let level = 0;
    while (start % 2 ** (level + 1) === 0 && start + 2 ** (level + 1) <= end) level++;
    nodes.push({ level, index: start / 2 ** level });
    start += 2 ** level;
  }
  return nodes;
}

// ---------------------------------------------------------------------------------------------------------------------
// Proof verification

/**
 * Verifies an inclusion proof exactly as RFC 9162 §2.1.3.2 describes; throws LedgerError('PROOF_INVALID') with the
 * reason on any failure, including malformed input (hash lengths, index ≥ size, proof too long or too short).
 */
export function verifyInclusion(
  leafHashValue: Uint8Array,
  index: number,
  size: number,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): void {
  requireProofCount(index, 'index');
  requireProofCount(size, 'tree size');
  requireProofHash(leafHashValue, 'leaf hash');
  requireProofHash(root, 'root');
  proof.forEach((hash, i) => requireProofHash(hash, `proof hash ${i}`));
  // 1. leaf_index >= tree_size fails.
  if (index >= size) throw proofInvalid(`index ${index} is not below tree size ${size}`);
  // 2.–3.
  let fn = index;
  let sn = size - 1;
  let r: Buffer = Buffer.from(leafHashValue);
  // 4.
  for (const p of proof) {
    if (sn === 0) throw proofInvalid(`proof is too long for index ${index} in a tree of size ${size}`);
    if (isOdd(fn) || fn === sn) {
      r = hashChildren(p, r);
      if (!isOdd(fn)) {
        while (!isOdd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      r = hashChildren(r, p);
    }
    fn = half(fn);
    sn = half(sn);
  }
  // 5.
  if (sn !== 0) throw proofInvalid(`proof is too short for index ${index} in a tree of size ${size}`);
  if (!r.equals(root)) throw proofInvalid('the proof does not lead to the expected root');
}

/**
 * Verifies a consistency proof between the tree heads (oldSize, oldRoot) and (newSize, newRoot) exactly as RFC 9162
 * §2.1.4.2 describes, for 0 < oldSize < newSize. Boundaries the algorithm leaves open: equal sizes need an empty proof
 * and equal roots; oldSize 0 is rejected (RFC 9162 defines consistency proofs only for 0 < m, and a proof from the
 * empty tree proves nothing); oldSize > newSize is rejected. Throws LedgerError('PROOF_INVALID').
 */
export function verifyConsistency(
  oldSize: number,
  newSize: number,
  proof: readonly Uint8Array[],
  oldRoot: Uint8Array,
  newRoot: Uint8Array,
): void {
  requireProofCount(oldSize, 'old size');
  requireProofCount(newSize, 'new size');
  if (oldSize > newSize) throw proofInvalid(`old size ${oldSize} is larger than new size ${newSize}`);
  if (oldSize === 0) throw proofInvalid('there is no consistency proof from the empty tree');
  if (oldSize === newSize) {
    if (proof.length !== 0) throw proofInvalid('the sizes are equal, so the proof must be empty');
    if (!Buffer.from(oldRoot).equals(newRoot)) throw proofInvalid('the sizes are equal but the roots differ');
    return;
  }
  requireProofHash(oldRoot, 'old root');
  requireProofHash(newRoot, 'new root');
  proof.forEach((hash, i) => requireProofHash(hash, `proof hash ${i}`));
  // 1.
  if (proof.length === 0) throw proofInvalid('the proof is empty');
  // 2. An old tree of 2^k leaves is itself a node of the new tree, so its root starts the path.
  const path: readonly Uint8Array[] = isPowerOfTwo(oldSize) ? [oldRoot, ...proof] : proof;
  // 3.–4.
  let fn = oldSize - 1;
  let sn = newSize - 1;
  while (isOdd(fn)) {
    fn = half(fn);
    sn = half(sn);
  }
  // 5.
  let fr: Buffer = Buffer.from(path[0]!);
  let sr: Buffer = Buffer.from(path[0]!);
  // 6.
  for (const c of path.slice(1)) {
    if (sn === 0) throw proofInvalid(`proof is too long for sizes ${oldSize} → ${newSize}`);
    if (isOdd(fn) || fn === sn) {
      fr = hashChildren(c, fr);
      sr = hashChildren(c, sr);
      if (!isOdd(fn)) {
        while (!isOdd(fn) && fn !== 0) {
          fn = half(fn);
          sn = half(sn);
        }
      }
    } else {
      sr = hashChildren(sr, c);
    }
    fn = half(fn);
    sn = half(sn);
  }
  // 7.
  if (sn !== 0) throw proofInvalid(`proof is too short for sizes ${oldSize} → ${newSize}`);
  if (!fr.equals(oldRoot)) throw proofInvalid('the proof does not lead to the old root');
  if (!sr.equals(newRoot)) throw proofInvalid('the proof does not lead to the new root');
}

// ---------------------------------------------------------------------------------------------------------------------
// Frontier

/**
 * The compact range [0, size) of an append-only tree: the roots of its complete subtrees, one per set bit of size,
 * largest first. A writer keeps this in memory: each append costs O(log n) hashes, reads nothing, yields the new root,
 * and returns the complete-subtree hashes the append created so storage can persist them (a HashReader later serves
 * proofs from them). Restore it after a restart with `MerkleFrontier.load(size, reader)`.
 */
export class MerkleFrontier {
  private constructor(
    private treeSize: number,
    private readonly peaks: Buffer[],
  ) {}

  static empty(): MerkleFrontier {
    return new MerkleFrontier(0, []);
  }

  /** From the hashes of frontierNodeIds(size), in that order. */
  static fromHashes(size: number, hashes: readonly Uint8Array[]): MerkleFrontier {
    const expected = frontierNodeIds(size).length;
    if (hashes.length !== expected) {
      throw new LedgerError('INVALID_ARGUMENT', `a tree of size ${size} has ${expected} frontier hashes, got ${hashes.length}`);
    }
    hashes.forEach((hash, i) => requireHash(hash, `frontier hash ${i}`));
    return new MerkleFrontier(size, hashes.map((hash) => Buffer.from(hash)));
  }

  static async load(size: number, reader: HashReader): Promise<MerkleFrontier> {
    const nodes = frontierNodeIds(size);
    const hashes = await reader.readHashes(nodes);
    if (hashes.length !== nodes.length) {
      throw new LedgerError('HASH_READER', `asked for ${nodes.length} hashes, got ${hashes.length}`);
    }
    return MerkleFrontier.fromHashes(size, hashes);
  }

  get size(): number {
    return this.treeSize;
  }

  /** Copies of the frontier hashes (the nodes of frontierNodeIds(size)). */
  hashes(): Buffer[] {
    return this.peaks.map((hash) => Buffer.from(hash));
  }

  root(): Buffer {
    return this.peaks.length === 0 ? emptyTreeRoot() : foldRight(this.peaks);
  }

  /**
   * Appends one leaf (its leaf hash, not its input) at index `size`. Returns the complete subtrees the append created:
   * the leaf itself at level 0, then one node per level it completed, bottom-up.
   */
  append(leafHashValue: Uint8Array): StoredNode[] {
    requireHash(leafHashValue, 'leaf hash');
    if (this.treeSize >= Number.MAX_SAFE_INTEGER) throw new LedgerError('INVALID_ARGUMENT', 'the tree is full');
    let hash: Buffer = Buffer.from(leafHashValue);
    let level = 0;
    let index = this.treeSize;
    const created: StoredNode[] = [{ level, index, hash }];
    // Each set low bit of the old size is a complete subtree of that height waiting for a right sibling of equal height.
    while (isOdd(index)) {
      hash = hashChildren(this.peaks.pop()!, hash);
      level++;
      index = half(index);
      created.push({ level, index, hash });
    }
    this.peaks.push(hash);
    this.treeSize++;
    return created;
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Helpers

function hashChildren(left: Uint8Array, right: Uint8Array): Buffer {
  return createHash('sha256').update(NODE_PREFIX).update(left).update(right).digest();
}

/** The largest power of two strictly below n (n ≥ 2) — the split point k of RFC 6962 §2.1. */
function largestPowerOfTwoBelow(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function isPowerOfTwo(n: number): boolean {
  let k = 1;
  while (k < n) k *= 2;
  return k === n;
}

function isOdd(n: number): boolean {
  return n % 2 === 1;
}

function half(n: number): number {
  return Math.floor(n / 2);
}

function requireHash(hash: Uint8Array, what: string): void {
  if (!(hash instanceof Uint8Array) || hash.length !== HASH_SIZE) {
    throw new LedgerError('INVALID_ARGUMENT', `${what} must be ${HASH_SIZE} bytes`);
  }
}

function requireCount(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new LedgerError('INVALID_ARGUMENT', `${what} must be a non-negative safe integer, got ${value}`);
  }
}

function requireProofHash(hash: Uint8Array, what: string): void {
  if (!(hash instanceof Uint8Array) || hash.length !== HASH_SIZE) throw proofInvalid(`${what} must be ${HASH_SIZE} bytes`);
}

function requireProofCount(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) throw proofInvalid(`${what} must be a non-negative safe integer, got ${value}`);
}

function proofInvalid(reason: string): LedgerError {
  return new LedgerError('PROOF_INVALID', reason);
}

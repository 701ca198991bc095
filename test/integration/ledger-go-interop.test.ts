// Interoperability: Caracal's signed checkpoints, leaf hashes and proofs verified by Go code we did not write
// (transparency-dev/formats note + log, golang.org/x/mod sumdb/note + sumdb/tlog). The Go side lives in
// test/interop/go-verify (see test/interop/README.md). Needs the `go` toolchain and, on a cold module cache, the Go
// module proxy; the build goes to a temp dir and the module cache stays in the default GOMODCACHE (~/go/pkg/mod).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  MemoryHashStore,
  MerkleFrontier,
  canonicalBytes,
  consistencyProof,
  createEcdsaNoteSigner,
  eventLeafHash,
  generateEcdsaKeyPairPem,
  inclusionProof,
  leafHash,
  openCheckpoint,
  parseVerifierKey,
  rootAt,
  signCheckpoint,
  verifyConsistency,
  verifyInclusion,
} from '../../src/ledger/index.js';
import { buildGoVerify, GO_BUILD_TIMEOUT_MS, runGoVerify } from '../helpers/go-verify.js';

const ORIGIN = 'caracal.example/interop-ledger';
const LEAVES = 300;
const CHECKPOINT_SIZES = [200, 256, 300] as const;
const INCLUSION: ReadonlyArray<readonly [index: number, size: number]> = [
  ...[0, 1, 2, 127, 128, 199, 200, 255, 256, 257, 298, 299].map((i) => [i, 300] as const),
  ...[0, 99, 198, 199].map((i) => [i, 200] as const),
  ...[0, 170, 255].map((i) => [i, 256] as const),
];
const CONSISTENCY: ReadonlyArray<readonly [oldSize: number, newSize: number]> = [
  [200, 300],
  [256, 300],
  [200, 256],
];

/** A CloudEvent-like decision event; numbers, unicode and nesting exercise the RFC 8785 leaf input. */
function syntheticEvent(i: number): Record<string, unknown> {
  return {
    specversion: '1.0',
    id: `evt-${String(i).padStart(5, '0')}`,
    source: 'caracal.test/interop',
    type: i % 5 === 0 ? 'dev.caracal.mandate.revoked.v1' : 'dev.caracal.decision.v1',
    subject: `agent-${i % 7}`,
    time: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
    datacontenttype: 'application/json',
    data: {
      decision: i % 3 === 0 ? 'deny' : 'allow',
      score: i / 7,
      big: 1e21 + i,
      tags: ['interop', `t${i % 4}`],
      note: i % 11 === 0 ? 'café € 😀 "quoted" \\ \u0001' : null,
      nested: { z: i, a: [true, false, { k: -i }] },
    },
  };
}

describe('ledger artefacts verified by Go (transparency-dev/formats, golang.org/x/mod/sumdb)', () => {
  let workDir: string;
  let binary: string;

  beforeAll(async () => {
    workDir = mkdtempSync(path.join(tmpdir(), 'caracal-go-interop-'));
    binary = path.join(workDir, 'go-verify');
    await buildGoVerify(binary);
  }, GO_BUILD_TIMEOUT_MS);

  afterAll(() => {
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  it('opens our ECDSA checkpoints and accepts our leaf hashes, inclusion and consistency proofs', async () => {
    const events = Array.from({ length: LEAVES }, (_, i) => syntheticEvent(i));
    const store = new MemoryHashStore();
    const frontier = MerkleFrontier.empty();
    const { privateKeyPem } = generateEcdsaKeyPairPem();
    const signer = createEcdsaNoteSigner(ORIGIN, privateKeyPem);
    const verifier = parseVerifierKey(signer.verifierKey);

    const checkpoints: Array<{ size: number; note: string }> = [];
    const roots = new Map<number, Buffer>();
    const leaves = events.map((event) => {
      const input = canonicalBytes(event);
      const hash = eventLeafHash(event);
      expect(hash.equals(leafHash(input))).toBe(true);
      store.put(frontier.append(hash));
      if ((CHECKPOINT_SIZES as readonly number[]).includes(frontier.size)) {
        const note = signCheckpoint({ origin: ORIGIN, size: frontier.size, rootHash: frontier.root() }, [signer]);
        // Our own verifier accepts what we hand to Go.
        expect(openCheckpoint(note, ORIGIN, [verifier]).checkpoint.size).toBe(frontier.size);
        checkpoints.push({ size: frontier.size, note });
        roots.set(frontier.size, frontier.root());
      }
      return { input: input.toString('base64'), hash: hash.toString('base64') };
    });
    expect(checkpoints.map((c) => c.size)).toEqual([...CHECKPOINT_SIZES]);
    for (const [size, root] of roots) expect((await rootAt(size, store)).equals(root)).toBe(true);

    const inclusion = await Promise.all(
      INCLUSION.map(async ([index, size]) => {
        const proof = await inclusionProof(index, size, store);
        verifyInclusion(eventLeafHash(events[index]), index, size, proof, roots.get(size)!);
        return { index, treeSize: size, proof: proof.map((h) => h.toString('base64')) };
      }),
    );
    const consistency = await Promise.all(
      CONSISTENCY.map(async ([oldSize, newSize]) => {
        const proof = await consistencyProof(oldSize, newSize, store);
        verifyConsistency(oldSize, newSize, proof, roots.get(oldSize)!, roots.get(newSize)!);
        return { oldSize, newSize, proof: proof.map((h) => h.toString('base64')) };
      }),
    );

    const inputFile = path.join(workDir, 'input.json');
    writeFileSync(
      inputFile,
      JSON.stringify({ origin: ORIGIN, verifierKey: signer.verifierKey, checkpoints, leaves, inclusion, consistency }),
    );
    const { result: parsed, ...result } = await runGoVerify(binary, [inputFile]);
    expect(parsed.error ?? '', result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(parsed.ok).toBe(true);

    // What the Go side must have counted, including the negative cases it generated (see main.go).
    const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
    const expected = {
      checkpoints: CHECKPOINT_SIZES.length,
      leaves: LEAVES,
      rootsRecomputed: CHECKPOINT_SIZES.length,
      inclusion: INCLUSION.length,
      consistency: CONSISTENCY.length,
      proofsEqualToTlog: INCLUSION.length + CONSISTENCY.length,
      // per checkpoint: changed size, changed root, appended line, flipped signature bit, another key
      rejectedNotes: 5 * CHECKPOINT_SIZES.length,
      // wrong key id, wrong type byte
      rejectedKeys: 2,
      // per proof: each hash flipped, leaf, root, index+1 (if any), truncated (if non-empty), extended
      rejectedInclusion: sum(
        inclusion.map((p) => p.proof.length + 3 + (p.index + 1 < p.treeSize ? 1 : 0) + (p.proof.length > 0 ? 1 : 0)),
      ),
      // per proof: each hash flipped, old root, new root, first hash dropped (if non-empty), old size - 1
      rejectedConsistency: sum(
        consistency.map((p) => p.proof.length + 2 + (p.proof.length > 0 ? 1 : 0) + (p.oldSize > 1 ? 1 : 0)),
      ),
      rejectedOrigin: CHECKPOINT_SIZES.length,
    };
    expect(parsed.checked).toEqual(expected);
  });
});

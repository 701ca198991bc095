// Interoperability over HTTP: a live gateway serves its ledger as c2sp.org/tlog-tiles, and the Go program of
// test/interop/go-verify (`go-verify tiles`, see test/interop/README.md) reads it the way a monitor would — the signed
// checkpoint opened with transparency-dev/formats' ECDSA verifier and x/mod's note.Open, every hash tile read through
// golang.org/x/mod/sumdb/tlog.TileHashReader (which authenticates it against the signed root), the entry bundles
// hashed with tlog.RecordHash, inclusion and consistency proven and checked by tlog (ProveRecord/CheckRecord,
// ProveTree/CheckTree), our own proofs compared with tlog's. Needs the `go` toolchain (and, on a cold module cache,
// the Go module proxy).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEcdsaNoteSigner, generateEcdsaKeyPairPem, openCheckpoint, parseVerifierKey, signCheckpoint } from '../../src/ledger/index.js';
import { ledgerEntryOf, proveConsistency, proveInclusion } from '../../src/ledger/store.js';
import { formatTilePath, type Tile } from '../../src/ledger/tiles.js';
import { LedgerWriter, loadLedgerSigner } from '../../src/ledger/writer.js';
import { createLogger } from '../../src/logging/logger.js';
import { decisionEvent } from '../helpers/fixtures.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { buildGoVerify, GO_BUILD_TIMEOUT_MS, runGoVerify } from '../helpers/go-verify.js';
import { randomName } from '../helpers/services.js';

/** Two checkpoints: 300 (a full level-0 tile, a partial one, level 1 of width 1) and 613 (two full, 2.p/101, 1/000.p/2). */
const OLD_SIZE = 300;
const NEW_SIZE = 613;
/** Our proofs handed to Go with the tiles: [index, tree size]. */
const OUR_INCLUSION: ReadonlyArray<readonly [number, number]> = [
  ...[0, 1, 255, 256, 298, 299].map((i) => [i, OLD_SIZE] as const),
  ...[0, 255, 256, 299, 300, 511, 512, 611, 612].map((i) => [i, NEW_SIZE] as const),
];

interface TileCounts {
  checkpoints: number;
  rootsRecomputed: number;
  entryBundles: number;
  entries: number;
  inclusion: number;
  consistency: number;
  ourInclusion: number;
  ourConsistency: number;
  rejectedNotes: number;
  rejectedOrigin: number;
  rejectedTiles: number;
  tilesCaughtOnlyByCheckRecord: number;
  rejectedInclusion: number;
  rejectedConsistency: number;
  fetched: string[];
}

/** RFC 6962 audit path length of leaf `index` in a tree of `size` leaves (k = largest power of two < size). */
function auditPathLength(index: number, size: number): number {
  if (size <= 1) return 0;
  const k = 2 ** Math.floor(Math.log2(size - 1));
  return 1 + (index < k ? auditPathLength(index, k) : auditPathLength(index - k, size - k));
}

/** The hash tiles of a tree of `size` leaves, C2SP paths (height 8: level L holds the subtrees of 256^L leaves). */
function hashTilesOf(size: number): string[] {
  const paths: string[] = [];
  for (let level = 0; Math.floor(size / 256 ** level) > 0; level++) {
    const nodes = Math.floor(size / 256 ** level);
    for (let index = 0; index * 256 < nodes; index++) {
      paths.push(formatTilePath({ kind: 'hash', level, index, width: Math.min(256, nodes - index * 256) }));
    }
  }
  return paths;
}

function entryBundlesOf(size: number): string[] {
  return Array.from({ length: Math.ceil(size / 256) }, (_, index): Tile => ({ kind: 'entries', level: 0, index, width: Math.min(256, size - index * 256) })).map(formatTilePath);
}

describe('the served ledger verified over HTTP by Go (tlog.TileHashReader, formats/note)', () => {
  let workDir: string;
  let binary: string;

  beforeAll(async () => {
    workDir = mkdtempSync(path.join(tmpdir(), 'caracal-go-tiles-'));
    binary = path.join(workDir, 'go-verify');
    await buildGoVerify(binary);
  }, GO_BUILD_TIMEOUT_MS);

  afterAll(() => {
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  // The harness is checked on its own pure helpers first: the expectations below depend on them.
  it('computes the expected tile sets and path lengths', () => {
    expect(hashTilesOf(NEW_SIZE)).toEqual(['tile/0/000', 'tile/0/001', 'tile/0/002.p/101', 'tile/1/000.p/2']);
    expect(hashTilesOf(OLD_SIZE)).toEqual(['tile/0/000', 'tile/0/001.p/44', 'tile/1/000.p/1']);
    expect(entryBundlesOf(NEW_SIZE)).toEqual(['tile/entries/000', 'tile/entries/001', 'tile/entries/002.p/101']);
    expect([auditPathLength(0, 1), auditPathLength(0, 2), auditPathLength(2, 3), auditPathLength(0, 256), auditPathLength(612, 613)]).toEqual([0, 1, 1, 8, 4]);
  });

  describe.each(BACKENDS)('on the %s backend', (backend) => {
    let h: Harness;
    let origin: string;
    let base: string;
    let verifierKey: string;
    let dir: string;
    /** A pass-through proxy to the gateway that can flip bits in one path's body, and its log prefix. */
    let proxy: Server;
    let proxyBase: string;
    let tamper: { path: string; mutate: (body: Buffer) => Buffer } | null = null;

    beforeAll(async () => {
      origin = `caracal.test/${randomName('tiles')}`;
      h = await createHarness({ backend, configOverrides: { ledger: { origin, batchMaxEvents: 100_000, batchMaxMs: 3_600_000, serveTiles: true } } });
      // The harness only inject()s; the Go program needs a socket.
      await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
      const { port } = h.assembled.gateway.app.server.address() as AddressInfo;
      // The origin goes into the path as it is, "/" included (registerLedgerRoutes compares it segment by segment).
      base = `http://127.0.0.1:${port}/ledger/${origin}`;
      verifierKey = loadLedgerSigner(h.ctx.config).verifierKey;
      dir = mkdtempSync(path.join(workDir, `${backend}-`));
      proxy = createServer((req, res) => {
        void (async () => {
          const upstream = await fetch(`http://127.0.0.1:${port}${req.url}`, { signal: AbortSignal.timeout(10_000) });
          let body: Buffer = Buffer.from(await upstream.arrayBuffer());
          if (tamper && req.url === `/ledger/${origin}/${tamper.path}`) body = tamper.mutate(Buffer.from(body));
          res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/octet-stream' }).end(body);
        })().catch(() => res.writeHead(502).end());
      });
      await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
      proxyBase = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}/ledger/${origin}`;
    }, 120_000);

    afterAll(async () => {
      proxy?.closeAllConnections();
      await new Promise((resolve) => (proxy ? proxy.close(resolve) : resolve(undefined)));
      await h?.close();
    }, 60_000);

    const go = (args: string[]) => runGoVerify<TileCounts>(binary, ['tiles', '-url', base, ...args]);
    const file = (name: string, content: string) => {
      const p = path.join(dir, name);
      writeFileSync(p, content);
      return p;
    };

    it('reads our tiles and checkpoints, proves every leaf and old → new with tlog, and accepts our proofs', async () => {
      const signer = loadLedgerSigner(h.ctx.config);
      const writer = new LedgerWriter({ db: h.ctx.db, origin, signer, batchMaxEvents: 100_000, batchMaxMs: 3_600_000, freezeOnVerificationFailure: true, logger: createLogger('silent') });
      const key = randomName('tiles');
      const entry = (i: number) => ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(key, `t${i}`))));
      const append = (from: number, to: number) => writer.append(Array.from({ length: to - from }, (_, n) => entry(from + n)));
      // Several slices per checkpoint, as the consumer role appends them.
      for (const [from, to] of [[0, 128], [128, 256], [256, OLD_SIZE]] as const) await append(from, to);
      const first = await writer.seal();
      expect(first?.treeSize).toBe(OLD_SIZE);

      // The older checkpoint as a client saw it over HTTP.
      const oldReply = await fetch(`${base}/checkpoint`, { signal: AbortSignal.timeout(10_000) });
      expect(oldReply.status).toBe(200);
      const oldNote = await oldReply.text();
      expect(oldNote).toBe(first!.note);
      for (const [from, to] of [[OLD_SIZE, 512], [512, NEW_SIZE]] as const) await append(from, to);
      const second = await writer.seal();
      expect(second?.treeSize).toBe(NEW_SIZE);
      // Our own verifier agrees with what Go is about to read.
      const served = await (await fetch(`${base}/checkpoint`, { signal: AbortSignal.timeout(10_000) })).text();
      expect(openCheckpoint(served, origin, [parseVerifierKey(verifierKey)]).checkpoint.size).toBe(NEW_SIZE);

      const inclusion = await Promise.all(
        OUR_INCLUSION.map(async ([index, treeSize]) => ({ index, treeSize, proof: (await proveInclusion(h.ctx.db, origin, index, treeSize)).map((b) => b.toString('base64')) })),
      );
      const consistencyProof = await proveConsistency(h.ctx.db, origin, OLD_SIZE, NEW_SIZE);
      const consistency = [{ oldSize: OLD_SIZE, newSize: NEW_SIZE, proof: consistencyProof.map((b) => b.toString('base64')) }];

      const started = Date.now();
      const { code, stderr, result } = await go(['-key', verifierKey, '-old', file('old.note', oldNote), '-proofs', file('proofs.json', JSON.stringify({ inclusion, consistency }))]);
      const elapsed = Date.now() - started;
      expect(result.error ?? '', stderr).toBe('');
      expect(code).toBe(0);
      expect(result.ok).toBe(true);

      const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
      const perLeaf = (size: number) => sum(Array.from({ length: size }, (_, i) => auditPathLength(i, size) + 3));
      expect(result.checked).toEqual({
        checkpoints: 2,
        // the newest root from its tiles; the old root from the newest tree's tiles and from its own
        rootsRecomputed: 3,
        entryBundles: Math.ceil(NEW_SIZE / 256),
        entries: NEW_SIZE,
        // every leaf in each checkpoint (both trees are under tiles/go-verify's 2000-leaf "prove all" limit)
        inclusion: NEW_SIZE + OLD_SIZE,
        consistency: 1,
        ourInclusion: OUR_INCLUSION.length,
        ourConsistency: 1,
        // per checkpoint: changed size, changed root, appended line, flipped signature bit, another key
        rejectedNotes: 5 * 2,
        rejectedOrigin: 2,
        // each hash tile of each tree, with one bit flipped
        rejectedTiles: hashTilesOf(NEW_SIZE).length + hashTilesOf(OLD_SIZE).length,
        // of those, the full level-0 tiles (0/000 and 0/001 of 613, 0/000 of 300) that x/mod v0.36.0's TileHashReader
        // hands back without checking them against their parent (see tiles.go): a CheckRecord over their leaves fails
        tilesCaughtOnlyByCheckRecord: 3,
        // per proof: each hash flipped, wrong index, wrong root, wrong record hash
        rejectedInclusion: perLeaf(NEW_SIZE) + perLeaf(OLD_SIZE),
        // each hash flipped, old root, new root, first hash dropped, old size − 1
        rejectedConsistency: consistencyProof.length + 4,
        // exactly the canonical tiles of both trees, each fetched once
        fetched: [...new Set([...hashTilesOf(NEW_SIZE), ...hashTilesOf(OLD_SIZE), ...entryBundlesOf(NEW_SIZE)])].sort(),
      });
      expect(elapsed).toBeLessThan(30_000);
    }, 120_000);

    it('fails, with a readable error, for the wrong origin, another key, a forged older checkpoint or another log', async () => {
      const expectFailure = async (args: string[], pattern: RegExp, url = base) => {
        const { code, result } = await runGoVerify<TileCounts>(binary, ['tiles', '-url', url, ...args]);
        expect(code, result.error).toBe(1);
        expect(result.ok).toBe(false);
        expect(result.checked).toBeUndefined();
        expect(result.error).toMatch(pattern);
      };
      // The served checkpoint names our origin, not this one.
      await expectFailure(['-key', verifierKey, '-origin', `${origin}x`], new RegExp(`log\\.ParseCheckpoint.*got Origin "${origin}" but expected "${origin}x"`));
      // Another P-256 key under the same name: the signature is not its.
      const other = createEcdsaNoteSigner(origin, generateEcdsaKeyPairPem().privateKeyPem).verifierKey;
      await expectFailure(['-key', other], /checkpoint .*: note\.Open with the verifier key .*: note has no verifiable signatures/);
      // Our key string with another key id: formats/note refuses it before anything is fetched.
      const [name, id, material] = verifierKey.split('+') as [string, string, string];
      await expectFailure(['-key', `${name}+${id === '00000000' ? '00000001' : '00000000'}+${material}`], /NewECDSAVerifier rejected/);
      // An older checkpoint with a changed size no longer opens.
      const current = await (await fetch(`${base}/checkpoint`, { signal: AbortSignal.timeout(10_000) })).text();
      expect(openCheckpoint(current, origin, [parseVerifierKey(verifierKey)]).checkpoint.size).toBe(NEW_SIZE);
      const lines = current.split('\n');
      const tampered = [lines[0], String(OLD_SIZE), ...lines.slice(2)].join('\n');
      await expectFailure(['-key', verifierKey, '-old', file('tampered.note', tampered)], /older checkpoint .*note\.Open/);
      // A correctly signed older checkpoint whose root the tiles contradict (a split view): tlog finds it out.
      const forged = signCheckpoint({ origin, size: OLD_SIZE, rootHash: randomBytes(32) }, [loadLedgerSigner(h.ctx.config)]);
      await expectFailure(['-key', verifierKey, '-old', file('forged.note', forged)], new RegExp(`tlog\\.TreeHash\\(${OLD_SIZE}\\) from the newest tree's tiles .* the older checkpoint says`));
      // Another log under the same gateway: nothing there.
      await expectFailure(['-key', verifierKey], /GET .*\/checkpoint: 404/, `${base.slice(0, base.lastIndexOf('/'))}/other`);
    }, 60_000);

    it('fails closed when a checkpoint, a hash tile or an entry bundle is altered on the way', async () => {
      const run = (args: string[]) => runGoVerify<TileCounts>(binary, ['tiles', '-url', proxyBase, '-key', verifierKey, ...args]);
      // Through the proxy, untouched: the same verdict as direct.
      tamper = null;
      const clean = await run([]);
      expect(clean.result.error ?? '').toBe('');
      expect(clean.result.checked?.entries).toBe(NEW_SIZE);
      const flip = (at: (body: Buffer) => number) => (body: Buffer) => {
        body[at(body)]! ^= 0x01;
        return body;
      };
      const cases: Array<[path: string, mutate: (body: Buffer) => Buffer, error: RegExp]> = [
        // a bit of the root line: the signature no longer verifies
        ['checkpoint', flip((b) => b.indexOf('\n', b.indexOf('\n') + 1) + 5), /note\.Open .*invalid signature for key/],
        // the partial level-0 tile is part of the root: TileHashReader refuses it
        [`tile/0/002.p/${NEW_SIZE % 256}`, flip((b) => b.length - 1), /tlog\.TreeHash\(613\) from the tiles: downloaded inconsistent tile/],
        // a full level-0 tile TileHashReader does not check against its parent (tiles.go): leaf 255's hash is no
        // longer its entry's record hash
        ['tile/0/000', flip((b) => b.length - 1), /entry 255: tlog\.RecordHash [0-9a-f]{64}, the hash tile says/],
        // one byte inside the first entry of the second bundle
        ['tile/entries/001', flip(() => 20), /entry 256: tlog\.RecordHash/],
      ];
      for (const [tilePath, mutate, error] of cases) {
        tamper = { path: tilePath, mutate };
        const { code, result } = await run([]);
        expect(code, tilePath).toBe(1);
        expect(result.ok).toBe(false);
        expect(result.error, tilePath).toMatch(error);
      }
      tamper = null;
    }, 60_000);
  });
});

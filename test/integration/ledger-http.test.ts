import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { buildDecisionEvent } from '../../src/events/cloudevents.js';
import {
  eventLeafHash,
  inclusionProof,
  leafHash,
  MemoryHashStore,
  MerkleFrontier,
  openCheckpoint,
  parseVerifierKey,
  rootFromLeafHashes,
  verifyInclusion,
  verifyTlogProof,
  type NoteVerifier,
} from '../../src/ledger/index.js';
import type { Receipt } from '../../src/ledger/receipts.js';
import { appendEvents, ledgerEntryOf } from '../../src/ledger/store.js';
import { formatTileIndex } from '../../src/ledger/tiles.js';
import { LedgerWriter, loadLedgerSigner } from '../../src/ledger/writer.js';
import { createLogger } from '../../src/logging/logger.js';
import { newId } from '../../src/util/ids.js';
import { decisionEvent } from '../helpers/fixtures.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { randomName } from '../helpers/services.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const BATCH_MAX_MS = 200;
/** registerLedgerRoutes: max(5 s, 30 × batchMaxMs). */
const PENDING_WINDOW_MS = Math.max(5_000, 30 * BATCH_MAX_MS);

describe.each(BACKENDS)('receipts and tiles over HTTP on the %s backend', (backend) => {
  let h: Harness;
  let consumers: RunningConsumers | undefined;
  let origin: string;
  let verifier: NoteVerifier;
  let alice: string;
  let bob: string;
  let aliceToken: string;
  let bobToken: string;
  const inject = (url: string, token?: string) => h.assembled.gateway.app.inject({ url, headers: token ? { authorization: `Bearer ${token}` } : {} });
  const receipt = (id: string, token?: string) => inject(`/v1/receipts/${id}`, token);
  /** Polls until the receipt is 200 (bounded). */
  const sealedReceipt = async (id: string, token: string): Promise<Receipt> => {
    const deadline = Date.now() + 45_000;
    for (;;) {
      const reply = await receipt(id, token);
      if (reply.statusCode === 200) return reply.json<Receipt>();
      expect(reply.statusCode, reply.body).toBe(202);
      if (Date.now() > deadline) throw new Error(`receipt ${id} not sealed in time`);
      await sleep(150);
    }
  };
  const decide = async (token: string) => {
    const reply = await inject('/proxy/echo/a', token);
    expect(reply.statusCode).toBe(200);
    return reply.headers['x-caracal-decision-id'] as string;
  };

  beforeAll(async () => {
    origin = `caracal.test/${randomName('http')}`;
    h = await createHarness({ backend, configOverrides: { ledger: { origin, batchMaxEvents: 1_000, batchMaxMs: BATCH_MAX_MS, serveTiles: true } } });
    verifier = parseVerifierKey(loadLedgerSigner(h.ctx.config).verifierKey);
    alice = await h.registerAgent();
    bob = await h.registerAgent();
    await h.grant(alice, ['api:external/echo'], ['read']);
    await h.grant(bob, ['api:external/echo'], ['read']);
    aliceToken = await h.token(alice);
    bobToken = await h.token(bob);
  }, 120_000);

  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
  }, 60_000);

  it('answers 202 before sealing and 200 with a receipt that verifies after, only to the decision’s own principal', async () => {
    const aliceDecision = await decide(aliceToken);
    const bobDecision = await decide(bobToken);

    // No writer yet: not in the ledger → pending, with Retry-After.
    const early = await receipt(aliceDecision, aliceToken);
    expect(early.statusCode).toBe(202);
    expect(early.headers['retry-after']).toBe('1');
    expect(early.json()).toMatchObject({ status: 'pending', decision_id: aliceDecision });

    // In the ledger but not in a checkpoint (appended without sealing) → still pending.
    const direct = buildDecisionEvent('test', {
      decision_id: newId(), request_id: newId(), principal_id: alice, token_id: null, upstream: 'echo', method: 'GET', path: '/x',
      upstream_url: null, resource: 'api:external/echo', action: 'read', allow: true, reasons: [], policy_ids: [], bundle_revision: null, status: 200,
    });
    const appended = await h.ctx.db.transaction((tx) => appendEvents(tx, origin, [ledgerEntryOf(JSON.parse(JSON.stringify(direct)))]));
    expect(appended.checkpointSize).toBeLessThan(appended.treeSize);
    expect((await receipt(direct.data.decision_id, aliceToken)).statusCode).toBe(202);

    consumers = await startConsumers(h.ctx, ['ledger-writer'], { baseDelayMs: 10, maxDelayMs: 50, maxAttempts: 3, prepare: false });
    for (const [id, expectedPath] of [[aliceDecision, '/proxy/echo/a'], [direct.data.decision_id, '/x']] as const) {
      const r = await sealedReceipt(id, aliceToken);
      expect(Object.keys(r).sort()).toEqual(['checkpoint', 'event', 'inclusion_proof', 'leaf_index', 'origin', 'tlog_proof', 'tree_size']);
      expect(r.event).toMatchObject({ type: 'dev.caracal.policy.decision.v1', subject: alice, data: { decision_id: id, principal_id: alice, path: expectedPath } });
      // The proof verifies against the root of the checkpoint opened with the verifier key alone.
      const { checkpoint } = openCheckpoint(r.checkpoint, origin, [verifier]);
      expect(checkpoint.size).toBe(r.tree_size);
      expect(r.leaf_index).toBeLessThan(r.tree_size);
      const leaf = eventLeafHash(r.event);
      verifyInclusion(leaf, r.leaf_index, r.tree_size, r.inclusion_proof.map((b) => Buffer.from(b, 'base64')), checkpoint.rootHash);
      const verified = verifyTlogProof(r.tlog_proof, leaf, { origin, verifiers: [verifier] });
      expect(verified.index).toBe(r.leaf_index);
      expect(verified.checkpoint.size).toBe(r.tree_size);
    }

    // Bob's own receipt is his; to Alice it is what an unknown id is: pending while recent, then 404.
    await sealedReceipt(bobDecision, bobToken);
    const stranger = await receipt(bobDecision, aliceToken);
    expect(stranger.statusCode).toBe(202);
    const idTime = parseInt(bobDecision.slice(0, 8) + bobDecision.slice(9, 13), 16);
    await sleep(Math.max(0, idTime + PENDING_WINDOW_MS + 250 - Date.now()));
    const hidden = await receipt(bobDecision, aliceToken);
    expect(hidden.statusCode).toBe(404);
    expect(hidden.json()).toMatchObject({ error: 'CARACAL_NOT_FOUND', request_id: hidden.headers['x-request-id'] });
    // An unknown id (not a UUIDv7: no time, never pending) → 404 in the catalog's shape.
    const unknown = await receipt('00000000-0000-4000-8000-000000000000', aliceToken);
    expect(unknown.statusCode).toBe(404);
    expect(unknown.json()).toMatchObject({ error: 'CARACAL_NOT_FOUND', request_id: unknown.headers['x-request-id'] });
    // Bob still gets his own.
    expect((await receipt(bobDecision, bobToken)).statusCode).toBe(200);
  }, 180_000);

  it('authenticates before anything and refuses hostile ids with 400', async () => {
    const id = newId();
    for (const headers of [{}, { authorization: 'Bearer nope' }, { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }]) {
      const reply = await h.assembled.gateway.app.inject({ url: `/v1/receipts/${id}`, headers });
      expect(reply.statusCode).toBe(401);
      expect(reply.json()).toMatchObject({ request_id: reply.headers['x-request-id'] });
    }
    // Even a hostile id is a 401 first: nothing about the request is looked at before the caller is known.
    expect((await receipt('..%2F..%2Fetc%2Fpasswd')).statusCode).toBe(401);
    expect((await receipt('a'.repeat(5_000))).statusCode).toBe(401);
    const hostile = [
      '',
      'abc',
      id.toUpperCase(),
      `${id}x`,
      `${id}/`,
      `${id}/x`,
      id.slice(1),
      id.replaceAll('-', ''),
      '..%2F..%2Fetc%2Fpasswd',
      '..%2F',
      `${id.slice(0, -1)}%00`,
      "'%20OR%201=1--",
      'a'.repeat(5_000),
      `${id}?x=1`.replace('?', '%3F'),
    ];
    for (const bad of hostile) {
      const reply = await receipt(bad, aliceToken);
      expect(reply.statusCode, bad.slice(0, 60)).toBe(400);
      expect(reply.json()).toMatchObject({ error: 'CARACAL_BAD_REQUEST', reasons: ['bad_decision_id'] });
    }
  }, 60_000);

  it('serves c2sp.org/tlog-tiles that rebuild the signed root and prove inclusion from tile contents alone', async () => {
    // ≥ 300 leaves: a full level-0 tile, a partial one, a partial level-1 tile. Written through the writer on the
    // served origin with the configured key (the role keeps running next to it: they take turns on the sequencer).
    const writer = new LedgerWriter({ db: h.ctx.db, origin, signer: loadLedgerSigner(h.ctx.config), batchMaxEvents: 100_000, batchMaxMs: 3_600_000, freezeOnVerificationFailure: true, logger: createLogger('silent') });
    const key = randomName('tiles');
    const events = Array.from({ length: 300 }, (_, i) => ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(key, `t${i}`)))));
    await writer.append(events);
    await writer.seal();

    const prefix = `/ledger/${origin}`;
    const cpReply = await inject(`${prefix}/checkpoint`);
    expect(cpReply.statusCode).toBe(200);
    expect(cpReply.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(cpReply.headers['cache-control']).toBe('no-store');
    const { checkpoint } = openCheckpoint(cpReply.body, origin, [verifier]);
    const size = checkpoint.size;
    expect(size).toBeGreaterThanOrEqual(300);
    const fullTiles = Math.floor(size / 256);
    const partialWidth = size % 256;

    const tile = async (path: string, cache: string) => {
      const reply = await inject(`${prefix}/${path}`);
      expect(reply.statusCode, path).toBe(200);
      expect(reply.headers['content-type']).toBe('application/octet-stream');
      expect(reply.headers['cache-control']).toBe(cache);
      return reply.rawPayload;
    };
    const FULL = 'public, max-age=31536000, immutable';
    const PARTIAL = 'public, max-age=60';
    const leaves: Buffer[] = [];
    const entries: Buffer[] = [];
    const splitHashes = (bytes: Buffer) => Array.from({ length: bytes.length / 32 }, (_, i) => bytes.subarray(i * 32, i * 32 + 32));
    const splitEntries = (bytes: Buffer) => {
      const out: Buffer[] = [];
      for (let at = 0; at < bytes.length; ) {
        const length = bytes.readUInt16BE(at);
        out.push(bytes.subarray(at + 2, at + 2 + length));
        at += 2 + length;
      }
      return out;
    };
    for (let n = 0; n < fullTiles; n++) {
      const hashes = await tile(`tile/0/${formatTileIndex(n)}`, FULL);
      expect(hashes.length).toBe(8_192);
      leaves.push(...splitHashes(hashes));
      entries.push(...splitEntries(await tile(`tile/entries/${formatTileIndex(n)}`, FULL)));
    }
    if (partialWidth > 0) {
      const hashes = await tile(`tile/0/${formatTileIndex(fullTiles)}.p/${partialWidth}`, PARTIAL);
      expect(hashes.length).toBe(32 * partialWidth);
      leaves.push(...splitHashes(hashes));
      entries.push(...splitEntries(await tile(`tile/entries/${formatTileIndex(fullTiles)}.p/${partialWidth}`, PARTIAL)));
    }
    expect(leaves.length).toBe(size);
    // Each bundled entry hashes to its leaf, and the leaves give the signed root.
    expect(entries.length).toBe(size);
    entries.forEach((entry, i) => expect(leafHash(entry).equals(leaves[i]!), `leaf ${i}`).toBe(true));
    expect(rootFromLeafHashes(leaves).equals(checkpoint.rootHash)).toBe(true);
    // The level-1 tile holds the roots of full level-0 tiles.
    const level1 = splitHashes(await tile(`tile/1/000.p/${fullTiles}`, PARTIAL));
    expect(level1.length).toBe(fullTiles);
    level1.forEach((hash, n) => expect(hash.equals(rootFromLeafHashes(leaves.slice(n * 256, n * 256 + 256)))).toBe(true));

    // Inclusion proofs computed only from what the tiles gave, against the checkpoint's root.
    const store = new MemoryHashStore();
    const frontier = MerkleFrontier.empty();
    for (const leaf of leaves) store.put(frontier.append(leaf));
    for (const index of [0, 1, 255, 256, size - 1]) {
      verifyInclusion(leaves[index]!, index, size, await inclusionProof(index, size, store), checkpoint.rootHash);
    }

    // Nothing beyond the newest checkpoint; tile paths that are not canonical are 400, never 500.
    const status = async (path: string) => (await inject(`${prefix}/${path}`)).statusCode;
    expect(await status(`tile/0/${formatTileIndex(fullTiles + 1)}`)).toBe(404);
    expect(await status(`tile/entries/${formatTileIndex(fullTiles + 1)}`)).toBe(404);
    if (partialWidth > 0) expect(await status(`tile/0/${formatTileIndex(fullTiles)}`)).toBe(404);
    if (partialWidth < 255) expect(await status(`tile/0/${formatTileIndex(fullTiles)}.p/${partialWidth + 1}`)).toBe(404);
    expect(await status(`tile/1/000.p/${fullTiles + 1}`)).toBe(404);
    expect(await status('tile/2/000.p/1')).toBe(404);
    expect(await status('tile/7/000.p/1')).toBe(404);
    expect(await status('tile/63/000.p/1')).toBe(404);
    expect(await status('tile/0/x009/x007/x199/x254/x740/991')).toBe(404);
    // A smaller width of a covered tile is a prefix a past checkpoint needed: served.
    expect(await status('tile/0/000.p/3')).toBe(200);
    for (const bad of ['tile/0/0', 'tile/0/x000/001', 'tile/0/000.p/0', 'tile/0/000.p/256', 'tile/0/000.p/007', 'tile/00/000', 'tile/64/000', 'tile/0/%30%30%30', 'tile/0/000/', 'tile/x/000', 'tile/0/../000', 'tile', 'tile/entries/000.p/-1', `tile/0/${'x001/'.repeat(200)}000`]) {
      const reply = await inject(`${prefix}/${bad}`);
      expect([400, 404], bad.slice(0, 60)).toContain(reply.statusCode);
      expect(reply.json()).toMatchObject({ request_id: reply.headers['x-request-id'] });
    }
    expect(await status('tile/0/000.p/256')).toBe(400);
    // Another origin, or none: 404; the origin's segments may be percent-encoded.
    expect(await status('../checkpoint')).toBe(404);
    expect((await inject(`/ledger/other.example/log/checkpoint`)).statusCode).toBe(404);
    expect((await inject(`/ledger/${encodeURIComponent('caracal.test')}/${origin.split('/')[1]}/checkpoint`)).statusCode).toBe(200);
    // A malformed escape: Fastify refuses the URL itself (400), or the origin does not match (404).
    expect([400, 404]).toContain((await inject(`/ledger/%E0%A4%A/x/checkpoint`)).statusCode);
    expect((await inject(`/ledger/${origin}`)).statusCode).toBe(404);
  }, 180_000);
});

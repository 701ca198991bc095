import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { generateEcdsaKeyPairPem, leafHash } from '../../src/ledger/index.js';
import { findEntry, ledgerEntryOf, readSequencer, type LedgerEntryInput } from '../../src/ledger/store.js';
import { LedgerWriter, loadLedgerSigner } from '../../src/ledger/writer.js';
import { createLogger } from '../../src/logging/logger.js';
import type { Db } from '../../src/store/db.js';
import { migrateUp } from '../../src/store/migrate.js';
import { openDb } from '../../src/store/open.js';
import { cliRunner, expectOneLineError, type CliRun } from '../helpers/cli.js';
import { decisionEvent } from '../helpers/fixtures.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { randomName, requireServices } from '../helpers/services.js';

/** One seeded ledger: 18 leaves; checkpoints (batch ids) 5, 10, 15, 17; leaf 17 unsealed. */
interface Seeded {
  origin: string;
  agent: string;
  eventIds: string[];
}

const TAMPERS = ['canonical byte', 'deleted entry', 'forged entry', 'reordered entries', 'stored hash', 'checkpoint note', 'query column'] as const;
type Tamper = (typeof TAMPERS)[number];

/** What each tamper must be reported as, by verify-batch --batch-id 10 and verify-range (leaves 5-9 are batch 10). */
const EXPECTED: Record<Tamper, (s: Seeded) => RegExp> = {
  'canonical byte': (s) => new RegExp(`leaf 7 \\(event ${s.eventIds[7]}\\)`),
  'deleted entry': () => /leaf 7: missing/,
  'forged entry': () => /leaf 7 \(event forged-[^)]*\): the stored tree hash differs/,
  'reordered entries': (s) => new RegExp(`leaf 6 \\(event ${s.eventIds[7]}\\): the stored tree hash differs`),
  'stored hash': () => /node 1\/3 \(leaves 6-7/,
  'checkpoint note': () => /checkpoint 10: the signed note does not verify/,
  'query column': (s) => new RegExp(`leaf 7 \\(event ${s.eventIds[7]}\\): the stored subject is not the one in the canonical bytes`),
};

/** A forged row as a careful attacker writes it: every column consistent with its own canonical bytes. */
const FORGED_ROW = `INSERT INTO ledger_entries (origin, leaf_index, event_id, event_type, subject, decision_id, request_id, occurred_at, canonical, leaf_hash)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, decode($9, 'base64'), decode($10, 'hex'))`;
const forgedRow = (origin: string, index: number, e: LedgerEntryInput) => [
  origin,
  index,
  e.eventId,
  e.eventType,
  e.subject,
  e.decisionId,
  e.requestId,
  e.occurredAt,
  e.canonical.toString('base64'),
  e.leafHash.toString('hex'),
];

/** Statements run as an attacker with table-owner rights: the append-only triggers are off for the transaction. */
async function asOwner(db: Db, fn: (q: (sql: string, params?: unknown[]) => Promise<unknown>) => Promise<void>): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.query('SET LOCAL session_replication_role = replica');
    await fn((sql, params) => tx.query(sql, params ?? []));
  });
}

describe.each(BACKENDS)('caracal ledger and merkle commands on the %s backend', (backend) => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-ledger-cli-'));
  const schema = randomName('ledger_cli');
  const baseEnv = (): Record<string, string> => {
    const env: Record<string, string> = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' };
    if (backend === 'services') {
      const services = requireServices();
      Object.assign(env, { DATABASE_URL: services.databaseUrl, CARACAL_DB_SCHEMA: schema, KAFKA_BROKERS: services.kafkaBrokers.join(','), REDIS_URL: services.redisUrl });
    }
    return env;
  };
  let origin = '';
  const caracal = cliRunner(() => ({ ...baseEnv(), CARACAL_LEDGER_ORIGIN: origin }));
  const on = (o: string) => (...args: string[]): Promise<CliRun> => {
    origin = o;
    return caracal(...args);
  };
  const configOf = (o: string) => loadConfig({ env: { ...baseEnv(), CARACAL_LEDGER_ORIGIN: o }, cwd: home });
  const seeded = new Map<string, Seeded>();
  let pg: Db | undefined;

  /** The database the CLI uses: the shared pool on PostgreSQL; PGlite is opened and closed around `fn` (one owner at a time). */
  async function withDb<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    if (pg) return fn(pg);
    const db = await openDb(configOf('caracal.test/x'));
    try {
      await migrateUp(db);
      return await fn(db);
    } finally {
      await db.close();
    }
  }

  async function seed(db: Db, name: string): Promise<Seeded> {
    const o = `caracal.test/${randomName(name)}`;
    const agent = randomName('agent');
    const writer = new LedgerWriter({ db, origin: o, signer: loadLedgerSigner(configOf(o)), batchMaxEvents: 4, batchMaxMs: 3_600_000, freezeOnVerificationFailure: true, logger: createLogger('silent') });
    const entries = Array.from({ length: 18 }, (_, i) => ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(agent, `e${i}`)))));
    for (const slice of [entries.slice(0, 5), entries.slice(5, 10), entries.slice(10, 15), entries.slice(15, 17)]) await writer.append(slice);
    await writer.seal(); // 17
    await writer.append(entries.slice(17)); // leaf 17 stays unsealed
    const s = { origin: o, agent, eventIds: entries.map((e) => e.eventId) };
    seeded.set(name, s);
    return s;
  }

  async function tamper(db: Db, s: Seeded, kind: Tamper): Promise<void> {
    const o = s.origin;
    await asOwner(db, async (q) => {
      switch (kind) {
        case 'canonical byte':
          await q("UPDATE ledger_entries SET canonical = overlay(canonical placing '\\x5a'::bytea from 30 for 1) WHERE origin = $1 AND leaf_index = 7", [o]);
          break;
        case 'deleted entry':
          await q('DELETE FROM ledger_entries WHERE origin = $1 AND leaf_index = 7', [o]);
          break;
        case 'forged entry': {
          await q('DELETE FROM ledger_entries WHERE origin = $1 AND leaf_index = 7', [o]);
          const forged = ledgerEntryOf(JSON.parse(JSON.stringify({ ...decisionEvent(s.agent, 'forged'), id: `forged-${randomName('x')}` })));
          await q(FORGED_ROW, forgedRow(o, 7, forged));
          break;
        }
        case 'query column':
          // The bytes and hashes stay as signed; only what `ledger query` filters on now names another agent.
          await q("UPDATE ledger_entries SET subject = 'someone-else' WHERE origin = $1 AND leaf_index = 7", [o]);
          break;
        case 'reordered entries':
          await q('UPDATE ledger_entries SET leaf_index = 1000000 WHERE origin = $1 AND leaf_index = 6', [o]);
          await q('UPDATE ledger_entries SET leaf_index = 6 WHERE origin = $1 AND leaf_index = 7', [o]);
          await q('UPDATE ledger_entries SET leaf_index = 7 WHERE origin = $1 AND leaf_index = 1000000', [o]);
          break;
        case 'stored hash':
          await q("UPDATE ledger_hashes SET hash = decode(repeat('ab', 32), 'hex') WHERE origin = $1 AND level = 1 AND idx = 3", [o]);
          break;
        case 'checkpoint note': {
          const { rows } = (await q('SELECT note FROM ledger_checkpoints WHERE origin = $1 AND tree_size = 10', [o])) as { rows: { note: string }[] };
          const note = rows[0]!.note;
          const at = note.length - 20; // inside the signature's base64
          const forged = note.slice(0, at) + (note[at] === 'A' ? 'B' : 'A') + note.slice(at + 1);
          await q('UPDATE ledger_checkpoints SET note = $2 WHERE origin = $1 AND tree_size = 10', [o, forged]);
          break;
        }
      }
    });
  }

  beforeAll(async () => {
    if (backend === 'services') {
      pg = await openDb(configOf('caracal.test/x'));
      await migrateUp(pg);
    }
    await withDb(async (db) => {
      await seed(db, 'good');
      for (const kind of TAMPERS) await tamper(db, await seed(db, kind.replace(/ /g, '_')), kind);
      // A forged leaf after the last one: no batch covers it, the range check sees it beyond the tree size.
      const beyond = await seed(db, 'beyond');
      const forged = ledgerEntryOf(JSON.parse(JSON.stringify({ ...decisionEvent(beyond.agent, 'late'), id: 'forged-late' })));
      await asOwner(db, async (q) => {
        await q(FORGED_ROW, forgedRow(beyond.origin, 18, forged));
      });
      // Bytes that hash consistently but are not RFC 8785 (a key out of order): what a buggy writer would store.
      const o = `caracal.test/${randomName('noncanonical')}`;
      const agent = randomName('agent');
      const writer = new LedgerWriter({ db, origin: o, signer: loadLedgerSigner(configOf(o)), batchMaxEvents: 4, batchMaxMs: 3_600_000, freezeOnVerificationFailure: true, logger: createLogger('silent') });
      const entries = Array.from({ length: 4 }, (_, i) => ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(agent, `n${i}`)))));
      const event = JSON.parse(entries[2]!.canonical.toString('utf8')) as Record<string, unknown>;
      const unsorted = Buffer.from(JSON.stringify({ type: event.type, ...event }), 'utf8');
      entries[2] = { ...entries[2]!, canonical: unsorted, leafHash: leafHash(unsorted) };
      await writer.append(entries);
      seeded.set('noncanonical', { origin: o, agent, eventIds: entries.map((e) => e.eventId) });
    });
  }, 120_000);

  afterAll(async () => {
    if (pg) {
      await pg.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await pg.close();
    }
  });

  it('verifies a batch, a range and an event of an untampered ledger (exit 0)', async () => {
    const good = seeded.get('good')!;
    const run = on(good.origin);
    for (const batch of ['5', '10', '15', '17']) {
      const r = await run('merkle', 'verify-batch', '--batch-id', batch);
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      expect(r.out).toMatch(new RegExp(`^batch ${batch} verified`));
    }
    const json = JSON.parse((await run('merkle', 'verify-batch', '--batch-id', '10', '--json')).out);
    expect(json).toMatchObject({ ok: true, batchId: 10, fromSize: 5, toSize: 10, leaves: 5, consistencyProofs: 1 });
    const range = await run('merkle', 'verify-range', '--start-time', '-1h', '--end-time', 'now');
    expect(range.code).toBe(0);
    expect(range.out).toMatch(/^verified 4 batches \(checkpoints 5\.\.17\): 17 leaves, 4 signatures, 3 consistency proofs; all ok\n$/);
    const alias = await run('merkle', 'verify-range', '--start', '2020-01-01', '--end', '2100-01-01T00:00:00Z', '--json');
    expect(JSON.parse(alias.out)).toMatchObject({ ok: true, leaves: 17, consistencyProofs: 3 });
    const none = await run('merkle', 'verify-range', '--start', '2020-01-01', '--end', '2020-01-02');
    expect(none.code).toBe(0);
    expect(none.out).toMatch(/no checkpoint was signed/);
    const event = await run('merkle', 'verify-event', '--event-id', good.eventIds[7]!);
    expect(event.code).toBe(0);
    expect(event.out).toMatch(new RegExp(`^event ${good.eventIds[7]} verified: leaf 7, included in checkpoint 10`));
    expectOneLineError(await run('merkle', 'verify-event', '--event-id', good.eventIds[17]!), /not sealed in a checkpoint yet/);
    const status = await run('merkle', 'status', '--json');
    expect(JSON.parse(status.out)).toMatchObject({ origin: good.origin, treeSize: 18, checkpointSize: 17, frozen: false });
  }, 120_000);

  it.each(TAMPERS)('catches a tampered ledger (%s): verify-batch and verify-range fail naming it, the ledger freezes, resume lifts it', async (kind) => {
    const s = seeded.get(kind.replace(/ /g, '_'))!;
    const run = on(s.origin);
    const expected = EXPECTED[kind](s);
    const failures = async () => (await withDb((db) => readSequencer(db, s.origin)))!.verificationFailures;
    const before = await failures();
    const batch = await run('merkle', 'verify-batch', '--batch-id', '10');
    expectOneLineError(batch, expected);
    expect(batch.err).toMatch(/the ledger is now frozen/);
    expectOneLineError(await run('merkle', 'verify-range', '--start-time', '-1h', '--end-time', 'now'), expected);
    // Each failure is counted where the consumers' caracal_merkle_verification_failures_total reads it.
    expect(await failures()).toBe(before + 2);
    // The batch before is still fine on its own.
    expect((await run('merkle', 'verify-batch', '--batch-id', '5')).code).toBe(0);
    const status = await run('merkle', 'status');
    expect(status.out).toMatch(/status\s+frozen/);
    expect(status.out).toMatch(/frozen_reason\s+verification failed: /);
    const resumed = await run('merkle', 'resume');
    expect(resumed.code).toBe(0);
    expect(resumed.out).toMatch(/resumed \(it was frozen since .*verification failed/);
    expect((await run('merkle', 'status')).out).toMatch(/status\s+active/);
    expect((await run('merkle', 'resume')).out).toMatch(/was not frozen/);
  }, 120_000);

  it('checks the RFC 8785 form of every stored event only with --check-canonical', async () => {
    const s = seeded.get('noncanonical')!;
    const run = on(s.origin);
    const plain = await run('merkle', 'verify-batch', '--batch-id', '4');
    expect(plain.err).toBe('');
    expect(plain.code).toBe(0);
    const strict = await run('merkle', 'verify-batch', '--batch-id', '4', '--check-canonical');
    expectOneLineError(strict, new RegExp(`leaf 2 \\(event ${s.eventIds[2]}\\): the stored canonical bytes are not RFC 8785 canonical JSON`));
    expect((await run('merkle', 'resume')).code).toBe(0);
    expectOneLineError(await run('merkle', 'verify-range', '--start-time', '-1h', '--check-canonical'), /leaf 2 .*not RFC 8785/);
  }, 60_000);

  it('catches a leaf stored beyond the tree size in verify-range', async () => {
    const run = on(seeded.get('beyond')!.origin);
    expectOneLineError(await run('merkle', 'verify-range', '--start-time', '-1h', '--end-time', 'now'), /leaf 18 \(event forged-late\): stored beyond the tree size 18 — the ledger is now frozen/);
    expect((await run('merkle', 'status')).out).toMatch(/status\s+frozen/);
  }, 60_000);

  it('queries an agent by range and by time window, as a table or JSON, and summarises the ledger', async () => {
    const good = seeded.get('good')!;
    const run = on(good.origin);
    const rows = JSON.parse((await run('ledger', 'query', '--agent-id', good.agent, '--start-time', '-1h', '--end-time', 'now', '--json')).out) as Record<string, unknown>[];
    expect(rows.map((r) => r.eventId)).toEqual(good.eventIds);
    expect(rows.map((r) => r.checkpoint)).toEqual([...Array(5).fill(5), ...Array(5).fill(10), ...Array(5).fill(15), 17, 17, null]);
    expect(rows[7]).toMatchObject({ leafIndex: 7, eventType: 'dev.caracal.policy.decision.v1', decisionId: `${good.agent}-e7`, allow: false });
    const window = JSON.parse((await run('ledger', 'query', '--agent-id', good.agent, '--time-window', 'daily', '--json')).out) as unknown[];
    expect(window).toHaveLength(18);
    const table = await run('ledger', 'query', '--agent-id', good.agent, '--time-window', 'hourly');
    expect(table.code).toBe(0);
    const lines = table.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^LEAF\s+EVENT\s+TYPE\s+DECISION\s+ALLOW\s+TIME\s+CHECKPOINT$/);
    expect(lines.at(-2)).toMatch(/^17\s.*deny.*unsealed$/);
    expect(lines.at(-1)).toBe('18 entries');
    expect((await run('ledger', 'query', '--agent-id', 'nobody', '--time-window', 'weekly')).out).toBe('(none)\n0 entries\n');

    const summary = JSON.parse((await run('ledger', 'summary', '--json')).out);
    expect(summary).toMatchObject({ origin: good.origin, treeSize: 18, checkpointSize: 17, checkpoints: 4, unsealed: 1, frozen: false, types: [{ eventType: 'dev.caracal.policy.decision.v1', count: 18 }] });
    expect(summary.lastCheckpointAgeSeconds).toBeGreaterThanOrEqual(0);
    const text = (await run('ledger', 'summary')).out;
    expect(text).toMatch(/tree_size\s+18/);
    expect(text).toMatch(/last_checkpoint\s+17 \(batch id\), signed /);
    expect(text).toMatch(/status\s+active/);
  }, 120_000);

  it('prints the verifier key of the signing key, or its PEM public key', async () => {
    const good = seeded.get('good')!;
    const run = on(good.origin);
    const signer = loadLedgerSigner(configOf(good.origin));
    const key = await run('ledger', 'public-key');
    expect(key.out.trim()).toBe(signer.verifierKey);
    expect(key.out.trim().split('+').slice(0, 2)).toEqual([good.origin, signer.keyId.toString(16).padStart(8, '0')]);
    const pem = await run('ledger', 'public-key', '--pem');
    expect(pem.out).toMatch(/^-----BEGIN PUBLIC KEY-----\n[\s\S]+-----END PUBLIC KEY-----\n$/);
  }, 60_000);

  it('exports a range that verify-export checks offline with the key alone, and rejects every hostile change', async () => {
    const good = seeded.get('good')!;
    const run = on(good.origin);
    const dir = mkdtempSync(path.join(tmpdir(), 'caracal-ledger-export-'));
    const file = path.join(dir, 'export.json');
    const exported = await run('ledger', 'export', '--start-time', '-1h', '--end-time', 'now', '--out', file);
    expect(exported.code).toBe(0);
    expect(exported.out).toMatch(/exported 17 entries .* \(4 checkpoints 5\.\.17; 1 not yet sealed, left out\)/);
    const vkey = (await run('ledger', 'public-key')).out.trim();
    const pemFile = path.join(dir, 'key.pem');
    writeFileSync(pemFile, (await run('ledger', 'public-key', '--pem')).out);
    // No database, no config: a DATABASE_URL that points nowhere, an empty home.
    const offline = cliRunner(() => ({ CARACAL_HOME: mkdtempSync(path.join(tmpdir(), 'caracal-offline-')), DATABASE_URL: 'postgres://127.0.0.1:1/x', CARACAL_LOG_LEVEL: 'silent' }));
    const ok = await offline('ledger', 'verify-export', file, '--public-key', vkey);
    expect(ok.err).toBe('');
    expect(ok.out).toMatch(/^export verified: 17 entries of .*, 4 signed checkpoints \(5\.\.17\), 3 consistency proofs\n$/);
    expect((await offline('ledger', 'verify-export', file, '--public-key', pemFile)).code).toBe(0);
    const jsonl = path.join(dir, 'export.jsonl');
    expect((await run('ledger', 'export', '--start', '2020-01-01', '--out', jsonl)).code).toBe(0);
    expect(readFileSync(jsonl, 'utf8').split('\n')[0]).toMatch(/^\{"kind":"header"/);
    expect((await offline('ledger', 'verify-export', jsonl, '--public-key', vkey)).out).toMatch(/17 entries/);

    const otherPem = path.join(dir, 'other.pem');
    writeFileSync(otherPem, generateEcdsaKeyPairPem().publicKeyPem);
    expectOneLineError(await offline('ledger', 'verify-export', file, '--public-key', otherPem), /checkpoint 5: the signed note does not verify/);

    const original = readFileSync(file, 'utf8');
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the point is to write any shape into the file
    const mutate = (change: (d: any) => void): string => {
      const d = JSON.parse(original);
      change(d);
      const out = path.join(dir, `m-${randomName('f')}.json`);
      writeFileSync(out, JSON.stringify(d));
      return out;
    };
    const hostile: [string, string, RegExp][] = [
      ['truncated', (() => { const f = path.join(dir, 'trunc.json'); writeFileSync(f, original.slice(0, Math.floor(original.length / 2))); return f; })(), /not JSON/],
      ['empty', (() => { const f = path.join(dir, 'empty.json'); writeFileSync(f, ''); return f; })(), /empty/],
      ['wrong type', mutate((d) => (d.entries[0].leafIndex = '0')), /entries\.0\.leafIndex/],
      ['not an object', mutate((d) => (d.entries = 5)), /entries/],
      ['huge number', mutate((d) => (d.entries[0].checkpoint = 1e300)), /entries\.0\.checkpoint/],
      ['unsafe integer', mutate((d) => (d.checkpoints[0].size = 2 ** 60)), /checkpoints\.0\.size/],
      ['proof too short', mutate((d) => d.entries[3].inclusionProof.pop()), /entry 3 \(leaf 3, .*inclusion proof/],
      ['proof too long', mutate((d) => d.entries[3].inclusionProof.push(d.entries[3].inclusionProof[0])), /entry 3 .*inclusion proof/],
      ['bad proof hash', mutate((d) => (d.entries[3].inclusionProof[0] = 'AAAA')), /entry 3 .*hash 0 is 3 bytes/],
      ['swapped leaf', mutate((d) => ([d.entries[1].canonical, d.entries[2].canonical] = [d.entries[2].canonical, d.entries[1].canonical])), /entry 1 \(leaf 1/],
      ['swapped index', mutate((d) => ([d.entries[1].leafIndex, d.entries[2].leafIndex] = [2, 1])), /entry 1 \(leaf 2, .*inclusion proof/],
      ['edited canonical', mutate((d) => (d.entries[4].canonical = Buffer.from(Buffer.from(d.entries[4].canonical, 'base64').toString().replace('"allow":false', '"allow":true')).toString('base64'))), /entry 4 .*inclusion proof/],
      ['bad signature', mutate((d) => (d.checkpoints[1].note = d.checkpoints[1].note.replace(/\n— (\S+) (.)/, (_: string, n: string, c: string) => `\n— ${n} ${c === 'A' ? 'B' : 'A'}`))), /checkpoint 10: the signed note does not verify/],
      ['missing consistency', mutate((d) => d.consistency.pop()), /no consistency proof from checkpoint 15 to checkpoint 17/],
      ['bad consistency', mutate((d) => (d.consistency[0].proof[0] = d.consistency[0].proof[1] ?? 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=')), /consistency proof 5->10 does not verify/],
      ['unknown checkpoint', mutate((d) => (d.entries[0].checkpoint = 11)), /entry 0 .*checkpoint 11 is not among/],
      ['other origin', mutate((d) => (d.origin = 'evil.example/ledger')), /checkpoint 5: .*origin/],
      ['extra field', mutate((d) => (d.entries[0].extra = 1)), /entries\.0/],
    ];
    for (const [what, f, pattern] of hostile) {
      const r = await offline('ledger', 'verify-export', f, '--public-key', vkey);
      expect(r.code, what).not.toBe(0);
      expectOneLineError(r, pattern);
    }
    expectOneLineError(await offline('ledger', 'verify-export', path.join(dir, 'missing.json'), '--public-key', vkey), /cannot read/);
    expectOneLineError(await offline('ledger', 'verify-export', file, '--public-key', 'not-a-key'), /--public-key/);
    expectOneLineError(await offline('ledger', 'verify-export', file), /public-key/);
  }, 120_000);

  it('answers bad input with one line and a non-zero exit, and freezes nothing', async () => {
    const good = seeded.get('good')!;
    const run = on(good.origin);
    expectOneLineError(await run('merkle', 'verify-batch', '--batch-id', '3'), /no batch 3 .*tree size of its checkpoint/);
    expectOneLineError(await run('merkle', 'verify-batch', '--batch-id', '99999'), /no batch 99999/);
    expectOneLineError(await run('merkle', 'verify-batch', '--batch-id', 'abc'), /--batch-id must be/);
    expectOneLineError(await run('merkle', 'verify-batch', '--batch-id', '1e300'), /--batch-id must be/);
    expectOneLineError(await run('merkle', 'verify-batch'), /--batch-id/);
    expectOneLineError(await run('merkle', 'verify-range'), /--start-time/);
    expectOneLineError(await run('merkle', 'verify-range', '--start-time', 'yesterday-ish'), /--start-time must be/);
    expectOneLineError(await run('merkle', 'verify-range', '--start-time', 'now', '--end-time', '-1h'), /end must be after start/);
    expectOneLineError(await run('merkle', 'verify-range', '--start', '2026-13-01'), /--start must be/);
    expectOneLineError(await run('merkle', 'verify-range', '--start', '-1h', '--start-time', '-1h'), /not both/);
    expectOneLineError(await run('merkle', 'verify-event'), /--event-id/);
    expectOneLineError(await run('merkle', 'verify-event', '--event-id', 'no-such-event'), /event no-such-event is not in ledger/);
    expectOneLineError(await run('ledger', 'query', '--start-time', '-1h'), /--agent-id/);
    expectOneLineError(await run('ledger', 'query', '--agent-id', 'a'), /--time-window/);
    expectOneLineError(await run('ledger', 'query', '--agent-id', 'a', '--time-window', 'yearly'), /--time-window must be one of hourly, daily, weekly, monthly/);
    expectOneLineError(await run('ledger', 'query', '--agent-id', 'a', '--time-window', 'daily', '--start-time', '-1h'), /not both/);
    expectOneLineError(await run('ledger', 'export', '--start-time', '-1h'), /--out/);
    expectOneLineError(await run('ledger', 'export', '--end-time', 'now', '--out', '/tmp/x.json'), /--start-time/);
    // Without the writer's key nothing can be verified, and no new key is made (it would fail every checkpoint).
    const keyless = cliRunner(() => ({ ...baseEnv(), CARACAL_HOME: mkdtempSync(path.join(tmpdir(), 'caracal-keyless-')), CARACAL_LEDGER_ORIGIN: good.origin }));
    // (On the embedded backend another home is another, empty database: there is no batch 5 to verify.)
    expectOneLineError(await keyless('merkle', 'verify-batch', '--batch-id', '5'), backend === 'services' ? /ledger-signing\.pem does not exist/ : /no batch 5/);
    expectOneLineError(await keyless('ledger', 'public-key'), /does not exist/);
    // The runbook's commands, verbatim, on a ledger that never signed anything (another origin on
    // the same database, no key): nothing to verify is a success, not a missing-key error.
    const fresh = cliRunner(() => ({ ...baseEnv(), CARACAL_HOME: mkdtempSync(path.join(tmpdir(), 'caracal-fresh-')), CARACAL_LEDGER_ORIGIN: `${good.origin}-fresh` }));
    for (const args of [
      ['merkle', 'verify-range', '--start-time', '2024-01-01T00:00:00Z', '--end-time', '2024-01-31T23:59:59Z'],
      ['merkle', 'verify-range', '--start-time', '2024-01-01T00:00:00Z', '--end-time', 'now'],
      ['merkle', 'verify-range', '--start', '2026-02-01', '--end', '2026-02-03'],
      ['ledger', 'query', '--agent-id', 'agent-x', '--start-time', '2024-01-01T00:00:00Z', '--end-time', '2024-01-31T23:59:59Z'],
      ['ledger', 'query', '--agent-id', 'agent-x', '--time-window', 'daily'],
    ]) {
      const result = await fresh(...args);
      expect(result.code, `${args.join(' ')}: ${result.err}`).toBe(0);
    }
    expect((await fresh('merkle', 'verify-range', '--start-time', '2024-01-01T00:00:00Z', '--end-time', 'now')).out).toMatch(/nothing to verify/);
    expect(JSON.parse((await run('merkle', 'status', '--json')).out)).toMatchObject({ frozen: false });
    expect(await withDb(async (db) => (await readSequencer(db, good.origin))!.frozenAt)).toBeNull();
    expect(await withDb(async (db) => (await findEntry(db, good.origin, good.eventIds[0]!))?.leafIndex)).toBe(0);
  }, 120_000);
});

describe('caracal merkle and ledger commands on decisions sealed by the ledger-writer role (PostgreSQL + Kafka)', () => {
  let h: Harness;
  let consumers: RunningConsumers;
  const origin = `caracal.test/${randomName('role')}`;

  beforeAll(async () => {
    h = await createHarness({ backend: 'services', configOverrides: { ledger: { origin, batchMaxEvents: 40, batchMaxMs: 300 } } });
    consumers = await startConsumers(h.ctx, ['ledger-writer'], { baseDelayMs: 10, maxDelayMs: 50, maxAttempts: 3, prepare: false });
  }, 120_000);

  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
  }, 60_000);

  it('verifies the batches, range and events the role sealed, and queries them', async () => {
    const services = requireServices();
    const caracal = cliRunner(() => ({
      CARACAL_HOME: h.ctx.config.home,
      CARACAL_LOG_LEVEL: 'silent',
      DATABASE_URL: services.databaseUrl,
      CARACAL_DB_SCHEMA: h.ctx.config.database.schema,
      KAFKA_BROKERS: services.kafkaBrokers.join(','),
      REDIS_URL: services.redisUrl,
      CARACAL_LEDGER_ORIGIN: origin,
    }));
    const agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
    const token = await h.token(agent);
    const replies = [
      await h.assembled.gateway.app.inject({ url: '/proxy/echo/a', headers: { authorization: `Bearer ${token}` } }),
      await h.assembled.gateway.app.inject({ method: 'POST', url: '/proxy/echo/a', headers: { authorization: `Bearer ${token}` }, payload: {} }),
    ];
    expect(replies.map((r) => r.statusCode)).toEqual([200, 403]);
    const decisionIds = replies.map((r) => r.headers['x-caracal-decision-id'] as string);
    let rows: { eventId: string; decisionId: string; allow: boolean; checkpoint: number | null }[] = [];
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const run = await caracal('ledger', 'query', '--agent-id', agent, '--time-window', 'hourly', '--json');
      rows = run.code === 0 ? JSON.parse(run.out) : [];
      if (decisionIds.every((id) => rows.some((r) => r.decisionId === id && r.checkpoint !== null))) break;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    expect(rows.find((r) => r.decisionId === decisionIds[0])).toMatchObject({ allow: true, checkpoint: expect.any(Number) });
    expect(rows.find((r) => r.decisionId === decisionIds[1])).toMatchObject({ allow: false, checkpoint: expect.any(Number) });
    const range = await caracal('merkle', 'verify-range', '--start-time', '-1h', '--end-time', 'now');
    expect(range.err).toBe('');
    expect(range.out).toMatch(/^verified \d+ batch(es)? .*all ok/);
    const batch = rows[0]!.checkpoint!;
    expect((await caracal('merkle', 'verify-batch', '--batch-id', String(batch))).out).toMatch(new RegExp(`^batch ${batch} verified`));
    for (const row of rows) expect((await caracal('merkle', 'verify-event', '--event-id', row.eventId)).code).toBe(0);
    expect((await caracal('ledger', 'public-key')).out.trim()).toBe(loadLedgerSigner(h.ctx.config).verifierKey);
  }, 120_000);
});

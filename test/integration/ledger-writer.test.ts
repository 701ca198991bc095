import { generateKeyPairSync } from 'node:crypto';
import pg from 'pg';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listDlqEntries } from '../../src/consumers/dlq.js';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { ledgerWriter } from '../../src/consumers/ledger-writer.js';
import { startConsumer, type RunningConsumer } from '../../src/consumers/runner.js';
import { AppContext } from '../../src/context.js';
import { EVENT_TYPES } from '../../src/events/cloudevents.js';
import { eventMessage } from '../../src/events/publisher.js';
import {
  createEcdsaNoteSigner,
  frontierNodeIds,
  generateEcdsaKeyPairPem,
  leafHash,
  openCheckpoint,
  parseVerifierKey,
  rootFromLeafHashes,
  verifyConsistency,
  verifyInclusion,
  type NoteVerifier,
} from '../../src/ledger/index.js';
import {
  findEntry,
  freezeLedger,
  ledgerEntryOf,
  latestCheckpoint,
  listCheckpoints,
  proveConsistency,
  proveInclusion,
  readEntries,
  readSequencer,
  recordVerificationFailure,
  requireUtf8Database,
  resumeLedger,
  appendEvents,
} from '../../src/ledger/store.js';
import { LedgerWriter, ledgerSigningKeyPath, loadLedgerSigner } from '../../src/ledger/writer.js';
import { createLogger } from '../../src/logging/logger.js';
import { ConsumerMetrics } from '../../src/metrics/metrics.js';
import type { Db, Queryable } from '../../src/store/db.js';
import { migrateUp } from '../../src/store/migrate.js';
import { openDb } from '../../src/store/open.js';
import { loadConfig } from '../../src/config/load.js';
import { decisionEvent } from '../helpers/fixtures.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { startCli } from '../helpers/processes.js';
import { randomName, requireServices } from '../helpers/services.js';

/** Polls `check` until it returns true or `timeoutMs` passes. */
async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every leaf, checkpoint and proof of the tree, checked from the stored rows with the verifier key alone. */
async function verifyLedger(db: Db, origin: string, verifier: NoteVerifier): Promise<{ size: number; checkpoints: number }> {
  const entries = await readEntries(db, origin, { limit: 100_000 });
  entries.forEach((entry, i) => {
    expect(entry.leafIndex).toBe(i);
    expect(entry.leafHash.equals(leafHash(entry.canonical))).toBe(true);
    expect(JSON.parse(entry.canonical.toString('utf8')).id).toBe(entry.eventId);
  });
  expect(new Set(entries.map((e) => e.eventId)).size).toBe(entries.length);
  const leaves = entries.map((e) => e.leafHash);
  const sequencer = (await readSequencer(db, origin))!;
  expect(sequencer.treeSize).toBe(entries.length);
  expect(sequencer.root.equals(rootFromLeafHashes(leaves))).toBe(true);

  const checkpoints = await listCheckpoints(db, origin, { limit: 100_000 });
  expect(checkpoints.length).toBeGreaterThan(0);
  let previous: { size: number; root: Buffer } | undefined;
  for (const stored of checkpoints) {
    const { checkpoint } = openCheckpoint(stored.note, origin, [verifier]);
    expect(checkpoint.size).toBe(stored.treeSize);
    expect(checkpoint.rootHash.equals(stored.root)).toBe(true);
    expect(checkpoint.rootHash.equals(rootFromLeafHashes(leaves.slice(0, checkpoint.size)))).toBe(true);
    if (previous) {
      expect(checkpoint.size).toBeGreaterThan(previous.size);
      const proof = await proveConsistency(db, origin, previous.size, checkpoint.size);
      verifyConsistency(previous.size, checkpoint.size, proof, previous.root, checkpoint.rootHash);
    }
    previous = { size: checkpoint.size, root: checkpoint.rootHash };
  }
  const last = previous!;
  for (let index = 0; index < last.size; index++) {
    verifyInclusion(leaves[index]!, index, last.size, await proveInclusion(db, origin, index, last.size), last.root);
  }
  return { size: entries.length, checkpoints: checkpoints.length };
}

describe.each(BACKENDS)('the ledger writer on the %s backend', (backend) => {
  let h: Harness;
  let consumers: RunningConsumers;
  let metrics: ConsumerMetrics;
  let origin: string;
  let verifier: NoteVerifier;
  let agent: string;
  let token: string;
  const ledgerGroup = () => `${h.ctx.config.kafka.groupPrefix}ledger-writer-group`;

  const countEntries = async (where: string, value: string) =>
    Number((await h.ctx.db.query<{ n: string }>(`SELECT count(*) AS n FROM ledger_entries WHERE origin = $1 AND ${where} = $2`, [origin, value])).rows[0]!.n);
  /** The event's leaf exists and a signed checkpoint covers it. */
  const sealed = async (eventId: string) => {
    const entry = await findEntry(h.ctx.db, origin, eventId);
    const checkpoint = await latestCheckpoint(h.ctx.db, origin);
    return entry !== null && checkpoint !== null && checkpoint.treeSize > entry.leafIndex;
  };
  const caughtUp = async (groupId: string) => {
    const lag = await (await h.ctx.events()).consumerLag(groupId, [h.ctx.topics.decisions, h.ctx.topics.metering]);
    return lag.every((p) => p.lag === 0);
  };

  beforeAll(async () => {
    origin = `caracal.test/${randomName('ledger')}`;
    h = await createHarness({ backend, configOverrides: { ledger: { origin, batchMaxEvents: 40, batchMaxMs: 300 } } });
    metrics = new ConsumerMetrics(false);
    consumers = await startConsumers(h.ctx, ['audit-logger', 'ledger-writer'], { baseDelayMs: 10, maxDelayMs: 50, maxAttempts: 3, prepare: false, metrics });
    verifier = parseVerifierKey(loadLedgerSigner(h.ctx.config).verifierKey);
    agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
    token = await h.token(agent);
  }, 120_000);

  afterAll(async () => {
    await consumers?.stop();
    await h?.close();
  }, 60_000);

  it('records every decision through the gateway once, sealed in a signed checkpoint within seconds, with proofs that verify', async () => {
    expect(consumers.roles).toContain('ledger-writer');
    const started = Date.now();
    const replies = [
      await h.assembled.gateway.app.inject({ url: '/proxy/echo/a', headers: { authorization: `Bearer ${token}` } }),
      await h.assembled.gateway.app.inject({ method: 'POST', url: '/proxy/echo/a', headers: { authorization: `Bearer ${token}` }, payload: {} }),
      await h.assembled.gateway.app.inject({ url: '/proxy/echo/a', headers: { authorization: 'Bearer nope' } }),
    ];
    expect(replies.map((r) => r.statusCode)).toEqual([200, 403, 401]);
    const decisionIds = replies.map((r) => r.headers['x-caracal-decision-id'] as string);
    const eventIdOf = async (decisionId: string) =>
      (await h.ctx.db.query<{ event_id: string }>('SELECT event_id FROM ledger_entries WHERE origin = $1 AND decision_id = $2', [origin, decisionId])).rows[0]?.event_id;
    for (const decisionId of decisionIds) {
      expect(await until(async () => (await eventIdOf(decisionId)) !== undefined), decisionId).toBe(true);
      expect(await until(async () => sealed((await eventIdOf(decisionId))!), 15_000), `${decisionId} sealed`).toBe(true);
      expect(await countEntries('decision_id', decisionId)).toBe(1);
    }
    // 3 events < batchMaxEvents: the timer sealed them, within a few seconds of the requests.
    expect(Date.now() - started).toBeLessThan(20_000);
    const entry = (await findEntry(h.ctx.db, origin, (await eventIdOf(decisionIds[0]!))!))!;
    expect(entry).toMatchObject({ eventType: EVENT_TYPES.decision, subject: agent, topic: h.ctx.topics.decisions, requestId: replies[0]!.headers['x-request-id'] });
    expect(entry.offset).toMatch(/^\d+$/);

    const { size } = await verifyLedger(h.ctx.db, origin, verifier);
    expect(size).toBeGreaterThanOrEqual(3);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/caracal_merkle_tree_size [1-9]/);
    expect(text).toMatch(/caracal_merkle_batch_size_count [1-9]/);
    expect(text).toMatch(/caracal_merkle_checkpoint_age_seconds \d/);
    expect(text).toMatch(/caracal_merkle_verification_failures_total 0/);
  }, 120_000);

  it('seals by size in the append transaction: a burst larger than batchMaxEvents gets checkpoints of at least that size', async () => {
    const key = randomName('burst');
    const burst = Array.from({ length: 100 }, (_, i) => decisionEvent(key, `b${i}`));
    const before = (await latestCheckpoint(h.ctx.db, origin))?.treeSize ?? 0;
    await (await h.ctx.events()).publish(h.ctx.topics.decisions, burst.map((event) => eventMessage(key, event)));
    expect(await until(async () => sealed(burst.at(-1)!.id), 60_000)).toBe(true);
    const checkpoints = await listCheckpoints(h.ctx.db, origin, { fromSize: before + 1 });
    // One key is one partition, read in slices: at least one checkpoint was sealed by size (≥ 40 new leaves).
    const sizes = [before, ...checkpoints.map((c) => c.treeSize)];
    expect(sizes.slice(1).some((size, i) => size - sizes[i]! >= 40)).toBe(true);
    await verifyLedger(h.ctx.db, origin, verifier);
  }, 120_000);

  it('appends and seals through the store API on another origin: idempotent, sealed in the append transaction by size', async () => {
    const otherOrigin = `caracal.test/${randomName('direct')}`;
    const signer = createEcdsaNoteSigner(otherOrigin, generateEcdsaKeyPairPem().privateKeyPem);
    const writer = new LedgerWriter({ db: h.ctx.db, origin: otherOrigin, signer, batchMaxEvents: 10, batchMaxMs: 3_600_000, freezeOnVerificationFailure: true, logger: createLogger('silent') });
    const key = randomName('direct');
    const entries = Array.from({ length: 25 }, (_, i) => ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(key, `d${i}`)))));
    const mainSize = (await readSequencer(h.ctx.db, origin))!.treeSize;
    const first = await writer.append(entries.slice(0, 5));
    expect(first).toMatchObject({ appended: 5, skipped: [], conflicts: [], firstIndex: 0, treeSize: 5, checkpointSize: 0, sealed: null });
    const second = await writer.append([...entries, entries[7]!]);
    expect(second).toMatchObject({ appended: 20, firstIndex: 5, treeSize: 25 });
    expect(second.skipped).toEqual([...entries.slice(0, 5).map((e) => e.eventId), entries[7]!.eventId]);
    expect(second.conflicts).toEqual([]);
    expect(second.sealed).toMatchObject({ treeSize: 25, previousSize: 0 });
    expect(second.sealed!.root.equals(rootFromLeafHashes(entries.map((e) => e.leafHash)))).toBe(true);
    const third = await writer.append(entries);
    expect(third).toMatchObject({ appended: 0, treeSize: 25, checkpointSize: 25, sealed: null });
    expect(await writer.seal()).toBeNull();
    await verifyLedger(h.ctx.db, otherOrigin, parseVerifierKey(signer.verifierKey));
    // The trees are separate: the role's tree did not move.
    expect((await readSequencer(h.ctx.db, origin))!.treeSize).toBe(mainSize);
  }, 60_000);

  it('groups slices that arrive during a transaction into the next one, answers each for its own, and redoes a failed group slice by slice', async () => {
    const otherOrigin = `caracal.test/${randomName('group')}`;
    const signer = createEcdsaNoteSigner(otherOrigin, generateEcdsaKeyPairPem().privateKeyPem);
    let transactions = 0;
    let failNext = false;
    // The database as the writer sees it, counting transactions and failing one on demand (not an outage).
    const db = new Proxy(h.ctx.db, {
      get(target, prop, receiver) {
        if (prop === 'transaction') {
          return (fn: Parameters<Db['transaction']>[0]) => {
            transactions++;
            if (failNext) {
              failNext = false;
              return Promise.reject(new Error('a statement failed'));
            }
            return target.transaction(fn);
          };
        }
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const writer = new LedgerWriter({ db, origin: otherOrigin, signer, batchMaxEvents: 1_000, batchMaxMs: 3_600_000, freezeOnVerificationFailure: true, logger: createLogger('silent') });
    const key = randomName('group');
    const entries = Array.from({ length: 60 }, (_, i) => ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(key, `g${i}`)))));
    const otherContent = ledgerEntryOf(JSON.parse(JSON.stringify({ ...decisionEvent(key, 'g12'), id: entries[12]!.eventId })));
    const [a, b, c] = [entries.slice(0, 10), [...entries.slice(10, 20), entries[3]!], [...entries.slice(20, 30), otherContent]];
    // a starts a transaction at once; b and c arrive while it runs and share the next one.
    const [ra, rb, rc] = await Promise.all([writer.append(a), writer.append(b), writer.append(c)]);
    expect(transactions).toBe(2);
    expect(ra).toMatchObject({ appended: 10, skipped: [], conflicts: [], firstIndex: 0 });
    expect(rb).toMatchObject({ appended: 10, skipped: [entries[3]!.eventId], conflicts: [], firstIndex: 10, treeSize: 30 });
    expect(rc).toMatchObject({ appended: 10, skipped: [entries[12]!.eventId], conflicts: [entries[12]!.eventId], firstIndex: 20, treeSize: 30 });
    expect(rb.outcomes).toEqual([...Array(10).fill('appended'), 'skipped']);
    expect(rc.outcomes).toEqual([...Array(10).fill('appended'), 'conflict']);
    expect((await readEntries(h.ctx.db, otherOrigin, { limit: 100 })).map((e) => e.eventId)).toEqual(entries.slice(0, 30).map((e) => e.eventId));

    // A group whose transaction fails for a reason other than an outage is redone one slice per transaction.
    transactions = 0;
    const [d, e, f] = [entries.slice(30, 40), entries.slice(40, 50), entries.slice(50, 60)];
    const first = writer.append(d);
    failNext = true; // d's transaction is already running: the next one, the group of e and f, fails
    const [rd, re, rf] = await Promise.all([first, writer.append(e), writer.append(f)]);
    expect(transactions).toBe(4);
    expect([rd.firstIndex, re.firstIndex, rf.firstIndex]).toEqual([30, 40, 50]);
    expect([rd, re, rf].map((r) => r.appended)).toEqual([10, 10, 10]);
    expect(await writer.seal()).toMatchObject({ treeSize: 60 });
    await verifyLedger(h.ctx.db, otherOrigin, parseVerifierKey(signer.verifierKey));
  }, 60_000);

  it('follows verification failures recorded by other processes (merkle verify-* commands) in caracal_merkle_verification_failures_total', async () => {
    const metricValue = async () => Number(/_total (\d+)/.exec(await metrics.registry.getSingleMetricAsString('caracal_merkle_verification_failures_total'))?.[1] ?? NaN);
    const recorded = await recordVerificationFailure(h.ctx.db, origin); // what handleCheckFailure does in a command
    expect(await until(async () => (await metricValue()) === recorded, 15_000)).toBe(true);
  }, 60_000);

  it('adds no leaf for a redelivered event: the same event twice, or the whole topic again from another group', async () => {
    const key = randomName('again');
    const event = decisionEvent(key, 'once');
    const events = await h.ctx.events();
    await events.publish(h.ctx.topics.decisions, [eventMessage(key, event)]);
    await events.publish(h.ctx.topics.decisions, [eventMessage(key, event)]);
    await events.publish(h.ctx.topics.metering, [eventMessage(key, event)]);
    expect(await until(async () => sealed(event.id))).toBe(true);
    expect(await until(() => caughtUp(ledgerGroup()))).toBe(true);
    expect(await countEntries('event_id', event.id)).toBe(1);
    const sizeBefore = (await readSequencer(h.ctx.db, origin))!.treeSize;

    // A writer that starts over from the beginning of both topics (a lost offset, a restart): everything is a repeat.
    const replay = { ...ledgerWriter(h.ctx), groupId: randomName('replay') };
    const running = await startConsumer(h.ctx, replay, { baseDelayMs: 10, maxDelayMs: 50 });
    try {
      expect(await until(() => caughtUp(replay.groupId), 60_000)).toBe(true);
    } finally {
      await running.stop();
    }
    expect((await readSequencer(h.ctx.db, origin))!.treeSize).toBe(sizeBefore);
    expect(await countEntries('event_id', event.id)).toBe(1);

    // The same id with other content is no redelivery: nothing is appended, and it goes to the DLQ.
    const forged = { ...event, data: { ...event.data, allow: true, status: 200 } };
    await events.publish(h.ctx.topics.decisions, [eventMessage(key, forged)]);
    const dead = async () => (await listDlqEntries(h.ctx.db)).filter((e) => e.originalEventId === event.id && e.consumerGroup === ledgerGroup());
    expect(await until(async () => (await dead()).length === 1)).toBe(true);
    expect((await dead())[0]!.error).toMatch(/already in the ledger with other content/);
    expect((await readSequencer(h.ctx.db, origin))!.treeSize).toBe(sizeBefore);
    expect((await findEntry(h.ctx.db, origin, event.id))!.leafHash.equals(ledgerEntryOf(JSON.parse(JSON.stringify(event))).leafHash)).toBe(true);
    await verifyLedger(h.ctx.db, origin, verifier);
  }, 120_000);

  it('keeps one sequencer with several writers at once: every event exactly once, one root per size, everything verifies', async () => {
    // A second context on the same database and event log, as a second process would have, with two more writers:
    // one in the same group (the partitions are shared out) and one in its own group (every event a second time).
    const other = await AppContext.fromConfig(h.ctx.config, { db: h.ctx.db, events: await h.ctx.events(), logger: createLogger('silent') });
    const writers: RunningConsumer[] = [];
    const duplicate = { ...ledgerWriter(other), groupId: randomName('twin') };
    try {
      writers.push(await startConsumer(other, ledgerWriter(other), { baseDelayMs: 10, maxDelayMs: 50 }));
      writers.push(await startConsumer(other, duplicate, { baseDelayMs: 10, maxDelayMs: 50 }));
      const events = await h.ctx.events();
      const published: string[] = [];
      const keys = Array.from({ length: 6 }, () => randomName('load'));
      const decisionIds: string[] = [];
      for (let round = 0; round < 10; round++) {
        const batch = keys.flatMap((key) => [decisionEvent(key, `r${round}a`), decisionEvent(key, `r${round}b`)]);
        published.push(...batch.map((e) => e.id));
        await events.publish(round % 2 === 0 ? h.ctx.topics.decisions : h.ctx.topics.metering, batch.map((e) => eventMessage(e.subject!, e)));
        const reply = await h.assembled.gateway.app.inject({ url: `/proxy/echo/load/${round}`, headers: { authorization: `Bearer ${token}` } });
        decisionIds.push(reply.headers['x-caracal-decision-id'] as string);
      }
      const allIn = async () =>
        Number(
          (
            await h.ctx.db.query<{ n: string }>('SELECT count(*) AS n FROM ledger_entries WHERE origin = $1 AND event_id IN (SELECT json_array_elements_text($2::json))', [
              origin,
              JSON.stringify(published),
            ])
          ).rows[0]!.n,
        ) === published.length;
      expect(await until(allIn, 90_000)).toBe(true);
      for (const decisionId of decisionIds) expect(await until(async () => (await countEntries('decision_id', decisionId)) === 1), decisionId).toBe(true);
      expect(await until(async () => (await caughtUp(ledgerGroup())) && (await caughtUp(duplicate.groupId)), 90_000)).toBe(true);
      expect(await until(async () => sealed(published.at(-1)!), 15_000)).toBe(true);
      for (const id of published) expect(await countEntries('event_id', id)).toBe(1);
      const { rows } = await h.ctx.db.query<{ n: string }>('SELECT count(*) AS n FROM (SELECT tree_size FROM ledger_checkpoints WHERE origin = $1 GROUP BY tree_size HAVING count(*) > 1) d', [origin]);
      expect(Number(rows[0]!.n)).toBe(0);
      await verifyLedger(h.ctx.db, origin, verifier);
    } finally {
      await Promise.allSettled(writers.map((w) => w.stop()));
      await other.close();
    }
  }, 240_000);

  it('refuses UPDATE, DELETE and TRUNCATE of entries, hashes and checkpoints, and moving the sequencer back', async () => {
    expect(await until(async () => (await latestCheckpoint(h.ctx.db, origin)) !== null)).toBe(true);
    for (const table of ['ledger_entries', 'ledger_hashes', 'ledger_checkpoints']) {
      await expect(h.ctx.db.query(`UPDATE ${table} SET origin = origin WHERE origin = $1`, [origin])).rejects.toThrow(/append-only: UPDATE/);
      await expect(h.ctx.db.query(`DELETE FROM ${table} WHERE origin = $1`, [origin])).rejects.toThrow(/append-only: DELETE/);
      await expect(h.ctx.db.query(`DELETE FROM ${table} WHERE false`)).rejects.toThrow(/append-only: DELETE/);
      await expect(h.ctx.db.query(`TRUNCATE ${table}`)).rejects.toThrow(/append-only: TRUNCATE/);
    }
    await expect(h.ctx.db.query('UPDATE ledger_sequencer SET tree_size = 0, checkpoint_size = 0 WHERE origin = $1', [origin])).rejects.toThrow(/only moves forward/);
    await expect(h.ctx.db.query('DELETE FROM ledger_sequencer WHERE origin = $1', [origin])).rejects.toThrow(/cannot be removed/);
    await expect(h.ctx.db.query('TRUNCATE ledger_sequencer')).rejects.toThrow(/append-only: TRUNCATE/);
    // A second root for a size that has a checkpoint: refused by the primary key.
    const last = (await latestCheckpoint(h.ctx.db, origin))!;
    await expect(
      h.ctx.db.query("INSERT INTO ledger_checkpoints (origin, tree_size, root, note) VALUES ($1, $2, decode(repeat('00', 32), 'hex'), 'forged')", [origin, last.treeSize]),
    ).rejects.toThrow(/duplicate key|unique/i);
    await verifyLedger(h.ctx.db, origin, verifier);
  }, 60_000);

  it('sends a poison event to the DLQ and keeps going', async () => {
    const key = randomName('poison');
    const before = decisionEvent(key, 'before');
    const behind = decisionEvent(key, 'behind');
    // Valid for the event schema, but a lone surrogate has no canonical JSON (not I-JSON): poison for the ledger only.
    const surrogate = JSON.stringify(decisionEvent(key, 'surrogate')).replace('"method":"GET"', '"method":"\\ud800"');
    // Valid too, but longer than a tile entry bundle can carry (uint16 length): refused rather than sealed unservable.
    const hugeEvent = decisionEvent(key, 'huge');
    const huge = { ...hugeEvent, data: { ...hugeEvent.data, path: `/${'a'.repeat(70_000)}` } };
    await (await h.ctx.events()).publish(h.ctx.topics.decisions, [
      eventMessage(key, before),
      { key, value: 'this is not json' },
      { key, value: surrogate },
      eventMessage(key, huge),
      eventMessage(key, behind),
    ]);
    const dead = async () => (await listDlqEntries(h.ctx.db)).filter((e) => e.key === key && e.consumerGroup === ledgerGroup());
    expect(await until(async () => (await dead()).length === 3, 60_000)).toBe(true);
    const entries = await dead();
    expect(entries.map((e) => e.error).join('\n')).toMatch(/not valid JSON/);
    expect(entries.map((e) => e.error).join('\n')).toMatch(/PoisonMessage: event cannot be a ledger leaf/);
    expect(entries.map((e) => e.error).join('\n')).toMatch(/a ledger leaf holds at most 65535/);
    for (const e of entries) expect(e.attempts).toBe(1);
    expect(await until(async () => (await sealed(before.id)) && (await sealed(behind.id)), 30_000)).toBe(true);
    expect(await countEntries('decision_id', `${key}-surrogate`)).toBe(0);
    expect(await countEntries('decision_id', `${key}-huge`)).toBe(0);
    await verifyLedger(h.ctx.db, origin, verifier);
  }, 120_000);

  it('appends nothing while the sequencer is frozen, and loses nothing once it is resumed', async () => {
    await h.ctx.db.query("UPDATE ledger_sequencer SET frozen_at = now(), frozen_reason = 'test freeze' WHERE origin = $1", [origin]);
    const sizeBefore = (await readSequencer(h.ctx.db, origin))!.treeSize;
    const key = randomName('frozen');
    const waiting = Array.from({ length: 5 }, (_, i) => decisionEvent(key, `f${i}`));
    try {
      await (await h.ctx.events()).publish(h.ctx.topics.decisions, waiting.map((e) => eventMessage(key, e)));
      await (await h.ctx.events()).publish(h.ctx.topics.metering, [eventMessage(key, decisionEvent(key, 'metered'))]);
      await sleep(2_000);
      expect((await readSequencer(h.ctx.db, origin))!.treeSize).toBe(sizeBefore);
      expect(await findEntry(h.ctx.db, origin, waiting[0]!.id)).toBeNull();
      // Freezing again keeps the first reason.
      expect((await freezeLedger(h.ctx.db, origin, 'second')).frozenReason).toBe('test freeze');
      // /ready reports it, and the gateway keeps serving (a frozen ledger stops sealing only).
      const ready = await h.assembled.gateway.app.inject({ url: '/ready' });
      expect(ready.statusCode, ready.body).toBe(200);
      expect(ready.json().checks.ledger).toMatchObject({ ok: false, advisory: true, error: expect.stringContaining('test freeze') });
    } finally {
      expect(await resumeLedger(h.ctx.db, origin)).toBe(true);
    }
    expect((await h.assembled.gateway.app.inject({ url: '/ready' })).json().checks.ledger).toMatchObject({ ok: true, advisory: true });
    expect(await resumeLedger(h.ctx.db, origin)).toBe(false);
    expect(await until(async () => (await Promise.all(waiting.map((e) => sealed(e.id)))).every(Boolean), 60_000)).toBe(true);
    expect(await until(async () => (await countEntries('decision_id', `${key}-metered`)) === 1)).toBe(true);
    expect((await listDlqEntries(h.ctx.db)).filter((e) => e.key === key)).toHaveLength(0);
    await verifyLedger(h.ctx.db, origin, verifier);
  }, 120_000);

  it('freezes itself when the stored hashes stop verifying, signs nothing, and continues once repaired and resumed', async () => {
    expect(await until(async () => (await caughtUp(ledgerGroup())) && (await readSequencer(h.ctx.db, origin))!.openSince === null, 30_000)).toBe(true);
    const { treeSize } = (await readSequencer(h.ctx.db, origin))!;
    const checkpointsBefore = (await listCheckpoints(h.ctx.db, origin, { limit: 100_000 })).length;
    const node = frontierNodeIds(treeSize)[0]!;
    const original = (await h.ctx.db.query<{ hash: string }>("SELECT encode(hash, 'hex') AS hash FROM ledger_hashes WHERE origin = $1 AND level = $2 AND idx = $3", [origin, node.level, node.index])).rows[0]!.hash;
    const setHash = async (hex: string) => {
      // Only the owner can do this, by switching the trigger off: what a tampering superuser would do.
      await h.ctx.db.transaction(async (tx) => {
        await tx.query('ALTER TABLE ledger_hashes DISABLE TRIGGER ledger_hashes_no_change');
        await tx.query("UPDATE ledger_hashes SET hash = decode($4, 'hex') WHERE origin = $1 AND level = $2 AND idx = $3", [origin, node.level, node.index, hex]);
        await tx.query('ALTER TABLE ledger_hashes ENABLE TRIGGER ledger_hashes_no_change');
      });
    };
    await setHash('ab'.repeat(32));
    const key = randomName('tamper');
    const event = decisionEvent(key, 'after-tamper');
    try {
      await (await h.ctx.events()).publish(h.ctx.topics.decisions, [eventMessage(key, event)]);
      expect(await until(async () => (await readSequencer(h.ctx.db, origin))!.frozenAt !== null, 30_000)).toBe(true);
      expect((await readSequencer(h.ctx.db, origin))!.frozenReason).toMatch(/another root/);
      expect(await metrics.registry.getSingleMetricAsString('caracal_merkle_verification_failures_total')).toMatch(/total [1-9]/);
      expect(await findEntry(h.ctx.db, origin, event.id)).toBeNull();
      expect(await listCheckpoints(h.ctx.db, origin, { limit: 100_000 })).toHaveLength(checkpointsBefore);
    } finally {
      await setHash(original);
      await resumeLedger(h.ctx.db, origin);
    }
    expect(await until(async () => sealed(event.id), 60_000)).toBe(true);
    expect((await listDlqEntries(h.ctx.db)).filter((e) => e.key === key)).toHaveLength(0);
    await verifyLedger(h.ctx.db, origin, verifier);
  }, 120_000);
});

describe('what the ledger sends as text', () => {
  it('refuses a database whose encoding is not UTF8, and leaf input that is not UTF-8', async () => {
    const services = requireServices();
    const name = randomName('latin1');
    const admin = new pg.Client({ connectionString: services.databaseUrl });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${name} ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'`);
      const url = new URL(services.databaseUrl);
      url.pathname = `/${name}`;
      const latin1 = new pg.Client({ connectionString: url.toString() });
      await latin1.connect();
      try {
        const queryable: Queryable = { query: async (sql, params) => latin1.query(sql, params) as never };
        await expect(requireUtf8Database(queryable)).rejects.toThrow(/the ledger needs a UTF8 database; this one's encoding is LATIN1/);
      } finally {
        await latin1.end();
      }
      const utf8: Queryable = { query: async (sql, params) => admin.query(sql, params) as never };
      await expect(requireUtf8Database(utf8)).resolves.toBeUndefined();
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS ${name}`).catch(() => {});
      await admin.end();
    }

    const schema = randomName('utf8');
    const db = await openDb(loadConfig({ env: { DATABASE_URL: services.databaseUrl, CARACAL_DB_SCHEMA: schema, CARACAL_HOME: mkdtempSync(path.join(tmpdir(), 'caracal-utf8-')) } }));
    try {
      await migrateUp(db);
      const entry = ledgerEntryOf(JSON.parse(JSON.stringify(decisionEvent(randomName('k'), 'bytes'))));
      const broken = Buffer.concat([entry.canonical.subarray(0, 10), Buffer.from([0xff]), entry.canonical.subarray(10)]);
      await expect(db.transaction((tx) => appendEvents(tx, 'caracal.test/utf8', [{ ...entry, canonical: broken, leafHash: leafHash(broken) }]))).rejects.toThrow(/not UTF-8/);
      expect(await readSequencer(db, 'caracal.test/utf8')).toBeNull(); // rolled back: not even the sequencer row
    } finally {
      await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await db.close();
    }
  }, 60_000);
});

describe('the ledger signing key', () => {
  const configIn = (home: string, ledger: Record<string, unknown> = {}) => loadConfig({ env: {}, cwd: home, overrides: { home, ledger } });

  it('is generated as <home>/ledger-signing.pem with mode 0600 on first use, then reused', () => {
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-ledger-key-'));
    const config = configIn(home, { origin: 'caracal.test/keys' });
    const file = ledgerSigningKeyPath(config);
    expect(file).toBe(path.join(home, 'ledger-signing.pem'));
    const first = loadLedgerSigner(config);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(first.name).toBe('caracal.test/keys');
    expect(loadLedgerSigner(config).verifierKey).toBe(first.verifierKey);
  });

  it('refuses a configured file that is missing, not a key, or not P-256', () => {
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-ledger-key-'));
    expect(() => loadLedgerSigner(configIn(home, { signingKeyPath: path.join(home, 'missing.pem') }))).toThrow(/ledger\.signingKeyPath: .* does not exist/);
    const junk = path.join(home, 'junk.pem');
    writeFileSync(junk, 'not a key');
    expect(() => loadLedgerSigner(configIn(home, { signingKeyPath: junk }))).toThrow(/ledger\.signingKeyPath: .* is not a PEM private key/);
    const p384 = path.join(home, 'p384.pem');
    writeFileSync(p384, generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey.export({ format: 'pem', type: 'pkcs8' }));
    expect(() => loadLedgerSigner(configIn(home, { signingKeyPath: p384 }))).toThrow(/must be an EC P-256/);
  });
});

describe('caracal consumers start --only ledger-writer, as a process on PostgreSQL + Kafka', () => {
  it('seals decisions into signed checkpoints and serves the merkle metrics', async () => {
    const origin = `caracal.test/${randomName('cli')}`;
    const h = await createHarness({ backend: 'services' });
    const { config } = h.ctx;
    const keyFile = path.join(mkdtempSync(path.join(tmpdir(), 'caracal-ledger-cli-')), 'ledger.pem');
    writeFileSync(keyFile, generateEcdsaKeyPairPem().privateKeyPem, { mode: 0o600 });
    const verifier = parseVerifierKey(createEcdsaNoteSigner(origin, generateEcdsaKeyPairPem().privateKeyPem).verifierKey); // a stranger's key
    const proc = startCli(['consumers', 'start', '--only', 'ledger-writer'], {
      ...process.env,
      DATABASE_URL: config.database.url!,
      CARACAL_DB_SCHEMA: config.database.schema,
      KAFKA_BROKERS: config.kafka.brokers!.join(','),
      CARACAL_TOPIC_PREFIX: config.kafka.topicPrefix,
      CARACAL_GROUP_PREFIX: config.kafka.groupPrefix,
      CARACAL_CONSUMERS_METRICS_PORT: '0',
      CARACAL_LOG_LEVEL: 'warn',
      CARACAL_LEDGER_ORIGIN: origin,
      CARACAL_LEDGER_SIGNING_KEY: keyFile,
      CARACAL_LEDGER_BATCH_MAX_MS: '200',
    });
    try {
      const [, metricsUrl] = await proc.waitFor(/metrics: (http:\/\/\S+\/metrics)/, 90_000);
      const agent = await h.registerAgent();
      await h.grant(agent, ['api:external/echo'], ['read']);
      const reply = await h.assembled.gateway.app.inject({ url: '/proxy/echo/p', headers: { authorization: `Bearer ${await h.token(agent)}` } });
      const decisionId = reply.headers['x-caracal-decision-id'] as string;
      const leaf = async () => (await h.ctx.db.query<{ leaf_index: string }>('SELECT leaf_index FROM ledger_entries WHERE origin = $1 AND decision_id = $2', [origin, decisionId])).rows[0];
      expect(await until(async () => (await leaf()) !== undefined, 60_000), proc.output()).toBe(true);
      expect(await until(async () => ((await latestCheckpoint(h.ctx.db, origin))?.treeSize ?? 0) > Number((await leaf())!.leaf_index), 30_000)).toBe(true);
      const checkpoint = (await latestCheckpoint(h.ctx.db, origin))!;
      const signer = loadLedgerSigner({ home: config.home, ledger: { ...config.ledger, origin, signingKeyPath: keyFile } });
      expect(openCheckpoint(checkpoint.note, origin, [parseVerifierKey(signer.verifierKey)]).checkpoint.size).toBe(checkpoint.treeSize);
      expect(() => openCheckpoint(checkpoint.note, origin, [verifier])).toThrow(/no|untrusted|verif/i);
      expect(await until(async () => /caracal_merkle_tree_size [1-9]/.test(await (await fetch(metricsUrl!)).text()), 30_000)).toBe(true);
      const text = await (await fetch(metricsUrl!)).text();
      expect(text).toMatch(/caracal_merkle_batch_size_count [1-9]/);
      expect(text).toMatch(/caracal_merkle_checkpoint_age_seconds \d/);
      expect(text).toMatch(/caracal_kafka_consumer_lag\{group="[^"]*ledger-writer-group",topic="[^"]+"\} \d+/);
      expect(await proc.stop()).toBe(0);
    } finally {
      await proc.stop();
      await h.close();
    }
  }, 180_000);
});

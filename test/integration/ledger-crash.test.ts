import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import kafkajs from 'kafkajs';
import type { Admin } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import type { CloudEvent } from '../../src/events/cloudevents.js';
import { KafkaEventLog } from '../../src/events/kafka-event-log.js';
import { eventMessage } from '../../src/events/publisher.js';
import { topicNames, topicSpecs, type TopicNames } from '../../src/events/topics.js';
import { createEcdsaNoteSigner, generateEcdsaKeyPairPem, leafHash, MerkleFrontier, openCheckpoint, parseVerifierKey, type NoteVerifier } from '../../src/ledger/index.js';
import { ledgerEntryOf, readSequencer } from '../../src/ledger/store.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgDb } from '../../src/store/pg-db.js';
import { decisionEvent } from '../helpers/fixtures.js';
import { runCli, startCli, type LongRunning } from '../helpers/processes.js';
import { randomName, requireServices } from '../helpers/services.js';

/**
 * "SIGKILL a ledger writer mid-batch under load and restart it; run two writers at once: every decision exactly once,
 * one root per size, everything verifies" — on PostgreSQL + Kafka, with real `caracal consumers start --only
 * ledger-writer` processes (dist/, as deployed):
 *
 * 1. Writer A alone; wave 1 is produced at a steady pace; A is SIGKILLed while it is appending (tree size between 20%
 *    and 90% of the wave), at a moment when its connection is inside a transaction (`pg_stat_activity`; each process
 *    has its own application_name): that batch rolls back and has to be redone by the next owners.
 * 2. Writers B and C are started at once (same group: they share the partitions, and contend on the sequencer row
 *    lock) while wave 2 is produced; A's partitions wait for its Kafka session to expire (10 s), then the backlog is
 *    drained.
 * 3. Wave 3 is produced and B is SIGKILLed mid-batch in turn, at a moment when the tree holds leaves whose offsets B
 *    has not committed: C is given them again when it takes B's partitions over, and must skip them.
 * 4. Once every event is in the tree and sealed, C is stopped with SIGTERM, and the stored ledger is checked against
 *    what was produced: each event exactly once, leaves 0..N-1, every stored hash and every checkpoint root recomputed
 *    from the leaves, every signature; then `caracal merkle verify-range` and `ledger export` + `verify-export`.
 */

const { Kafka, AssignerProtocol, logLevel: KafkaLogLevel } = kafkajs;

const WAVE1 = 6_000; // writer A alone; killed during it
const WAVE2 = 1_000; // while B and C start (A's partitions wait out its session)
const WAVE3 = 4_000; // B and C both appending; B killed during it
const TOTAL = WAVE1 + WAVE2 + WAVE3;
const KEYS = 24; // principals: spread over every partition
const PARTITIONS = 6;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Bounded wait: polls `check` until it returns true, or throws `what` with `details()` after `timeoutMs`. */
async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, details: () => Promise<string> | string, everyMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${await details()}`);
    await sleep(everyMs);
  }
}

const alive = (p: LongRunning) => p.child.exitCode === null && p.child.signalCode === null;

/** SIGKILL, and wait until the process is gone. */
async function sigkill(p: LongRunning): Promise<void> {
  if (!alive(p)) return;
  const exited = new Promise<void>((resolve) => p.child.once('exit', () => resolve()));
  p.child.kill('SIGKILL');
  await exited;
}

interface KillRecord {
  writer: string;
  /** Tree size when it was killed. */
  treeSize: number;
  /** The writer's connection was inside an explicit transaction (pg_stat_activity) when it was killed. */
  midTransaction: boolean;
  /** Leaves already in the tree whose Kafka offsets the dead writer had not committed: redelivered, must be skipped. */
  uncommittedLeaves: number;
  /** The partitions it held. */
  partitions: number[];
  /** Times it was frozen and looked at before the kill; of them, inside a transaction; with uncommitted leaves; how long. */
  looks: { attempts: number; midTransaction: number; uncommitted: number; ms: number };
}

describe('ledger writer processes SIGKILLed mid-batch and run two at once, on PostgreSQL + Kafka', () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-ledger-crash-'));
  const schema = randomName('ledger_crash');
  const origin = `caracal.test/${randomName('crash')}`;
  const topicPrefix = `${randomName('t')}.`;
  const groupPrefix = `${randomName('g')}.`;
  const group = `${groupPrefix}ledger-writer-group`;
  const topics: TopicNames = topicNames(topicPrefix);
  const keyPem = generateEcdsaKeyPairPem().privateKeyPem;
  const keyFile = path.join(home, 'ledger-signing.pem');
  const verifierKey = createEcdsaNoteSigner(origin, keyPem).verifierKey;
  const verifier: NoteVerifier = parseVerifierKey(verifierKey);
  /** Event id → the event exactly as published. */
  const produced = new Map<string, CloudEvent>();
  const processes = new Map<string, LongRunning>();
  const kills: KillRecord[] = [];
  /** pg_stat_activity samples while B and C run: in a transaction, and waiting on a lock (the sequencer row). */
  const activity = new Map<string, { inTransaction: number; lockWaits: number }>();
  const assignments = new Map<string, number[]>();
  let rangeStart = new Date();
  let completed = false;

  let env: NodeJS.ProcessEnv;
  let db: PgDb;
  let log: KafkaEventLog;
  let admin: Admin;
  let keys: string[];

  const appName = (writer: string) => `${schema}_${writer}`;

  /** A ledger-writer process; its database connections carry its own application_name (pg_stat_activity). */
  function startWriter(name: string): LongRunning {
    const url = new URL(env.DATABASE_URL!);
    url.searchParams.set('application_name', appName(name));
    const proc = startCli(['consumers', 'start', '--only', 'ledger-writer'], { ...env, DATABASE_URL: url.toString(), CARACAL_KAFKA_CLIENT_ID: appName(name) });
    processes.set(name, proc);
    return proc;
  }

  const outputs = () => [...processes].map(([name, p]) => `--- writer ${name} (${alive(p) ? 'running' : `exited ${p.child.exitCode ?? p.child.signalCode}`}) ---\n${p.output().slice(-3000)}`).join('\n');

  const state = async () => {
    const s = await readSequencer(db, origin);
    return { treeSize: s?.treeSize ?? 0, checkpointSize: s?.checkpointSize ?? 0, frozen: s?.frozenAt ? s.frozenReason : null };
  };

  /** Messages in the dead-letter topic (the writers publish there; nothing here consumes it). */
  const dlqSize = async () => (await log.consumerLag(randomName('probe'), [topics.dlq])).reduce((sum, p) => sum + Number(p.end), 0);

  /** Waiting for the tree is pointless: the ledger is frozen, or something was dead-lettered. */
  const broken = async () => (await state()).frozen !== null || (await dlqSize()) > 0;

  /** Nothing went to the dead-letter topic (a redelivery is skipped, never dead-lettered), the ledger is not frozen. */
  const expectHealthy = async () => {
    expect(await dlqSize(), `dead letters\n${await diagnostics()}`).toBe(0);
    expect((await state()).frozen, `frozen\n${await diagnostics()}`).toBeNull();
  };

  const lagOf = async () => (await log.consumerLag(group, [topics.decisions, topics.metering])).reduce((sum, p) => sum + p.lag, 0);

  const diagnostics = async () =>
    `ledger: ${JSON.stringify(await state().catch((err: Error) => err.message))}, produced ${produced.size}, group lag ${await lagOf().catch((err: Error) => err.message)}, ` +
    `dead letters ${await dlqSize().catch((err: Error) => err.message)}\n${outputs()}`;

  /** The writer's connection is inside an explicit transaction (a statement after BEGIN, or idle between two). */
  const inTransaction = async (writer: string) =>
    (
      await db.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND xact_start IS NOT NULL AND (state = 'idle in transaction' OR xact_start < query_start)",
        [appName(writer)],
      )
    ).rows[0]!.n !== '0';

  const connections = async (writer: string) => Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1', [appName(writer)])).rows[0]!.n);

  /** Produces `count` decision events on the decisions topic, `perSend` every `everyMs`, keyed by principal. */
  async function produce(label: string, count: number, perSend = 150, everyMs = 100): Promise<void> {
    for (let sent = 0; sent < count; sent += perSend) {
      const started = Date.now();
      const batch = Array.from({ length: Math.min(perSend, count - sent) }, (_, i) => decisionEvent(keys[(sent + i) % keys.length]!, `${label}-${sent + i}`));
      await log.publish(topics.decisions, batch.map((event) => eventMessage(event.subject!, event)));
      for (const event of batch) produced.set(event.id, JSON.parse(JSON.stringify(event)) as CloudEvent);
      await sleep(Math.max(0, everyMs - (Date.now() - started)));
    }
  }

  /** Partitions per group member (by client id), from the group coordinator. */
  async function groupAssignments(): Promise<Map<string, number[]>> {
    const { groups } = await admin.describeGroups([group]);
    const out = new Map<string, number[]>();
    for (const member of groups[0]?.state === 'Stable' ? groups[0].members : []) {
      const decoded = AssignerProtocol.MemberAssignment.decode(member.memberAssignment);
      out.set(member.clientId, [...(decoded?.assignment[topics.decisions] ?? [])].sort((a, b) => a - b));
    }
    return out;
  }

  /**
   * Leaves in the tree that come after the group's committed offset of their partition, of `partitions`: once their
   * owner is dead, the next owner gets them again.
   */
  async function uncommittedLeaves(partitions: readonly number[]): Promise<number> {
    let n = 0;
    for (const p of await log.consumerLag(group, [topics.decisions])) {
      if (!partitions.includes(p.partition)) continue;
      const { rows } = await db.query<{ n: string }>('SELECT count(*) AS n FROM ledger_entries WHERE origin = $1 AND topic = $2 AND partition = $3 AND "offset" >= $4', [
        origin,
        topics.decisions,
        p.partition,
        p.committed ?? '0',
      ]);
      n += Number(rows[0]!.n);
    }
    return n;
  }

  /**
   * SIGKILLs `writer` mid-batch, once the tree has reached `from` leaves (failing when it passes `to` first). To know
   * what the kill interrupts, the process is frozen (SIGSTOP), looked at, and run on (SIGCONT) a little when the moment
   * is not the one wanted:
   * - `transaction`: its connection is inside a transaction (a batch is being appended: it must roll back and be
   *   redone by the next owner), preferably while the tree also holds leaves of its partitions whose offsets it has not
   *   committed; after `searchMs` either will do. Between two looks it runs for 5-35 ms.
   * - `uncommitted`: the tree holds leaves of its partitions whose offsets it has not committed (a batch is appended
   *   but not acknowledged: the next owner gets it again and must skip it). That lasts from the database COMMIT to the
   *   offset commit, a millisecond or two, so between two looks it runs for only 0.2-3 ms (single-stepping).
   * After twice `searchMs`, or when the tree nears `to`, it is killed wherever it is.
   */
  async function killMidBatch(writer: string, from: number, to: number, searchMs: number, want: 'transaction' | 'uncommitted'): Promise<KillRecord> {
    const proc = processes.get(writer)!;
    const partitions = assignments.get(appName(writer)) ?? Array.from({ length: PARTITIONS }, (_, i) => i);
    await waitFor(`writer ${writer} to append ${from} leaves`, async () => (await state()).treeSize >= from, 60_000, diagnostics, 5);
    if (assignments.has(appName(writer))) expect((await groupAssignments()).get(appName(writer)), `the partitions of writer ${writer} moved`).toEqual(partitions);
    const started = Date.now();
    const seen = { attempts: 0, midTransaction: 0, uncommitted: 0, ms: 0 };
    let treeSize: number;
    proc.child.kill('SIGSTOP');
    for (;;) {
      seen.attempts++;
      await sleep(20); // what it sent before it froze (a statement, a commit, an offset commit) completes
      let midTransaction = await inTransaction(writer);
      let uncommitted = await uncommittedLeaves(partitions);
      if (uncommitted > 0) {
        // Confirmed later: no offset commit it sent before it froze was still on its way.
        await sleep(80);
        midTransaction = await inTransaction(writer);
        uncommitted = await uncommittedLeaves(partitions);
      }
      ({ treeSize } = await state());
      if (midTransaction) seen.midTransaction++;
      if (uncommitted > 0) seen.uncommitted++;
      const elapsed = (seen.ms = Date.now() - started);
      if (uncommitted > 0 && (midTransaction || want === 'uncommitted')) break;
      if (want === 'transaction' && midTransaction && elapsed > searchMs) break;
      if (elapsed > 2 * searchMs || treeSize > to - 300) break;
      proc.child.kill('SIGCONT');
      if (want === 'transaction') {
        await sleep(5 + Math.random() * 30);
      } else {
        const until = performance.now() + 0.2 + Math.random() * 2.8;
        while (performance.now() < until); // busy: a timer is too coarse
      }
      proc.child.kill('SIGSTOP');
    }
    const midTransaction = await inTransaction(writer);
    await sigkill(proc);
    expect(treeSize, `writer ${writer} was killed after the tree reached ${treeSize}, not between ${from} and ${to}\n${await diagnostics()}`).toBeLessThan(to);
    // The server notices the closed sockets and rolls the open transaction back.
    await waitFor(`the connections of writer ${writer} to close`, async () => (await connections(writer)) === 0, 15_000, diagnostics);
    const record = { writer, treeSize: (await state()).treeSize, midTransaction, uncommittedLeaves: await uncommittedLeaves(partitions), partitions, looks: seen };
    kills.push(record);
    return record;
  }

  beforeAll(async () => {
    const services = requireServices();
    writeFileSync(keyFile, keyPem, { mode: 0o600 });
    env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CARACAL_HOME: home,
      CARACAL_CWD: home, // no caracal.yaml of the repository
      CARACAL_LOG_LEVEL: 'warn',
      DATABASE_URL: services.databaseUrl,
      CARACAL_DB_SCHEMA: schema,
      KAFKA_BROKERS: services.kafkaBrokers.join(','),
      CARACAL_TOPIC_PREFIX: topicPrefix,
      CARACAL_GROUP_PREFIX: groupPrefix,
      CARACAL_KAFKA_PARTITIONS: String(PARTITIONS),
      CARACAL_CONSUMERS_METRICS_PORT: '0',
      CARACAL_LEDGER_ORIGIN: origin,
      CARACAL_LEDGER_SIGNING_KEY: keyFile,
      CARACAL_LEDGER_BATCH_MAX_EVENTS: '200',
      CARACAL_LEDGER_BATCH_MAX_MS: '300',
    };
    const config = loadConfig({ env, cwd: home });
    expect(config.ledger).toMatchObject({ origin, batchMaxEvents: 200, batchMaxMs: 300 });
    db = new PgDb({ url: services.databaseUrl, schema, poolSize: 4 });
    await db.ensureSchema();
    await migrateUp(db);
    log = await KafkaEventLog.connect({ brokers: services.kafkaBrokers, clientId: randomName('ledger_crash'), logLevel: 'silent' });
    await log.createTopics(topicSpecs(config));
    admin = new Kafka({ clientId: randomName('ledger_crash_admin'), brokers: services.kafkaBrokers, logLevel: KafkaLogLevel.NOTHING }).admin();
    await admin.connect();
    keys = Array.from({ length: KEYS }, () => randomName('agent'));
  }, 120_000);

  afterAll(async () => {
    await Promise.all([...processes.values()].map(sigkill));
    await admin?.deleteGroups([group]).catch(() => {});
    await admin?.deleteTopics({ topics: Object.values(topics) }).catch(() => {});
    await admin?.disconnect().catch(() => {});
    await log?.close().catch(() => {});
    if (db) {
      await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
      await db.close();
    }
    rmSync(home, { recursive: true, force: true });
  }, 60_000);

  it('loses and duplicates nothing: every decision exactly once, leaves 0..N-1, one root per size, all recomputed from the leaves', async () => {
    const t0 = performance.now();
    const phase = (name: string) => console.log(`[ledger-crash] ${((performance.now() - t0) / 1000).toFixed(1)} s: ${name} ${JSON.stringify({ produced: produced.size })}`);
    rangeStart = new Date(Date.now() - 60_000);

    // 1. Writer A alone under a steady load; SIGKILLed mid-batch.
    const a = startWriter('a');
    await a.waitFor(/caracal consumers running: ledger-writer/, 90_000);
    phase('writer a running');
    const wave1 = produce('w1', WAVE1);
    const killA = await killMidBatch('a', WAVE1 * 0.2, WAVE1 * 0.9, 1_500, 'transaction');
    phase(`writer a killed ${JSON.stringify(killA)}`);

    // 2. B and C at once, same group, while wave 2 is produced (and the rest of wave 1).
    const b = startWriter('b');
    const c = startWriter('c');
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await db.query<{ application_name: string; in_tx: boolean; lock_wait: boolean }>(
          `SELECT application_name, (xact_start IS NOT NULL AND (state = 'idle in transaction' OR xact_start < query_start)) AS in_tx,
                  coalesce(wait_event_type = 'Lock', false) AS lock_wait
             FROM pg_stat_activity WHERE application_name = ANY($1)`,
          [[appName('b'), appName('c')]],
        );
        for (const row of rows) {
          const seen = activity.get(row.application_name) ?? { inTransaction: 0, lockWaits: 0 };
          if (row.in_tx) seen.inTransaction++;
          if (row.lock_wait) seen.lockWaits++;
          activity.set(row.application_name, seen);
        }
        await sleep(10);
      }
    })();
    try {
      await Promise.all([b.waitFor(/caracal consumers running/, 90_000), c.waitFor(/caracal consumers running/, 90_000), produce('w2', WAVE2), wave1]);
      phase('writers b and c running, waves 1 and 2 produced');
      await waitFor(
        'writers b and c to share the partitions',
        async () => {
          const current = await groupAssignments();
          const ok = current.size === 2 && [...current.values()].every((partitions) => partitions.length > 0);
          if (ok) for (const [member, partitions] of current) assignments.set(member, partitions);
          return ok;
        },
        60_000,
        async () => `group: ${JSON.stringify([...(await groupAssignments())])}\n${await diagnostics()}`,
        250,
      );
      expect([...assignments.keys()].sort()).toEqual([appName('b'), appName('c')]);
      expect([...assignments.values()].flat().sort((x, y) => x - y)).toEqual(Array.from({ length: PARTITIONS }, (_, i) => i));
      // Every offset committed means every event handled: then the tree must hold all of them (or some were lost).
      await waitFor('writers b and c to catch up with waves 1 and 2', async () => (await broken()) || (await lagOf()) === 0, 60_000, diagnostics, 100);
      await expectHealthy();
      expect((await state()).treeSize, await diagnostics()).toBe(WAVE1 + WAVE2);
      phase(`backlog drained ${JSON.stringify(await state())}`);

      // 3. Wave 3 with both appending; B is SIGKILLed mid-batch, C takes its partitions over.
      const wave3 = produce('w3', WAVE3, 80, 100);
      const killB = await killMidBatch('b', WAVE1 + WAVE2 + WAVE3 * 0.1, WAVE1 + WAVE2 + WAVE3 * 0.9, 4_000, 'uncommitted');
      phase(`writer b killed ${JSON.stringify(killB)}`);
      await wave3;
      phase('wave 3 produced');

      // 4. Everything in and sealed, every offset committed; then C stops cleanly.
      await waitFor(
        `writer c to catch up with all ${TOTAL} events, and the tree to be sealed`,
        async () => {
          if (await broken()) return true;
          if ((await lagOf()) > 0) return false;
          const s = await state();
          return s.treeSize < TOTAL || s.checkpointSize === s.treeSize; // everything handled: all in (then sealed), or some lost
        },
        90_000,
        diagnostics,
        200,
      );
      phase(`all in ${JSON.stringify(await state())}`);
    } finally {
      sampling = false;
      await sampler;
    }
    expect(await c.stop(), outputs()).toBe(0);
    phase('writer c stopped');
    console.log(`[ledger-crash] kills ${JSON.stringify(kills)}; assignments ${JSON.stringify([...assignments])}; activity ${JSON.stringify([...activity])}`);

    await expectHealthy();
    expect(produced.size).toBe(TOTAL);
    const final = await state();
    expect(final, await diagnostics()).toEqual({ treeSize: TOTAL, checkpointSize: TOTAL, frozen: null });
    // Each kill interrupted something: a transaction in flight, or leaves appended whose offsets were not committed;
    // and at least one left leaves to be redelivered (and skipped) to the next owner of their partitions.
    for (const kill of kills) expect(kill.midTransaction || kill.uncommittedLeaves > 0, JSON.stringify(kill)).toBe(true);
    expect(kills.some((kill) => kill.uncommittedLeaves > 0), JSON.stringify(kills)).toBe(true);
    // Both B and C appended (seen inside a transaction), and they waited for each other (seen waiting on a lock).
    expect(activity.get(appName('b'))?.inTransaction ?? 0, JSON.stringify([...activity])).toBeGreaterThan(0);
    expect(activity.get(appName('c'))?.inTransaction ?? 0, JSON.stringify([...activity])).toBeGreaterThan(0);
    expect([...activity.values()].reduce((sum, seen) => sum + seen.lockWaits, 0), JSON.stringify([...activity])).toBeGreaterThan(0);
    for (const proc of processes.values()) expect(proc.output()).not.toMatch(/verification failed|is frozen/i);

    // Each event exactly once, at leaves 0..N-1, from one (partition, offset) each.
    const { rows: counts } = await db.query<{ n: string; ids: string; lo: string; hi: string; positions: string; partitions: string }>(
      `SELECT count(*) AS n, count(DISTINCT event_id) AS ids, min(leaf_index) AS lo, max(leaf_index) AS hi,
              count(DISTINCT (partition, "offset")) AS positions, count(DISTINCT partition) AS partitions
         FROM ledger_entries WHERE origin = $1`,
      [origin],
    );
    expect(counts[0]).toMatchObject({ n: String(TOTAL), ids: String(TOTAL), lo: '0', hi: String(TOTAL - 1), positions: String(TOTAL) });
    expect(Number(counts[0]!.partitions)).toBeGreaterThanOrEqual(3);

    // Every leaf is the event as produced; every stored hash and checkpoint recomputed from the leaves.
    const { rows: leaves } = await db.query<{ leaf_index: string; event_id: string; topic: string; canonical: Buffer; leaf_hash: Buffer }>(
      'SELECT leaf_index, event_id, topic, canonical, leaf_hash FROM ledger_entries WHERE origin = $1 ORDER BY leaf_index',
      [origin],
    );
    const { rows: checkpoints } = await db.query<{ tree_size: string; root: Buffer; note: string }>('SELECT tree_size, root, note FROM ledger_checkpoints WHERE origin = $1 ORDER BY tree_size', [origin]);
    const { rows: sameSize } = await db.query('SELECT tree_size FROM ledger_checkpoints WHERE origin = $1 GROUP BY tree_size HAVING count(*) > 1', [origin]);
    expect(sameSize).toEqual([]);
    const bySize = new Map(checkpoints.map((cp) => [Number(cp.tree_size), cp]));
    expect(bySize.size).toBe(checkpoints.length);
    const problems: string[] = [];
    const seen = new Set<string>();
    const frontier = MerkleFrontier.empty();
    const nodes = new Map<string, Buffer>();
    let checkedCheckpoints = 0;
    for (const [i, leaf] of leaves.entries()) {
      if (problems.length > 20) break;
      if (Number(leaf.leaf_index) !== i) problems.push(`leaf ${i}: index ${leaf.leaf_index}`);
      if (seen.has(leaf.event_id)) problems.push(`leaf ${i}: event ${leaf.event_id} again`);
      seen.add(leaf.event_id);
      const event = produced.get(leaf.event_id);
      if (!event) problems.push(`leaf ${i}: event ${leaf.event_id} was never produced`);
      else if (!ledgerEntryOf(event).canonical.equals(leaf.canonical)) problems.push(`leaf ${i}: event ${leaf.event_id} is not the event produced`);
      if (leaf.topic !== topics.decisions) problems.push(`leaf ${i}: topic ${leaf.topic}`);
      if (!leafHash(leaf.canonical).equals(leaf.leaf_hash)) problems.push(`leaf ${i}: leaf_hash is not the hash of canonical`);
      for (const node of frontier.append(leaf.leaf_hash)) nodes.set(`${node.level}/${node.index}`, node.hash);
      const checkpoint = bySize.get(frontier.size);
      if (checkpoint) {
        checkedCheckpoints++;
        const root = frontier.root();
        if (!root.equals(checkpoint.root)) problems.push(`checkpoint ${frontier.size}: stored root is not the root of leaves 0..${frontier.size - 1}`);
        try {
          const opened = openCheckpoint(checkpoint.note, origin, [verifier]).checkpoint;
          if (opened.size !== frontier.size || !opened.rootHash.equals(root)) problems.push(`checkpoint ${frontier.size}: the signed note says size ${opened.size}, another root`);
        } catch (err) {
          problems.push(`checkpoint ${frontier.size}: ${(err as Error).message}`);
        }
      }
    }
    const missing = [...produced.keys()].filter((id) => !seen.has(id));
    expect(missing.slice(0, 10), `${missing.length} events produced but not in the ledger`).toEqual([]);
    expect(problems).toEqual([]);
    expect(checkedCheckpoints, 'checkpoints beyond the leaves').toBe(checkpoints.length);
    expect(Number(checkpoints.at(-1)!.tree_size)).toBe(TOTAL);
    const sequencer = (await readSequencer(db, origin))!;
    expect(sequencer.root.equals(frontier.root())).toBe(true);
    expect(sequencer.openSince).toBeNull();

    const { rows: hashes } = await db.query<{ level: number; idx: string; hash: Buffer }>('SELECT level, idx, hash FROM ledger_hashes WHERE origin = $1', [origin]);
    const wrong = hashes.filter((row) => !nodes.get(`${row.level}/${row.idx}`)?.equals(row.hash)).map((row) => `${row.level}/${row.idx}`);
    expect(wrong.slice(0, 10), `${wrong.length} stored hashes are not nodes of the tree of the leaves`).toEqual([]);
    expect(hashes.length).toBe(nodes.size);

    completed = true;
    phase('ledger checked');
  }, 175_000);

  it('verifies with the commands: merkle verify-range, ledger export and verify-export', async () => {
    if (!completed) throw new Error('the crash scenario did not complete; nothing to verify');
    const cli = async (...args: string[]) => {
      const result = await runCli(args, env, 120_000);
      expect(result.code, `caracal ${args.join(' ')}:\n${result.stderr}${result.stdout}`).toBe(0);
      return result.stdout;
    };
    const checkpoints = Number((await db.query<{ n: string }>('SELECT count(*) AS n FROM ledger_checkpoints WHERE origin = $1', [origin])).rows[0]!.n);
    const range = JSON.parse(await cli('merkle', 'verify-range', '--start-time', rangeStart.toISOString(), '--end-time', 'now', '--json'));
    expect(range).toMatchObject({ ok: true, fromSize: 0, toSize: TOTAL, leaves: TOTAL, consistencyProofs: checkpoints - 1 });
    expect(range.checkpoints).toHaveLength(checkpoints);
    expect((await cli('ledger', 'public-key')).trim()).toBe(verifierKey);
    const file = path.join(home, 'export.json');
    expect(await cli('ledger', 'export', '--start-time', rangeStart.toISOString(), '--end-time', 'now', '--out', file)).toMatch(new RegExp(`^exported ${TOTAL} entries of `));
    const verified = JSON.parse(await cli('ledger', 'verify-export', file, '--public-key', verifierKey, '--json'));
    expect(verified).toMatchObject({ ok: true, origin, entries: TOTAL });
    expect(JSON.parse(await cli('merkle', 'status', '--json'))).toMatchObject({ origin, treeSize: TOTAL, checkpointSize: TOTAL, frozen: false });
  }, 150_000);
});

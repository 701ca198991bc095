import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import kafkajs from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import type { LogMessage } from '../../src/events/event-log.js';
import { KafkaEventLog } from '../../src/events/kafka-event-log.js';
import { LocalEventLog, murmur2, partitionFor } from '../../src/events/local-event-log.js';
import { openEventLog } from '../../src/events/open.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgDb } from '../../src/store/pg-db.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { randomName, requireServices } from '../helpers/services.js';
import { eventLogContract } from './event-log.contract.js';
import { sleep, waitUntil } from '../helpers/fixtures.js';


/** A PostgreSQL schema of its own, migrated; dropped by `drop()`. */
async function openPgSchema(url: string, schema = randomName('evlog')): Promise<PgDb & { drop(): Promise<void> }> {
  const db = new PgDb({ url, schema, poolSize: 8 });
  await db.ensureSchema();
  await migrateUp(db);
  return Object.assign(db, {
    async drop() {
      await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await db.close();
    },
  });
}

// Fast group membership for tests; production defaults are one-second heartbeats.
const LOCAL_TEST_OPTIONS = { heartbeatMs: 200, leaseMs: 2_000 };

eventLogContract('LocalEventLog on PGlite (in memory)', async () => {
  const db = await PgliteDb.open();
  await migrateUp(db);
  const log = new LocalEventLog(db, LOCAL_TEST_OPTIONS);
  return {
    log,
    quietMs: 200,
    async close() {
      await log.close();
      await db.close();
    },
  };
});

eventLogContract('LocalEventLog on PostgreSQL', async () => {
  const db = await openPgSchema(requireServices().databaseUrl);
  const log = new LocalEventLog(db, LOCAL_TEST_OPTIONS);
  return {
    log,
    quietMs: 200,
    async close() {
      await log.close();
      await db.drop();
    },
  };
});

eventLogContract('KafkaEventLog', async () => {
  const log = await KafkaEventLog.connect({
    brokers: requireServices().kafkaBrokers,
    clientId: randomName('caracal_test'),
    logLevel: 'silent',
    // Small group timings keep joins and rebalances to well under a second each.
    consumer: { sessionTimeoutMs: 6_000, heartbeatIntervalMs: 300, rebalanceTimeoutMs: 5_000, maxWaitTimeMs: 100 },
  });
  return {
    log,
    quietMs: 700,
    async close() {
      await log.close();
    },
  };
});

describe('murmur2 partitioner', () => {
  it('matches the Java client’s murmur2 test vectors (Kafka UtilsTest)', () => {
    const vectors: [string, number][] = [
      ['21', -973932308],
      ['foobar', -790332482],
      ['a-little-bit-long-string', -985981536],
      ['a-little-bit-longer-string', -1486304829],
      ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
      ['abc', 479470107],
    ];
    for (const [input, expected] of vectors) expect(murmur2(Buffer.from(input))).toBe(expected);
  });

  it('picks the same partition as kafkajs’ DefaultPartitioner', () => {
    const partitioner = kafkajs.Partitioners.DefaultPartitioner();
    const keys = ['', 'a', 'principal-1', '主体-🙂-ключ', 'x'.repeat(257), ...Array.from({ length: 200 }, (_, i) => `agent-${i * 7919}`)];
    for (const partitions of [1, 2, 3, 4, 7, 12, 50]) {
      const partitionMetadata = Array.from({ length: partitions }, (_, partitionId) => ({ partitionId, leader: 0 }));
      for (const key of keys) {
        const expected = partitioner({ topic: 't', partitionMetadata, message: { key, value: 'v' } } as never);
        expect(partitionFor(key, partitions)).toBe(expected);
      }
    }
  });
});

describe('LocalEventLog specifics (PGlite)', () => {
  let db: PgliteDb;
  let log: LocalEventLog;
  beforeAll(async () => {
    db = await PgliteDb.open();
    await migrateUp(db);
    log = new LocalEventLog(db, LOCAL_TEST_OPTIONS);
  });
  afterAll(async () => {
    await log.close();
    await db.close();
  });

  it('rejects NUL characters, which PostgreSQL text cannot hold', async () => {
    const t = randomName('topic');
    await log.createTopics([{ name: t, partitions: 1, replicationFactor: 1 }]);
    for (const message of [
      { key: 'k', value: 'a\u0000b' },
      { key: 'k\u0000', value: 'v' },
      { key: 'k', value: 'v', headers: { h: '\u0000' } },
    ]) {
      const error = await log.publish(t, [message]).catch((err: unknown) => err);
      expect((error as CaracalError).code).toBe('CARACAL_VALIDATION');
    }
    expect((await log.consumerLag('g', [t]))[0]!.end).toBe('0');
  });

  it('never hands one partition to two members of a group, and gives both members work', async () => {
    const t = randomName('topic');
    const group = randomName('group');
    await log.createTopics([{ name: t, partitions: 4, replicationFactor: 1 }]);
    const handled: { member: string; message: LogMessage }[] = [];
    const member = (name: string) =>
      log.subscribe({
        groupId: group,
        topics: [t],
        handler: async (message) => {
          handled.push({ member: name, message });
          await sleep(2);
        },
      });
    const one = await member('one');
    const two = await member('two');
    // The second member's claims settle before publishing (one → releases, two → claims).
    await waitUntil(async () => {
      const { rows } = await db.query<{ owner: string }>('SELECT owner FROM event_partition_claims WHERE group_id = $1 AND topic = $2', [group, t]);
      return rows.length === 4 && new Set(rows.map((r) => r.owner)).size === 2;
    }, 'both members holding partitions');
    await log.publish(t, Array.from({ length: 200 }, (_, i) => ({ key: `key-${i}`, value: `v${i}` })));
    await waitUntil(() => handled.length >= 200, '200 messages');
    await sleep(300);
    await Promise.all([one.stop(), two.stop()]);
    expect(handled).toHaveLength(200);
    const owners = new Map<number, Set<string>>();
    for (const { member: name, message } of handled) {
      if (!owners.has(message.partition)) owners.set(message.partition, new Set());
      owners.get(message.partition)!.add(name);
    }
    for (const names of owners.values()) expect(names.size).toBe(1);
    expect(new Set(handled.map((h) => h.member))).toEqual(new Set(['one', 'two']));
  });

  it('takes over a partition whose owner died once its lease expires, and not before', async () => {
    const t = randomName('topic');
    const group = randomName('group');
    await log.createTopics([{ name: t, partitions: 1, replicationFactor: 1 }]);
    // A member that crashed: its rows stay until they expire, which is when this test says.
    await db.query(`INSERT INTO event_group_members (group_id, topic, member_id, expires_at) VALUES ($1, $2, 'ghost', now() + interval '1 hour')`, [group, t]);
    await db.query(`INSERT INTO event_partition_claims (group_id, topic, partition, owner, expires_at) VALUES ($1, $2, 0, 'ghost', now() + interval '1 hour')`, [group, t]);
    await log.publish(t, [{ key: 'k', value: 'v' }]);
    const owner = async () => (await db.query<{ owner: string }>('SELECT owner FROM event_partition_claims WHERE group_id = $1 AND topic = $2 AND partition = 0', [group, t])).rows.map((r) => r.owner);
    const members = async () => (await db.query<{ member_id: string; at: string }>('SELECT member_id, expires_at::text AS at FROM event_group_members WHERE group_id = $1', [group])).rows;
    const received: LogMessage[] = [];
    const subscription = await log.subscribe({ groupId: group, topics: [t], handler: async (m) => void received.push(m) });
    try {
      // The new member refreshes its lease every heartbeat and rebalances as often: let several
      // heartbeats pass while the ghost's lease holds, each one a chance to take the partition early.
      const heartbeats = new Set<string>();
      let newcomer = '';
      await waitUntil(async () => {
        for (const m of await members()) {
          if (m.member_id === 'ghost') continue;
          newcomer = m.member_id;
          heartbeats.add(m.at);
        }
        return heartbeats.size >= 4;
      }, 'four heartbeats of the new member');
      expect(received).toEqual([]);
      expect(await owner()).toEqual(['ghost']);

      await db.query(`UPDATE event_group_members SET expires_at = now() - interval '1 second' WHERE group_id = $1 AND member_id = 'ghost'`, [group]);
      await db.query(`UPDATE event_partition_claims SET expires_at = now() - interval '1 second' WHERE group_id = $1 AND owner = 'ghost'`, [group]);
      await waitUntil(() => received.length === 1, 'the take-over');
      expect(received.map((m) => m.value)).toEqual(['v']);
      expect(await owner()).toEqual([newcomer]);
      expect((await members()).map((m) => m.member_id)).toEqual([newcomer]);
    } finally {
      await subscription.stop();
    }
  });

  it('starts a new group at the end when fromBeginning is false', async () => {
    const t = randomName('topic');
    const group = randomName('group');
    await log.createTopics([{ name: t, partitions: 2, replicationFactor: 1 }]);
    await log.publish(t, [{ key: 'a', value: 'old' }, { key: 'b', value: 'old' }]);
    const values: string[] = [];
    const subscription = await log.subscribe({ groupId: group, topics: [t], fromBeginning: false, handler: async (m) => void values.push(m.value) });
    await log.publish(t, [{ key: 'a', value: 'new' }]);
    await waitUntil(() => values.length === 1, 'the new message');
    await sleep(200);
    await subscription.stop();
    expect(values).toEqual(['new']);
  });
});

describe('LocalEventLog durability (PGlite on disk)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'caracal-evlog-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps messages and committed offsets across close and reopen', async () => {
    const t = 'caracal.policy.decisions';
    const group = 'ledger-writer';
    let db = await PgliteDb.open(dir);
    await migrateUp(db);
    let log = new LocalEventLog(db, LOCAL_TEST_OPTIONS);
    await log.createTopics([{ name: t, partitions: 3, replicationFactor: 1 }]);
    await log.publish(t, Array.from({ length: 6 }, (_, i) => ({ key: `agent-${i}`, value: `first-${i}`, headers: { n: String(i) } })));
    const first: LogMessage[] = [];
    let subscription = await log.subscribe({ groupId: group, topics: [t], handler: async (m) => void first.push(m) });
    await waitUntil(() => first.length === 6, 'first 6');
    await subscription.stop();
    await log.publish(t, Array.from({ length: 4 }, (_, i) => ({ key: `agent-${i}`, value: `second-${i}` })));
    await log.close();
    await db.close();

    db = await PgliteDb.open(dir);
    await migrateUp(db);
    log = new LocalEventLog(db, LOCAL_TEST_OPTIONS);
    try {
      expect(await log.listTopics()).toEqual([t]);
      const lag = await log.consumerLag(group, [t]);
      expect(lag.reduce((sum, l) => sum + l.lag, 0)).toBe(4);
      expect(lag.reduce((sum, l) => sum + Number(l.committed ?? 0), 0)).toBe(6);

      const resumed: LogMessage[] = [];
      subscription = await log.subscribe({ groupId: group, topics: [t], handler: async (m) => void resumed.push(m) });
      await waitUntil(() => resumed.length === 4, 'the 4 later messages');
      await sleep(200);
      await subscription.stop();
      expect(resumed.map((m) => m.value).sort()).toEqual(['second-0', 'second-1', 'second-2', 'second-3']);

      const replay: LogMessage[] = [];
      subscription = await log.subscribe({ groupId: 'replay', topics: [t], handler: async (m) => void replay.push(m) });
      await waitUntil(() => replay.length === 10, 'all 10');
      await subscription.stop();
      const firstAgain = replay.filter((m) => m.value.startsWith('first-'));
      for (const original of first) {
        const copy = firstAgain.find((m) => m.value === original.value);
        expect(copy).toEqual(original);
      }
    } finally {
      await log.close();
      await db.close();
    }
  });
});

describe('LocalEventLog concurrency (two instances on one PostgreSQL schema)', () => {
  it('publishing 500 messages each at once loses nothing and keeps offsets contiguous', async () => {
    const { databaseUrl } = requireServices();
    const schema = randomName('evlog');
    const dbA = await openPgSchema(databaseUrl, schema);
    const dbB = new PgDb({ url: databaseUrl, schema, poolSize: 8 });
    const logA = new LocalEventLog(dbA);
    const logB = new LocalEventLog(dbB);
    try {
      const t = randomName('topic');
      await logA.createTopics([{ name: t, partitions: 3, replicationFactor: 1 }]);
      const keys = Array.from({ length: 30 }, (_, i) => `principal-${i}`);
      const publishAll = async (log: LocalEventLog, who: string) => {
        const calls = Array.from({ length: 50 }, (_, call) =>
          Array.from({ length: 10 }, (_, i) => {
            const n = call * 10 + i;
            return { key: keys[(n * 7 + (who === 'a' ? 0 : 3)) % keys.length]!, value: `${who}-${n}` };
          }),
        );
        // Five calls in flight per instance: ten transactions competing for three head rows.
        const queue = [...calls];
        await Promise.all(
          Array.from({ length: 5 }, async () => {
            for (let batch = queue.shift(); batch; batch = queue.shift()) await log.publish(t, batch);
          }),
        );
      };
      await Promise.all([publishAll(logA, 'a'), publishAll(logB, 'b')]);

      const { rows } = await dbA.query<{ partition: number; offset: string; value: string }>(
        'SELECT partition, "offset", value FROM event_log WHERE topic = $1 ORDER BY partition, "offset"',
        [t],
      );
      expect(rows).toHaveLength(1_000);
      expect(new Set(rows.map((r) => r.value)).size).toBe(1_000);
      const { rows: heads } = await dbA.query<{ partition: number; next_offset: string }>(
        'SELECT partition, next_offset FROM event_partitions WHERE topic = $1 ORDER BY partition',
        [t],
      );
      for (const head of heads) {
        const offsets = rows.filter((r) => r.partition === head.partition).map((r) => Number(r.offset));
        expect(offsets).toEqual(offsets.map((_, i) => i));
        expect(Number(head.next_offset)).toBe(offsets.length);
      }
      // Every message sits in the partition its key hashes to.
      const { rows: keyed } = await dbA.query<{ partition: number; key: string }>('SELECT partition, key FROM event_log WHERE topic = $1', [t]);
      for (const row of keyed) expect(row.partition).toBe(partitionFor(row.key, 3));
    } finally {
      await logA.close();
      await logB.close();
      await dbB.close();
      await dbA.drop();
    }
  });
});

describe('openEventLog and connection failures', () => {
  it('opens the local log without brokers and Kafka with them', async () => {
    const db = await PgliteDb.open();
    const base = { logLevel: 'silent' as const, kafka: { clientId: 'caracal', topicPrefix: 'caracal.', groupPrefix: '', partitions: 3, replicationFactor: 1 } };
    const local = await openEventLog(base, db);
    expect(local.kind).toBe('local');
    await local.close();
    await db.close();
    const kafka = await openEventLog({ ...base, kafka: { ...base.kafka, brokers: requireServices().kafkaBrokers } }, db);
    try {
      expect(kafka.kind).toBe('kafka');
      await kafka.ping();
    } finally {
      await kafka.close();
    }
  });

  it('reports an unreachable broker as a retriable CARACAL_DEPENDENCY', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const started = Date.now();
    const error = await KafkaEventLog.connect({ brokers: [`127.0.0.1:${port}`], clientId: 'caracal-test', logLevel: 'silent' }).catch(
      (err: unknown) => err,
    );
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(error).toBeInstanceOf(CaracalError);
    expect((error as CaracalError).code).toBe('CARACAL_DEPENDENCY');
    expect((error as CaracalError).retriable).toBe(true);
  });
});

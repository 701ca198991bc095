import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { EventLog, LogMessage, Subscription } from '../../src/events/event-log.js';
import { KafkaEventLog } from '../../src/events/kafka-event-log.js';
import { LocalEventLog } from '../../src/events/local-event-log.js';
import { encodeRecord } from '../../src/spool/frame.js';
import { Spool } from '../../src/spool/spool.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { sleep, waitUntil } from '../helpers/fixtures.js';
import { randomName, requireServices } from '../helpers/services.js';
import { FailingFirstEventLog } from '../helpers/spool-logs.js';

const FAST_BACKOFF = { baseDelayMs: 10, maxDelayMs: 100, jitter: 'none' as const };
const VITE_NODE = path.resolve('node_modules/vite-node/vite-node.mjs');
const CHILD = path.resolve('test/helpers/spool-child.ts');

interface Backend {
  log: EventLog;
  /** How long to keep listening after the expected count arrived, to catch duplicates. */
  quietMs: number;
  close(): Promise<void>;
}

function spoolShipperSuite(name: string, connect: () => Promise<Backend>): void {
  describe(name, () => {
    let backend: Backend;
    let dir: string;
    const spools: Spool[] = [];
    const subscriptions: Subscription[] = [];

    beforeAll(async () => {
      backend = await connect();
    });
    afterAll(async () => {
      await backend.close();
    });
    beforeEach(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'caracal-spool-it-'));
    });
    afterEach(async () => {
      for (const subscription of subscriptions.splice(0)) await subscription.stop();
      for (const spool of spools.splice(0)) await spool.close();
      rmSync(dir, { recursive: true, force: true });
    });

    async function openSpool(): Promise<Spool> {
      const spool = await Spool.open({ dir, maxBytes: 256 * 1024 * 1024, segmentBytes: 64 * 1024 });
      spools.push(spool);
      return spool;
    }

    async function freshTopic(): Promise<string> {
      const topic = randomName('spool_it');
      await backend.log.createTopics([{ name: topic, partitions: 3, replicationFactor: 1 }]);
      return topic;
    }

    /** Everything the log delivers on `topic`, in delivery order. */
    async function collect(topic: string): Promise<LogMessage[]> {
      const received: LogMessage[] = [];
      subscriptions.push(
        await backend.log.subscribe({
          groupId: randomName('spool_it_group'),
          topics: [topic],
          fromBeginning: true,
          handler: async (message) => {
            received.push(message);
          },
        }),
      );
      return received;
    }

    /** Waits for `count` messages, then listens a while longer so that a duplicate would show. */
    async function expectExactly(received: LogMessage[], count: number): Promise<void> {
      await waitUntil(() => received.length >= count, `${count} messages on the log`, 45_000);
      await sleep(backend.quietMs);
      expect(received).toHaveLength(count);
    }

    const idOf = (message: LogMessage) => (JSON.parse(message.value) as { id: string }).id;

    it('ships what a spool closed without shipping left, exactly once and in order per key', async () => {
      const topic = await freshTopic();
      const first = await openSpool();
      // Ten keys appended concurrently, each key's records one after another: per key the spool order is seq order.
      await Promise.all(
        Array.from({ length: 10 }, async (_, k) => {
          for (let seq = 0; seq < 40; seq++) {
            await first.append([{ topic, key: `key-${k}`, value: JSON.stringify({ id: `e-${k}-${seq}`, seq }), headers: { 'ce-id': `e-${k}-${seq}` } }]);
          }
        }),
      );
      expect(first.stats().flushes).toBeLessThan(400);
      await first.close();

      const second = await openSpool();
      expect(second.stats().unshippedRecords).toBe(400);
      const received = await collect(topic);
      second.startShipping(backend.log, { batchSize: 64, backoff: FAST_BACKOFF });
      await expectExactly(received, 400);
      await waitUntil(() => second.stats().unshippedRecords === 0, 'the checkpoint to catch up', 10_000);
      const expected = Array.from({ length: 10 }, (_, k) => Array.from({ length: 40 }, (_, seq) => `e-${k}-${seq}`)).flat();
      expect(received.map(idOf).sort()).toEqual(expected.sort());
      expect(received.every((m) => m.headers['ce-id'] === idOf(m))).toBe(true);
      for (let k = 0; k < 10; k++) {
        const seqs = received.filter((m) => m.key === `key-${k}`).map((m) => (JSON.parse(m.value) as { seq: number }).seq);
        expect(seqs).toEqual(Array.from({ length: 40 }, (_, seq) => seq));
      }
      expect(second.stats()).toMatchObject({ shippedRecords: 400, unshippedBytes: 0, segments: 1 });
    });

    it('cuts a torn tail and ships only the good records', async () => {
      const topic = await freshTopic();
      const first = await openSpool();
      for (let i = 0; i < 20; i++) await first.append([{ topic, key: `k${i % 3}`, value: JSON.stringify({ id: `t-${i}` }) }]);
      await first.close();
      const segments = readdirSync(dir).filter((file) => file.endsWith('.seg'));
      expect(segments).toHaveLength(1);
      appendFileSync(path.join(dir, segments[0]!), encodeRecord({ topic, key: 'k0', value: JSON.stringify({ id: 't-torn' }) }, Date.now()).subarray(0, 30));

      const second = await openSpool();
      expect(second.stats()).toMatchObject({ tornRecords: 1, unshippedRecords: 20 });
      const received = await collect(topic);
      second.startShipping(backend.log, { batchSize: 8, backoff: FAST_BACKOFF });
      await expectExactly(received, 20);
      expect(received.map(idOf).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `t-${i}`).sort());
    });

    it('grows while publish fails, then drains once it works again', async () => {
      const topic = await freshTopic();
      const spool = await openSpool();
      const flaky = new FailingFirstEventLog(backend.log, 5);
      const attempts: number[] = [];
      spool.startShipping(flaky, { batchSize: 16, backoff: { baseDelayMs: 250, maxDelayMs: 1_000, jitter: 'none' }, onError: (_err, attempt) => attempts.push(attempt) });
      for (let i = 0; i < 50; i++) await spool.append([{ topic, key: `k${i % 4}`, value: JSON.stringify({ id: `f-${i}` }) }]);
      // The five failures cost 250 + 500 + 1000 * 3 ms of backoff, far longer than 50 local appends take.
      expect(flaky.failed).toBeGreaterThanOrEqual(1);
      expect(spool.stats().shippedRecords).toBe(0);
      expect(spool.stats().unshippedRecords).toBe(50);
      const received = await collect(topic);
      await expectExactly(received, 50);
      expect(attempts).toEqual([1, 2, 3, 4, 5]);
      expect(new Set(received.map(idOf)).size).toBe(50);
      await waitUntil(() => spool.stats().unshippedRecords === 0, 'the checkpoint to catch up', 10_000);
    });

    it('keeps every acknowledged record of a SIGKILLed appender and ships no torn one', async () => {
      const topic = await freshTopic();
      const child = spawn(process.execPath, [VITE_NODE, CHILD, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
      const acknowledged: string[] = [];
      let ready = false;
      createInterface({ input: child.stdout }).on('line', (line) => {
        if (line === 'ready') ready = true;
        else if (line) acknowledged.push(line);
      });
      await waitUntil(() => ready, `the child to open its spool (stderr: ${stderr})`, 30_000);
      await waitUntil(() => acknowledged.length >= 2_000, `the child to acknowledge appends (stderr: ${stderr})`, 30_000);
      // The lock names the process that appends: killing it is killing the writer.
      expect(Number(readFileSync(path.join(dir, 'lock'), 'utf8'))).toBe(child.pid);
      child.kill('SIGKILL');
      expect(await exited).toBe('SIGKILL');
      const printed = [...acknowledged];

      const spool = await openSpool();
      const onDisk = spool.stats().unshippedRecords;
      expect(onDisk).toBeGreaterThanOrEqual(printed.length);
      // The child wrote records for the topic 'decisions'; ship them to this test's topic instead.
      const redirect: EventLog = Object.create(backend.log, {
        publish: { value: (_topic: string, messages: Parameters<EventLog['publish']>[1]) => backend.log.publish(topic, messages) },
      }) as EventLog;
      const received = await collect(topic);
      spool.startShipping(redirect, { batchSize: 500, backoff: FAST_BACKOFF });
      await expectExactly(received, onDisk);
      const shipped = new Set(received.map(idOf));
      expect(shipped.size).toBe(onDisk);
      expect(printed.filter((id) => !shipped.has(id))).toEqual([]);
    });
  });
}

spoolShipperSuite('Spool shipping to the local log on PGlite', async () => {
  const db = await PgliteDb.open();
  await migrateUp(db);
  const log = new LocalEventLog(db, { heartbeatMs: 200, leaseMs: 2_000 });
  return {
    log,
    quietMs: 300,
    async close() {
      await log.close();
      await db.close();
    },
  };
});

spoolShipperSuite('Spool shipping to Kafka', async () => {
  const log = await KafkaEventLog.connect({
    brokers: requireServices().kafkaBrokers,
    clientId: randomName('caracal_spool_test'),
    logLevel: 'silent',
    consumer: { sessionTimeoutMs: 6_000, heartbeatIntervalMs: 300, rebalanceTimeoutMs: 5_000, maxWaitTimeMs: 100 },
  });
  return {
    log,
    quietMs: 1_000,
    async close() {
      await log.close();
    },
  };
});

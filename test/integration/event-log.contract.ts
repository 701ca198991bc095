import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import type { EventLog, LogMessage, OutgoingMessage, Subscription } from '../../src/events/event-log.js';
import { partitionFor } from '../../src/events/local-event-log.js';
import { randomName } from '../helpers/services.js';
import { sleep, waitUntil } from '../helpers/fixtures.js';

/**
 * The `EventLog` contract (src/events/event-log.ts), run against every implementation by
 * test/integration/event-log.test.ts. Each test uses its own random topic and group names.
 */
export interface EventLogHarness {
  log: EventLog;
  /** How long to keep listening to be reasonably sure nothing more arrives (Kafka fetches are slower). */
  quietMs: number;
  close(): Promise<void>;
}


interface Collector {
  messages: LogMessage[];
  subscription: Subscription;
  waitForCount(count: number): Promise<LogMessage[]>;
}

async function collect(
  log: EventLog,
  groupId: string,
  topics: string[],
  onMessage: (message: LogMessage) => Promise<void> | void = () => {},
): Promise<Collector> {
  const messages: LogMessage[] = [];
  const subscription = await log.subscribe({
    groupId,
    topics,
    handler: async (message) => {
      await onMessage(message);
      messages.push(message);
    },
  });
  return {
    messages,
    subscription,
    async waitForCount(count) {
      await waitUntil(() => messages.length >= count, `${count} messages (have ${messages.length})`);
      return messages;
    },
  };
}

const totalLag = (lags: { lag: number }[]) => lags.reduce((sum, entry) => sum + entry.lag, 0);

export function eventLogContract(name: string, factory: () => Promise<EventLogHarness>): void {
  describe(`EventLog contract: ${name}`, () => {
    let harness: EventLogHarness;
    let log: EventLog;
    const open: Subscription[] = [];

    beforeAll(async () => {
      harness = await factory();
      log = harness.log;
    });
    afterAll(async () => {
      for (const subscription of open) await subscription.stop().catch(() => {});
      await harness?.close();
    });

    async function topic(partitions: number): Promise<string> {
      const name = randomName('topic');
      await log.createTopics([{ name, partitions, replicationFactor: 1 }]);
      return name;
    }

    async function collectTracked(...args: Parameters<typeof collect> extends [EventLog, ...infer Rest] ? Rest : never): Promise<Collector> {
      const collector = await collect(log, ...args);
      open.push(collector.subscription);
      return collector;
    }

    it('creates topics idempotently and lists them', async () => {
      const a = randomName('topic');
      const b = randomName('topic');
      const c = randomName('topic');
      await log.createTopics([
        { name: a, partitions: 3, replicationFactor: 1 },
        { name: b, partitions: 1, replicationFactor: 1 },
      ]);
      // Again, with a different partition count: existing topics are left as they are.
      await log.createTopics([
        { name: a, partitions: 5, replicationFactor: 1 },
        { name: b, partitions: 1, replicationFactor: 1 },
      ]);
      // A mix of an existing and a new topic creates the new one.
      await log.createTopics([
        { name: a, partitions: 3, replicationFactor: 1 },
        { name: c, partitions: 2, replicationFactor: 1 },
      ]);
      const topics = await log.listTopics();
      expect(topics).toEqual(expect.arrayContaining([a, b, c]));
      const lags = await log.consumerLag(randomName('group'), [a, c]);
      expect(lags.filter((l) => l.topic === a).map((l) => l.partition)).toEqual([0, 1, 2]);
      expect(lags.filter((l) => l.topic === c).map((l) => l.partition)).toEqual([0, 1]);
      // Publishing right after creation works (leaders are elected before createTopics resolves).
      await log.publish(c, [{ key: 'k', value: 'v' }]);
    });

    it('round-trips key, value, headers and timestamp', async () => {
      const t = await topic(3);
      const before = Date.now();
      await log.publish(t, [{ key: 'agent-1', value: '{"hello":"world"}', headers: { 'ce-type': 'caracal.test', 'x-trace': 'abc' } }]);
      const after = Date.now();
      const collector = await collectTracked(randomName('group'), [t]);
      const [message] = await collector.waitForCount(1);
      await collector.subscription.stop();
      expect(message).toMatchObject({
        topic: t,
        partition: partitionFor('agent-1', 3),
        offset: '0',
        key: 'agent-1',
        value: '{"hello":"world"}',
        headers: { 'ce-type': 'caracal.test', 'x-trace': 'abc' },
      });
      expect(message!.timestamp).toBeGreaterThanOrEqual(before - 5_000);
      expect(message!.timestamp).toBeLessThanOrEqual(after + 5_000);
    });

    describe('200 messages over 12 keys and 4 partitions', () => {
      const keys = Array.from({ length: 12 }, (_, i) => `principal-${i}`);
      let received: LogMessage[] = [];

      beforeAll(async () => {
        const t = await topic(4);
        const sent: OutgoingMessage[] = Array.from({ length: 200 }, (_, seq) => {
          const key = keys[seq % keys.length]!;
          return { key, value: JSON.stringify({ key, seq }) };
        });
        // Several publish calls, so offsets must continue across calls.
        for (let i = 0; i < sent.length; i += 10) await log.publish(t, sent.slice(i, i + 10));
        const collector = await collect(log, randomName('group'), [t]);
        await collector.waitForCount(200);
        await sleep(harness.quietMs);
        await collector.subscription.stop();
        received = collector.messages;
      });

      it('delivers each message once when nothing fails', () => {
        expect(received).toHaveLength(200);
        expect(new Set(received.map((m) => m.value)).size).toBe(200);
      });

      it('keeps the order of each key', () => {
        for (const key of keys) {
          const seqs = received.filter((m) => m.key === key).map((m) => (JSON.parse(m.value) as { seq: number }).seq);
          expect(seqs.length).toBeGreaterThan(0);
          expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
        }
      });

      it('sends one key to one partition, the one Kafka’s murmur2 partitioner picks', () => {
        for (const key of keys) {
          const partitions = new Set(received.filter((m) => m.key === key).map((m) => m.partition));
          expect([...partitions]).toEqual([partitionFor(key, 4)]);
        }
        expect(new Set(received.map((m) => m.partition)).size).toBeGreaterThan(1);
      });

      it('numbers offsets contiguously from 0 per partition and delivers them in offset order', () => {
        for (const partition of new Set(received.map((m) => m.partition))) {
          const offsets = received.filter((m) => m.partition === partition).map((m) => m.offset);
          expect(offsets).toEqual(offsets.map((_, i) => String(i)));
        }
      });
    });

    it('resumes after the committed offset when a group restarts', async () => {
      const t = await topic(2);
      const group = randomName('group');
      await log.publish(t, Array.from({ length: 5 }, (_, i) => ({ key: `k${i}`, value: `first-${i}` })));
      const first = await collectTracked(group, [t]);
      await first.waitForCount(5);
      await first.subscription.stop();

      await log.publish(t, Array.from({ length: 3 }, (_, i) => ({ key: `k${i}`, value: `second-${i}` })));
      const second = await collectTracked(group, [t]);
      await second.waitForCount(3);
      await sleep(harness.quietMs);
      await second.subscription.stop();
      expect(second.messages.map((m) => m.value).sort()).toEqual(['second-0', 'second-1', 'second-2']);
    });

    it('delivers a message again after its handler threw (at-least-once, nothing skipped)', async () => {
      const t = await topic(1);
      const group = randomName('group');
      await log.publish(t, ['m0', 'm1', 'm2'].map((value) => ({ key: 'same', value })));
      const attempts: string[] = [];
      let thrown = false;
      const collector = await collectTracked(group, [t], (message) => {
        attempts.push(message.value);
        if (message.value === 'm1' && !thrown) {
          thrown = true;
          throw new Error('handler failed once');
        }
      });
      await collector.waitForCount(3);
      await sleep(harness.quietMs);
      await collector.subscription.stop();
      expect(attempts).toEqual(['m0', 'm1', 'm1', 'm2']);
      expect(collector.messages.map((m) => [m.value, m.offset])).toEqual([
        ['m0', '0'],
        ['m1', '1'],
        ['m2', '2'],
      ]);
      expect(totalLag(await log.consumerLag(group, [t]))).toBe(0);
    });

    it('gives a batch handler slices of one partition in offset order, retries a failed slice whole, and commits per slice', async () => {
      const t = await topic(3);
      const group = randomName('group');
      await log.publish(t, Array.from({ length: 60 }, (_, i) => ({ key: `key-${i % 7}`, value: `v${i}` })));
      const slices: LogMessage[][] = [];
      let failedOnce = false;
      const handled = new Set<string>();
      const subscription = await log.subscribe({
        groupId: group,
        topics: [t],
        maxBatch: 4,
        handler: () => Promise.reject(new Error('the per-message handler must not be used when a batch handler is given')),
        batchHandler: async (messages) => {
          slices.push(messages);
          if (!failedOnce && messages.some((m) => m.offset === '1')) {
            failedOnce = true;
            throw new Error('slice failed once');
          }
          for (const m of messages) handled.add(m.value);
        },
      });
      open.push(subscription);
      await waitUntil(() => handled.size >= 60, `60 handled (have ${handled.size})`);
      await sleep(harness.quietMs);
      await subscription.stop();
      expect(handled.size).toBe(60);
      for (const slice of slices) {
        expect(slice.length).toBeGreaterThan(0);
        expect(slice.length).toBeLessThanOrEqual(4);
        expect(new Set(slice.map((m) => m.partition)).size).toBe(1);
        const offsets = slice.map((m) => Number(m.offset));
        expect(offsets).toEqual(offsets.map((_, i) => offsets[0]! + i));
      }
      // The failed slice came again, the same messages, before anything after it in its partition.
      const failed = slices.findIndex((slice) => slice.some((m) => m.offset === '1'));
      const again = slices.findIndex((slice, i) => i > failed && slice[0]!.partition === slices[failed]![0]!.partition);
      expect(slices[again]!.map((m) => m.offset)).toEqual(slices[failed]!.map((m) => m.offset));
      expect(totalLag(await log.consumerLag(group, [t]))).toBe(0);

      // Committed per slice: a restart of the group gets only what was published after.
      await log.publish(t, [{ key: 'key-0', value: 'after' }]);
      const after = await collectTracked(group, [t]);
      await after.waitForCount(1);
      await sleep(harness.quietMs);
      await after.subscription.stop();
      expect(after.messages.map((m) => m.value)).toEqual(['after']);
    });

    it('delivers everything to each of two groups', async () => {
      const t = await topic(3);
      await log.publish(t, Array.from({ length: 20 }, (_, i) => ({ key: `key-${i}`, value: `v${i}` })));
      const a = await collectTracked(randomName('group'), [t]);
      const b = await collectTracked(randomName('group'), [t]);
      await Promise.all([a.waitForCount(20), b.waitForCount(20)]);
      await Promise.all([a.subscription.stop(), b.subscription.stop()]);
      const expected = Array.from({ length: 20 }, (_, i) => `v${i}`).sort();
      expect(a.messages.map((m) => m.value).sort()).toEqual(expected);
      expect(b.messages.map((m) => m.value).sort()).toEqual(expected);
    });

    it('reports consumer lag before consuming and 0 after', async () => {
      const t = await topic(3);
      const group = randomName('group');
      await log.publish(t, Array.from({ length: 10 }, (_, i) => ({ key: `key-${i}`, value: `v${i}` })));
      const before = await log.consumerLag(group, [t]);
      expect(before.map((l) => l.partition)).toEqual([0, 1, 2]);
      expect(before.every((l) => l.committed === null)).toBe(true);
      expect(totalLag(before)).toBe(10);
      expect(before.reduce((sum, l) => sum + Number(l.end), 0)).toBe(10);

      const collector = await collectTracked(group, [t]);
      await collector.waitForCount(10);
      await waitUntil(async () => totalLag(await log.consumerLag(group, [t])) === 0, 'lag 0');
      await collector.subscription.stop();
      const after = await log.consumerLag(group, [t]);
      for (const entry of after) {
        expect(entry.lag).toBe(0);
        if (entry.end !== '0') expect(entry.committed).toBe(entry.end);
      }
    });

    it('rejects publishing to (and subscribing to) an unknown topic', async () => {
      const missing = randomName('missing');
      const error = await log.publish(missing, [{ key: 'k', value: 'v' }]).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(CaracalError);
      expect((error as CaracalError).code).toBe('CARACAL_VALIDATION');
      const subscribeError = await log
        .subscribe({ groupId: randomName('group'), topics: [missing], handler: async () => {} })
        .catch((err: unknown) => err);
      expect((subscribeError as CaracalError).code).toBe('CARACAL_VALIDATION');
    });

    it('round-trips hostile values intact: 1 MiB, unicode keys, empty value, odd headers', async () => {
      const t = await topic(3);
      const big = '0123456789abcdef'.repeat(64 * 1024); // 1 MiB
      const unicode = 'ünïcödé ☃ 🙂 \u2028\u2029 "quotes" \\ back\\slash\nnew line\ttab \u00a0 ‮rtl';
      const sent: OutgoingMessage[] = [
        { key: 'big', value: big },
        { key: '主体-🙂-ключ', value: unicode },
        { key: ' spaced key\t', value: '' },
        {
          key: 'headers',
          value: '{}',
          headers: {
            'x-ünïcödé': '☃ \r\n "q" \\ ;=, 🙂',
            empty: '',
            'emoji-🙂': '🙂',
            'json': '{"a":[1,2,{"b":null}]}',
            'with space': 'a b',
          },
        },
      ];
      await log.publish(t, sent);
      const collector = await collectTracked(randomName('group'), [t]);
      await collector.waitForCount(sent.length);
      await collector.subscription.stop();
      const byKey = new Map(collector.messages.map((m) => [m.key, m]));
      for (const message of sent) {
        const got = byKey.get(message.key);
        expect(got, message.key).toBeDefined();
        expect(got!.value.length).toBe(message.value.length);
        expect(got!.value === message.value).toBe(true);
        expect(got!.headers).toEqual(message.headers ?? {});
        expect(got!.partition).toBe(partitionFor(message.key, 3));
      }
    });

    it('stop() waits for the in-flight handler and keeps its commit', async () => {
      const t = await topic(1);
      const group = randomName('group');
      await log.publish(t, [{ key: 'k', value: 'slow' }]);
      let started = false;
      let finished = false;
      const subscription = await log.subscribe({
        groupId: group,
        topics: [t],
        handler: async () => {
          started = true;
          await sleep(400);
          finished = true;
        },
      });
      open.push(subscription);
      await waitUntil(() => started, 'the handler to start');
      await subscription.stop();
      expect(finished).toBe(true);
      expect(totalLag(await log.consumerLag(group, [t]))).toBe(0);
    });

    it('gives two members of one group every message between them', async () => {
      const t = await topic(4);
      const group = randomName('group');
      const seen: { member: string; message: LogMessage }[] = [];
      const one = await collectTracked(group, [t], (message) => {
        seen.push({ member: 'one', message });
      });
      const two = await collectTracked(group, [t], (message) => {
        seen.push({ member: 'two', message });
      });
      const sent = Array.from({ length: 40 }, (_, i) => ({ key: `key-${i}`, value: `v${i}` }));
      await log.publish(t, sent);
      await waitUntil(() => new Set(seen.map((s) => s.message.value)).size === sent.length, 'every message');
      await Promise.all([one.subscription.stop(), two.subscription.stop()]);
      expect(new Set(seen.map((s) => s.message.value)).size).toBe(sent.length);
      expect(totalLag(await log.consumerLag(group, [t]))).toBe(0);
    });
  });
}

import { Kafka as CloudEventsKafka, type CloudEventV1, type KafkaMessage } from 'cloudevents';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEvent, EVENT_TYPES, parseEvent, type CloudEvent } from '../../src/events/cloudevents.js';
import type { EventLog, LogMessage, Subscription } from '../../src/events/event-log.js';
import { KafkaEventLog } from '../../src/events/kafka-event-log.js';
import { LocalEventLog } from '../../src/events/local-event-log.js';
import { CLOUDEVENTS_JSON_CONTENT_TYPE, EventPublisher } from '../../src/events/publisher.js';
import { topicNames } from '../../src/events/topics.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { waitUntil } from '../helpers/fixtures.js';
import { randomName, requireServices } from '../helpers/services.js';

/**
 * Caracal's messages are CloudEvents in the Kafka protocol binding's structured content mode:
 * `content-type: application/cloudevents+json; charset=utf-8`, the JSON event as the value, the
 * partition key as the message key. Checked by decoding what the real logs hand back with the
 * CloudEvents SDK's Kafka binding, as a consumer outside this repository would.
 */

interface Harness {
  log: EventLog;
  close(): Promise<void>;
}

interface Published {
  key: string;
  topic: string;
  event: CloudEvent;
}

/** What the SDK's Kafka binding reads: the message as a Kafka client hands it over. */
function asSdkMessage(message: LogMessage): KafkaMessage<string> {
  return {
    headers: message.headers,
    key: message.key ?? '',
    value: message.value,
    body: message.value,
    timestamp: String(message.timestamp),
  };
}

function bindingSuite(name: string, open: () => Promise<Harness>): void {
  describe(`CloudEvents Kafka binding: ${name}`, () => {
    let harness: Harness;
    let subscription: Subscription | undefined;
    const received: LogMessage[] = [];
    const published: Published[] = [];

    beforeAll(async () => {
      harness = await open();
      const topics = topicNames(`${randomName('cebinding')}.`);
      await harness.log.createTopics([
        { name: topics.decisions, partitions: 3, replicationFactor: 1 },
        { name: topics.lifecycle, partitions: 3, replicationFactor: 1 },
      ]);
      const source = `caracal/gateway/${randomName('instance')}`;
      const decision = (principal: string | null, allow: boolean) =>
        buildEvent(EVENT_TYPES.decision, source, principal ?? undefined, {
          decision_id: randomName('decision'),
          request_id: randomName('request'),
          principal_id: principal,
          token_id: principal ? 'tok-1' : null,
          upstream: 'openai',
          method: 'POST',
          path: '/openai/v1/chat/completions',
          upstream_url: allow ? 'https://api.openai.com/v1/chat/completions' : null,
          resource: 'chat',
          action: 'invoke',
          allow,
          reasons: allow ? [] : ['no policy allows invoke on chat'],
          policy_ids: ['pol-1'],
          bundle_revision: 'rev-1',
          status: allow ? 200 : 403,
        });
      const lifecycle = (principal: string | null) =>
        buildEvent(EVENT_TYPES.lifecycle, source, principal ?? undefined, {
          entity: principal ? 'mandate' : 'emergency',
          action: principal ? 'revoked' : 'stopped',
          principal_id: principal,
          entity_id: principal ? 'm-1' : null,
          attributes: principal ? { ids: ['m-1', 'm-2'], note: 'ünïcödé \u{1F600}' } : {},
        });
      // Keys as the gateway and the lifecycle announcer choose them.
      published.push(
        { topic: topics.decisions, key: 'agent-1', event: decision('agent-1', true) },
        { topic: topics.decisions, key: 'anonymous', event: decision(null, false) },
        { topic: topics.lifecycle, key: 'agent-1', event: lifecycle('agent-1') },
        { topic: topics.lifecycle, key: 'global', event: lifecycle(null) },
      );

      const publisher = new EventPublisher(harness.log);
      await Promise.all(published.map(({ topic, key, event }) => publisher.publish(topic, key, event)));
      await publisher.close();

      subscription = await harness.log.subscribe({
        groupId: randomName('cebinding_group'),
        topics: [topics.decisions, topics.lifecycle],
        handler: async (message) => {
          received.push(message);
        },
      });
      await waitUntil(() => received.length >= published.length, `${published.length} messages (have ${received.length})`);
    });

    afterAll(async () => {
      await subscription?.stop();
      await harness?.close();
    });

    const receivedFor = (event: CloudEvent): LogMessage => {
      const matches = received.filter((message) => (JSON.parse(message.value) as { id: string }).id === event.id);
      expect(matches).toHaveLength(1);
      return matches[0]!;
    };

    it('every message carries the structured-mode content type and the partition key', () => {
      expect(received).toHaveLength(published.length);
      for (const { topic, key, event } of published) {
        const message = receivedFor(event);
        expect(message.topic).toBe(topic);
        expect(message.key).toBe(key);
        expect(message.headers['content-type']).toBe(CLOUDEVENTS_JSON_CONTENT_TYPE);
        expect(CLOUDEVENTS_JSON_CONTENT_TYPE).toBe('application/cloudevents+json; charset=utf-8');
      }
    });

    it('the SDK recognises each message as a CloudEvent and decodes id, type, source, subject, time and data', () => {
      for (const { key, event } of published) {
        const message = asSdkMessage(receivedFor(event));
        expect(CloudEventsKafka.isEvent(message)).toBe(true);
        const decoded = CloudEventsKafka.toEvent(message);
        expect(Array.isArray(decoded)).toBe(false);
        const ce = decoded as CloudEventV1<unknown> & { partitionkey?: unknown };
        expect(ce.specversion).toBe('1.0');
        expect(ce.id).toBe(event.id);
        expect(ce.type).toBe(event.type);
        expect(ce.source).toBe(event.source);
        expect(ce.subject).toBe(event.subject);
        expect(ce.time).toBe(event.time);
        expect(ce.datacontenttype).toBe('application/json');
        expect(ce.data).toEqual(event.data);
        // The binding maps the message key to the partitionkey extension.
        expect(ce.partitionkey).toBe(key);
      }
    });

    it("the decoded events pass the SDK's own CloudEvents 1.0 validation", () => {
      for (const { event } of published) {
        const ce = CloudEventsKafka.toEvent(asSdkMessage(receivedFor(event))) as CloudEventV1<unknown> & { validate(): boolean };
        expect(ce.validate()).toBe(true);
      }
    });

    it('Caracal reads back exactly what it wrote', () => {
      for (const { event } of published) expect(parseEvent(receivedFor(event).value)).toEqual(event);
    });

    it('without the content-type header the SDK does not see a CloudEvent (the header is what makes it one)', () => {
      const { event } = published[0]!;
      const message = asSdkMessage(receivedFor(event));
      const bare = { ...message, headers: Object.fromEntries(Object.entries(message.headers).filter(([header]) => header !== 'content-type')) };
      expect(CloudEventsKafka.isEvent(bare)).toBeFalsy();
      expect(() => CloudEventsKafka.toEvent(bare)).toThrow(/No CloudEvent detected/);
    });

    it('an event re-encoded by the SDK gains the partitionkey attribute, which the closed envelope refuses', () => {
      const { event } = published[0]!;
      const ce = CloudEventsKafka.toEvent(asSdkMessage(receivedFor(event))) as CloudEventV1<unknown>;
      const reencoded = CloudEventsKafka.structured(ce);
      expect(reencoded.headers['content-type']).toBe(CLOUDEVENTS_JSON_CONTENT_TYPE);
      expect(JSON.parse(reencoded.value)).toEqual({ ...event, partitionkey: 'agent-1' });
      expect(() => parseEvent(reencoded.value)).toThrow(/partitionkey|Unrecognized/i);
    });
  });
}

bindingSuite('KafkaEventLog', async () => {
  const log = await KafkaEventLog.connect({
    brokers: requireServices().kafkaBrokers,
    clientId: randomName('caracal_test'),
    logLevel: 'silent',
    consumer: { sessionTimeoutMs: 6_000, heartbeatIntervalMs: 300, rebalanceTimeoutMs: 5_000, maxWaitTimeMs: 100 },
  });
  return { log, close: () => log.close() };
});

bindingSuite('LocalEventLog (PGlite)', async () => {
  const db = await PgliteDb.open();
  await migrateUp(db);
  const log = new LocalEventLog(db, { heartbeatMs: 200, leaseMs: 2_000 });
  return {
    log,
    async close() {
      await log.close();
      await db.close();
    },
  };
});

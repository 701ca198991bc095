import { createRequire } from 'node:module';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { KafkaEventLog, isCoordinatorChurn } from '../../src/events/kafka-event-log.js';
import { randomName, requireServices } from '../helpers/services.js';

// kafkajs' own protocol errors, exactly as the broker's answers become them.
const require = createRequire(import.meta.url);
const { createErrorFromCode } = require('kafkajs/src/protocol/error') as { createErrorFromCode: (code: number) => Error & { type: string } };
const { KafkaJSNumberOfRetriesExceeded } = require('kafkajs/src/errors') as { KafkaJSNumberOfRetriesExceeded: new (cause: Error, meta: { retryCount: number; retryTime: number }) => Error };
const NOT_COORDINATOR_FOR_GROUP = 16;
const GROUP_LOAD_IN_PROGRESS = 14;
const UNKNOWN_TOPIC_OR_PARTITION = 3;

/**
 * Regression: `consumerLag` right after the broker started once failed
 * with "This is not the correct coordinator for this group" — a retriable answer kafkajs' admin
 * does not retry itself. Now retried, bounded; other errors still fail at once.
 */
describe('consumer lag while the group coordinator is moving', () => {
  let log: KafkaEventLog;
  const topic = randomName('churn');

  beforeAll(async () => {
    log = await KafkaEventLog.connect({ brokers: requireServices().kafkaBrokers, clientId: randomName('churn'), logLevel: 'silent' });
    await log.createTopics([{ name: topic, partitions: 2, replicationFactor: 1 }]);
  });
  afterAll(async () => log?.close());

  it('recognises coordinator churn, also wrapped, and nothing else', () => {
    expect(isCoordinatorChurn(createErrorFromCode(NOT_COORDINATOR_FOR_GROUP))).toBe(true);
    expect(isCoordinatorChurn(createErrorFromCode(GROUP_LOAD_IN_PROGRESS))).toBe(true);
    expect(isCoordinatorChurn(new KafkaJSNumberOfRetriesExceeded(createErrorFromCode(NOT_COORDINATOR_FOR_GROUP), { retryCount: 5, retryTime: 1000 }))).toBe(true);
    expect(isCoordinatorChurn(createErrorFromCode(UNKNOWN_TOPIC_OR_PARTITION))).toBe(false);
    expect(isCoordinatorChurn(new Error('boom'))).toBe(false);
  });

  it('retries NOT_COORDINATOR_FOR_GROUP and then reports the real lag', async () => {
    await log.publish(topic, [{ key: 'k', value: 'v' }]);
    const admin = (log as unknown as { admin: { fetchOffsets: (...args: unknown[]) => Promise<unknown> } }).admin;
    const real = admin.fetchOffsets.bind(admin);
    let failures = 2;
    admin.fetchOffsets = async (...args) => {
      if (failures-- > 0) throw createErrorFromCode(NOT_COORDINATOR_FOR_GROUP);
      return real(...args);
    };
    try {
      const lag = await log.consumerLag(randomName('group'), [topic]);
      expect(failures).toBe(-1); // two refusals, then the real answer
      expect(lag.reduce((sum, p) => sum + p.lag, 0)).toBe(1);
    } finally {
      admin.fetchOffsets = real;
    }
  });

  it('does not retry other errors', async () => {
    const admin = (log as unknown as { admin: { fetchOffsets: (...args: unknown[]) => Promise<unknown> } }).admin;
    const real = admin.fetchOffsets.bind(admin);
    let calls = 0;
    admin.fetchOffsets = async () => {
      calls++;
      throw createErrorFromCode(UNKNOWN_TOPIC_OR_PARTITION);
    };
    try {
      const error = await log.consumerLag(randomName('group'), [topic]).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(CaracalError);
      expect((error as CaracalError).code).toBe('CARACAL_DEPENDENCY');
      expect(calls).toBe(1);
    } finally {
      admin.fetchOffsets = real;
    }
  });
});

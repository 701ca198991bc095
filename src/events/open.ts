import type { CaracalConfig } from '../config/schema.js';
import type { Db } from '../store/db.js';
import type { EventLog } from './event-log.js';
import { KafkaEventLog } from './kafka-event-log.js';
import { LocalEventLog } from './local-event-log.js';

export interface EventLogHooks {
  /** Handler failures (retried, never skipped) and background errors, for logs and metrics. */
  onError?: (err: unknown, context: { groupId: string; topic?: string; partition?: number; offset?: string }) => void;
}

/**
 * The event log the config names: Kafka when `kafka.brokers` is set (connected now; an unreachable
 * broker → CARACAL_DEPENDENCY), else the durable table-backed log inside `db` (migration 0002 must
 * have run). The local log does not own `db`: closing it leaves the database open.
 */
export async function openEventLog(config: Pick<CaracalConfig, 'kafka' | 'logLevel'>, db: Db, hooks: EventLogHooks = {}): Promise<EventLog> {
  if (config.kafka.brokers && config.kafka.brokers.length > 0) {
    return KafkaEventLog.connect({
      brokers: config.kafka.brokers,
      clientId: config.kafka.clientId,
      logLevel: config.logLevel,
      ...(hooks.onError ? { onError: hooks.onError } : {}),
    });
  }
  // PGlite belongs to one process, so every append is in-process and wakes subscribers at once;
  // polling is only a backstop there (each empty poll costs ~0.5 ms of PGlite CPU per partition).
  // On PostgreSQL other processes append too, so subscribers poll often.
  return new LocalEventLog(db, {
    pollIntervalMs: db.kind === 'pglite' ? 1_000 : 40,
    ...(hooks.onError ? { onError: hooks.onError } : {}),
  });
}

import { buildEvent, EVENT_TYPES, parseEvent, type CloudEvent, type DlqData } from '../events/cloudevents.js';
import type { EventLog, LogMessage, OutgoingMessage } from '../events/event-log.js';
import { eventMessage } from '../events/publisher.js';
import type { Queryable } from '../store/db.js';

/** The failed event's own id, if the message is a readable JSON object with one. */
function originalEventId(value: string): string | null {
  try {
    const parsed = JSON.parse(value) as { id?: unknown };
    return typeof parsed?.id === 'string' && parsed.id.length <= 128 ? parsed.id : null;
  } catch {
    return null;
  }
}

const MAX_ERROR_LENGTH = 2_000;

/** The DLQ topic's message for `message`, which `consumerGroup` failed to process `attempts` times. */
export function buildDlqMessage(args: { source: string; consumerGroup: string; message: LogMessage; error: unknown; attempts: number }): { id: string; message: OutgoingMessage } {
  const { message } = args;
  const error = args.error instanceof Error ? `${args.error.name}: ${args.error.message}` : String(args.error);
  const event = buildEvent(EVENT_TYPES.dlq, args.source, undefined, {
    consumer_group: args.consumerGroup,
    original: {
      topic: message.topic,
      partition: message.partition,
      offset: message.offset,
      key: message.key,
      value: message.value,
      headers: message.headers,
      event_id: originalEventId(message.value),
    },
    error: error.slice(0, MAX_ERROR_LENGTH),
    attempts: args.attempts,
  });
  return { id: event.id, message: eventMessage(message.key ?? 'dlq', event) };
}

/** A dead-lettered message: the original's coordinates and content (a LogMessage without its append time), and why. */
export interface DlqEntry extends Omit<LogMessage, 'timestamp'> {
  dlqId: string;
  originalEventId: string | null;
  consumerGroup: string;
  error: string;
  attempts: number;
  failedAt: string;
  redrivenAt: string | null;
}

/** Records a DLQ topic message in `dlq_events`; idempotent on the DLQ entry's id. */
export async function recordDlqEvent(db: Queryable, event: CloudEvent): Promise<boolean> {
  const data = event.data as DlqData;
  const { rowCount } = await db.query(
    `INSERT INTO dlq_events (dlq_id, original_event_id, consumer_group, topic, partition, "offset", key, value, headers, error, attempts, failed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (dlq_id) DO NOTHING`,
    [event.id, data.original.event_id, data.consumer_group, data.original.topic, data.original.partition, data.original.offset, data.original.key, data.original.value, JSON.stringify(data.original.headers), data.error, data.attempts, event.time],
  );
  return rowCount > 0;
}

interface DlqRow {
  dlq_id: string;
  original_event_id: string | null;
  consumer_group: string;
  topic: string;
  partition: number;
  offset: string;
  key: string | null;
  value: string;
  headers: Record<string, string> | string;
  error: string;
  attempts: number;
  failed_at: Date | string;
  redriven_at: Date | string | null;
}

const iso = (value: Date | string | null): string | null => (value === null ? null : new Date(value).toISOString());

function toEntry(row: DlqRow): DlqEntry {
  return {
    dlqId: row.dlq_id,
    originalEventId: row.original_event_id,
    consumerGroup: row.consumer_group,
    topic: row.topic,
    partition: Number(row.partition),
    offset: row.offset,
    key: row.key,
    value: row.value,
    headers: typeof row.headers === 'string' ? (JSON.parse(row.headers) as Record<string, string>) : row.headers,
    error: row.error,
    attempts: Number(row.attempts),
    failedAt: iso(row.failed_at)!,
    redrivenAt: iso(row.redriven_at),
  };
}

export async function listDlqEntries(db: Queryable, options: { includeRedriven?: boolean; limit?: number } = {}): Promise<DlqEntry[]> {
  const { rows } = await db.query<DlqRow>(
    `SELECT * FROM dlq_events ${options.includeRedriven ? '' : 'WHERE redriven_at IS NULL'} ORDER BY failed_at, dlq_id LIMIT $1`,
    [options.limit ?? 1_000],
  );
  return rows.map(toEntry);
}

/** By the failed event's id or by the DLQ entry's own id. */
export async function findDlqEntries(db: Queryable, eventId: string): Promise<DlqEntry[]> {
  const { rows } = await db.query<DlqRow>('SELECT * FROM dlq_events WHERE original_event_id = $1 OR dlq_id = $1 ORDER BY failed_at, dlq_id', [eventId]);
  return rows.map(toEntry);
}

/**
 * Publishes each pending entry's original message back to its original topic with its key and
 * headers, then marks it redriven. Idempotent: an entry already redriven is skipped, and the
 * consumers are idempotent on the event id, so a redrive that crashes between publish and mark
 * writes nothing twice. Returns the entries that were redriven.
 */
export async function redriveDlq(db: Queryable, events: EventLog, eventId?: string): Promise<DlqEntry[]> {
  const pending = (eventId ? await findDlqEntries(db, eventId) : await listDlqEntries(db)).filter((e) => e.redrivenAt === null);
  for (const entry of pending) {
    await events.publish(entry.topic, [{ key: entry.key ?? '', value: entry.value, headers: entry.headers }]);
    await db.query('UPDATE dlq_events SET redriven_at = now() WHERE dlq_id = $1 AND redriven_at IS NULL', [entry.dlqId]);
  }
  return pending;
}

/** Reads a DLQ topic message (the audit-logger records it). */
export function parseDlqMessage(value: string): CloudEvent {
  const event = parseEvent(value);
  if (event.type !== EVENT_TYPES.dlq) throw new TypeError(`not a DLQ entry: ${event.type}`);
  return event;
}

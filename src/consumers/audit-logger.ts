import { ensureMonthPartition } from '../audit/admin-actions.js';
import { appendAuditEvents } from '../audit/audit-store.js';
import type { AppContext } from '../context.js';
import { EVENT_TYPES, parseEvent } from '../events/cloudevents.js';
import type { LogMessage } from '../events/event-log.js';
import { recordDlqEvent } from './dlq.js';
import type { ConsumerRole } from './runner.js';

const text = (value: unknown): string | null => (typeof value === 'string' && value.length > 0 ? value : null);

/**
 * `audit-logger-group`: every event of every topic into the append-only `audit_log`, idempotent on
 * the event id (a redelivered event is a no-op). Entries of the DLQ topic are also recorded in
 * `dlq_events`, in the same transaction, for `caracal dlq list|get|redrive`.
 */
export function auditLogger(ctx: AppContext): ConsumerRole {
  return {
    name: 'audit-logger',
    groupId: `${ctx.config.kafka.groupPrefix}audit-logger-group`,
    topics: (c) => Object.values(c.topics),
    handle: (message: LogMessage) => record(ctx, [message]),
    handleBatch: (messages: LogMessage[]) => record(ctx, messages),
  };
}

/** Parses every message (one bad one fails the whole call: the runner then goes one by one) and writes them in one transaction. */
async function record(ctx: AppContext, messages: LogMessage[]): Promise<void> {
  const parsed = messages.map((message) => ({ message, event: parseEvent(message.value) })); // EventSchemaError → DLQ
  const months = new Set<string>();
  for (const { event } of parsed) {
    const month = event.time.slice(0, 7);
    if (months.has(month)) continue;
    months.add(month);
    await ensureMonthPartition(ctx, new Date(event.time));
  }
  await ctx.db.transaction(async (tx) => {
    await appendAuditEvents(
      tx,
      parsed.map(({ message, event }) => {
        const data = (event.data ?? {}) as Record<string, unknown>;
        return {
          eventId: event.id,
          eventType: event.type,
          source: event.source,
          subject: event.subject ?? null,
          occurredAt: event.time,
          topic: message.topic,
          partition: message.partition,
          offset: message.offset,
          requestId: text(data.request_id),
          decisionId: text(data.decision_id),
          data: event.data,
        };
      }),
    );
    for (const { event } of parsed) if (event.type === EVENT_TYPES.dlq) await recordDlqEvent(tx, event);
  });
}

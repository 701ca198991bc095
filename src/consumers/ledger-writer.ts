import type { AppContext } from '../context.js';
import { parseEvent } from '../events/cloudevents.js';
import type { LogMessage } from '../events/event-log.js';
import { isLedgerError } from '../ledger/errors.js';
import { ledgerEntryOf, requireUtf8Database, type LedgerEntryInput } from '../ledger/store.js';
import { LedgerWriter, loadLedgerSigner, type LedgerWriterObserver } from '../ledger/writer.js';
import type { ConsumerMetrics } from '../metrics/metrics.js';
import { PoisonMessage, type ConsumerRole } from './runner.js';

/** Maps the writer's reports onto the consumers' registry. */
function observerOf(metrics: ConsumerMetrics): LedgerWriterObserver {
  // The failures are counted in the database (by the writer and by `merkle verify-*` in other processes); the
  // counter follows that count, so it starts at the recorded total and only grows.
  let failuresSeen = 0;
  return {
    sealed: (leaves) => metrics.merkleBatchSize.observe(leaves),
    treeSize: (size) => metrics.merkleTreeSize.set(size),
    checkpointAge: (seconds) => metrics.merkleCheckpointAge.set(seconds),
    verificationFailures: (total) => {
      if (total > failuresSeen) metrics.merkleVerificationFailures.inc(total - failuresSeen);
      failuresSeen = Math.max(failuresSeen, total);
    },
  };
}

/** The leaf of one message; a message that is not a valid event, or has no canonical JSON form, is poison (DLQ). */
function entryOf(message: LogMessage): LedgerEntryInput {
  parseEvent(message.value); // EventSchemaError (not JSON, bad envelope, unknown type, bad data) → DLQ
  // The leaf is the event as published (the message value), not the schema's parse of it (which adds defaults).
  try {
    return ledgerEntryOf(JSON.parse(message.value), { topic: message.topic, partition: message.partition, offset: message.offset });
  } catch (err) {
    if (isLedgerError(err)) throw new PoisonMessage(`event cannot be a ledger leaf: ${err.message}`);
    throw err;
  }
}

/**
 * `ledger-writer-group`: every event of the decisions and metering topics becomes one leaf of the ledger's Merkle
 * tree (`ledger.origin`), exactly once (idempotent on the event id), and is covered by a signed checkpoint within
 * about `ledger.batchMaxMs` — sealed in the slice's own transaction once `ledger.batchMaxEvents` leaves are open, or
 * by the role's timer when traffic stops. A frozen ledger (or one that fails verification) makes the role retry like
 * an outage: the events wait in the log, they never go to the DLQ.
 */
export function ledgerWriter(ctx: AppContext, metrics: () => ConsumerMetrics | undefined = () => undefined): ConsumerRole {
  const log = ctx.logger.child({ component: 'ledger-writer' });
  let observer: { metrics: ConsumerMetrics; observer: LedgerWriterObserver } | undefined;
  let writer: LedgerWriter | undefined;
  const writerOf = (): LedgerWriter => {
    if (!writer) {
      const { ledger } = ctx.config;
      writer = new LedgerWriter({
        db: ctx.db,
        origin: ledger.origin,
        signer: loadLedgerSigner(ctx.config),
        batchMaxEvents: ledger.batchMaxEvents,
        batchMaxMs: ledger.batchMaxMs,
        freezeOnVerificationFailure: ledger.freezeOnVerificationFailure,
        logger: log,
        observer: () => {
          const current = metrics();
          if (!current) return undefined;
          if (observer?.metrics !== current) observer = { metrics: current, observer: observerOf(current) };
          return observer.observer;
        },
      });
    }
    return writer;
  };
  const record = async (messages: LogMessage[]) => {
    const { conflicts } = await writerOf().append(messages.map(entryOf));
    // The rest of the slice is committed; the runner's one-by-one pass skips it and dead-letters the conflict.
    if (conflicts.length > 0) throw new PoisonMessage(`event id ${conflicts.join(', ')} is already in the ledger with other content`);
  };
  return {
    name: 'ledger-writer',
    groupId: `${ctx.config.kafka.groupPrefix}ledger-writer-group`,
    topics: (c) => [c.topics.decisions, c.topics.metering],
    start: async () => {
      await requireUtf8Database(ctx.db);
      writerOf().start(); // loads (or creates) the signing key now: a bad key fails the start, not the first event
    },
    stop: async () => {
      await writer?.stop();
    },
    handle: (message) => record([message]),
    handleBatch: (messages) => record(messages),
  };
}

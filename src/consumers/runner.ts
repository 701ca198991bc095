import type { AppContext } from '../context.js';
import { EventSchemaError } from '../events/cloudevents.js';
import type { EventLog, LogMessage, Subscription } from '../events/event-log.js';
import type { Logger } from '../logging/logger.js';
import { backoffDelay, isOutage, sleep } from '../util/retry.js';
import { buildDlqMessage } from './dlq.js';

/**
 * One consumer role (audit-logger, …): a consumer group over some topics and what it does with one
 * message. `handle` must be idempotent on the event id: delivery is at least once.
 */
export interface ConsumerRole {
  readonly name: string;
  readonly groupId: string;
  topics(ctx: AppContext): string[];
  handle(message: LogMessage): Promise<void>;
  /**
   * Optional: consecutive messages of one partition in one database transaction (all or nothing).
   * When it fails for any reason other than an outage, the slice is handled again one message at
   * a time through `handle`, so one poison event costs a slice its batching, not its progress.
   */
  handleBatch?(messages: LogMessage[]): Promise<void>;
  /** Optional: called before the subscription starts (a failure fails the start), e.g. to start a timer. */
  start?(): Promise<void>;
  /** Optional: called after the subscription stopped (the last slice has been handled). */
  stop?(): Promise<void>;
}

/**
 * An error that no retry will cure: the message itself is bad (not JSON, not a valid event, an
 * unknown type). It goes to the DLQ at once.
 */
export class PoisonMessage extends Error {
  override name = 'PoisonMessage';
}

export interface ConsumerOptions {
  /** Attempts for an error that is neither poison nor a dependency outage, before the DLQ. */
  maxAttempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Called when a message goes to the DLQ (metrics). */
  onDeadLetter?: (role: string, topic: string) => void;
  onProcessed?: (role: string, topic: string) => void;
  /** Most messages per transaction for roles that write in batches. Default 500. */
  maxBatch?: number;
}

export interface RunningConsumer {
  readonly role: string;
  stop(): Promise<void>;
}

function isPoison(err: unknown): boolean {
  return err instanceof PoisonMessage || err instanceof EventSchemaError || err instanceof SyntaxError;
}

/**
 * Runs a role: per partition in order; the offset is committed by the event log only after
 * `handle` resolved, so a crash re-delivers and never skips. A poison message, or one that keeps
 * failing, is published to the DLQ topic with its coordinates, the error and the attempts, and the
 * consumer goes on — it never stops on one bad event. Outages are retried with jittered backoff
 * until they end or the consumer is stopped.
 */
export async function startConsumer(ctx: AppContext, role: ConsumerRole, options: ConsumerOptions = {}): Promise<RunningConsumer> {
  const events = await ctx.events();
  const log = ctx.logger.child({ component: 'consumer', role: role.name });
  const stopping = new AbortController();
  const maxAttempts = options.maxAttempts ?? 5;
  const backoff = { baseDelayMs: options.baseDelayMs ?? 200, maxDelayMs: options.maxDelayMs ?? 5_000, jitter: 'full' as const };

  /** Waits out one backoff step; a stop during the wait rethrows `err` (nothing is committed). */
  const waitBeforeRetry = async (attempt: number, err: unknown) => {
    try {
      await sleep(backoffDelay(attempt, backoff), stopping.signal);
    } catch {
      throw err;
    }
  };

  const handleOne = async (message: LogMessage) => {
    for (let attempt = 1; ; attempt++) {
      try {
        await role.handle(message);
        options.onProcessed?.(role.name, message.topic);
        return;
      } catch (err) {
        if (stopping.signal.aborted) throw err; // not committed: re-delivered after restart
        const poison = isPoison(err);
        if (poison || (!isOutage(err) && attempt >= maxAttempts)) {
          await deadLetter(events, ctx, log, role, message, err, attempt);
          options.onDeadLetter?.(role.name, message.topic);
          return;
        }
        log.warn({ err, topic: message.topic, partition: message.partition, offset: message.offset, attempt }, 'event failed; retrying');
        await waitBeforeRetry(attempt, err);
      }
    }
  };

  const handleBatch = role.handleBatch?.bind(role);
  await role.start?.();
  const subscription: Subscription = await events.subscribe({
    groupId: role.groupId,
    topics: role.topics(ctx),
    fromBeginning: true,
    handler: handleOne,
    ...(handleBatch
      ? {
          batchHandler: async (messages: LogMessage[]) => {
            for (let attempt = 1; ; attempt++) {
              try {
                await handleBatch(messages);
                for (const message of messages) options.onProcessed?.(role.name, message.topic);
                return;
              } catch (err) {
                if (stopping.signal.aborted) throw err;
                if (!isOutage(err)) break;
                log.warn({ err, topic: messages[0]!.topic, partition: messages[0]!.partition, attempt }, 'batch failed on an outage; retrying');
                await waitBeforeRetry(attempt, err);
              }
            }
            // Something in the slice is bad (or a write failed for it): find it one message at a time.
            for (const message of messages) await handleOne(message);
          },
          maxBatch: options.maxBatch ?? 500,
        }
      : {}),
  }).catch(async (err: unknown) => {
    await role.stop?.().catch(() => {});
    throw err;
  });
  log.info({ group: role.groupId, topics: role.topics(ctx) }, 'consumer started');
  return {
    role: role.name,
    stop: async () => {
      stopping.abort(new Error('consumer stopping'));
      try {
        await subscription.stop();
      } finally {
        await role.stop?.();
      }
    },
  };
}

async function deadLetter(events: EventLog, ctx: AppContext, log: Logger, role: ConsumerRole, message: LogMessage, err: unknown, attempts: number): Promise<void> {
  const dlqTopic = ctx.topics.dlq;
  if (message.topic === dlqTopic) {
    // A DLQ entry that cannot be recorded must not loop back into the DLQ: it stays in the DLQ
    // topic itself (nothing is lost) and the failure is logged loudly.
    log.error({ err, offset: message.offset, partition: message.partition }, 'a DLQ entry could not be processed; it stays in the DLQ topic');
    return;
  }
  const entry = buildDlqMessage({ source: `caracal/consumer/${role.name}/${ctx.instanceId}`, consumerGroup: role.groupId, message, error: err, attempts });
  log.warn({ err, topic: message.topic, partition: message.partition, offset: message.offset, attempts, dlq_id: entry.id }, 'event sent to the DLQ');
  // If even the DLQ cannot be written, the handler fails and the offset is not committed: the
  // message is re-delivered rather than lost.
  await events.publish(dlqTopic, [entry.message]);
}

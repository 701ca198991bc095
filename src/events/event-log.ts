/**
 * The `EventLog` port: partitioned, ordered, durable topics with consumer groups and committed
 * offsets — implemented by Kafka (`kafkajs`) and by a table-backed log inside the `Db`.
 *
 * Semantics both implementations keep (checked by test/integration/event-log.contract.ts):
 * - a message's partition is chosen from its key, so one key's messages stay in order;
 * - offsets are per partition, start at 0 and increase by one (as strings: Kafka offsets are int64);
 * - a subscriber's handler sees one partition's messages in offset order; the offset is committed
 *   only after the handler resolves, so a crash re-delivers (at-least-once) and never skips (the
 *   same holds for a batch handler, per slice);
 * - a group that restarts resumes after its last committed offset.
 */
export interface TopicSpec {
  name: string;
  partitions: number;
  replicationFactor: number;
}

export interface OutgoingMessage {
  key: string;
  value: string;
  headers?: Record<string, string>;
}

export interface LogMessage {
  topic: string;
  partition: number;
  offset: string;
  key: string | null;
  value: string;
  headers: Record<string, string>;
  /** Append time, epoch milliseconds. */
  timestamp: number;
}

export interface SubscribeOptions {
  groupId: string;
  topics: string[];
  /** Where a group with no committed offset starts. Default: true (earliest). */
  fromBeginning?: boolean;
  handler: (message: LogMessage) => Promise<void>;
  /**
   * When given, used instead of `handler`: consecutive messages of ONE partition, in offset order
   * (at most `maxBatch`), committed together once it resolves; a rejection retries the same slice.
   * It lets a consumer write a slice in one database transaction.
   */
  batchHandler?: (messages: LogMessage[]) => Promise<void>;
  /** Most messages per `batchHandler` call. Default 500. */
  maxBatch?: number;
  /** Partitions handled at once by this subscriber (each still in order). Default 4. */
  partitionsConcurrently?: number;
}

/** The default and the bounds of `SubscribeOptions.maxBatch`. */
export const DEFAULT_MAX_BATCH = 500;

export function maxBatchOf(options: SubscribeOptions): number {
  const value = options.maxBatch ?? DEFAULT_MAX_BATCH;
  return Number.isInteger(value) && value >= 1 ? Math.min(value, 10_000) : DEFAULT_MAX_BATCH;
}

export interface Subscription {
  /** Stops fetching, lets the in-flight handler finish, commits, and leaves the group. */
  stop(): Promise<void>;
}

export interface PartitionLag {
  topic: string;
  partition: number;
  committed: string | null;
  end: string;
  lag: number;
}

export interface EventLog {
  readonly kind: 'kafka' | 'local';
  /** Idempotent: existing topics are left as they are. */
  createTopics(topics: TopicSpec[]): Promise<void>;
  listTopics(): Promise<string[]>;
  /** Resolves once every message is durably appended (acks=all on Kafka). */
  publish(topic: string, messages: OutgoingMessage[]): Promise<void>;
  subscribe(options: SubscribeOptions): Promise<Subscription>;
  /** Committed offset vs end offset per partition of `topics`, for `caracal kafka consumer-lag`. */
  consumerLag(groupId: string, topics: string[]): Promise<PartitionLag[]>;
  /** Cheap liveness probe of the backing service. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

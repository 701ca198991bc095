import kafkajs from 'kafkajs';
import type { Admin, Consumer, EachBatchPayload, IHeaders, Kafka as KafkaClient, KafkaMessage, LogEntry, Producer } from 'kafkajs';
import { CaracalError } from '../errors/catalog.js';
import { backoffDelay, retry, sleep, type BackoffOptions } from '../util/retry.js';
import { maxBatchOf } from './event-log.js';
import type {
  EventLog,
  LogMessage,
  OutgoingMessage,
  PartitionLag,
  SubscribeOptions,
  Subscription,
  TopicSpec,
} from './event-log.js';
import { isValidTopicName } from './topics.js';

// kafkajs is CommonJS and spreads its error classes into module.exports, which Node's ESM named
// export detection cannot see: take everything from the default export.
const { Kafka, Partitioners, logLevel: KafkaLogLevel } = kafkajs;

export interface KafkaEventLogOptions {
  brokers: string[];
  clientId: string;
  /** Caracal's log level; kafkajs logs only errors unless this is debug or trace. */
  logLevel?: string;
  /** Where kafkajs log lines go; default: kafkajs' own JSON lines on the console. */
  log?: (level: 'error' | 'warn' | 'info' | 'debug', message: string, extra: Record<string, unknown>) => void;
  connectionTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** `max.message.bytes` set on the topics this class creates. Default 4 MiB. */
  maxMessageBytes?: number;
  /** One publish is sent in requests of at most about this many bytes (a record batch per partition
   * must stay under the topic's `max.message.bytes`). Default 1 MiB. */
  maxRequestBytes?: number;
  /** Consumer group timing; small values make tests fast, defaults suit production. */
  consumer?: {
    sessionTimeoutMs?: number;
    heartbeatIntervalMs?: number;
    rebalanceTimeoutMs?: number;
    maxWaitTimeMs?: number;
  };
  /** How long `subscribe` waits for the group join. Default 60 s. */
  joinTimeoutMs?: number;
  pingTimeoutMs?: number;
  /** Backoff between attempts of a failing handler (doubling, capped). Defaults 100 / 5000. */
  retryInitialMs?: number;
  retryMaxMs?: number;
  onError?: (err: unknown, context: { groupId: string; topic?: string; partition?: number; offset?: string }) => void;
}

const NON_RETRIABLE_INPUT = new Set(['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE', 'INVALID_TOPIC_EXCEPTION', 'INVALID_PARTITIONS', 'INVALID_REPLICATION_FACTOR']);

/** The broker error type, looking through kafkajs' retry / aggregate wrappers. */
function kafkaErrorType(err: unknown, depth = 0): string | undefined {
  if (!err || typeof err !== 'object' || depth > 4) return undefined;
  const e = err as { type?: string; originalError?: unknown; cause?: unknown; errors?: unknown[] };
  if (typeof e.type === 'string') return e.type;
  for (const inner of [e.originalError, e.cause, ...(Array.isArray(e.errors) ? e.errors : [])]) {
    const type = kafkaErrorType(inner, depth + 1);
    if (type) return type;
  }
  return undefined;
}

/** Kafka's "ask again, the group coordinator is moving or loading" answers. */
const COORDINATOR_CHURN = new Set(['NOT_COORDINATOR_FOR_GROUP', 'GROUP_COORDINATOR_NOT_AVAILABLE', 'GROUP_LOAD_IN_PROGRESS', 'COORDINATOR_LOAD_IN_PROGRESS']);

export function isCoordinatorChurn(err: unknown): boolean {
  // kafkajs may wrap the protocol error (retries exhausted): look down the chain, bounded.
  let current = err as { type?: string; originalError?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; current && depth < 4; depth++) {
    if (current.type && COORDINATOR_CHURN.has(current.type)) return true;
    current = (current.originalError ?? current.cause) as typeof current;
  }
  return false;
}

function dependency(op: string, err: unknown): CaracalError {
  if (err instanceof CaracalError) return err;
  const message = `kafka ${op}: ${(err as Error)?.message ?? String(err)}`;
  const type = kafkaErrorType(err);
  if (type && NON_RETRIABLE_INPUT.has(type)) return new CaracalError('CARACAL_VALIDATION', message, { cause: err });
  return new CaracalError('CARACAL_DEPENDENCY', message, { cause: err, retriable: true });
}

function kafkaLogLevel(level: string | undefined): number {
  switch (level) {
    case 'silent':
      return KafkaLogLevel.NOTHING;
    case 'trace':
      return KafkaLogLevel.DEBUG;
    case 'debug':
      return KafkaLogLevel.INFO;
    default:
      return KafkaLogLevel.ERROR;
  }
}

function headersOf(headers: IHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, raw] of Object.entries(headers ?? {})) {
    if (raw === undefined) continue;
    // Kafka allows repeated header names; the port's messages cannot produce them, keep the last.
    const value = Array.isArray(raw) ? raw[raw.length - 1] : raw;
    out[name] = value === undefined ? '' : Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
  }
  return out;
}

function toLogMessage(topic: string, partition: number, raw: KafkaMessage): LogMessage {
  return {
    topic,
    partition,
    offset: raw.offset,
    key: raw.key === null || raw.key === undefined ? null : raw.key.toString('utf8'),
    value: raw.value === null ? '' : raw.value.toString('utf8'),
    headers: headersOf(raw.headers),
    timestamp: Number(raw.timestamp),
  };
}

function approximateBytes(message: OutgoingMessage): number {
  let bytes = 64 + Buffer.byteLength(message.key) + Buffer.byteLength(message.value);
  for (const [name, value] of Object.entries(message.headers ?? {})) bytes += 8 + Buffer.byteLength(name) + Buffer.byteLength(value);
  return bytes;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * `EventLog` on Apache Kafka through kafkajs. One producer (acks=all, one request in flight per
 * broker so retries keep order; not kafkajs' experimental idempotent mode — a retried send can
 * duplicate, consumers are idempotent on the event id), one admin client, and one consumer per
 * subscription with manual commits: an offset is committed only after the handler resolved.
 */
export class KafkaEventLog implements EventLog {
  readonly kind = 'kafka' as const;
  private readonly kafka: KafkaClient;
  private readonly producer: Producer;
  private readonly admin: Admin;
  private readonly knownTopics = new Set<string>();
  private readonly subscriptions = new Set<KafkaSubscription>();
  private readonly maxMessageBytes: number;
  private readonly maxRequestBytes: number;

  private constructor(private readonly options: KafkaEventLogOptions) {
    const sink = options.log;
    this.kafka = new Kafka({
      clientId: options.clientId,
      brokers: options.brokers,
      connectionTimeout: options.connectionTimeoutMs ?? 3_000,
      requestTimeout: options.requestTimeoutMs ?? 30_000,
      retry: { initialRetryTime: 100, maxRetryTime: 2_000, retries: 5 },
      logLevel: kafkaLogLevel(options.logLevel),
      ...(sink
        ? {
            logCreator: () => (entry: LogEntry) => {
              const { message, ...extra } = entry.log;
              const level = entry.level <= KafkaLogLevel.ERROR ? 'error' : entry.level === KafkaLogLevel.WARN ? 'warn' : entry.level === KafkaLogLevel.INFO ? 'info' : 'debug';
              sink(level, `[${entry.namespace}] ${message}`, extra);
            },
          }
        : {}),
    });
    this.maxMessageBytes = options.maxMessageBytes ?? 4 * 1024 * 1024;
    this.maxRequestBytes = options.maxRequestBytes ?? 1024 * 1024;
    // Passing the partitioner explicitly also silences kafkajs' "default partitioner changed" warning.
    this.producer = this.kafka.producer({
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
      maxInFlightRequests: 1,
      idempotent: false,
    });
    this.admin = this.kafka.admin();
  }

  /** Connects the producer and the admin client; an unreachable broker → CARACAL_DEPENDENCY. */
  static async connect(options: KafkaEventLogOptions): Promise<KafkaEventLog> {
    const log = new KafkaEventLog(options);
    try {
      await Promise.all([log.producer.connect(), log.admin.connect()]);
    } catch (err) {
      await log.close().catch(() => {});
      throw dependency('connect', err);
    }
    return log;
  }

  async createTopics(topics: TopicSpec[]): Promise<void> {
    for (const spec of topics) {
      if (!isValidTopicName(spec.name)) throw new CaracalError('CARACAL_VALIDATION', `invalid topic name "${spec.name}"`);
    }
    try {
      const existing = new Set(await this.admin.listTopics());
      const missing = topics.filter((spec) => !existing.has(spec.name));
      if (missing.length > 0) {
        // Only missing topics are requested: with a mix, kafkajs reports TOPIC_ALREADY_EXISTS for
        // the whole call and skips waiting for the new topics' leaders.
        await this.admin.createTopics({
          waitForLeaders: true,
          timeout: 30_000,
          topics: missing.map((spec) => ({
            topic: spec.name,
            numPartitions: spec.partitions,
            replicationFactor: spec.replicationFactor,
            configEntries: [{ name: 'max.message.bytes', value: String(this.maxMessageBytes) }],
          })),
        });
      }
      // Covers a concurrent creator too (our call then returned false without waiting).
      await this.waitForLeaders(topics.map((spec) => spec.name));
    } catch (err) {
      throw dependency('createTopics', err);
    }
    for (const spec of topics) this.knownTopics.add(spec.name);
  }

  private async waitForLeaders(topics: string[], timeoutMs = 30_000): Promise<void> {
    if (topics.length === 0) return;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { topics: metadata } = await this.admin.fetchTopicMetadata({ topics });
      const ready = metadata.every((topic) => topic.partitions.length > 0 && topic.partitions.every((p) => p.leader >= 0));
      if (ready) return;
      if (Date.now() > deadline) throw new Error(`topic leaders not elected within ${timeoutMs} ms`);
      await sleep(100);
    }
  }

  async listTopics(): Promise<string[]> {
    try {
      const topics = (await this.admin.listTopics()).filter((name) => !name.startsWith('__'));
      for (const topic of topics) this.knownTopics.add(topic);
      return topics.sort();
    } catch (err) {
      throw dependency('listTopics', err);
    }
  }

  /** Unknown topics are a caller error (we never auto-create), reported before any retry loop. */
  private async requireTopics(topics: string[]): Promise<void> {
    if (topics.every((topic) => this.knownTopics.has(topic))) return;
    const existing = new Set(await this.listTopics());
    const unknown = topics.filter((topic) => !existing.has(topic));
    if (unknown.length > 0) throw new CaracalError('CARACAL_VALIDATION', `unknown topic ${unknown.map((t) => `"${t}"`).join(', ')}`);
  }

  async publish(topic: string, messages: OutgoingMessage[]): Promise<void> {
    if (!Array.isArray(messages)) throw new CaracalError('CARACAL_VALIDATION', 'messages must be an array');
    for (const [index, message] of messages.entries()) {
      if (typeof message?.key !== 'string' || typeof message.value !== 'string') {
        throw new CaracalError('CARACAL_VALIDATION', `message ${index} for topic "${topic}": key and value must be strings`);
      }
      if (approximateBytes(message) > this.maxMessageBytes) {
        throw new CaracalError('CARACAL_VALIDATION', `message ${index} for topic "${topic}" is larger than ${this.maxMessageBytes} bytes`);
      }
    }
    await this.requireTopics([topic]);
    // Sequential requests of bounded size; one request in flight keeps the order of a key.
    let chunk: OutgoingMessage[] = [];
    let chunkBytes = 0;
    const flush = async () => {
      if (chunk.length === 0) return;
      const messagesToSend = chunk.map((m) => ({ key: m.key, value: m.value, headers: m.headers ?? {} }));
      chunk = [];
      chunkBytes = 0;
      try {
        await this.producer.send({ topic, acks: -1, messages: messagesToSend });
      } catch (err) {
        throw dependency('publish', err);
      }
    };
    for (const message of messages) {
      const bytes = approximateBytes(message);
      if (chunk.length > 0 && chunkBytes + bytes > this.maxRequestBytes) await flush();
      chunk.push(message);
      chunkBytes += bytes;
    }
    await flush();
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    if (typeof options.groupId !== 'string' || options.groupId.length === 0) {
      throw new CaracalError('CARACAL_VALIDATION', 'groupId must be a non-empty string');
    }
    if (!Array.isArray(options.topics) || options.topics.length === 0) {
      throw new CaracalError('CARACAL_VALIDATION', 'subscribe needs at least one topic');
    }
    await this.requireTopics(options.topics);
    const tuning = this.options.consumer ?? {};
    const consumer = this.kafka.consumer({
      groupId: options.groupId,
      allowAutoTopicCreation: false,
      // 10 s, not 30: after a broker restart a group waits out the old members' sessions before it hands out partitions again.
      sessionTimeout: tuning.sessionTimeoutMs ?? 10_000,
      heartbeatInterval: tuning.heartbeatIntervalMs ?? 3_000,
      rebalanceTimeout: tuning.rebalanceTimeoutMs ?? 60_000,
      maxWaitTimeInMs: tuning.maxWaitTimeMs ?? 500,
    });
    const subscription = new KafkaSubscription(consumer, options, {
      backoff: { baseDelayMs: this.options.retryInitialMs ?? 100, maxDelayMs: this.options.retryMaxMs ?? 5_000, jitter: 'none' },
      onError: this.options.onError ?? (() => {}),
    }, () => this.subscriptions.delete(subscription));
    this.subscriptions.add(subscription);
    try {
      await subscription.start(this.options.joinTimeoutMs ?? 60_000);
    } catch (err) {
      await subscription.stop().catch(() => {});
      throw dependency('subscribe', err);
    }
    return subscription;
  }

  async consumerLag(groupId: string, topics: string[]): Promise<PartitionLag[]> {
    await this.requireTopics(topics);
    // Right after a broker starts (or a coordinator moves) OffsetFetch answers NOT_COORDINATOR /
    // COORDINATOR_LOAD_IN_PROGRESS, and kafkajs' admin does not retry those itself: retry them here,
    // bounded (8 attempts; waits of 100, 200, 400, 800, 1500, 1500, 1500 ms, 6 s in all), anything
    // else fails at once. No jitter: the budget is sized to outlast a coordinator load, and shorter
    // waits would use the attempts up sooner.
    try {
      return await retry(() => this.readLag(groupId, topics), {
        attempts: 8,
        baseDelayMs: 100,
        maxDelayMs: 1_500,
        jitter: 'none',
        isRetriable: isCoordinatorChurn,
      });
    } catch (err) {
      throw dependency('consumerLag', err);
    }
  }

  private async readLag(groupId: string, topics: string[]): Promise<PartitionLag[]> {
    const committed = await this.admin.fetchOffsets({ groupId, topics });
    const result: PartitionLag[] = [];
    for (const topic of topics) {
      const byPartition = new Map((committed.find((entry) => entry.topic === topic)?.partitions ?? []).map((p) => [p.partition, p.offset]));
      const ends = (await this.admin.fetchTopicOffsets(topic)).sort((a, b) => a.partition - b.partition);
      for (const end of ends) {
        const raw = byPartition.get(end.partition);
        // kafkajs reports "-1" for a partition the group never committed.
        const committedOffset = raw === undefined || BigInt(raw) < 0n ? null : raw;
        const from = BigInt(committedOffset ?? end.low);
        result.push({ topic, partition: end.partition, committed: committedOffset, end: end.high, lag: Number(BigInt(end.high) - from) });
      }
    }
    return result;
  }

  async ping(): Promise<void> {
    try {
      await withTimeout(this.admin.describeCluster(), this.options.pingTimeoutMs ?? 3_000, 'describeCluster');
    } catch (err) {
      throw dependency('ping', err);
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.subscriptions].map((subscription) => subscription.stop().catch(() => {})));
    await Promise.all([this.producer.disconnect().catch(() => {}), this.admin.disconnect().catch(() => {})]);
  }
}

interface HandlerRetry {
  backoff: BackoffOptions;
  onError: NonNullable<KafkaEventLogOptions['onError']>;
}

class KafkaSubscription implements Subscription {
  private stopping?: Promise<void>;
  /** Aborted by stop(): cuts a handler's backoff wait short. */
  private readonly stopped = new AbortController();

  constructor(
    private readonly consumer: Consumer,
    private readonly subscription: SubscribeOptions,
    private readonly retry: HandlerRetry,
    private readonly onStopped: () => void,
  ) {}

  /** Connects, subscribes, starts the run loop and resolves once the group has been joined. */
  async start(joinTimeoutMs: number): Promise<void> {
    const { consumer } = this;
    let removeJoin = () => {};
    let removeCrash = () => {};
    const joined = new Promise<void>((resolve, reject) => {
      removeJoin = consumer.on(consumer.events.GROUP_JOIN, () => resolve());
      removeCrash = consumer.on(consumer.events.CRASH, (event) => reject(event.payload.error));
    });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: this.subscription.topics, fromBeginning: this.subscription.fromBeginning ?? true });
      await consumer.run({
        autoCommit: false,
        // Partitions are independent (order is per partition): several in flight at once lets a
        // consumer overlap one partition's database transaction with another's.
        partitionsConsumedConcurrently: this.subscription.partitionsConcurrently ?? 4,
        eachBatchAutoResolve: false,
        eachBatch: (payload) => this.eachBatch(payload),
      });
      await withTimeout(joined, joinTimeoutMs, 'consumer group join');
    } finally {
      removeJoin();
      removeCrash();
    }
  }

  /**
   * Messages of one partition, in order. A failing handler is retried in place with backoff (the
   * same message again, nothing after it) and without an attempt bound — giving up would skip the
   * message — so this loop uses the backoff of `retry()` but not `retry()` itself. The offset is
   * resolved and committed (offset + 1) only once the handler succeeded. Leaving early (stop,
   * rebalance) leaves the offset uncommitted, so the message is delivered again — to this group's
   * next owner of the partition.
   */
  private async eachBatch({ batch, resolveOffset, heartbeat, isRunning, isStale, commitOffsetsIfNecessary }: EachBatchPayload): Promise<void> {
    const active = () => isRunning() && !isStale() && !this.stopping;
    if (this.subscription.batchHandler) {
      const batchHandler = this.subscription.batchHandler;
      const max = maxBatchOf(this.subscription);
      for (let start = 0; start < batch.messages.length; start += max) {
        if (!active()) return;
        const raws = batch.messages.slice(start, start + max);
        const messages = raws.map((raw) => toLogMessage(batch.topic, batch.partition, raw));
        if (!(await this.untilHandled(() => batchHandler(messages), messages[0]!, active, heartbeat))) return;
        await this.commitThrough(raws[raws.length - 1]!.offset, batch, resolveOffset, commitOffsetsIfNecessary, heartbeat);
      }
      return;
    }
    for (const raw of batch.messages) {
      if (!active()) return;
      const message = toLogMessage(batch.topic, batch.partition, raw);
      if (!(await this.untilHandled(() => this.subscription.handler(message), message, active, heartbeat))) return;
      await this.commitThrough(raw.offset, batch, resolveOffset, commitOffsetsIfNecessary, heartbeat);
    }
  }

  /** Runs `handle` until it succeeds (true) or the subscription stops, is rebalanced away, or goes stale (false). */
  private async untilHandled(handle: () => Promise<void>, first: LogMessage, active: () => boolean, heartbeat: () => Promise<void>): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await handle();
        return true;
      } catch (err) {
        this.retry.onError(err, { groupId: this.subscription.groupId, topic: first.topic, partition: first.partition, offset: first.offset });
        if (!active()) return false;
        // A rejection here is stop() aborting the wait; active() below tells the loop to leave.
        await sleep(backoffDelay(attempt, this.retry.backoff), this.stopped.signal).catch(() => {});
        if (!active()) return false;
        await heartbeat();
      }
    }
  }

  private async commitThrough(
    offset: string,
    batch: EachBatchPayload['batch'],
    resolveOffset: EachBatchPayload['resolveOffset'],
    commitOffsetsIfNecessary: EachBatchPayload['commitOffsetsIfNecessary'],
    heartbeat: () => Promise<void>,
  ): Promise<void> {
    resolveOffset(offset);
    // The payload's commit goes straight to the group coordinator; consumer.commitOffsets() is a
    // silent no-op once stop() began, which would lose the in-flight message's commit.
    await commitOffsetsIfNecessary({
      topics: [{ topic: batch.topic, partitions: [{ partition: batch.partition, offset: (BigInt(offset) + 1n).toString() }] }],
    });
    await heartbeat();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.stopped.abort();
      // disconnect() stops the runner, which waits for the in-flight batch (handler + commit),
      // then leaves the group.
      try {
        await this.consumer.disconnect();
      } finally {
        this.onStopped();
      }
    })();
    return this.stopping;
  }
}

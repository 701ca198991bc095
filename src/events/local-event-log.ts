import { randomUUID } from 'node:crypto';
import { CaracalError } from '../errors/catalog.js';
import type { Db } from '../store/db.js';
import { backoffDelay, sleep, type BackoffOptions } from '../util/retry.js';
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
import { maxBatchOf } from './event-log.js';

/**
 * Kafka's murmur2 (the Java client's `Utils.murmur2`, seed 0x9747b28c), which the default
 * partitioner of both the Java client and kafkajs (`Partitioners.DefaultPartitioner`) applies to
 * the key's UTF-8 bytes. Returns a signed 32-bit integer, as Java does.
 */
export function murmur2(data: Uint8Array): number {
  const m = 0x5bd1e995;
  const length = data.length;
  let h = (0x9747b28c ^ length) | 0;
  const blocks = length >>> 2;
  for (let i = 0; i < blocks; i++) {
    const j = i * 4;
    let k = data[j]! | (data[j + 1]! << 8) | (data[j + 2]! << 16) | (data[j + 3]! << 24);
    k = Math.imul(k, m);
    k ^= k >>> 24;
    k = Math.imul(k, m);
    h = Math.imul(h, m);
    h ^= k;
  }
  const tail = length & ~3;
  const rest = length & 3;
  if (rest === 3) h ^= data[tail + 2]! << 16;
  if (rest >= 2) h ^= data[tail + 1]! << 8;
  if (rest >= 1) {
    h ^= data[tail]!;
    h = Math.imul(h, m);
  }
  h ^= h >>> 13;
  h = Math.imul(h, m);
  h ^= h >>> 15;
  return h | 0;
}

/** The partition Kafka's default partitioner picks for a key: `toPositive(murmur2(key)) % n`. */
export function partitionFor(key: string, partitions: number): number {
  return (murmur2(Buffer.from(key, 'utf8')) & 0x7fffffff) % partitions;
}

export interface LocalEventLogOptions {
  /** How often an idle subscription looks for new rows (other processes' appends). Default 40. */
  pollIntervalMs?: number;
  /** Most rows read per partition per poll. Default 100. */
  batchSize?: number;
  /** How often members renew their leases and re-check the group's assignment. Default 1000. */
  heartbeatMs?: number;
  /** A member (and its partition claims) silent this long is considered dead. Default 10000. */
  leaseMs?: number;
  /** Backoff between attempts of a failing handler (doubling, capped). Defaults 100 / 5000. */
  retryInitialMs?: number;
  retryMaxMs?: number;
  /** Told about handler failures and background database errors (they are retried, never skipped). */
  onError?: (err: unknown, context: { groupId: string; topic?: string; partition?: number; offset?: string }) => void;
}

type ResolvedOptions = Required<LocalEventLogOptions>;

const INSERT_CHUNK = 500;

function hasNul(value: string): boolean {
  return value.includes('\u0000');
}

/** Checks what PostgreSQL `text` / `jsonb` cannot store (NUL) and what the port's types promise. */
function validateMessages(topic: string, messages: OutgoingMessage[]): void {
  if (!Array.isArray(messages)) throw new CaracalError('CARACAL_VALIDATION', 'messages must be an array');
  for (const [index, message] of messages.entries()) {
    const where = `message ${index} for topic "${topic}"`;
    if (typeof message?.key !== 'string') throw new CaracalError('CARACAL_VALIDATION', `${where}: key must be a string`);
    if (typeof message.value !== 'string') throw new CaracalError('CARACAL_VALIDATION', `${where}: value must be a string`);
    if (hasNul(message.key) || hasNul(message.value)) {
      throw new CaracalError('CARACAL_VALIDATION', `${where}: NUL characters cannot be stored by the local event log`);
    }
    for (const [name, value] of Object.entries(message.headers ?? {})) {
      if (typeof value !== 'string') throw new CaracalError('CARACAL_VALIDATION', `${where}: header "${name}" must be a string`);
      if (hasNul(name) || hasNul(value)) {
        throw new CaracalError('CARACAL_VALIDATION', `${where}: NUL characters cannot be stored by the local event log`);
      }
    }
  }
}

function dependency(op: string, err: unknown): CaracalError {
  if (err instanceof CaracalError) return err;
  return new CaracalError('CARACAL_DEPENDENCY', `local event log ${op}: ${(err as Error)?.message ?? String(err)}`, {
    cause: err,
    retriable: true,
  });
}

interface LogRow {
  off: string;
  key: string | null;
  value: string;
  headers: Record<string, string> | string | null;
  ts: string;
}

function toMessage(topic: string, partition: number, row: LogRow): LogMessage {
  const headers = typeof row.headers === 'string' ? (JSON.parse(row.headers) as Record<string, string>) : (row.headers ?? {});
  return {
    topic,
    partition,
    offset: String(row.off),
    key: row.key,
    value: row.value,
    headers,
    timestamp: Number(row.ts),
  };
}

/**
 * Subscriptions per `Db` object, so a publish wakes the subscribers of this process at once and a
 * member joining or leaving a group makes the others re-balance without waiting for a heartbeat.
 */
const registries = new WeakMap<Db, Set<LocalSubscription>>();

function registryOf(db: Db): Set<LocalSubscription> {
  let set = registries.get(db);
  if (!set) registries.set(db, (set = new Set()));
  return set;
}

/**
 * The durable table-backed event log of the embedded default (PGlite) and of PostgreSQL without
 * Kafka. Same semantics as Kafka: murmur2 key partitioning, per-partition contiguous offsets from 0,
 * consumer groups with committed offsets, at-least-once delivery. Tables: migration 0002.
 * It does not own `db`: `close()` stops its subscriptions and leaves the database open.
 */
export class LocalEventLog implements EventLog {
  readonly kind = 'local' as const;
  private readonly options: ResolvedOptions;
  private readonly partitionCounts = new Map<string, number>();
  private readonly subscriptions = new Set<LocalSubscription>();

  constructor(
    private readonly db: Db,
    options: LocalEventLogOptions = {},
  ) {
    this.options = {
      pollIntervalMs: options.pollIntervalMs ?? 40,
      batchSize: options.batchSize ?? 100,
      heartbeatMs: options.heartbeatMs ?? 1_000,
      leaseMs: options.leaseMs ?? 10_000,
      retryInitialMs: options.retryInitialMs ?? 100,
      retryMaxMs: options.retryMaxMs ?? 5_000,
      onError: options.onError ?? (() => {}),
    };
    if (this.options.leaseMs < 3 * this.options.heartbeatMs) {
      throw new CaracalError('CARACAL_VALIDATION', 'leaseMs must be at least three heartbeats');
    }
  }

  async createTopics(topics: TopicSpec[]): Promise<void> {
    for (const spec of topics) {
      if (!isValidTopicName(spec.name)) throw new CaracalError('CARACAL_VALIDATION', `invalid topic name "${spec.name}"`);
      if (!Number.isInteger(spec.partitions) || spec.partitions < 1 || spec.partitions > 1000) {
        throw new CaracalError('CARACAL_VALIDATION', `topic "${spec.name}": partitions must be an integer from 1 to 1000`);
      }
    }
    try {
      await this.db.transaction(async (tx) => {
        for (const spec of topics) {
          // Existing topics keep their partition count (Kafka's createTopics leaves them as they are).
          await tx.query('INSERT INTO event_topics (name, partitions) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING', [
            spec.name,
            spec.partitions,
          ]);
          await tx.query(
            `INSERT INTO event_partitions (topic, partition)
             SELECT name, generate_series(0, partitions - 1) FROM event_topics WHERE name = $1
             ON CONFLICT (topic, partition) DO NOTHING`,
            [spec.name],
          );
        }
      });
    } catch (err) {
      throw dependency('createTopics', err);
    }
  }

  async listTopics(): Promise<string[]> {
    try {
      const { rows } = await this.db.query<{ name: string }>('SELECT name FROM event_topics ORDER BY name');
      return rows.map((row) => row.name);
    } catch (err) {
      throw dependency('listTopics', err);
    }
  }

  /** Partition count of a topic; topics never change it, so it is cached once seen. */
  async partitionsOf(topic: string): Promise<number> {
    const cached = this.partitionCounts.get(topic);
    if (cached !== undefined) return cached;
    let rows: { partitions: number }[];
    try {
      ({ rows } = await this.db.query<{ partitions: number }>('SELECT partitions FROM event_topics WHERE name = $1', [topic]));
    } catch (err) {
      throw dependency('metadata', err);
    }
    if (rows.length === 0) throw new CaracalError('CARACAL_VALIDATION', `unknown topic "${topic}"`);
    const count = Number(rows[0]!.partitions);
    this.partitionCounts.set(topic, count);
    return count;
  }

  async publish(topic: string, messages: OutgoingMessage[]): Promise<void> {
    validateMessages(topic, messages);
    const partitions = await this.partitionsOf(topic);
    if (messages.length === 0) return;
    const byPartition = new Map<number, OutgoingMessage[]>();
    for (const message of messages) {
      const partition = partitionFor(message.key, partitions);
      let list = byPartition.get(partition);
      if (!list) byPartition.set(partition, (list = []));
      list.push(message);
    }
    // Head rows are locked in ascending partition order, so concurrent publishers never deadlock.
    const order = [...byPartition.keys()].sort((a, b) => a - b);
    try {
      await this.db.transaction(async (tx) => {
        for (const partition of order) {
          const batch = byPartition.get(partition)!;
          // The UPDATE takes the head row's lock (as SELECT … FOR UPDATE would) until commit: a
          // concurrent publisher waits here, then continues from our end, so offsets are contiguous
          // and become visible in order.
          const { rows } = await tx.query<{ next_offset: string }>(
            'UPDATE event_partitions SET next_offset = next_offset + $3 WHERE topic = $1 AND partition = $2 RETURNING next_offset',
            [topic, partition, batch.length],
          );
          if (rows.length === 0) throw new CaracalError('CARACAL_INTERNAL', `partition ${topic}/${partition} has no head row`);
          let offset = BigInt(rows[0]!.next_offset) - BigInt(batch.length);
          for (let start = 0; start < batch.length; start += INSERT_CHUNK) {
            const chunk = batch.slice(start, start + INSERT_CHUNK);
            const params: unknown[] = [topic, partition];
            const values: string[] = [];
            for (const message of chunk) {
              const n = params.length;
              values.push(`($1, $2, $${n + 1}::bigint, $${n + 2}, $${n + 3}, $${n + 4}::jsonb)`);
              params.push(offset.toString(), message.key, message.value, JSON.stringify(message.headers ?? {}));
              offset += 1n;
            }
            await tx.query(
              `INSERT INTO event_log (topic, partition, "offset", key, value, headers) VALUES ${values.join(', ')}`,
              params,
            );
          }
        }
      });
    } catch (err) {
      throw dependency('publish', err);
    }
    for (const subscription of registryOf(this.db)) subscription.notifyAppend(topic);
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    if (typeof options.groupId !== 'string' || options.groupId.length === 0) {
      throw new CaracalError('CARACAL_VALIDATION', 'groupId must be a non-empty string');
    }
    if (!Array.isArray(options.topics) || options.topics.length === 0) {
      throw new CaracalError('CARACAL_VALIDATION', 'subscribe needs at least one topic');
    }
    const partitions = new Map<string, number>();
    for (const topic of new Set(options.topics)) partitions.set(topic, await this.partitionsOf(topic));
    const subscription = new LocalSubscription(this.db, this.options, options, partitions, () => {
      this.subscriptions.delete(subscription);
    });
    this.subscriptions.add(subscription);
    try {
      await subscription.start();
    } catch (err) {
      await subscription.stop().catch(() => {});
      throw dependency('subscribe', err);
    }
    return subscription;
  }

  async consumerLag(groupId: string, topics: string[]): Promise<PartitionLag[]> {
    const result: PartitionLag[] = [];
    for (const topic of topics) {
      await this.partitionsOf(topic);
      let rows: { partition: number; end_offset: string; committed: string | null }[];
      try {
        ({ rows } = await this.db.query<{ partition: number; end_offset: string; committed: string | null }>(
          `SELECT p.partition, p.next_offset AS end_offset, o.next_offset AS committed
             FROM event_partitions p
             LEFT JOIN event_consumer_offsets o ON o.group_id = $1 AND o.topic = p.topic AND o.partition = p.partition
            WHERE p.topic = $2
            ORDER BY p.partition`,
          [groupId, topic],
        ));
      } catch (err) {
        throw dependency('consumerLag', err);
      }
      for (const row of rows) {
        const end = String(row.end_offset);
        const committed = row.committed === null ? null : String(row.committed);
        // No committed offset: the whole partition is lag (the local log never deletes rows).
        result.push({ topic, partition: Number(row.partition), committed, end, lag: Number(BigInt(end) - BigInt(committed ?? '0')) });
      }
    }
    return result;
  }

  async ping(): Promise<void> {
    try {
      // Also proves migration 0002 ran.
      await this.db.query('SELECT 1 FROM event_topics LIMIT 1');
    } catch (err) {
      throw dependency('ping', err);
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.subscriptions].map((subscription) => subscription.stop()));
  }
}

interface OwnedPartition {
  topic: string;
  partition: number;
  /** Next offset to hand to the handler (= the group's committed offset while we own it). */
  next: bigint;
}

const partKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;

/**
 * One member of a consumer group. Partition assignment: the group's live members of a topic
 * (heartbeated rows in `event_group_members`) are sorted by id and partition p goes to member
 * `p % members`; a member consumes a partition only while it holds that partition's lease row in
 * `event_partition_claims`, and its commits are fenced on that lease.
 */
class LocalSubscription implements Subscription {
  private readonly memberId = randomUUID();
  private readonly owned = new Map<string, OwnedPartition>();
  private running = true;
  private rebalanceDue = 0;
  private loop?: Promise<void>;
  private stopping?: Promise<void>;
  private renewTimer?: NodeJS.Timeout;
  private renewing = false;
  /** Aborted by stop(): cuts a backoff wait short. */
  private readonly stopped = new AbortController();
  private readonly retryBackoff: BackoffOptions;
  private poke?: () => void;
  /** Set by a poke that arrived while we were not waiting, so it is not lost. */
  private poked = false;
  private readonly topics: string[];

  constructor(
    private readonly db: Db,
    private readonly options: ResolvedOptions,
    private readonly subscription: SubscribeOptions,
    private readonly partitions: Map<string, number>,
    private readonly onStopped: () => void,
  ) {
    this.topics = [...partitions.keys()].sort();
    this.retryBackoff = { baseDelayMs: options.retryInitialMs, maxDelayMs: options.retryMaxMs, jitter: 'none' };
  }

  get groupId(): string {
    return this.subscription.groupId;
  }

  async start(): Promise<void> {
    registryOf(this.db).add(this);
    await this.rebalance();
    for (const other of registryOf(this.db)) if (other !== this && other.groupId === this.groupId) other.requestRebalance();
    this.renewTimer = setInterval(() => void this.renew(), this.options.heartbeatMs);
    this.renewTimer.unref();
    this.loop = this.run();
  }

  notifyAppend(topic: string): void {
    if (this.partitions.has(topic)) this.wake();
  }

  requestRebalance(): void {
    this.rebalanceDue = 0;
    this.wake();
  }

  private wake(): void {
    this.poked = true;
    this.poke?.();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.running = false;
      this.stopped.abort();
      this.poke?.();
      // The loop finishes the in-flight handler and its commit before it returns.
      await this.loop;
      if (this.renewTimer) clearInterval(this.renewTimer);
      registryOf(this.db).delete(this);
      try {
        await this.db.query('DELETE FROM event_partition_claims WHERE group_id = $1 AND owner = $2', [this.groupId, this.memberId]);
        await this.db.query('DELETE FROM event_group_members WHERE group_id = $1 AND member_id = $2', [this.groupId, this.memberId]);
      } catch (err) {
        // Leases expire by themselves; the next member takes over after leaseMs.
        this.options.onError(err, { groupId: this.groupId });
      }
      this.owned.clear();
      for (const other of registryOf(this.db)) if (other.groupId === this.groupId) other.requestRebalance();
      this.onStopped();
    })();
    return this.stopping;
  }

  /**
   * The idle poll: waits `ms`, or less when a publish, a rebalance or stop() pokes us. A poll, not a
   * retry, and `sleep` cannot be woken by a poke, hence its own timer.
   */
  private async waitForWork(ms: number): Promise<void> {
    if (this.poked) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
      this.poke = resolve;
    });
    clearTimeout(timer);
    this.poke = undefined;
  }

  /** Waits before the next attempt after `failures` failures in a row; stop() cuts it short. */
  private async backOff(failures: number): Promise<void> {
    // The only rejection is stop() aborting the wait; callers check `running` right after.
    await sleep(backoffDelay(failures, this.retryBackoff), this.stopped.signal).catch(() => {});
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (this.running) {
      try {
        if (Date.now() >= this.rebalanceDue) await this.rebalance();
        const worked = await this.consumeOnce();
        failures = 0;
        if (!worked && this.running && Date.now() < this.rebalanceDue) {
          await this.waitForWork(Math.min(this.options.pollIntervalMs, Math.max(0, this.rebalanceDue - Date.now())));
        }
      } catch (err) {
        // Database trouble: keep the position (nothing was committed) and try again.
        failures += 1;
        this.options.onError(err, { groupId: this.groupId });
        if (this.running) await this.backOff(failures);
      }
    }
  }

  /** One pass over the owned partitions; true when at least one message was handled. */
  private async consumeOnce(): Promise<boolean> {
    let worked = false;
    this.poked = false;
    if (this.owned.size === 0) return worked;
    // One cheap look at the partition heads first, so an idle poll costs one query, not one per partition.
    const placeholders = this.topics.map((_, i) => `$${i + 1}`).join(', ');
    const { rows: heads } = await this.db.query<{ topic: string; partition: number; next_offset: string }>(
      `SELECT topic, partition, next_offset FROM event_partitions WHERE topic IN (${placeholders})`,
      this.topics,
    );
    const headOf = new Map(heads.map((row) => [partKey(row.topic, Number(row.partition)), BigInt(row.next_offset)]));
    for (const part of [...this.owned.values()]) {
      if (!this.running || Date.now() >= this.rebalanceDue) return worked;
      if ((headOf.get(partKey(part.topic, part.partition)) ?? 0n) <= part.next) continue;
      const { rows } = await this.db.query<LogRow>(
        `SELECT "offset" AS off, key, value, headers, floor(extract(epoch FROM appended_at) * 1000)::bigint AS ts
           FROM event_log
          WHERE topic = $1 AND partition = $2 AND "offset" >= $3
          ORDER BY "offset"
          LIMIT $4`,
        [part.topic, part.partition, part.next.toString(), this.subscription.batchHandler ? maxBatchOf(this.subscription) : this.options.batchSize],
      );
      // A batch handler takes the rows as one slice; the plain handler one message per slice.
      const messages = rows.map((row) => toMessage(part.topic, part.partition, row));
      const { batchHandler } = this.subscription;
      const slices = batchHandler ? (messages.length > 0 ? [messages] : []) : messages.map((message) => [message]);
      for (const slice of slices) {
        if (!this.running || Date.now() >= this.rebalanceDue) return worked;
        const handle = batchHandler ? () => batchHandler(slice) : () => this.subscription.handler(slice[0]!);
        if (!(await this.untilHandled(handle, slice[0]!))) return worked;
        const next = BigInt(slice[slice.length - 1]!.offset) + 1n;
        if (!(await this.commit(part, next))) {
          // Our lease was taken over (we stalled past leaseMs): stop consuming this partition.
          this.owned.delete(partKey(part.topic, part.partition));
          this.rebalanceDue = 0;
          break;
        }
        part.next = next;
        worked = true;
      }
    }
    return worked;
  }

  /**
   * Runs `handle` until it succeeds (true) or the subscription stops during a retry (false).
   * No attempt bound: giving up would skip the message, so this is not a `retry()`.
   */
  private async untilHandled(handle: () => Promise<void>, first: LogMessage): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await handle();
        return true;
      } catch (err) {
        this.options.onError(err, { groupId: this.groupId, topic: first.topic, partition: first.partition, offset: first.offset });
        if (!this.running) return false;
        await this.backOff(attempt);
        if (!this.running) return false;
      }
    }
  }

  /** Upserts the group's offset, only while this member still holds the partition's lease. */
  private async commit(part: OwnedPartition, next: bigint): Promise<boolean> {
    const { rowCount } = await this.db.query(
      `INSERT INTO event_consumer_offsets (group_id, topic, partition, next_offset)
       SELECT $1, $2, $3, $4::bigint
        WHERE EXISTS (SELECT 1 FROM event_partition_claims
                       WHERE group_id = $1 AND topic = $2 AND partition = $3 AND owner = $5)
       ON CONFLICT (group_id, topic, partition)
       DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()`,
      [this.groupId, part.topic, part.partition, next.toString(), this.memberId],
    );
    return rowCount > 0;
  }

  /** Keeps this member and its leases alive, also while a slow handler blocks the loop. */
  private async renew(): Promise<void> {
    if (this.renewing || !this.running) return;
    this.renewing = true;
    try {
      const lease = this.options.leaseMs;
      await this.db.query(
        `UPDATE event_group_members SET expires_at = now() + $3::double precision * interval '1 millisecond'
          WHERE group_id = $1 AND member_id = $2`,
        [this.groupId, this.memberId, lease],
      );
      await this.db.query(
        `UPDATE event_partition_claims SET expires_at = now() + $3::double precision * interval '1 millisecond'
          WHERE group_id = $1 AND owner = $2`,
        [this.groupId, this.memberId, lease],
      );
    } catch (err) {
      this.options.onError(err, { groupId: this.groupId });
    } finally {
      this.renewing = false;
    }
  }

  /** Heartbeat + assignment: release what is no longer ours, claim what is ours and free. */
  private async rebalance(): Promise<void> {
    const { groupId, fromBeginning = true } = this.subscription;
    const lease = this.options.leaseMs;
    for (const topic of this.topics) {
      await this.db.query(
        `INSERT INTO event_group_members (group_id, topic, member_id, expires_at)
         VALUES ($1, $2, $3, now() + $4::double precision * interval '1 millisecond')
         ON CONFLICT (group_id, topic, member_id) DO UPDATE SET expires_at = EXCLUDED.expires_at`,
        [groupId, topic, this.memberId, lease],
      );
    }
    await this.db.query('DELETE FROM event_group_members WHERE group_id = $1 AND expires_at < now()', [groupId]);
    const { rows: members } = await this.db.query<{ topic: string; member_id: string }>(
      'SELECT topic, member_id FROM event_group_members WHERE group_id = $1 ORDER BY topic, member_id',
      [groupId],
    );
    const desired = new Map<string, { topic: string; partition: number }>();
    for (const topic of this.topics) {
      const ids = members.filter((row) => row.topic === topic).map((row) => row.member_id);
      const count = this.partitions.get(topic)!;
      for (let partition = 0; partition < count; partition++) {
        if (ids[partition % ids.length] === this.memberId) desired.set(partKey(topic, partition), { topic, partition });
      }
    }
    for (const [key, part] of this.owned) {
      if (desired.has(key)) continue;
      await this.db.query('DELETE FROM event_partition_claims WHERE group_id = $1 AND topic = $2 AND partition = $3 AND owner = $4', [
        groupId,
        part.topic,
        part.partition,
        this.memberId,
      ]);
      this.owned.delete(key);
    }
    for (const [key, { topic, partition }] of desired) {
      const { rows: claimed } = await this.db.query(
        `INSERT INTO event_partition_claims (group_id, topic, partition, owner, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5::double precision * interval '1 millisecond')
         ON CONFLICT (group_id, topic, partition) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
          WHERE event_partition_claims.owner = EXCLUDED.owner OR event_partition_claims.expires_at < now()
         RETURNING partition`,
        [groupId, topic, partition, this.memberId, lease],
      );
      if (claimed.length === 0) {
        this.owned.delete(key);
        continue;
      }
      if (this.owned.has(key)) continue;
      if (!fromBeginning) {
        // A new group starting at the end pins that position now, so a restart neither skips
        // what arrives meanwhile nor re-reads history.
        await this.db.query(
          `INSERT INTO event_consumer_offsets (group_id, topic, partition, next_offset)
           SELECT $1, topic, partition, next_offset FROM event_partitions WHERE topic = $2 AND partition = $3
           ON CONFLICT (group_id, topic, partition) DO NOTHING`,
          [groupId, topic, partition],
        );
      }
      const { rows: committed } = await this.db.query<{ next_offset: string }>(
        'SELECT next_offset FROM event_consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3',
        [groupId, topic, partition],
      );
      this.owned.set(key, { topic, partition, next: BigInt(committed[0]?.next_offset ?? '0') });
    }
    // Partitions still held by a member that has not released them yet: look again soon.
    const settled = this.owned.size === desired.size;
    this.rebalanceDue = Date.now() + (settled ? this.options.heartbeatMs : Math.min(this.options.heartbeatMs, 200));
  }
}

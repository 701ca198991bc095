import type { EventLog, OutgoingMessage, PartitionLag, Subscription } from '../../src/events/event-log.js';

/** An EventLog that keeps what it was given, in order; `failNext` makes the next N publishes throw. */
export class MemoryEventLog implements EventLog {
  readonly kind = 'local' as const;
  readonly published: { topic: string; message: OutgoingMessage }[] = [];
  publishCalls = 0;
  failures = 0;
  failNext = 0;

  async createTopics(): Promise<void> {}
  async listTopics(): Promise<string[]> {
    return [...new Set(this.published.map((p) => p.topic))];
  }
  async publish(topic: string, messages: OutgoingMessage[]): Promise<void> {
    this.publishCalls += 1;
    await Promise.resolve();
    if (this.failNext > 0) {
      this.failNext -= 1;
      this.failures += 1;
      throw new Error('broker unreachable (simulated)');
    }
    for (const message of messages) this.published.push({ topic, message });
  }
  async subscribe(): Promise<Subscription> {
    throw new Error('MemoryEventLog does not deliver');
  }
  async consumerLag(): Promise<PartitionLag[]> {
    return [];
  }
  async ping(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Wraps a real EventLog; its first `failures` publishes throw without reaching the log. */
export class FailingFirstEventLog implements EventLog {
  failed = 0;
  constructor(
    private readonly inner: EventLog,
    private failures: number,
  ) {}
  get kind() {
    return this.inner.kind;
  }
  createTopics(...args: Parameters<EventLog['createTopics']>) {
    return this.inner.createTopics(...args);
  }
  listTopics() {
    return this.inner.listTopics();
  }
  async publish(topic: string, messages: OutgoingMessage[]): Promise<void> {
    if (this.failures > 0) {
      this.failures -= 1;
      this.failed += 1;
      throw new Error('broker unreachable (simulated)');
    }
    await this.inner.publish(topic, messages);
  }
  subscribe(...args: Parameters<EventLog['subscribe']>) {
    return this.inner.subscribe(...args);
  }
  consumerLag(...args: Parameters<EventLog['consumerLag']>) {
    return this.inner.consumerLag(...args);
  }
  ping() {
    return this.inner.ping();
  }
  close() {
    return this.inner.close();
  }
}

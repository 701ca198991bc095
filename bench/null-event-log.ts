import type { EventLog, PartitionLag, Subscription } from '../src/events/event-log.js';

/**
 * Bench-only EventLog that accepts and discards every message: it isolates what durable recording
 * costs in the gateway. Never used outside bench/ (a gateway must not drop its decisions).
 */
export class DiscardingEventLog implements EventLog {
  readonly kind = 'local' as const;
  async createTopics(): Promise<void> {}
  async listTopics(): Promise<string[]> {
    return [];
  }
  async publish(): Promise<void> {}
  async subscribe(): Promise<Subscription> {
    return { stop: async () => {} };
  }
  async consumerLag(): Promise<PartitionLag[]> {
    return [];
  }
  async ping(): Promise<void> {}
  async close(): Promise<void> {}
}

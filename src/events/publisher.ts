import { CaracalError } from '../errors/catalog.js';
import type { CloudEvent } from './cloudevents.js';
import type { EventLog, OutgoingMessage } from './event-log.js';

/** The event format's media type, per the CloudEvents Kafka protocol binding (structured content mode). */
export const CLOUDEVENTS_JSON_CONTENT_TYPE = 'application/cloudevents+json; charset=utf-8';

/** One event as a message: content-type makes it a structured-mode CloudEvent under the Kafka binding. */
export function eventMessage(key: string, event: CloudEvent): OutgoingMessage {
  return { key, value: JSON.stringify(event), headers: { 'content-type': CLOUDEVENTS_JSON_CONTENT_TYPE, 'ce-type': event.type, 'ce-id': event.id } };
}

interface Pending {
  message: OutgoingMessage;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Groups the events of concurrent requests into one append per topic. Everything enqueued while
 * a write is in flight goes out in the next write, so under load batches grow by themselves and
 * at low load an event waits for no timer. A caller's promise settles when its event is durable.
 */
export class EventPublisher {
  private readonly queues = new Map<string, Pending[]>();
  private readonly inFlight = new Map<string, Promise<void>>();
  private closed = false;

  constructor(
    private readonly log: EventLog,
    private readonly maxBatch = 500,
    private readonly onBatch: (topic: string, size: number, ok: boolean) => void = () => {},
  ) {}

  publish(topic: string, key: string, event: CloudEvent): Promise<void> {
    if (this.closed) return Promise.reject(new CaracalError('CARACAL_EVENTS_UNAVAILABLE', 'event publisher is closed'));
    return new Promise<void>((resolve, reject) => {
      const message = eventMessage(key, event);
      let queue = this.queues.get(topic);
      if (!queue) this.queues.set(topic, (queue = []));
      queue.push({ message, resolve, reject });
      if (!this.inFlight.has(topic)) this.schedule(topic);
    });
  }

  private schedule(topic: string): void {
    const run = (async () => {
      // Let the requests of this event-loop turn join the batch.
      await new Promise<void>((resolve) => setImmediate(resolve));
      for (;;) {
        const queue = this.queues.get(topic) ?? [];
        if (queue.length === 0) break;
        const batch = queue.splice(0, this.maxBatch);
        try {
          await this.log.publish(topic, batch.map((p) => p.message));
          this.onBatch(topic, batch.length, true);
          for (const p of batch) p.resolve();
        } catch (err) {
          this.onBatch(topic, batch.length, false);
          const failure = new CaracalError('CARACAL_EVENTS_UNAVAILABLE', undefined, { cause: err, retriable: true });
          for (const p of batch) p.reject(failure);
        }
      }
    })();
    this.inFlight.set(topic, run);
    void run.finally(() => {
      this.inFlight.delete(topic);
      if ((this.queues.get(topic)?.length ?? 0) > 0) this.schedule(topic);
    });
  }

  /** Waits for every queued event to be written, then refuses new ones. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight.values()]);
  }
}

import type { CaracalConfig } from '../config/schema.js';
import type { TopicSpec } from './event-log.js';

/** The topics (docs/architecture.md, "Events"), without the configured prefix. Key = principal id on all of them. */
export const TOPIC_SUFFIXES = {
  decisions: 'policy.decisions',
  metering: 'metering.events',
  lifecycle: 'agent.lifecycle',
  dlq: 'dlq',
} as const;

export type TopicRole = keyof typeof TOPIC_SUFFIXES;
export type TopicNames = Record<TopicRole, string>;

/** `topicNames('caracal.')` → `{ decisions: 'caracal.policy.decisions', … }`. */
export function topicNames(prefix: string): TopicNames {
  return {
    decisions: `${prefix}${TOPIC_SUFFIXES.decisions}`,
    metering: `${prefix}${TOPIC_SUFFIXES.metering}`,
    lifecycle: `${prefix}${TOPIC_SUFFIXES.lifecycle}`,
    dlq: `${prefix}${TOPIC_SUFFIXES.dlq}`,
  };
}

/** What `caracal kafka create-topics` (and the embedded default at start) creates. */
export function topicSpecs(config: Pick<CaracalConfig, 'kafka'>): TopicSpec[] {
  const names = topicNames(config.kafka.topicPrefix);
  return (Object.keys(TOPIC_SUFFIXES) as TopicRole[]).map((role) => ({
    name: names[role],
    partitions: config.kafka.partitions,
    replicationFactor: config.kafka.replicationFactor,
  }));
}

/** Kafka's rule for topic names (legal characters, at most 249), applied to both implementations. */
export function isValidTopicName(name: string): boolean {
  return /^[A-Za-z0-9._-]{1,249}$/.test(name) && name !== '.' && name !== '..';
}

import type { Command } from 'commander';
import type { PartitionLag, TopicSpec } from '../../events/event-log.js';
import { positiveInt } from '../parse.js';
import type { CliRuntime } from '../runtime.js';

export function registerKafkaCommands(program: Command, rt: () => CliRuntime): void {
  const kafka = program.command('kafka').description('event topics and consumer groups (Kafka, or the embedded log)');

  kafka
    .command('create-topics')
    .description('create the Caracal topics (idempotent)')
    .option('--partitions <n>', 'partitions per topic (default: kafka.partitions)')
    .option('--replication-factor <n>', 'replication factor (default: kafka.replicationFactor)')
    .action(async (options) => {
      const runtime = rt();
      const { backend, topics } = await runtime.operation<{ backend: string; topics: TopicSpec[] }>('kafka.create-topics', {
        ...(options.partitions !== undefined ? { partitions: positiveInt('--partitions', options.partitions) } : {}),
        ...(options.replicationFactor !== undefined ? { replicationFactor: positiveInt('--replication-factor', options.replicationFactor) } : {}),
      });
      for (const spec of topics) runtime.out.line(`${spec.name}  partitions=${spec.partitions} replication=${spec.replicationFactor}  (${backend})`);
    });

  kafka
    .command('consumer-lag')
    .description('committed offset vs end offset per partition for a consumer group')
    .requiredOption('--consumer-group <group>', 'consumer group id')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const lag = await runtime.operation<PartitionLag[]>('kafka.consumer-lag', { consumerGroup: options.consumerGroup });
      if (options.json) return runtime.out.json(lag);
      runtime.out.table(lag as unknown as Record<string, unknown>[], [
        { key: 'topic', header: 'TOPIC' },
        { key: 'partition', header: 'PARTITION' },
        { key: 'committed', header: 'COMMITTED' },
        { key: 'end', header: 'END' },
        { key: 'lag', header: 'LAG' },
      ]);
      runtime.out.line(`total lag: ${lag.reduce((sum, p) => sum + p.lag, 0)}`);
    });
}

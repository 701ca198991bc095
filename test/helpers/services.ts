import { randomBytes } from 'node:crypto';

/**
 * Addresses of the real services that scripts/test.sh starts on loopback and exports.
 * Integration tests call this instead of skipping: a missing service is a failure, never a pass.
 */
export interface Services {
  databaseUrl: string;
  redisUrl: string;
  kafkaBrokers: string[];
  opaBin: string;
}

export function requireServices(): Services {
  const env = process.env;
  const missing = ['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS', 'CARACAL_OPA_BIN'].filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new Error(
      `integration tests need real services; missing ${missing.join(', ')}. Run them through \`npm test\` ` +
        '(scripts/test.sh starts PostgreSQL, Redis and Kafka), or `source <dir>/env` after `scripts/services.sh start <dir>`.',
    );
  }
  return {
    databaseUrl: env.DATABASE_URL!,
    redisUrl: env.REDIS_URL!,
    kafkaBrokers: env.KAFKA_BROKERS!.split(','),
    opaBin: env.CARACAL_OPA_BIN!,
  };
}

/** Random lowercase identifier for per-suite isolation (schemas, topics, groups, key prefixes). */
export function randomName(prefix: string): string {
  return `${prefix}_${randomBytes(5).toString('hex')}`;
}

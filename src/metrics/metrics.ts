import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * One registry per process role and one helper per thing we count. Labels come from closed
 * sets only (route templates, configured upstream names, outcome enums) — never agent ids,
 * tokens or raw paths, so the series count stays bounded.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'route' | 'method' | 'status' | 'upstream'>;
  readonly duration: Histogram<'route' | 'upstream'>;
  readonly policyEvaluations: Counter<'outcome' | 'allow'>;
  readonly policyEvalDuration: Histogram<string>;
  readonly authFailures: Counter<'reason'>;
  readonly tokenCache: Counter<'result'>;
  readonly eventsPublished: Counter<'topic' | 'result'>;
  readonly bundleInfo: Gauge<'revision'>;
  readonly bundleLoadErrors: Counter<string>;
  readonly shadowBundleInfo: Gauge<'revision'>;
  readonly shadowDecisions: Counter<'agreement'>;
  readonly inFlight: Gauge<string>;
  readonly clientAborts: Counter<'upstream'>;
  readonly upstreamRetries: Counter<'upstream'>;
  readonly limited: Counter<'reason'>;

  constructor(defaultMetrics = true) {
    if (defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'caracal_' });
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'caracal_gateway_requests_total',
      help: 'Requests handled by the gateway',
      labelNames: ['route', 'method', 'status', 'upstream'],
      registers,
    });
    this.duration = new Histogram({
      name: 'caracal_gateway_request_duration_seconds',
      help: 'Gateway request latency, from receipt to response end',
      labelNames: ['route', 'upstream'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.policyEvaluations = new Counter({
      name: 'caracal_policy_evaluations_total',
      help: 'Policy evaluations by engine outcome and decision',
      labelNames: ['outcome', 'allow'],
      registers,
    });
    this.policyEvalDuration = new Histogram({
      name: 'caracal_policy_evaluation_duration_seconds',
      help: 'Time spent in one WASM policy evaluation',
      buckets: [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01],
      registers,
    });
    this.authFailures = new Counter({
      name: 'caracal_auth_failures_total',
      help: 'Authentication failures by reason',
      labelNames: ['reason'],
      registers,
    });
    this.tokenCache = new Counter({
      name: 'caracal_token_cache_requests_total',
      help: 'Verified-token cache lookups (hit or miss)',
      labelNames: ['result'],
      registers,
    });
    this.eventsPublished = new Counter({
      name: 'caracal_events_published_total',
      help: 'Events appended to the event log, by topic and result',
      labelNames: ['topic', 'result'],
      registers,
    });
    this.bundleInfo = new Gauge({
      name: 'caracal_policy_bundle_info',
      help: 'The active policy bundle revision (value is always 1)',
      labelNames: ['revision'],
      registers,
    });
    this.bundleLoadErrors = new Counter({
      name: 'caracal_policy_bundle_load_errors_total',
      help: 'Policy bundles the hot-swap watcher refused (unreadable, corrupt, badly signed, not WASM, failing the smoke evaluation)',
      registers,
    });
    this.shadowBundleInfo = new Gauge({
      name: 'caracal_policy_shadow_bundle_info',
      help: 'The shadow policy bundle revision, evaluated alongside the active one and never enforced (value is always 1; no series: no shadow)',
      labelNames: ['revision'],
      registers,
    });
    this.shadowDecisions = new Counter({
      name: 'caracal_policy_shadow_decisions_total',
      help: 'Decisions the shadow bundle also made, by whether it agreed with the enforced one (agree, disagree)',
      labelNames: ['agreement'],
      registers,
    });
    this.inFlight = new Gauge({ name: 'caracal_gateway_in_flight_requests', help: 'Requests being handled', registers });
    this.clientAborts = new Counter({
      name: 'caracal_gateway_client_aborts_total',
      help: 'Requests whose client disconnected before the response was complete',
      labelNames: ['upstream'],
      registers,
    });
    this.upstreamRetries = new Counter({
      name: 'caracal_gateway_upstream_retries_total',
      help: 'Extra upstream attempts for one decision (only when an upstream sets retries > 0)',
      labelNames: ['upstream'],
      registers,
    });
    this.limited = new Counter({
      name: 'caracal_gateway_limited_total',
      help: 'Requests refused by a gateway limit (rate, concurrency, unauthenticated source rate)',
      labelNames: ['reason'],
      registers,
    });
  }
}

/** What the spool reports (src/spool), read when metrics are scraped. */
export interface SpoolGaugeSource {
  stats(): { unshippedBytes: number; unshippedRecords: number; oldestUnshippedAgeMs: number; shippedRecords: number; flushes: number; appendedRecords: number; tornRecords: number; shipErrors: number };
}

/**
 * Spool gauges on the gateway's registry, sampled from `source` at scrape time; returns the observer
 * of each group-commit flush (duration and records) for the spool's `onFlush`.
 */
export function registerSpoolMetrics(metrics: GatewayMetrics, source: SpoolGaugeSource): (seconds: number, records: number) => void {
  const registers = [metrics.registry];
  const gauge = (name: string, help: string, read: (s: ReturnType<SpoolGaugeSource['stats']>) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read(source.stats()));
      },
    });
  gauge('caracal_spool_unshipped_bytes', 'Durable decision bytes not yet acknowledged by the event log', (s) => s.unshippedBytes);
  gauge('caracal_spool_unshipped_events', 'Durable decision events not yet acknowledged by the event log', (s) => s.unshippedRecords);
  gauge('caracal_spool_oldest_unshipped_age_seconds', 'Age of the oldest event not yet shipped', (s) => s.oldestUnshippedAgeMs / 1000);
  gauge('caracal_spool_shipped_events', 'Events shipped to the event log since start', (s) => s.shippedRecords);
  gauge('caracal_spool_flushes', 'Group-commit flushes (one write + fdatasync each) since start', (s) => s.flushes);
  gauge('caracal_spool_appended_events', 'Events made durable in the spool since start', (s) => s.appendedRecords);
  gauge('caracal_spool_torn_records', 'Torn records cut off the spool at start (a crash mid-write)', (s) => s.tornRecords);
  gauge('caracal_spool_ship_errors', 'Failed shipping attempts since start (retried)', (s) => s.shipErrors);
  const flushSeconds = new Histogram({
    name: 'caracal_spool_flush_duration_seconds',
    help: 'One group-commit flush: write + fdatasync, what an allowed request waits for',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers,
  });
  const flushRecords = new Histogram({
    name: 'caracal_spool_flush_records',
    help: 'Records made durable by one flush (the group-commit batch size)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    registers,
  });
  return (seconds, records) => {
    flushSeconds.observe(seconds);
    flushRecords.observe(records);
  };
}

/** The consumers' registry (`metrics.consumersPort`): processed events, DLQ, lag, the ledger writer's tree. */
export class ConsumerMetrics {
  readonly registry = new Registry();
  readonly events: Counter<'role' | 'topic' | 'result'>;
  readonly dlqSize: Gauge<string>;
  readonly lag: Gauge<'group' | 'topic'>;
  /** The ledger writer (src/ledger/writer.ts). */
  readonly merkleBatchSize: Histogram<string>;
  readonly merkleTreeSize: Gauge<string>;
  readonly merkleCheckpointAge: Gauge<string>;
  readonly merkleVerificationFailures: Counter<string>;
  /** The metrics aggregator (src/consumers/metrics-aggregator.ts): recorded spend, in micro-units. No principal label. */
  readonly spending: Counter<'currency' | 'upstream'>;

  constructor(defaultMetrics = true) {
    if (defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'caracal_' });
    const registers = [this.registry];
    this.events = new Counter({
      name: 'caracal_consumer_events_total',
      help: 'Events handled by a consumer role, by outcome (processed, dead_lettered)',
      labelNames: ['role', 'topic', 'result'],
      registers,
    });
    this.dlqSize = new Gauge({ name: 'caracal_dlq_size', help: 'Dead-letter entries not yet redriven', registers });
    this.lag = new Gauge({ name: 'caracal_kafka_consumer_lag', help: 'Messages not yet committed by a consumer group, per topic', labelNames: ['group', 'topic'], registers });
    this.merkleBatchSize = new Histogram({
      name: 'caracal_merkle_batch_size',
      help: 'Leaves covered by one newly signed ledger checkpoint (beyond the previous one)',
      buckets: [1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
      registers,
    });
    this.merkleTreeSize = new Gauge({ name: 'caracal_merkle_tree_size', help: 'Leaves in the ledger Merkle tree', registers });
    this.merkleCheckpointAge = new Gauge({ name: 'caracal_merkle_checkpoint_age_seconds', help: 'Seconds since the newest ledger checkpoint was signed', registers });
    this.merkleVerificationFailures = new Counter({
      name: 'caracal_merkle_verification_failures_total',
      help: 'Ledger verification failures recorded in the database: by the writer before signing (nothing was signed) and by merkle verify-* commands',
      registers,
    });
    this.spending = new Counter({
      name: 'caracal_spending_total',
      help: 'Recorded spend of proxied calls in micro-units (1 unit = 1,000,000) of the currency, each metering event counted once',
      labelNames: ['currency', 'upstream'],
      registers,
    });
  }
}

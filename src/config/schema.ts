import { z } from 'zod';
import { PricingSchema } from '../metering/pricing.js';

const port = z.coerce.number().int().min(0).max(65535);
const upstreamName = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'must be lowercase letters, digits, "-" or "_"');

export const UpstreamSchema = z
  .object({
    name: upstreamName,
    url: z.url({ protocol: /^https?$/ }),
    /** Resource name the policy sees; defaults to `api:external/<name>`. */
    resource: z.string().min(1).optional(),
    /** Credentials injected on the way out; the agent never holds them. */
    credentials: z
      .object({
        header: z.string().regex(/^[A-Za-z0-9-]+$/),
        /** Name of the environment variable holding the secret (secrets never live in config files). */
        valueEnv: z.string().min(1),
        /** Optional prefix such as "Bearer ". */
        prefix: z.string().default(''),
      })
      .strict()
      .optional(),
    /** HTTP method → action; defaults map GET/HEAD/OPTIONS → read, DELETE → delete, others → write. */
    actionMap: z.record(z.string(), z.string().min(1)).optional(),
    timeoutMs: z.coerce.number().int().positive().default(30_000),
    /**
     * How the gateway reads this upstream: where the agents' SDKs put their credential, and how
     * error bodies are shaped so those SDKs show them (`openai`, `anthropic`, `mcp`, plain `http`).
     */
    dialect: z.enum(['http', 'openai', 'anthropic', 'mcp']).default('http'),
    /** Most open connections to this upstream; requests beyond it queue (one pool per upstream). */
    maxConnections: z.coerce.number().int().min(1).max(10_000).default(128),
    /**
     * Extra attempts after a failed idempotent request (GET/HEAD/OPTIONS that could not connect or
     * got 503). Off by default: one decision is one upstream call. Each attempt is counted.
     */
    retries: z.coerce.number().int().min(0).max(3).default(0),
    /**
     * What a call to this upstream costs (src/metering/pricing.ts): budgets reserve it before the call and count it
     * after. Without a price table calls are free and no budget binds them.
     */
    pricing: PricingSchema.optional(),
    /**
     * MCP upstreams only: decision events carry the argument values of tool calls and prompts (up to 16 KiB of JSON;
     * larger ones the digest only) next to their digest. Off by default: arguments can hold secrets
     * and personal data, and events are kept for good.
     */
    recordArguments: z.boolean().default(false),
  })
  .strict()
  .refine((upstream) => !upstream.recordArguments || upstream.dialect === 'mcp', { message: 'recordArguments is only for upstreams of dialect mcp', path: ['recordArguments'] });

/** A token bucket: `ratePerSecond` refills, `burst` is the bucket's size. */
const RateLimitSchema = z
  .object({
    ratePerSecond: z.coerce.number().positive().max(1_000_000),
    burst: z.coerce.number().int().min(1).max(1_000_000),
  })
  .strict();

export const GatewayLimitsSchema = z
  .object({
    /** Per authenticated principal: requests in flight at once, and a request rate. */
    perPrincipal: z
      .object({
        maxConcurrent: z.coerce.number().int().min(1).max(100_000).default(64),
        rate: RateLimitSchema.default({ ratePerSecond: 200, burst: 400 }),
      })
      .strict()
      .default({ maxConcurrent: 64, rate: { ratePerSecond: 200, burst: 400 } }),
    /** Per client address, for requests that fail authentication (each one is still recorded). */
    unauthenticatedPerSource: RateLimitSchema.default({ ratePerSecond: 20, burst: 60 }),
  })
  .strict();

export const GatewayTimeoutsSchema = z
  .object({
    /** How long an idle keep-alive connection is kept after a response. */
    keepAliveMs: z.coerce.number().int().min(100).max(600_000).default(5_000),
    /** A client must send complete request headers within this time. */
    headersMs: z.coerce.number().int().min(100).max(600_000).default(15_000),
    /** A client must send its whole request (headers and body) within this time. */
    requestMs: z.coerce.number().int().min(100).max(3_600_000).default(300_000),
    /** A socket with no traffic at all (before, between or during requests) is closed after this. */
    idleSocketMs: z.coerce.number().int().min(100).max(3_600_000).default(60_000),
  })
  .strict();

/** How a verified external identity (token claim or certificate SAN) names a Caracal principal. */
export const PrincipalMappingSchema = z
  .object({
    /** The principal's id, or its unique name. */
    by: z.enum(['id', 'name']).default('name'),
    /** A prefix stripped from the value first (e.g. "spiffe://example.org/agent/"); a value without it is refused. */
    stripPrefix: z.string().default(''),
  })
  .strict();

export const ExternalIssuerSchema = z
  .object({
    issuer: z.string().min(1),
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    jwksUrl: z.url({ protocol: /^https?$/ }),
    algorithms: z.array(z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'])).min(1).default(['RS256', 'ES256']),
    /** The claim that names the principal. */
    principalClaim: z.string().min(1).default('sub'),
    mapping: PrincipalMappingSchema.default({ by: 'name', stripPrefix: '' }),
    /** How long fetched keys are trusted before a background refresh. */
    jwksCacheSeconds: z.coerce.number().int().min(10).max(86_400).default(600),
    /** At most one refresh per this many seconds, however many unknown `kid`s arrive. */
    jwksMinRefreshSeconds: z.coerce.number().int().min(1).max(3_600).default(30),
  })
  .strict();

export const GatewayTlsSchema = z
  .object({
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    /** CA bundle that client certificates must chain to; set → mTLS is available. */
    clientCaFile: z.string().min(1).optional(),
    /** true: the TLS handshake fails without a valid client certificate. */
    requireClientCert: z.boolean().default(false),
    /** Which SAN of the client certificate names the principal. */
    principalSan: z.enum(['uri', 'dns', 'email']).default('uri'),
    mapping: PrincipalMappingSchema.default({ by: 'name', stripPrefix: '' }),
  })
  .strict();

const GATEWAY_LIMIT_DEFAULTS = {
  perPrincipal: { maxConcurrent: 64, rate: { ratePerSecond: 200, burst: 400 } },
  unauthenticatedPerSource: { ratePerSecond: 20, burst: 60 },
};
const GATEWAY_TIMEOUT_DEFAULTS = { keepAliveMs: 5_000, headersMs: 15_000, requestMs: 300_000, idleSocketMs: 60_000 };

/**
 * A c2sp.org/tlog-checkpoint origin, which is also the name of the checkpoint signing key
 * (c2sp.org/signed-note key names): one non-empty line with no spaces, no control characters and
 * no "+", by convention a schema-less URL such as `caracal.example.com/ledger`.
 */
export const LedgerOriginSchema = z
  .string()
  .min(1, 'must not be empty')
  .max(255)
  // eslint-disable-next-line no-control-regex
  .refine((v) => !/[\u0000-\u001f\u007f\s\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]/u.test(v), 'must be one line without spaces or control characters')
  .refine((v) => !v.includes('+'), 'must not contain "+" (the origin is also the signing key\'s name)')
  .refine((v) => !/\p{Cs}/u.test(v), 'must be valid Unicode (no unpaired surrogate)');

export const LedgerSchema = z
  .object({
    /** The log's identity: the first line of every checkpoint, and the signing key's name. */
    origin: LedgerOriginSchema.default('caracal.local/ledger'),
    /** PEM (PKCS#8) EC P-256 key that signs checkpoints; unset = `<home>/ledger-signing.pem`, generated (mode 0600) on first use. */
    signingKeyPath: z.string().min(1).optional(),
    /** A checkpoint is sealed in the same transaction once this many leaves are not yet in one. */
    batchMaxEvents: z.coerce.number().int().min(1).max(1_000_000).default(1_000),
    /** …or once the oldest leaf not in a checkpoint is this old (even when traffic stops). */
    batchMaxMs: z.coerce.number().int().min(10).max(3_600_000).default(1_000),
    /** A root that does not verify against the previous checkpoint freezes the sequencer (appends stop until `resumeLedger`). */
    freezeOnVerificationFailure: z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')]).default(true),
    /**
     * Serve the tree as public C2SP tiles under /ledger/<origin>/. Off by default: entry bundles are
     * the decision events themselves (principal ids, upstream URLs with their queries), readable by
     * anyone who can reach the gateway once this is on.
     */
    serveTiles: z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')]).default(false),
  })
  .strict();

const LEDGER_DEFAULTS = { origin: 'caracal.local/ledger', batchMaxEvents: 1_000, batchMaxMs: 1_000, freezeOnVerificationFailure: true, serveTiles: false };

export const ConfigSchema = z
  .object({
    /** Where the embedded default keeps its data (PGlite, keys, local state). */
    home: z.string().min(1).default('.caracal'),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    database: z
      .object({
        /** PostgreSQL URL; unset = embedded PGlite under `home`. */
        url: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL').optional(),
        /** Schema to use on PostgreSQL (tests isolate suites by schema). */
        schema: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/).default('public'),
        poolSize: z.coerce.number().int().min(1).max(500).default(10),
      })
      .strict()
      .default({ schema: 'public', poolSize: 10 }),
    kafka: z
      .object({
        /** Broker list; unset = durable event log inside the database. */
        brokers: z.array(z.string().regex(/^[^\s:]+:\d+$/, 'must be host:port')).min(1).optional(),
        clientId: z.string().min(1).default('caracal'),
        topicPrefix: z.string().regex(/^[A-Za-z0-9._-]*$/).default('caracal.'),
        /** Prefix of the consumer group ids (`<prefix>audit-logger-group`, …): separates deployments sharing a broker. */
        groupPrefix: z.string().regex(/^[A-Za-z0-9._-]*$/).default(''),
        partitions: z.coerce.number().int().min(1).max(1000).default(3),
        replicationFactor: z.coerce.number().int().min(1).max(10).default(1),
      })
      .strict()
      .default({ clientId: 'caracal', topicPrefix: 'caracal.', groupPrefix: '', partitions: 3, replicationFactor: 1 }),
    redis: z
      .object({
        /** Redis URL; unset = in-process cache. */
        url: z.string().regex(/^rediss?:\/\//, 'must be a redis:// URL').optional(),
        keyPrefix: z.string().default('caracal:'),
      })
      .strict()
      .default({ keyPrefix: 'caracal:' }),
    gateway: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: port.default(8443),
        bodyLimitBytes: z.coerce.number().int().positive().default(10 * 1024 * 1024),
        /** Largest total size of request headers accepted (Node's --max-http-header-size). */
        maxHeaderBytes: z.coerce.number().int().min(1024).max(1024 * 1024).default(16 * 1024),
        shutdownGraceMs: z.coerce.number().int().min(0).default(10_000),
        upstreams: z.array(UpstreamSchema).default([]),
        /** HTTPS (and mTLS) for agents; unset = plain HTTP (behind a TLS-terminating proxy, or local). */
        tls: GatewayTlsSchema.optional(),
        limits: GatewayLimitsSchema.default(GATEWAY_LIMIT_DEFAULTS),
        timeouts: GatewayTimeoutsSchema.default(GATEWAY_TIMEOUT_DEFAULTS),
        /** Most agent connections open at once; further connections are refused. */
        maxConnections: z.coerce.number().int().min(1).max(1_000_000).default(10_000),
        /** One JSON line per request (method, path, status, upstream, principal, decision, duration). */
        accessLog: z.boolean().default(true),
      })
      .strict()
      .default({
        host: '127.0.0.1',
        port: 8443,
        bodyLimitBytes: 10 * 1024 * 1024,
        maxHeaderBytes: 16 * 1024,
        shutdownGraceMs: 10_000,
        upstreams: [],
        limits: GATEWAY_LIMIT_DEFAULTS,
        timeouts: GATEWAY_TIMEOUT_DEFAULTS,
        maxConnections: 10_000,
        accessLog: true,
      }),
    admin: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: port.default(8444),
        /**
         * A second credential that only reads bundles (GET/HEAD of the bundle server routes): what following gateways
         * and OPAs are given, so a follower that is compromised cannot publish, activate or run any operation. From
         * CARACAL_BUNDLE_READ_TOKEN; at least 32 characters.
         */
        bundleReadToken: z.string().min(32, { message: 'must be at least 32 characters' }).optional(),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 8444 }),
    metrics: z
      .object({
        host: z.string().min(1).default('127.0.0.1'),
        port: port.default(9090),
        consumersPort: port.default(9091),
      })
      .strict()
      .default({ host: '127.0.0.1', port: 9090, consumersPort: 9091 }),
    auth: z
      .object({
        issuer: z.string().min(1).default('caracal'),
        audience: z.string().min(1).default('caracal-gateway'),
        /** PEM file of the ES256 (P-256) signing key; unset = generated under `home/keys`. */
        signingKeyPath: z.string().min(1).optional(),
        tokenTtlSeconds: z.coerce.number().int().min(1).max(86_400).default(900),
        clockSkewSeconds: z.coerce.number().int().min(0).max(300).default(30),
        verifiedTokenCacheSize: z.coerce.number().int().min(0).max(10_000_000).default(100_000),
        /** Earlier signing keys still accepted for verification until `validUntil` (key rotation overlap). */
        previousKeys: z.array(z.object({ path: z.string().min(1), validUntil: z.iso.datetime() }).strict()).default([]),
        /** Token issuers other than Caracal (an external IdP), verified against their remote JWKS. */
        externalIssuers: z.array(ExternalIssuerSchema).default([]),
      })
      .strict()
      .default({ issuer: 'caracal', audience: 'caracal-gateway', tokenTtlSeconds: 900, clockSkewSeconds: 30, verifiedTokenCacheSize: 100_000, previousKeys: [], externalIssuers: [] }),
    allowlists: z
      .object({
        /** A principal with no allowlist entry: denied (default) or allowed everywhere its policy allows. */
        whenEmpty: z.enum(['deny', 'allow']).default('deny'),
      })
      .strict()
      .default({ whenEmpty: 'deny' }),
    spool: z
      .object({
        /**
         * Decisions are made durable in a local spool on this gateway's disk (group commit) and
         * shipped to the event log in the background, instead of each request waiting for the log.
         */
        enabled: z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')]).default(true),
        /** One directory per gateway process (it is locked); default `<home>/spool`. */
        dir: z.string().min(1).optional(),
        /** Unshipped bytes at most; beyond it allows get 503 (denials are still answered). */
        maxBytes: z.coerce.number().int().min(64 * 1024).default(256 * 1024 * 1024),
        /** `/ready` fails above this share of `maxBytes`. */
        readyHighWater: z.coerce.number().min(0.1).max(1).default(0.8),
        /** Most records per shipped batch. */
        shipBatch: z.coerce.number().int().min(1).max(100_000).default(2_000),
      })
      .strict()
      .default({ enabled: true, maxBytes: 256 * 1024 * 1024, readyHighWater: 0.8, shipBatch: 2_000 }),
    ledger: LedgerSchema.default(LEDGER_DEFAULTS),
    policy: z
      .object({
        /** Bundle (tar.gz with policy.wasm) to load; unset = the committed default bundle. */
        bundlePath: z.string().min(1).optional(),
        /** Path to the `opa` binary, for bundle build / opa test. */
        opaBin: z.string().min(1).default('opa'),
        /**
         * Bundle signatures (OPA's `.signatures.json` format). With `publicKeys` set, the gateway
         * loads only bundles signed by one of them; the keys are read at start-up.
         */
        signing: z
          .object({
            /** PEM public keys (ECDSA P-256/384/521, RSA ≥ 2048 bits, Ed25519) by key id; relative paths from the working directory. */
            publicKeys: z
              .array(z.object({ keyId: z.string().min(1), path: z.string().min(1) }).strict())
              .default([])
              .refine((keys) => new Set(keys.map((k) => k.keyId)).size === keys.length, { message: 'keyId values must be unique' }),
            /** Development only: accept an unsigned bundle although keys are set (a signed one must still verify). */
            allowUnsigned: z.boolean().default(false),
          })
          .strict()
          .default({ publicKeys: [], allowUnsigned: false }),
        /**
         * Hot swap: with `intervalMs` > 0 the gateway polls `bundlePath` (mtime and size, then the
         * SHA-256 of the content) and swaps in a changed bundle once it has loaded, passed the
         * signature check and decided the smoke evaluation; a bad bundle is refused and the last
         * good one keeps serving. 0 = off.
         */
        reload: z
          .object({
            intervalMs: z.coerce
              .number()
              .int()
              .min(0)
              .max(3_600_000)
              .refine((ms) => ms === 0 || ms >= 100, { message: 'intervalMs must be 0 (off) or at least 100' })
              .default(0),
          })
          .strict()
          .default({ intervalMs: 0 }),
        /**
         * Where the gateway takes its bundle from: unset = `bundlePath` (a file); `db` = the bundle store in the
         * configured database; `dir:<path>` = a directory store; an `http(s)://` URL = a bundle server (another
         * gateway's admin listener, or any server speaking OPA's bundle service API: GET with If-None-Match).
         * With a store the gateway serves the store's *active* revision (and evaluates its *shadow* revision
         * alongside, without enforcing it), polled every `reload.intervalMs` (5 s when that is 0).
         */
        store: z
          .string()
          .min(1)
          .refine((s) => s === 'db' || s.startsWith('dir:') || /^https?:\/\//.test(s), { message: 'must be db, dir:<path> or an http(s):// URL' })
          .optional(),
        /** Bearer token for an http(s) store (a gateway's admin credential); from CARACAL_POLICY_STORE_TOKEN, never the YAML file's plain text in production. */
        storeToken: z.string().min(1).optional(),
        /**
         * The policy input recorded in each decision event, so the decision can be replayed (`bundle diff`). Values
         * under the `redact` paths (dot paths into the input; every leaf under one is replaced by "[redacted]", the
         * structure kept) are not recorded; an MCP upstream with `recordArguments: true` keeps its arguments.
         */
        recordInput: z
          .object({
            enabled: z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')]).default(true),
            redact: z
              .array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/, { message: 'a dot path such as request.arguments' }))
              .max(64)
              .default(['request.arguments']),
          })
          .strict()
          .default({ enabled: true, redact: ['request.arguments'] }),
      })
      .strict()
      .default({ opaBin: 'opa', signing: { publicKeys: [], allowUnsigned: false }, reload: { intervalMs: 0 }, recordInput: { enabled: true, redact: ['request.arguments'] } }),
  })
  .strict();

export type CaracalConfig = z.infer<typeof ConfigSchema>;
export type UpstreamConfig = z.infer<typeof UpstreamSchema>;
export type UpstreamDialect = UpstreamConfig['dialect'];
export type GatewayLimits = z.infer<typeof GatewayLimitsSchema>;
export type LedgerConfig = z.infer<typeof LedgerSchema>;

/** Environment variables and the config key each one sets. */
export const ENV_KEYS: Record<string, { path: string[]; list?: boolean }> = {
  CARACAL_HOME: { path: ['home'] },
  CARACAL_LOG_LEVEL: { path: ['logLevel'] },
  DATABASE_URL: { path: ['database', 'url'] },
  CARACAL_DB_SCHEMA: { path: ['database', 'schema'] },
  CARACAL_DB_POOL_SIZE: { path: ['database', 'poolSize'] },
  KAFKA_BROKERS: { path: ['kafka', 'brokers'], list: true },
  CARACAL_KAFKA_CLIENT_ID: { path: ['kafka', 'clientId'] },
  CARACAL_TOPIC_PREFIX: { path: ['kafka', 'topicPrefix'] },
  CARACAL_GROUP_PREFIX: { path: ['kafka', 'groupPrefix'] },
  CARACAL_KAFKA_PARTITIONS: { path: ['kafka', 'partitions'] },
  CARACAL_KAFKA_REPLICATION_FACTOR: { path: ['kafka', 'replicationFactor'] },
  REDIS_URL: { path: ['redis', 'url'] },
  CARACAL_REDIS_KEY_PREFIX: { path: ['redis', 'keyPrefix'] },
  CARACAL_GATEWAY_HOST: { path: ['gateway', 'host'] },
  CARACAL_GATEWAY_PORT: { path: ['gateway', 'port'] },
  CARACAL_ADMIN_HOST: { path: ['admin', 'host'] },
  CARACAL_ADMIN_PORT: { path: ['admin', 'port'] },
  CARACAL_BUNDLE_READ_TOKEN: { path: ['admin', 'bundleReadToken'] },
  CARACAL_METRICS_HOST: { path: ['metrics', 'host'] },
  CARACAL_METRICS_PORT: { path: ['metrics', 'port'] },
  CARACAL_CONSUMERS_METRICS_PORT: { path: ['metrics', 'consumersPort'] },
  CARACAL_SIGNING_KEY: { path: ['auth', 'signingKeyPath'] },
  CARACAL_TOKEN_ISSUER: { path: ['auth', 'issuer'] },
  CARACAL_TOKEN_AUDIENCE: { path: ['auth', 'audience'] },
  CARACAL_BUNDLE: { path: ['policy', 'bundlePath'] },
  CARACAL_SPOOL: { path: ['spool', 'enabled'] },
  CARACAL_SPOOL_DIR: { path: ['spool', 'dir'] },
  CARACAL_OPA_BIN: { path: ['policy', 'opaBin'] },
  CARACAL_POLICY_RELOAD_MS: { path: ['policy', 'reload', 'intervalMs'] },
  CARACAL_POLICY_STORE: { path: ['policy', 'store'] },
  CARACAL_POLICY_STORE_TOKEN: { path: ['policy', 'storeToken'] },
  CARACAL_POLICY_RECORD_INPUT: { path: ['policy', 'recordInput', 'enabled'] },
  CARACAL_LEDGER_ORIGIN: { path: ['ledger', 'origin'] },
  CARACAL_LEDGER_SIGNING_KEY: { path: ['ledger', 'signingKeyPath'] },
  CARACAL_LEDGER_BATCH_MAX_EVENTS: { path: ['ledger', 'batchMaxEvents'] },
  CARACAL_LEDGER_BATCH_MAX_MS: { path: ['ledger', 'batchMaxMs'] },
  CARACAL_LEDGER_FREEZE_ON_VERIFICATION_FAILURE: { path: ['ledger', 'freezeOnVerificationFailure'] },
  CARACAL_LEDGER_SERVE_TILES: { path: ['ledger', 'serveTiles'] },
};

/** Keys of the older snake_case configuration format; rejected with a pointer to the new name. */
export const RENAMED_KEYS: Record<string, string> = {
  'database.pool_size': 'database.poolSize',
  'database.max_overflow': 'database.poolSize',
  'database.read_replica_url': '(not supported yet) database.url',
  'kafka.bootstrap_servers': 'kafka.brokers',
  'kafka.topic_prefix': 'kafka.topicPrefix',
  'redis.host': 'redis.url',
  'gateway.listen_port': 'gateway.port',
  'log_level': 'logLevel',
};

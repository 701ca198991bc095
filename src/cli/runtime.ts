import { loadConfig } from '../config/load.js';
import type { CaracalConfig } from '../config/schema.js';
import { AppContext } from '../context.js';
import { pino } from 'pino';
import { CaracalError, ERROR_CATALOG, type ErrorCode } from '../errors/catalog.js';
import { runOperation, type OperationName } from '../operations/index.js';
import { HomeLock, readRuntime } from '../store/home.js';
import { migrateUp } from '../store/migrate.js';
import { topicSpecs } from '../events/topics.js';
import { createOutput, type Output } from './output.js';

export interface CliRuntime {
  out: Output;
  config(): Readonly<CaracalConfig>;
  /** Runs `fn` with a context on the configured database (locking the embedded one), then closes it. */
  withContext<T>(fn: (ctx: AppContext) => Promise<T>, options?: { migrate?: boolean }): Promise<T>;
  /** Runs an operator operation: through a running embedded gateway's admin API, else directly. */
  operation<T = unknown>(name: OperationName, args: Record<string, unknown>): Promise<T>;
}

export function createRuntime(options: { configPath?: string; out?: Output; env?: NodeJS.ProcessEnv } = {}): CliRuntime {
  let config: Readonly<CaracalConfig> | undefined;
  const runtime: CliRuntime = {
    out: options.out ?? createOutput(),
    config: () => (config ??= loadConfig({ configPath: options.configPath, env: options.env })),
    async withContext(fn, { migrate = false } = {}) {
      const cfg = runtime.config();
      const lock = cfg.database.url ? null : HomeLock.acquire(cfg.home);
      try {
        const ctx = await AppContext.fromConfig(cfg, { logger: quietLogger(cfg) });
        try {
          // The embedded default is created on first use; PostgreSQL and Kafka are prepared
          // explicitly (`db migrate up`, `kafka create-topics`), as the runbook does.
          if (migrate || !cfg.database.url) await migrateUp(ctx.db);
          if (!cfg.database.url && !cfg.kafka.brokers) await (await ctx.events()).createTopics(topicSpecs(cfg));
          return await fn(ctx);
        } finally {
          await ctx.close();
        }
      } finally {
        lock?.release();
      }
    },
    async operation<T>(name: OperationName, args: Record<string, unknown>): Promise<T> {
      const cfg = runtime.config();
      const running = cfg.database.url ? null : readRuntime(cfg.home);
      if (running) return remoteOperation<T>(running.adminUrl, running.adminToken, name, args);
      return runtime.withContext(async (ctx) => (await runOperation(ctx, name, args)) as T);
    },
  };
  return runtime;
}

/** CLI commands print results on stdout; library logs go to stderr, warnings and worse only. */
function quietLogger(cfg: CaracalConfig) {
  const level = cfg.logLevel === 'debug' || cfg.logLevel === 'trace' ? cfg.logLevel : 'warn';
  return pino({ level }, pino.destination(2));
}

async function remoteOperation<T>(adminUrl: string, token: string, name: string, args: Record<string, unknown>): Promise<T> {
  let response: Response;
  try {
    response = await fetch(`${adminUrl}/admin/v1/ops/${encodeURIComponent(name)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify(args),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    throw new CaracalError('CARACAL_DEPENDENCY', `the running gateway's admin API at ${adminUrl} did not answer: ${(err as Error).message}`);
  }
  const body = (await response.json().catch(() => ({}))) as { result?: T; error?: ErrorCode; message?: string };
  if (!response.ok) {
    throw new CaracalError(body.error && isKnown(body.error) ? body.error : 'CARACAL_INTERNAL', body.message ?? `admin API answered ${response.status}`);
  }
  return body.result as T;
}

function isKnown(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CATALOG, code);
}

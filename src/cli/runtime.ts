import { loadConfig } from '../config/load.js';
import type { CaracalConfig } from '../config/schema.js';
import { AppContext } from '../context.js';
import { pino } from 'pino';
import { CaracalError, ERROR_CATALOG, type ErrorCode } from '../errors/catalog.js';
import type { OperationName } from '../operations/index.js';
import { cliCaller, runAuditedOperation } from '../audit/admin-actions.js';
import { HomeLock, readRuntime } from '../store/home.js';
import { migrateUp } from '../store/migrate.js';
import { topicSpecs } from '../events/topics.js';
import { createOutput, type Output } from './output.js';

export interface CliRuntime {
  out: Output;
  /** The environment the CLI was started with (credentials such as CARACAL_ADMIN_TOKEN are read from it). */
  readonly env: NodeJS.ProcessEnv;
  config(): Readonly<CaracalConfig>;
  /** Runs `fn` with a context on the configured database (locking the embedded one), then closes it. */
  withContext<T>(fn: (ctx: AppContext) => Promise<T>, options?: { migrate?: boolean }): Promise<T>;
  /**
   * Runs an operator operation: through the admin API at CARACAL_ADMIN_URL when it is set, else
   * through a running embedded gateway's admin API, else directly on the database.
   */
  operation<T = unknown>(name: OperationName, args: Record<string, unknown>): Promise<T>;
}

export function createRuntime(options: { configPath?: string; out?: Output; env?: NodeJS.ProcessEnv } = {}): CliRuntime {
  let config: Readonly<CaracalConfig> | undefined;
  const env = options.env ?? process.env;
  const runtime: CliRuntime = {
    env,
    out: options.out ?? createOutput(),
    config: () => (config ??= loadConfig({ configPath: options.configPath, env })),
    async withContext(fn, { migrate = false } = {}) {
      // With CARACAL_ADMIN_URL the operator means the remote gateway; a command that opens a
      // database (db init, migrate, reset) would silently act on whatever DATABASE_URL names here.
      if (env.CARACAL_ADMIN_URL?.trim()) {
        throw new CaracalError('CARACAL_USAGE', 'this command works on a database directly, not through the admin API; unset CARACAL_ADMIN_URL to run it against the configured database');
      }
      const cfg = runtime.config();
      const lock = cfg.database.url ? null : HomeLock.acquire(cfg.home);
      try {
        const ctx = await AppContext.fromConfig(cfg, { logger: quietLogger(cfg) });
        try {
          // The embedded default is created on first use; PostgreSQL and Kafka are prepared
          // explicitly (`db migrate up`, `kafka create-topics`), as the README shows.
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
      // The remote case needs no local config: nothing here is opened.
      const target = adminTargetFromEnv(env);
      if (target) return callAdminApi<T>(target, name, args);
      const cfg = runtime.config();
      const running = cfg.database.url ? null : readRuntime(cfg.home);
      if (running) return callAdminApi<T>({ url: running.adminUrl, token: running.adminToken, source: 'runtime' }, name, args);
      return runtime.withContext(async (ctx) => (await runAuditedOperation(ctx, name, args, cliCaller())) as T);
    },
  };
  return runtime;
}

/** CLI commands print results on stdout; library logs go to stderr, warnings and worse only. */
function quietLogger(cfg: CaracalConfig) {
  const level = cfg.logLevel === 'debug' || cfg.logLevel === 'trace' ? cfg.logLevel : 'warn';
  return pino({ level }, pino.destination(2));
}

/** Where the CLI sends its operations when it does not open the database itself. */
export interface AdminTarget {
  url: string;
  token: string;
  /** Who named it, for the error messages: CARACAL_ADMIN_URL, a command's store flag (the token from CARACAL_ADMIN_TOKEN), or the running embedded gateway. */
  source: 'env' | 'flag' | 'runtime';
}

/**
 * `CARACAL_ADMIN_URL` (+ `CARACAL_ADMIN_TOKEN`): drive the gateway at that address through its
 * admin API — a remote one from a laptop, say — even when DATABASE_URL is set. Null when unset.
 */
export function adminTargetFromEnv(env: NodeJS.ProcessEnv): AdminTarget | null {
  const raw = env.CARACAL_ADMIN_URL?.trim();
  if (!raw) return null;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `CARACAL_ADMIN_URL is not a URL: ${oneLine(raw)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `CARACAL_ADMIN_URL must be an http:// or https:// URL, not ${oneLine(url.protocol)}`);
  }
  if (url.username || url.password) throw new CaracalError('CARACAL_CONFIG_INVALID', 'CARACAL_ADMIN_URL must not carry a user or password; put the credential in CARACAL_ADMIN_TOKEN');
  const token = env.CARACAL_ADMIN_TOKEN?.trim();
  if (!token) throw new CaracalError('CARACAL_CONFIG_INVALID', `CARACAL_ADMIN_URL is set but CARACAL_ADMIN_TOKEN is empty: set it to the admin credential of the gateway at ${url.origin}`);
  return { url: url.href.replace(/\/+$/, ''), token, source: 'env' };
}

export const ADMIN_CALL_TIMEOUT_MS = 30_000;

/**
 * Runs one operation through an admin API. Every failure is one catalog error with a one-line
 * message: not reachable, no answer in time, credential refused, an answer that is not Caracal's
 * JSON, or the error the API answered (its code kept, so the exit and message are the same as
 * when the CLI runs the operation itself).
 */
export async function callAdminApi<T>(target: AdminTarget, name: string, args: Record<string, unknown>, { timeoutMs = ADMIN_CALL_TIMEOUT_MS } = {}): Promise<T> {
  const where =
    target.source === 'env' ? `the admin API at ${target.url} (CARACAL_ADMIN_URL)` : target.source === 'flag' ? `the admin API at ${target.url}` : `the running gateway's admin API at ${target.url}`;
  const signal = AbortSignal.timeout(timeoutMs);
  let response: Response;
  let text: string;
  try {
    response = await fetch(`${target.url}/admin/v1/ops/${encodeURIComponent(name)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', authorization: `Bearer ${target.token}` },
      body: JSON.stringify(args),
      // A redirect is not followed: the credential is for this address only.
      redirect: 'manual',
      signal,
    });
    text = await response.text(); // under the same deadline as the request
  } catch (err) {
    if (signal.aborted) throw new CaracalError('CARACAL_DEPENDENCY', `${where} did not answer within ${formatSeconds(timeoutMs)}`, { cause: err, retriable: true });
    throw new CaracalError('CARACAL_DEPENDENCY', `${where} is not reachable (${networkReason(err)})`, { cause: err, retriable: true });
  }
  if (response.status === 401) {
    const hint = target.source !== 'runtime' ? 'check CARACAL_ADMIN_TOKEN' : 'the gateway may have restarted with a new credential; try again';
    throw new CaracalError('CARACAL_ADMIN_UNAUTHENTICATED', `${where} refused the admin credential (401): ${hint}`);
  }
  const body = parseJsonObject(text);
  const type = response.headers.get('content-type') ?? 'no content type';
  if (!body) {
    throw new CaracalError('CARACAL_DEPENDENCY', `${where} answered ${response.status} with ${oneLine(type.split(';')[0]!)}, not JSON: is that the admin listener of a Caracal gateway?`);
  }
  if (!response.ok) {
    const code = typeof body.error === 'string' && isKnown(body.error) ? body.error : undefined;
    const message = typeof body.message === 'string' ? oneLine(body.message) : `answered ${response.status}`;
    const reasons = Array.isArray(body.reasons) ? body.reasons.filter((r): r is string => typeof r === 'string').map(oneLine) : [];
    if (code) throw new CaracalError(code, message, { reasons });
    throw new CaracalError('CARACAL_DEPENDENCY', `${where} answered ${response.status}: ${message}`);
  }
  if (!Object.hasOwn(body, 'result')) throw new CaracalError('CARACAL_DEPENDENCY', `${where} answered ${response.status} without a result: is that the admin listener of a Caracal gateway?`);
  return body.result as T;
}

function parseJsonObject(text: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(text);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** fetch says only "fetch failed"; the reason (ECONNREFUSED, ENOTFOUND, a TLS error, …) is in its cause. */
function networkReason(err: unknown): string {
  let cause: unknown = err;
  while (cause instanceof Error && cause.cause instanceof Error) cause = cause.cause;
  const error = cause as NodeJS.ErrnoException & { errors?: NodeJS.ErrnoException[] };
  const code = error.code ?? error.errors?.[0]?.code;
  return oneLine(code ? `${code}` : (error.message ?? String(cause)));
}

/** Text from the other side goes into a one-line message: no control characters, bounded. */
function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex -- removing control characters is the point
  const flat = text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').replace(/\s+/g, ' ').trim();
  return flat.length > 500 ? `${flat.slice(0, 500)}…` : flat;
}

function formatSeconds(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 100) / 10} s` : `${ms} ms`;
}

function isKnown(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CATALOG, code);
}

import { createHash } from 'node:crypto';
import os from 'node:os';
import canonicalizeModule from 'canonicalize';
import type { AppContext } from '../context.js';
import { isCaracalError } from '../errors/catalog.js';
import { runOperation } from '../operations/index.js';
import { newId } from '../util/ids.js';
import { appendAuditEvents, createMonthlyPartitions } from './audit-store.js';

// The package is CommonJS with ESM-style typings: at run time the default import is the function.
type Canonicalize = (value: unknown) => string | undefined;
const canonicalize = ((canonicalizeModule as unknown as { default?: Canonicalize }).default ?? canonicalizeModule) as unknown as Canonicalize;

export const ADMIN_ACTION_TYPE = 'dev.caracal.admin.action.v1';

/** Who ran an operation and from where (schemas/events/admin.action.v1.json). */
export interface AdminCaller {
  transport: 'admin_api' | 'cli';
  actor: { kind: 'admin_token' | 'os_user'; id: string };
  origin: { address: string | null; host: string | null; request_id: string | null };
}

/** The admin credential is shared: record which one was used, never the credential itself. */
export function adminTokenActor(token: string): AdminCaller['actor'] {
  return { kind: 'admin_token', id: `sha256:${createHash('sha256').update(token).digest('hex').slice(0, 16)}` };
}

export function cliCaller(): AdminCaller {
  let user: string;
  try {
    user = os.userInfo().username || 'unknown';
  } catch {
    // No passwd entry (some containers): the uid still says something.
    user = `uid:${process.getuid?.() ?? 'unknown'}`;
  }
  return { transport: 'cli', actor: { kind: 'os_user', id: user.slice(0, 256) }, origin: { address: null, host: os.hostname().slice(0, 255), request_id: null } };
}

const ensuredMonths = new Set<string>();

/**
 * The month's audit partition must exist before its first record: rows that land in the default
 * partition would stop that month's partition from ever being created. Checked once per month per
 * process; a month whose rows already sit in the default partition stays there.
 */
export async function ensureMonthPartition(ctx: Pick<AppContext, 'db' | 'logger'>, at: Date): Promise<void> {
  const month = { year: at.getUTCFullYear(), month: at.getUTCMonth() + 1 };
  const key = `${month.year}-${month.month}`;
  if (ensuredMonths.has(key)) return;
  await createMonthlyPartitions(ctx.db, { from: month, months: 1 }).catch((err) => ctx.logger.debug({ err }, 'audit partition for this month not created'));
  ensuredMonths.add(key);
}

/** Arguments are not recorded (some carry secrets), only a digest of their canonical JSON. */
function argumentsDigest(raw: unknown): string | null {
  const text = canonicalize(raw ?? {});
  return text === undefined ? null : `sha256:${createHash('sha256').update(text).digest('hex')}`;
}

/**
 * Runs an operation and writes who ran it, what, when, from where and how it ended into the audit
 * log. The operation's own outcome is what the caller gets: a failed audit write is logged loudly
 * but does not turn a done operation into an error (it would invite a retry of something done).
 */
export async function runAuditedOperation(ctx: AppContext, name: string, raw: unknown, caller: AdminCaller): Promise<unknown> {
  const started = performance.now();
  let outcome: 'ok' | 'error' = 'ok';
  let errorCode: string | null = null;
  try {
    return await runOperation(ctx, name, raw, { actor: `${caller.actor.kind}:${caller.actor.id}` });
  } catch (err) {
    outcome = 'error';
    errorCode = isCaracalError(err) ? err.code : 'CARACAL_INTERNAL';
    throw err;
  } finally {
    const subject = typeof (raw as { principalId?: unknown })?.principalId === 'string' ? ((raw as { principalId: string }).principalId as string) : null;
    const data = {
      operation: /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name) ? name : 'invalid-name',
      transport: caller.transport,
      actor: caller.actor,
      origin: caller.origin,
      arguments_digest: argumentsDigest(raw),
      outcome,
      error_code: errorCode,
      duration_ms: Math.round(performance.now() - started),
    };
    const occurredAt = new Date();
    await ensureMonthPartition(ctx, occurredAt);
    await appendAuditEvents(ctx.db, [
      {
        eventId: newId(),
        eventType: ADMIN_ACTION_TYPE,
        source: caller.transport === 'admin_api' ? `caracal/admin/${ctx.instanceId}` : 'caracal/cli',
        subject: subject && subject.length <= 128 ? subject : null,
        occurredAt,
        requestId: caller.origin.request_id,
        actor: `${caller.actor.kind}:${caller.actor.id}`,
        origin: caller.origin.address ?? caller.origin.host,
        data,
      },
    ]).catch((err) => {
      // Before `db migrate up` there is no audit table yet (`db health-check` says so itself).
      if ((err as { code?: string }).code === '42P01') ctx.logger.debug({ operation: name }, 'no audit log table yet; admin action not recorded');
      else ctx.logger.error({ err, operation: name }, 'could not write the admin action to the audit log');
    });
  }
}

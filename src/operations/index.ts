import type { z } from 'zod';
import type { AppContext } from '../context.js';
import { CaracalError } from '../errors/catalog.js';
import { ALLOWLIST_OPERATIONS } from './allowlists.js';
import { AUDIT_OPERATIONS } from './audit.js';
import { AUDIT_QUERY_OPERATIONS } from './audit-query.js';
import { AUTHORITY_OPERATIONS } from './authority.js';
import { BUDGET_OPERATIONS } from './budgets.js';
import { BUNDLE_OPERATIONS } from './bundles.js';
import { DLQ_OPERATIONS } from './dlq.js';
import { MANDATE_OPERATIONS } from './mandates.js';
import type { Operation, OperationCaller } from './define.js';
import { SPEND_OPERATIONS } from './spend.js';
import { SYSTEM_OPERATIONS } from './system.js';

/**
 * Every operator action as one named, validated function over the AppContext. The CLI runs them
 * directly on the database, or — when a running embedded gateway owns the database — through the
 * admin API, which exposes exactly this table. One implementation, two transports.
 * Each domain keeps its operations in its own file; this table only joins them.
 */
export const OPERATIONS = {
  ...AUTHORITY_OPERATIONS,
  ...ALLOWLIST_OPERATIONS,
  ...BUDGET_OPERATIONS,
  ...SPEND_OPERATIONS,
  ...MANDATE_OPERATIONS,
  ...SYSTEM_OPERATIONS,
  ...AUDIT_OPERATIONS,
  ...AUDIT_QUERY_OPERATIONS,
  ...DLQ_OPERATIONS,
  ...BUNDLE_OPERATIONS,
} as const;

export type OperationName = keyof typeof OPERATIONS;

export function isOperationName(name: string): name is OperationName {
  return Object.hasOwn(OPERATIONS, name);
}

/** Validates raw arguments against the operation's schema; every problem names its field. */
export function parseOperationArgs(name: OperationName, raw: unknown): unknown {
  const result = OPERATIONS[name].args.safeParse(raw ?? {});
  if (!result.success) {
    const problems = result.error.issues.map((issue) =>
      issue.code === 'unrecognized_keys' ? `unknown argument(s) ${issue.keys.join(', ')}` : `${issue.path.join('.') || 'arguments'}: ${issue.message}`,
    );
    throw new CaracalError('CARACAL_VALIDATION', problems.join('; '), { reasons: problems });
  }
  return result.data;
}

export async function runOperation(ctx: AppContext, name: string, raw: unknown, caller?: OperationCaller): Promise<unknown> {
  if (!isOperationName(name)) throw new CaracalError('CARACAL_NOT_FOUND', `no operation named ${name}`);
  const args = parseOperationArgs(name, raw);
  const operation = OPERATIONS[name] as Operation<z.ZodType, unknown>;
  return operation.run(ctx, args, caller);
}

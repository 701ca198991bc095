import { z } from 'zod';
import { CaracalError } from '../../errors/catalog.js';
import type { Queryable } from '../../store/db.js';
import { newId } from '../../util/ids.js';
import { PrincipalId, findPrincipal } from './principals.js';

/** `api:external/*`, `mcp:github/**`, `api:external/echo` — a scheme, a colon, a glob path. */
const RESOURCE_PATTERN = /^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9_.*\-/]{1,255}$/;
const ACTION = /^(\*|[a-z][a-z0-9_.-]{0,63})$/;

export const CreatePolicyArgs = z
  .object({
    principalId: PrincipalId,
    resources: z
      .array(z.string().regex(RESOURCE_PATTERN, 'must look like "api:external/*" (scheme:path, glob allowed)'))
      .min(1, 'needs at least one resource pattern')
      .max(256),
    actions: z.array(z.string().regex(ACTION, 'must be a lowercase action name such as read, write, execute, or *')).min(1, 'needs at least one action').max(64),
    maxValiditySeconds: z.coerce.number().int().min(1).max(365 * 86_400),
    delegationDepth: z.coerce.number().int().min(0).max(16).default(0),
  })
  .strict();

export interface AuthorityPolicy {
  id: string;
  principalId: string;
  resources: string[];
  actions: string[];
  maxValiditySeconds: number;
  delegationDepth: number;
  active: boolean;
  createdAt: string;
}

interface PolicyRow {
  id: string;
  principal_id: string;
  resources: string[];
  actions: string[];
  max_validity_seconds: number;
  delegation_depth: number;
  active: boolean;
  created_at: Date;
}

const COLUMNS = 'id, principal_id, resources, actions, max_validity_seconds, delegation_depth, active, created_at';

function toPolicy(row: PolicyRow): AuthorityPolicy {
  return {
    id: row.id,
    principalId: row.principal_id,
    resources: row.resources,
    actions: row.actions,
    maxValiditySeconds: Number(row.max_validity_seconds),
    delegationDepth: Number(row.delegation_depth),
    active: row.active,
    createdAt: new Date(row.created_at).toISOString(),
  };
}

export async function createPolicy(db: Queryable, input: z.input<typeof CreatePolicyArgs>): Promise<AuthorityPolicy> {
  const args = CreatePolicyArgs.parse(input);
  if (!(await findPrincipal(db, args.principalId))) {
    throw new CaracalError('CARACAL_NOT_FOUND', `principal ${args.principalId} not found`);
  }
  const unique = (values: string[]) => [...new Set(values)];
  const { rows } = await db.query<PolicyRow>(
    `INSERT INTO authority_policies (id, principal_id, resources, actions, max_validity_seconds, delegation_depth)
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${COLUMNS}`,
    [newId(), args.principalId, unique(args.resources), unique(args.actions), args.maxValiditySeconds, args.delegationDepth],
  );
  return toPolicy(rows[0]!);
}

export async function listPolicies(db: Queryable, filter: { principalId?: string; activeOnly?: boolean } = {}): Promise<AuthorityPolicy[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.principalId) {
    params.push(PrincipalId.parse(filter.principalId));
    where.push(`principal_id = $${params.length}`);
  }
  if (filter.activeOnly) where.push('active');
  const sql = `SELECT ${COLUMNS} FROM authority_policies ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id`;
  const { rows } = await db.query<PolicyRow>(sql, params);
  return rows.map(toPolicy);
}

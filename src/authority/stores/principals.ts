import { z } from 'zod';
import { CaracalError } from '../../errors/catalog.js';
import type { Queryable } from '../../store/db.js';
import { newId } from '../../util/ids.js';

export const PrincipalStatus = z.enum(['active', 'suspended']);
export type PrincipalStatus = z.infer<typeof PrincipalStatus>;

export interface Principal {
  id: string;
  kind: 'agent' | 'service' | 'user';
  name: string;
  description: string;
  owner: string;
  parentId: string | null;
  status: PrincipalStatus;
  createdAt: string;
  updatedAt: string;
}

export const RegisterPrincipalArgs = z
  .object({
    // eslint-disable-next-line no-control-regex -- matching control characters is the point: they are refused
    name: z.string().trim().min(1, 'is required').max(128).regex(/^[^\u0000-\u001f\u007f]+$/, 'must not contain control characters'),
    description: z.string().max(1024).default(''),
    // eslint-disable-next-line no-control-regex -- matching control characters is the point: they are refused
    owner: z.string().trim().min(1, 'is required').max(256).regex(/^[^\u0000-\u001f\u007f]+$/, 'must not contain control characters'),
    kind: z.enum(['agent', 'service', 'user']).default('agent'),
    parentId: z.string().min(1).max(64).optional(),
  })
  .strict();

export const PrincipalId = z.string().trim().min(1, 'is required').max(64).regex(/^[A-Za-z0-9-]+$/, 'is not a valid principal id');

interface PrincipalRow {
  id: string;
  kind: Principal['kind'];
  name: string;
  description: string;
  owner: string;
  parent_id: string | null;
  status: PrincipalStatus;
  created_at: Date;
  updated_at: Date;
}

const COLUMNS = 'id, kind, name, description, owner, parent_id, status, created_at, updated_at';

function toPrincipal(row: PrincipalRow): Principal {
  return {
    id: row.id,
    kind: row.kind,
    name: row.name,
    description: row.description,
    owner: row.owner,
    parentId: row.parent_id,
    status: row.status,
    createdAt: new Date(row.created_at).toISOString(),
    updatedAt: new Date(row.updated_at).toISOString(),
  };
}

export async function registerPrincipal(db: Queryable, input: z.input<typeof RegisterPrincipalArgs>): Promise<Principal> {
  const args = RegisterPrincipalArgs.parse(input);
  if (args.parentId && !(await findPrincipal(db, args.parentId))) {
    throw new CaracalError('CARACAL_NOT_FOUND', `parent principal ${args.parentId} does not exist`);
  }
  try {
    const { rows } = await db.query<PrincipalRow>(
      `INSERT INTO principals (id, kind, name, description, owner, parent_id) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${COLUMNS}`,
      [newId(), args.kind, args.name, args.description, args.owner, args.parentId ?? null],
    );
    return toPrincipal(rows[0]!);
  } catch (err) {
    if (err instanceof CaracalError && err.code === 'CARACAL_CONFLICT') {
      throw new CaracalError('CARACAL_CONFLICT', `a principal named "${args.name}" already exists`);
    }
    throw err;
  }
}

export async function findPrincipal(db: Queryable, id: string): Promise<Principal | null> {
  const { rows } = await db.query<PrincipalRow>(`SELECT ${COLUMNS} FROM principals WHERE id = $1`, [id]);
  return rows[0] ? toPrincipal(rows[0]) : null;
}

export async function getPrincipal(db: Queryable, id: string): Promise<Principal> {
  const principal = await findPrincipal(db, PrincipalId.parse(id));
  if (!principal) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${id} not found`);
  return principal;
}

export async function listPrincipals(db: Queryable, filter: { status?: PrincipalStatus } = {}): Promise<Principal[]> {
  const { rows } = filter.status
    ? await db.query<PrincipalRow>(`SELECT ${COLUMNS} FROM principals WHERE status = $1 ORDER BY created_at, id`, [filter.status])
    : await db.query<PrincipalRow>(`SELECT ${COLUMNS} FROM principals ORDER BY created_at, id`);
  return rows.map(toPrincipal);
}

export async function setPrincipalStatus(db: Queryable, id: string, status: PrincipalStatus): Promise<Principal> {
  const { rows } = await db.query<PrincipalRow>(
    `UPDATE principals SET status = $2, updated_at = now() WHERE id = $1 RETURNING ${COLUMNS}`,
    [PrincipalId.parse(id), status],
  );
  if (!rows[0]) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${id} not found`);
  return toPrincipal(rows[0]);
}

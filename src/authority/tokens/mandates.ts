import { SignJWT } from 'jose';
import { z } from 'zod';
import { CaracalError } from '../../errors/catalog.js';
import { BUDGET_WINDOWS, parseAmount, parseCurrency, parseWindow, type BudgetWindow } from '../../metering/money.js';
import type { Queryable } from '../../store/db.js';
import { newId } from '../../util/ids.js';
import type { SigningKey } from './keys.js';
import { listPolicies, type AuthorityPolicy } from '../stores/policies.js';
import { PrincipalId, findPrincipal } from '../stores/principals.js';
import { scopeExcess, type Scope } from './scope.js';
import type { MandateBudgetClaim, TokenSettings, VerifiedToken } from './tokens.js';

/**
 * Mandates (docs/architecture.md, "The authority model"): ES256 JWTs with a scope, issued under a principal's authority policy,
 * delegated along a tree in which scope and time only narrow and depth is bounded by the root's
 * policy. Every mandate is also a row, so revocation (with its descendants) reaches gateways and
 * the whole chain can be checked on every call.
 */
const ResourcePattern = z.string().regex(/^[a-z][a-z0-9_-]{0,31}:[A-Za-z0-9_.*\-/]{1,255}$/, 'must look like "api:external/*"');
const Action = z.string().regex(/^(\*|[a-z][a-z0-9_.-]{0,63})$/, 'must be a lowercase action name or *');

export const IssueMandateArgs = z
  .object({
    principalId: PrincipalId,
    resources: z.array(ResourcePattern).min(1).max(256),
    actions: z.array(Action).min(1).max(64),
    validitySeconds: z.coerce.number().int().min(1).max(365 * 86_400),
  })
  .strict();

/**
 * A delegated mandate's own spending budget, as the delegator states it: the limit as decimal text
 * (never a JSON number: binary floats), a UTC calendar window and an ISO 4217 currency (default
 * USD). Plain strings here; `parseMandateBudget` checks them with src/metering/money.ts, so every
 * refusal is one clear CARACAL_VALIDATION line naming its field.
 */
export const MandateBudgetArgs = z
  .object({
    limit: z.string({ error: 'must be a decimal string such as "5.00" (JSON numbers are refused: they are binary floats)' }).max(64),
    window: z.string({ error: `must be one of ${BUDGET_WINDOWS.join(', ')}` }).max(64),
    currency: z.string({ error: 'must be an ISO 4217 currency code such as "USD"' }).max(64).default('USD'),
  })
  .strict();

/** A mandate's own budget: integer micro-units per UTC calendar window, in an ISO 4217 currency. */
export interface MandateBudget {
  limitMicros: number;
  window: BudgetWindow;
  currency: string;
}

/**
 * The budget a delegator asked for, checked (positive, at most 6 decimals and MAX_AMOUNT_MICROS, a
 * known window and currency), or null when none was; CARACAL_VALIDATION naming `budget.<field>`.
 */
export function parseMandateBudget(input: z.input<typeof MandateBudgetArgs> | null | undefined): MandateBudget | null {
  if (input === null || input === undefined) return null;
  const args = MandateBudgetArgs.parse(input);
  const limitMicros = parseAmount(args.limit, 'budget.limit');
  let window: BudgetWindow;
  try {
    window = parseWindow(args.window);
  } catch (err) {
    // parseWindow names the field "window"; here it is the budget's.
    throw new CaracalError('CARACAL_VALIDATION', `budget.${(err as Error).message}`, { cause: err });
  }
  const currency = parseCurrency(args.currency, 'budget.currency');
  return { limitMicros, window, currency };
}

export const DelegateMandateArgs = z
  .object({
    /**
     * The parent mandate itself. Here an operator presents it; at the gateway, holding a delegated
     * mandate proves nothing (its delegator holds it too), so the route also requires the subject's
     * own credential (src/gateway/mandate-binding.ts).
     */
    parentToken: z.string().min(1).max(8192),
    parentId: z.string().min(1).max(64),
    principalId: PrincipalId,
    resources: z.array(ResourcePattern).min(1).max(256),
    actions: z.array(Action).min(1).max(64),
    validitySeconds: z.coerce.number().int().min(1).max(365 * 86_400),
    /** Optional: the delegate spends against it and against every ancestor's. */
    budget: MandateBudgetArgs.nullish(),
  })
  .strict();

export interface Mandate {
  id: string;
  principalId: string;
  parentId: string | null;
  rootId: string;
  policyId: string;
  depth: number;
  resources: string[];
  actions: string[];
  notBefore: string;
  expiresAt: string;
  revokedAt: string | null;
  /** Its own spending budget (delegated mandates only; set at delegation), or null. */
  budget: MandateBudget | null;
}

export interface IssuedMandate extends Mandate {
  token: string;
}

interface MandateRow {
  id: string;
  principal_id: string;
  parent_id: string | null;
  root_id: string;
  policy_id: string;
  depth: number;
  resources: string[];
  actions: string[];
  not_before: Date;
  expires_at: Date;
  revoked_at: Date | null;
  /** int8 arrives as text from both drivers. */
  budget_limit_micros: string | number | null;
  budget_window: BudgetWindow | null;
  budget_currency: string | null;
}

const COLUMNS =
  'id, principal_id, parent_id, root_id, policy_id, depth, resources, actions, not_before, expires_at, revoked_at, budget_limit_micros, budget_window, budget_currency';

function toMandate(row: MandateRow): Mandate {
  return {
    id: row.id,
    principalId: row.principal_id,
    parentId: row.parent_id,
    rootId: row.root_id,
    policyId: row.policy_id,
    depth: Number(row.depth),
    resources: row.resources,
    actions: row.actions,
    notBefore: new Date(row.not_before).toISOString(),
    expiresAt: new Date(row.expires_at).toISOString(),
    revokedAt: row.revoked_at ? new Date(row.revoked_at).toISOString() : null,
    budget:
      row.budget_limit_micros === null || row.budget_window === null || row.budget_currency === null
        ? null
        : { limitMicros: Number(row.budget_limit_micros), window: row.budget_window, currency: row.budget_currency },
  };
}

const unique = (values: string[]) => [...new Set(values)];
const seconds = (iso: string) => Math.floor(Date.parse(iso) / 1000);

/** An ancestor as the token lists it: its id, its subject and its own budget (absent when none). */
type ChainLink = { id: string; sub: string; budget?: MandateBudgetClaim };

/** The `budget` claim: snake_case like the other claims. */
function budgetClaim(budget: MandateBudget): MandateBudgetClaim {
  return { limit_micros: budget.limitMicros, window: budget.window, currency: budget.currency };
}

async function sign(key: SigningKey, settings: TokenSettings, m: Mandate, chain: ChainLink[]): Promise<string> {
  return new SignJWT({
    scope: { resources: m.resources, actions: m.actions },
    parent: m.parentId,
    depth: m.depth,
    root: m.rootId,
    policy: m.policyId,
    chain,
    ...(m.budget ? { budget: budgetClaim(m.budget) } : {}),
  })
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: key.kid })
    .setIssuer(settings.issuer)
    .setAudience(settings.audience)
    .setSubject(m.principalId)
    .setJti(m.id)
    .setIssuedAt(seconds(m.notBefore))
    .setNotBefore(seconds(m.notBefore))
    .setExpirationTime(seconds(m.expiresAt))
    .sign(key.privateKey);
}

async function insert(db: Queryable, m: Mandate): Promise<Mandate> {
  const { rows } = await db.query<MandateRow>(
    `INSERT INTO mandates (id, principal_id, parent_id, root_id, policy_id, depth, resources, actions, not_before, expires_at, budget_limit_micros, budget_window, budget_currency)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING ${COLUMNS}`,
    [m.id, m.principalId, m.parentId, m.rootId, m.policyId, m.depth, m.resources, m.actions, m.notBefore, m.expiresAt, m.budget?.limitMicros ?? null, m.budget?.window ?? null, m.budget?.currency ?? null],
  );
  return toMandate(rows[0]!);
}

/** The principal, which must exist and be active (else NOT_FOUND / PRINCIPAL_SUSPENDED). */
export async function activePrincipal(db: Queryable, id: string, role: string) {
  const principal = await findPrincipal(db, id);
  if (!principal) throw new CaracalError('CARACAL_NOT_FOUND', `${role} principal ${id} not found`);
  if (principal.status !== 'active') throw new CaracalError('CARACAL_PRINCIPAL_SUSPENDED', `${role} principal ${id} is suspended`);
  return principal;
}

function describeExcess(excess: { resources: string[]; actions: string[] }): string {
  return [excess.resources.length ? `resources ${excess.resources.join(', ')}` : '', excess.actions.length ? `actions ${excess.actions.join(', ')}` : ''].filter(Boolean).join(' and ');
}

/** A root mandate, bounded by one of the principal's active policies (scope and max validity). */
export async function issueMandate(db: Queryable, key: SigningKey, settings: TokenSettings, input: z.input<typeof IssueMandateArgs>, now = new Date()): Promise<IssuedMandate> {
  const args = IssueMandateArgs.parse(input);
  await activePrincipal(db, args.principalId, 'the');
  const policies = await listPolicies(db, { principalId: args.principalId, activeOnly: true });
  if (policies.length === 0) throw new CaracalError('CARACAL_POLICY_DENIED', `principal ${args.principalId} has no authority policy`, { reasons: ['no_policy'] });
  const scope: Scope = { resources: unique(args.resources), actions: unique(args.actions) };
  const covering = policies.find((p) => {
    const excess = scopeExcess(scope, p);
    return excess.resources.length === 0 && excess.actions.length === 0;
  });
  if (!covering) {
    const excess = scopeExcess(scope, policies[0]!);
    throw new CaracalError('CARACAL_POLICY_DENIED', `the requested scope exceeds the principal's authority policy (${describeExcess(excess) || 'no single policy covers it'})`, { reasons: ['scope_exceeds_policy'] });
  }
  if (args.validitySeconds > covering.maxValiditySeconds) {
    throw new CaracalError('CARACAL_POLICY_DENIED', `validity ${args.validitySeconds}s exceeds the policy's max-validity ${covering.maxValiditySeconds}s`, { reasons: ['validity_exceeds_policy'] });
  }
  const id = newId();
  const nbf = Math.floor(now.getTime() / 1000);
  const mandate = await insert(db, {
    id,
    principalId: args.principalId,
    parentId: null,
    rootId: id,
    policyId: covering.id,
    depth: 0,
    ...scope,
    notBefore: new Date(nbf * 1000).toISOString(),
    expiresAt: new Date((nbf + args.validitySeconds) * 1000).toISOString(),
    revokedAt: null,
    budget: null,
  });
  return { ...mandate, token: await sign(key, settings, mandate, []) };
}

export async function findMandate(db: Queryable, id: string): Promise<Mandate | null> {
  const { rows } = await db.query<MandateRow>(`SELECT ${COLUMNS} FROM mandates WHERE id = $1`, [id]);
  return rows[0] ? toMandate(rows[0]) : null;
}

/** The mandate and its ancestors, leaf first; null when any link is missing. */
export async function loadChain(db: Queryable, id: string, maxDepth = 64): Promise<Mandate[] | null> {
  const chain: Mandate[] = [];
  let next: string | null = id;
  while (next) {
    if (chain.length > maxDepth) return null;
    const link = await findMandate(db, next);
    if (!link) return null;
    chain.push(link);
    next = link.parentId;
  }
  return chain;
}

/**
 * A child mandate. `verifiedParent` is the parent mandate, already verified; the caller has already
 * established who may delegate it (an operator, or at the gateway the parent's subject proved by
 * its own credential: possession alone does not, as the delegator of a mandate holds it too).
 * Scope and time only narrow, the depth stays within the root policy's delegation depth, and no
 * link of the chain may be revoked or expired. The URLs a delegate reaches narrow too: the gateway
 * checks every ancestor's allowlist on each call. A budget only adds a limit: the delegate spends
 * against its own (when given) and every ancestor's, so any budget may be set whatever the parent's.
 * The child's token carries its budget, and its chain every ancestor's (each link taken from the
 * parent's own signed claims), so the whole chain's budgets are known without a database read.
 */
export async function delegateMandate(
  db: Queryable,
  key: SigningKey,
  settings: TokenSettings,
  verifiedParent: VerifiedToken,
  input: Omit<z.input<typeof DelegateMandateArgs>, 'parentToken'>,
  now = new Date(),
): Promise<IssuedMandate> {
  const args = DelegateMandateArgs.omit({ parentToken: true }).parse(input);
  // Checked before anything is read or written: a bad value is reported as such, and nothing is stored.
  const budget = parseMandateBudget(args.budget);
  if (verifiedParent.tokenId !== args.parentId) {
    throw new CaracalError('CARACAL_POLICY_DENIED', 'the parent token is not the mandate named by --parent', { reasons: ['mandate_parent_mismatch'] });
  }
  if (!verifiedParent.mandate) throw new CaracalError('CARACAL_POLICY_DENIED', 'the parent token is not a mandate', { reasons: ['mandate_required'] });
  const chain = await loadChain(db, args.parentId);
  if (!chain) throw new CaracalError('CARACAL_POLICY_DENIED', `mandate ${args.parentId} is not known`, { reasons: ['mandate_unknown'] });
  const parent = chain[0]!;
  if (parent.principalId !== verifiedParent.principalId) {
    throw new CaracalError('CARACAL_POLICY_DENIED', 'only the subject of the parent mandate may delegate it', { reasons: ['mandate_subject_mismatch'] });
  }
  const nowSeconds = Math.floor(now.getTime() / 1000);
  for (const link of chain) {
    if (link.revokedAt) throw new CaracalError('CARACAL_POLICY_DENIED', `mandate ${link.id} in the chain is revoked`, { reasons: ['mandate_revoked'] });
    if (seconds(link.expiresAt) <= nowSeconds) throw new CaracalError('CARACAL_POLICY_DENIED', `mandate ${link.id} in the chain has expired`, { reasons: ['mandate_expired'] });
    await activePrincipal(db, link.principalId, 'a delegating');
  }
  const rootPolicy: AuthorityPolicy | undefined = (await listPolicies(db, { principalId: chain[chain.length - 1]!.principalId, activeOnly: true })).find((p) => p.id === parent.policyId);
  if (!rootPolicy) throw new CaracalError('CARACAL_POLICY_DENIED', "the root mandate's authority policy is no longer active", { reasons: ['no_policy'] });
  if (parent.depth + 1 > rootPolicy.delegationDepth) {
    throw new CaracalError('CARACAL_POLICY_DENIED', `delegation depth ${parent.depth + 1} exceeds the root policy's delegation depth ${rootPolicy.delegationDepth}`, { reasons: ['delegation_depth'] });
  }
  const scope: Scope = { resources: unique(args.resources), actions: unique(args.actions) };
  const excess = scopeExcess(scope, parent);
  if (excess.resources.length > 0 || excess.actions.length > 0) {
    throw new CaracalError('CARACAL_POLICY_DENIED', `delegation may only narrow the parent's scope: ${describeExcess(excess)} not within it`, { reasons: ['scope_widening'] });
  }
  if (nowSeconds + args.validitySeconds > seconds(parent.expiresAt)) {
    throw new CaracalError('CARACAL_POLICY_DENIED', `the child would outlive its parent (parent expires ${parent.expiresAt})`, { reasons: ['validity_exceeds_parent'] });
  }
  await activePrincipal(db, args.principalId, 'the delegate');
  const mandate = await insert(db, {
    id: newId(),
    principalId: args.principalId,
    parentId: parent.id,
    rootId: parent.rootId,
    policyId: parent.policyId,
    depth: parent.depth + 1,
    ...scope,
    notBefore: new Date(Math.max(nowSeconds, seconds(parent.notBefore)) * 1000).toISOString(),
    expiresAt: new Date((nowSeconds + args.validitySeconds) * 1000).toISOString(),
    revokedAt: null,
    budget,
  });
  const parentBudget = verifiedParent.mandate.budget;
  const links: ChainLink[] = [...verifiedParent.mandate.chain, { id: parent.id, sub: parent.principalId, ...(parentBudget ? { budget: parentBudget } : {}) }];
  return { ...mandate, token: await sign(key, settings, mandate, links) };
}

/** Revokes a mandate, and with `cascade` every descendant too; returns the ids newly revoked. */
export async function revokeMandate(db: Queryable, id: string, cascade: boolean, reason = ''): Promise<string[]> {
  const mandate = await findMandate(db, id);
  if (!mandate) throw new CaracalError('CARACAL_NOT_FOUND', `mandate ${id} not found`);
  const sql = cascade
    ? `WITH RECURSIVE tree AS (SELECT id FROM mandates WHERE id = $1 UNION ALL SELECT m.id FROM mandates m JOIN tree t ON m.parent_id = t.id)
       UPDATE mandates SET revoked_at = now(), revoked_reason = $2 WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL RETURNING id`
    : `UPDATE mandates SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id`;
  const { rows } = await db.query<{ id: string }>(sql, [id, reason]);
  return rows.map((r) => r.id);
}

export async function listMandates(db: Queryable, filter: { principalId?: string } = {}): Promise<Mandate[]> {
  const { rows } = filter.principalId
    ? await db.query<MandateRow>(`SELECT ${COLUMNS} FROM mandates WHERE principal_id = $1 ORDER BY created_at, id`, [PrincipalId.parse(filter.principalId)])
    : await db.query<MandateRow>(`SELECT ${COLUMNS} FROM mandates ORDER BY created_at, id`);
  return rows.map(toMandate);
}

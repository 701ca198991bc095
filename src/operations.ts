import { z } from 'zod';
import { AuthorityFacts } from './authority/facts.js';
import { CreatePolicyArgs, createPolicy, listPolicies } from './authority/policies.js';
import { PrincipalId, PrincipalStatus, RegisterPrincipalArgs, getPrincipal, listPrincipals, registerPrincipal, setPrincipalStatus } from './authority/principals.js';
import { issueAccessToken } from './authority/tokens.js';
import type { AppContext } from './context.js';
import { CaracalError } from './errors/catalog.js';
import { appliedVersions, listMigrations } from './store/migrate.js';
import { topicSpecs } from './events/topics.js';

/**
 * Every operator action as one named, validated function over the AppContext. The CLI runs them
 * directly on the database, or — when a running embedded gateway owns the database — through the
 * admin API, which exposes exactly this table. One implementation, two transports.
 */
interface Operation<Schema extends z.ZodType, Result> {
  description: string;
  args: Schema;
  run(ctx: AppContext, args: z.infer<Schema>): Promise<Result>;
}

function op<Schema extends z.ZodType, Result>(definition: Operation<Schema, Result>): Operation<Schema, Result> {
  return definition;
}

const ById = z.object({ id: PrincipalId }).strict();

async function announced<T>(ctx: AppContext, result: T, data: Parameters<AppContext['announce']>[0]): Promise<T> {
  try {
    await ctx.announce(data);
  } catch (err) {
    // Saved, but gateways were not told: say so, and fail the command so scripts notice.
    throw new CaracalError('CARACAL_EVENTS_UNAVAILABLE', `saved, but the change could not be announced to gateways: ${(err as Error).message}`, { cause: err, retriable: true });
  }
  return result;
}

export const OPERATIONS = {
  'agent.register': op({
    description: 'Register a principal (agent, service or user)',
    args: RegisterPrincipalArgs,
    run: async (ctx, args) => {
      const principal = await registerPrincipal(ctx.db, args);
      return announced(ctx, principal, { entity: 'principal', action: 'registered', principal_id: principal.id, entity_id: principal.id, attributes: {} });
    },
  }),
  'agent.list': op({
    description: 'List principals',
    args: z.object({ status: PrincipalStatus.optional() }).strict(),
    run: (ctx, args) => listPrincipals(ctx.db, args),
  }),
  'agent.get': op({
    description: 'Show one principal with its authority policies',
    args: ById,
    run: async (ctx, { id }) => ({ ...(await getPrincipal(ctx.db, id)), policies: await listPolicies(ctx.db, { principalId: id }) }),
  }),
  'agent.suspend': op({
    description: 'Suspend a principal: every request it makes is denied',
    args: ById,
    run: async (ctx, { id }) => {
      const principal = await setPrincipalStatus(ctx.db, id, 'suspended');
      return announced(ctx, principal, { entity: 'principal', action: 'suspended', principal_id: id, entity_id: id, attributes: {} });
    },
  }),
  'agent.resume': op({
    description: 'Resume a suspended principal',
    args: ById,
    run: async (ctx, { id }) => {
      const principal = await setPrincipalStatus(ctx.db, id, 'active');
      return announced(ctx, principal, { entity: 'principal', action: 'resumed', principal_id: id, entity_id: id, attributes: {} });
    },
  }),
  'policy.create': op({
    description: "Create an authority policy for a principal",
    args: CreatePolicyArgs,
    run: async (ctx, args) => {
      const policy = await createPolicy(ctx.db, args);
      return announced(ctx, policy, { entity: 'policy', action: 'created', principal_id: policy.principalId, entity_id: policy.id, attributes: {} });
    },
  }),
  'policy.list': op({
    description: 'List authority policies',
    args: z.object({ principalId: PrincipalId.optional() }).strict(),
    run: (ctx, args) => listPolicies(ctx.db, args),
  }),
  'token.issue': op({
    description: 'Mint a short-lived ES256 access token for an active principal',
    args: z.object({ principalId: PrincipalId, ttlSeconds: z.coerce.number().int().min(1).max(86_400).optional() }).strict(),
    run: async (ctx, { principalId, ttlSeconds }) => {
      const facts = await new AuthorityFacts(ctx.db, ctx.logger).get(principalId);
      if (!facts) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${principalId} not found`);
      if (facts.principal.status !== 'active') throw new CaracalError('CARACAL_PRINCIPAL_SUSPENDED', `principal ${principalId} is suspended`);
      return issueAccessToken(await ctx.signingKey(), ctx.tokenSettings, principalId, ttlSeconds ?? ctx.config.auth.tokenTtlSeconds);
    },
  }),
  'kafka.create-topics': op({
    description: 'Create the Caracal topics (idempotent)',
    args: z
      .object({
        partitions: z.coerce.number().int().min(1).max(1000).optional(),
        replicationFactor: z.coerce.number().int().min(1).max(10).optional(),
      })
      .strict(),
    run: async (ctx, { partitions, replicationFactor }) => {
      const specs = topicSpecs(ctx.config).map((spec) => ({
        ...spec,
        ...(partitions !== undefined ? { partitions } : {}),
        ...(replicationFactor !== undefined ? { replicationFactor } : {}),
      }));
      const events = await ctx.events();
      await events.createTopics(specs);
      return { backend: events.kind, topics: specs };
    },
  }),
  'kafka.consumer-lag': op({
    description: 'Committed vs end offset per partition of the Caracal topics for a consumer group',
    args: z.object({ consumerGroup: z.string().min(1).max(255).regex(/^[A-Za-z0-9._-]+$/, 'must be letters, digits, ".", "_" or "-"') }).strict(),
    run: async (ctx, { consumerGroup }) => (await ctx.events()).consumerLag(consumerGroup, Object.values(ctx.topics)),
  }),
  'db.health-check': op({
    description: 'Check the database: reachable, latency, migrations applied',
    args: z.object({}).strict(),
    run: async (ctx) => {
      const started = performance.now();
      await ctx.db.ping();
      const latencyMs = Math.round((performance.now() - started) * 100) / 100;
      const applied = await appliedVersions(ctx.db);
      const pending = listMigrations().filter((m) => !applied.includes(m.version)).map((m) => m.version);
      return { ok: pending.length === 0, backend: ctx.db.kind, latencyMs, applied: applied.length, pending };
    },
  }),
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

export async function runOperation(ctx: AppContext, name: string, raw: unknown): Promise<unknown> {
  if (!isOperationName(name)) throw new CaracalError('CARACAL_NOT_FOUND', `no operation named ${name}`);
  const args = parseOperationArgs(name, raw);
  const operation = OPERATIONS[name] as Operation<z.ZodType, unknown>;
  return operation.run(ctx, args);
}

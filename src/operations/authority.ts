import { z } from 'zod';
import { activePrincipal } from '../authority/tokens/mandates.js';
import { CreatePolicyArgs, createPolicy, listPolicies } from '../authority/stores/policies.js';
import { PrincipalId, PrincipalStatus, RegisterPrincipalArgs, getPrincipal, listPrincipals, registerPrincipal, setPrincipalStatus } from '../authority/stores/principals.js';
import { issueAccessToken } from '../authority/tokens/tokens.js';
import { announced, op } from './define.js';

const ById = z.object({ id: PrincipalId }).strict();

/** Principals, authority policies and access tokens. */
export const AUTHORITY_OPERATIONS = {

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
      await activePrincipal(ctx.db, principalId, 'the');
      return issueAccessToken(await ctx.signingKey(), ctx.tokenSettings, principalId, ttlSeconds ?? ctx.config.auth.tokenTtlSeconds);
    },
  }),
};

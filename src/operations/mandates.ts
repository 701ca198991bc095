import { z } from 'zod';
import { GLOBAL, listEmergencyStops, resumeEmergency, stopEmergency } from '../authority/views/emergency.js';
import { DelegateMandateArgs, IssueMandateArgs, delegateMandate, issueMandate, listMandates, revokeMandate } from '../authority/tokens/mandates.js';
import { PrincipalId, getPrincipal } from '../authority/stores/principals.js';
import { TokenVerifier } from '../authority/tokens/tokens.js';
import { CaracalError } from '../errors/catalog.js';
import { announced, op } from './define.js';

const MandateId = z.string().trim().min(1).max(64).regex(/^[A-Za-z0-9-]+$/, 'is not a valid mandate id');

/** Mandates (issue, delegate, revoke) and the emergency stop. */
export const MANDATE_OPERATIONS = {
  'mandate.issue': op({
    description: "Issue a root mandate bounded by the principal's authority policy",
    args: IssueMandateArgs,
    run: async (ctx, args) => issueMandate(ctx.db, await ctx.signingKey(), ctx.tokenSettings, args),
  }),
  'mandate.delegate': op({
    description:
      'Delegate a narrower mandate to another principal, optionally with its own budget (limit, window, currency); only the holder of the parent mandate (its subject) can',
    args: DelegateMandateArgs,
    run: async (ctx, { parentToken, ...args }) => {
      // Holding the parent mandate is the proof of being its subject: verify it like a gateway would.
      const parent = await new TokenVerifier(await ctx.keyRing(), ctx.tokenSettings).verify(parentToken);
      return delegateMandate(ctx.db, await ctx.signingKey(), ctx.tokenSettings, parent, args);
    },
  }),
  'mandate.revoke': op({
    description: 'Revoke a mandate (with cascade: and all its descendants); every gateway denies it within a second',
    args: z.object({ mandateId: MandateId, cascade: z.boolean().default(false), reason: z.string().max(512).default('') }).strict(),
    run: async (ctx, { mandateId, cascade, reason }) => {
      const revoked = await revokeMandate(ctx.db, mandateId, cascade, reason);
      return announced(ctx, { revoked }, { entity: 'mandate', action: 'revoked', principal_id: null, entity_id: mandateId, attributes: { ids: revoked } });
    },
  }),
  'mandate.list': op({
    description: 'List mandates',
    args: z.object({ principalId: PrincipalId.optional() }).strict(),
    run: (ctx, args) => listMandates(ctx.db, args),
  }),
  'emergency.stop': op({
    description: 'Emergency stop: deny everything (or everything of one principal, and its delegates) until resumed',
    args: z.object({ principalId: PrincipalId.optional(), reason: z.string().max(512).default('') }).strict(),
    run: async (ctx, { principalId, reason }) => {
      if (principalId) await getPrincipal(ctx.db, principalId);
      const stop = await stopEmergency(ctx.db, principalId ?? GLOBAL, reason);
      return announced(ctx, stop, { entity: 'emergency', action: 'stopped', principal_id: principalId ?? null, entity_id: stop.scope, attributes: {} });
    },
  }),
  'emergency.resume': op({
    description: 'Lift an emergency stop (global, or of one principal)',
    args: z.object({ principalId: PrincipalId.optional() }).strict(),
    run: async (ctx, { principalId }) => {
      const scope = principalId ?? GLOBAL;
      if (!(await resumeEmergency(ctx.db, scope))) throw new CaracalError('CARACAL_NOT_FOUND', `no emergency stop in force for ${principalId ? `principal ${principalId}` : 'everything'}`);
      return announced(ctx, { resumed: scope }, { entity: 'emergency', action: 'resumed', principal_id: principalId ?? null, entity_id: scope, attributes: {} });
    },
  }),
  'emergency.status': op({
    description: 'Emergency stops in force',
    args: z.object({}).strict(),
    run: (ctx) => listEmergencyStops(ctx.db),
  }),
} as const;

import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { EmergencyState } from '../authority/emergency.js';
import type { IssuedMandate } from '../authority/mandates.js';
import { TokenRejected, type VerifiedToken } from '../authority/tokens.js';
import { CaracalError } from '../errors/catalog.js';
import type { Authenticator, AuthResult } from './authenticate.js';

export interface MandateBindingDeps {
  /** Verifies a Caracal mandate presented next to another credential (→ TokenRejected). */
  verifyMandate: (token: string) => Promise<VerifiedToken>;
}

/**
 * The mandate a request acts under, or null: the bearer token itself when it is one; otherwise
 * (an access token, mTLS or an external token proved who is calling) the `caracal-mandate`
 * header, verified like a bearer token. Whether its subject is the caller is for the policy to check.
 */
export async function resolveMandate(request: FastifyRequest, verified: AuthResult, deps: MandateBindingDeps): Promise<VerifiedToken | null> {
  let mandate = verified.token?.mandate ? verified.token : null;
  const mandateHeader = request.headers['caracal-mandate'];
  if (!mandate && typeof mandateHeader === 'string') mandate = await deps.verifyMandate(mandateHeader);
  if (mandate && !mandate.mandate) throw new TokenRejected('bad_claims', 'the caracal-mandate header does not hold a mandate');
  return mandate;
}

const DelegationRequest = z
  .object({
    parent: z.string().min(1).max(64).optional(),
    agent_id: z.string().min(1).max(64),
    resources: z.array(z.string()).min(1).max(256),
    actions: z.array(z.string()).min(1).max(64),
    validity: z.number().int().min(1).max(365 * 86_400),
  })
  .strict();

export interface DelegationRouteDeps extends MandateBindingDeps {
  authenticator: Authenticator;
  emergency: EmergencyState;
  /** Issues a child of an already verified parent mandate (src/authority/mandates.ts rules). */
  delegate: (parent: VerifiedToken, args: { parentId: string; principalId: string; resources: string[]; actions: string[]; validitySeconds: number }) => Promise<IssuedMandate>;
  isClosing: () => boolean;
}

/**
 * `POST /v1/mandates/delegate`: agents delegate to sub-agents themselves. The bearer must be the
 * parent mandate (holding it is what proves being its subject); scope, time and depth rules are
 * those of `mandate delegate`.
 */
export function registerDelegationRoute(app: FastifyInstance, deps: DelegationRouteDeps): void {
  app.post('/v1/mandates/delegate', { bodyLimit: 64 * 1024 }, async (request, reply) => {
    if (deps.isClosing()) throw new CaracalError('CARACAL_SHUTTING_DOWN');
    const auth = await deps.authenticator.authenticate(request);
    const parent = auth.token;
    if (!parent?.mandate) throw new CaracalError('CARACAL_POLICY_DENIED', 'delegation needs the parent mandate as the bearer token', { reasons: ['mandate_required'] });
    const subjects = [auth.principalId, ...parent.mandate.chain.map((link) => link.sub)];
    const stopped = deps.emergency.flags(subjects);
    if (stopped.global || stopped.principal) throw new CaracalError('CARACAL_POLICY_DENIED', 'an emergency stop is in force', { reasons: ['emergency_stop'] });
    const body = DelegationRequest.parse(request.body ?? {});
    const issued = await deps.delegate(parent, {
      parentId: body.parent ?? parent.tokenId,
      principalId: body.agent_id,
      resources: body.resources,
      actions: body.actions,
      validitySeconds: body.validity,
    });
    reply.code(201);
    return issued;
  });
}

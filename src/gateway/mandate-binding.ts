import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { EmergencyState } from '../authority/views/emergency.js';
import { MandateBudgetArgs, parseMandateBudget, type IssuedMandate } from '../authority/tokens/mandates.js';
import { TokenRejected, type VerifiedToken } from '../authority/tokens/tokens.js';
import { CaracalError } from '../errors/catalog.js';
import type { Authenticator, AuthResult } from './authenticate.js';

export interface MandateBindingDeps {
  /** Verifies a Caracal mandate presented next to another credential (→ TokenRejected). */
  verifyMandate: (token: string) => VerifiedToken | Promise<VerifiedToken>;
}

/** The reason on the 401 when a delegated mandate is presented as the bearer token. */
export const MANDATE_UNBOUND = 'mandate_unbound';

/**
 * The mandate a request acts under, or null.
 *
 * Holding a mandate does not prove being its subject: `POST /v1/mandates/delegate` returns the
 * child to its delegator, so a delegator holds every child it made. Were a child taken as proof of
 * its subject, the delegator could act as its delegate — with the delegate's allowlist and grants.
 * So a mandate is bound to its subject's own authentication:
 *
 * - a **root** mandate (depth 0) is issued by an operator to its subject and may be the bearer
 *   token itself;
 * - a **delegated** mandate (depth ≥ 1) is accepted only in the `caracal-mandate` header, next to a
 *   credential of the caller's own (a Caracal access token, an mTLS certificate or an external IdP
 *   token). As the bearer it is refused with 401 (`mandate_unbound`); next to another principal's
 *   credential the policy denies it (`mandate_subject_mismatch`).
 *
 * A mandate as the bearer together with another in the header is refused as ambiguous.
 *
 * Synchronous (a value or a throw) unless a mandate in the header has to be verified first.
 */
export function resolveMandate(request: FastifyRequest, verified: AuthResult, deps: MandateBindingDeps): VerifiedToken | null | Promise<VerifiedToken> {
  const header = request.headers['caracal-mandate'];
  const bearer = verified.token;
  if (bearer?.mandate) {
    if (bearer.mandate.depth > 0) {
      throw new TokenRejected(
        'mandate_unbound',
        "a delegated mandate is not a credential: send it in the caracal-mandate header next to its subject's own token, certificate or IdP token",
        [MANDATE_UNBOUND],
      );
    }
    if (header !== undefined) throw new TokenRejected('malformed', 'a mandate as the bearer token and another in the caracal-mandate header');
    return bearer;
  }
  if (header === undefined) return null;
  if (typeof header !== 'string') throw new TokenRejected('malformed', 'more than one caracal-mandate header');
  const mandate = deps.verifyMandate(header);
  return mandate instanceof Promise ? mandate.then(heldMandate) : heldMandate(mandate);
}

function heldMandate(mandate: VerifiedToken): VerifiedToken {
  if (!mandate.mandate) throw new TokenRejected('bad_claims', 'the caracal-mandate header does not hold a mandate');
  return mandate;
}

const DelegationRequest = z
  .object({
    parent: z.string().min(1).max(64).optional(),
    agent_id: z.string().min(1).max(64),
    resources: z.array(z.string()).min(1).max(256),
    actions: z.array(z.string()).min(1).max(64),
    validity: z.number().int().min(1).max(365 * 86_400),
    /** The child's own budget: `{ limit: "5.00", window: "daily", currency?: "USD" }` (see mandates.ts). */
    budget: MandateBudgetArgs.nullish(),
  })
  .strict();

export interface DelegationRouteDeps extends MandateBindingDeps {
  authenticator: Authenticator;
  emergency: EmergencyState;
  /** Issues a child of an already verified parent mandate (src/authority/tokens/mandates.ts rules). */
  delegate: (
    parent: VerifiedToken,
    args: { parentId: string; principalId: string; resources: string[]; actions: string[]; validitySeconds: number; budget?: z.input<typeof MandateBudgetArgs> | null },
  ) => Promise<IssuedMandate>;
  isClosing: () => boolean;
}

/**
 * `POST /v1/mandates/delegate`: agents delegate to sub-agents themselves. The parent mandate is
 * presented as on any other call (see `resolveMandate`): a root mandate as the bearer, a delegated
 * one in `caracal-mandate` next to its subject's own credential — so only the parent's subject can
 * delegate it, never a delegator that merely holds it. Scope, time and depth rules are those of
 * `mandate delegate`; so is the optional `budget` of the child (400 on a bad value).
 */
export function registerDelegationRoute(app: FastifyInstance, deps: DelegationRouteDeps): void {
  app.post('/v1/mandates/delegate', { bodyLimit: 64 * 1024 }, async (request, reply) => {
    if (deps.isClosing()) throw new CaracalError('CARACAL_SHUTTING_DOWN');
    const auth = await deps.authenticator.authenticate(request);
    const parent = await resolveMandate(request, auth, deps);
    if (!parent?.mandate) {
      throw new CaracalError('CARACAL_POLICY_DENIED', 'delegation needs the parent mandate: a root mandate as the bearer token, or a mandate in the caracal-mandate header', {
        reasons: ['mandate_required'],
      });
    }
    if (parent.principalId !== auth.principalId) {
      throw new CaracalError('CARACAL_POLICY_DENIED', 'only the subject of the parent mandate may delegate it', { reasons: ['mandate_subject_mismatch'] });
    }
    const subjects = [auth.principalId, ...parent.mandate.chain.map((link) => link.sub)];
    const stopped = deps.emergency.flags(subjects);
    if (stopped.global || stopped.principal) throw new CaracalError('CARACAL_POLICY_DENIED', 'an emergency stop is in force', { reasons: ['emergency_stop'] });
    const body = DelegationRequest.parse(request.body ?? {});
    // Refused (400, naming the field) before anything is delegated; delegateMandate checks it the same way.
    parseMandateBudget(body.budget);
    const issued = await deps.delegate(parent, {
      parentId: body.parent ?? parent.tokenId,
      principalId: body.agent_id,
      resources: body.resources,
      actions: body.actions,
      validitySeconds: body.validity,
      ...(body.budget ? { budget: body.budget } : {}),
    });
    reply.code(201);
    return issued;
  });
}

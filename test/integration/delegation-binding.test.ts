import type { LightMyRequestResponse } from 'fastify';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IssuedMandate } from '../../src/authority/tokens/mandates.js';
import { createHarness, readDecisions, type Harness } from '../helpers/gateway-harness.js';

/**
 * A delegated mandate is bound to its subject, and delegation narrows URLs too.
 *
 * The delegation route hands the child mandate to its delegator, so holding a delegated mandate
 * proves nothing: it is accepted only in `caracal-mandate` next to its subject's own credential,
 * and the upstream URL must be on the allowlist of the caller and of every ancestor in the chain.
 *
 * Allowlists (echo upstream): A → /shared/**, /a-only/**; B → /shared/**, /b-only/**;
 * C and the stranger S → everything. Only A has an authority policy (depth 2).
 */
describe('delegated mandates are bound to their subject', () => {
  let h: Harness;
  let a: string;
  let b: string;
  let c: string;
  let s: string;
  let root: IssuedMandate; // A's root mandate
  let child: IssuedMandate; // A → B, made by A through the route
  let grandchild: IssuedMandate; // B → C, made by B through the route

  const inject = (headers: Record<string, string>, url = '/proxy/echo/shared/x', method: 'GET' | 'POST' = 'GET') => h.assembled.gateway.app.inject({ method, url, headers });
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  /** The subject's own access token with the mandate in `caracal-mandate`. */
  const asSubject = async (principalId: string, mandate: IssuedMandate) => ({ ...bearer(await h.token(principalId)), 'caracal-mandate': mandate.token });
  const delegate = (headers: Record<string, string>, body: Record<string, unknown>) =>
    h.assembled.gateway.app.inject({ method: 'POST', url: '/v1/mandates/delegate', headers, payload: { resources: ['api:external/echo'], actions: ['read'], validity: 300, ...body } });

  /** Refused with that status and those reasons, and the upstream saw nothing of it. */
  async function refused(send: () => Promise<LightMyRequestResponse>, status: number, reasons: string[]): Promise<LightMyRequestResponse> {
    const before = h.upstream.requests;
    const response = await send();
    expect(response.statusCode, response.body).toBe(status);
    expect(response.json().reasons).toEqual(reasons);
    expect(h.upstream.requests, 'the upstream must not see a refused request').toBe(before);
    return response;
  }

  async function allowed(send: () => Promise<LightMyRequestResponse>): Promise<LightMyRequestResponse> {
    const before = h.upstream.requests;
    const response = await send();
    expect(response.statusCode, response.body).toBe(200);
    expect(h.upstream.requests).toBe(before + 1);
    // the agent's credentials and its mandate never reach the upstream
    expect(response.json().headers.authorization).toBeUndefined();
    expect(response.json().headers['caracal-mandate']).toBeUndefined();
    return response;
  }

  beforeAll(async () => {
    h = await createHarness();
    [a, b, c, s] = [await h.registerAgent(), await h.registerAgent(), await h.registerAgent(), await h.registerAgent()];
    await h.op('policy.create', { principalId: a, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600, delegationDepth: 2 });
    const allow = (principalId: string, path: string) => h.op('allowlist.create', { principalId, pattern: `${h.upstream.url}${path}`, patternType: 'glob' });
    await allow(a, '/shared/**');
    await allow(a, '/a-only/**');
    await allow(b, '/shared/**');
    await allow(b, '/b-only/**');
    await allow(c, '/**');
    await allow(s, '/**');

    root = (await h.op('mandate.issue', { principalId: a, resources: ['api:external/*'], actions: ['read', 'write'], validitySeconds: 600 })) as IssuedMandate;
    const made = await delegate(bearer(root.token), { agent_id: b, resources: ['api:external/echo'], actions: ['read'], validity: 500 });
    expect(made.statusCode, made.body).toBe(201);
    child = made.json() as IssuedMandate;
    expect(decodeJwt(child.token)).toMatchObject({ sub: b, depth: 1, chain: [{ id: root.id, sub: a }] });
  });
  afterAll(async () => h?.close());

  it('a root mandate is still a bearer credential, and works in caracal-mandate next to its subject', async () => {
    await allowed(() => inject(bearer(root.token)));
    await allowed(async () => inject({ ...bearer(await h.token(a)), 'caracal-mandate': root.token }));
  });

  it('the delegator cannot act as its delegate with the child it was handed', async () => {
    // the child as A's bearer would make A "B", judged by B's allowlist and grants
    const alone = await refused(() => inject(bearer(child.token)), 401, ['mandate_unbound']);
    expect(alone.json().error).toBe('CARACAL_TOKEN_INVALID');
    expect(alone.json().message).toMatch(/caracal-mandate/);
    // even on a URL only B's allowlist has
    await refused(() => inject(bearer(child.token), '/proxy/echo/b-only/x'), 401, ['mandate_unbound']);
    // next to A's own credential: A is not the child's subject
    await refused(async () => inject(await asSubject(a, child)), 403, ['mandate_subject_mismatch']);
    // nor is anyone else
    await refused(async () => inject(await asSubject(s, child)), 403, ['mandate_subject_mismatch']);
  });

  it('the delegate uses the child only next to its own credential', async () => {
    await allowed(async () => inject(await asSubject(b, child)));
    // B holding its own child alone is refused as well: the rule does not depend on who holds it
    await refused(() => inject(bearer(child.token)), 401, ['mandate_unbound']);
    // the child's scope still applies
    await refused(async () => inject(await asSubject(b, child), '/proxy/echo/shared/x', 'POST'), 403, ['scope_action']);
  });

  it('a mandate as the bearer and another in caracal-mandate is ambiguous and refused', async () => {
    await refused(() => inject({ ...bearer(root.token), 'caracal-mandate': child.token }), 401, []);
  });

  it("every ancestor's allowlist binds the delegate: a URL only B may call is denied under A's mandate", async () => {
    // B's allowlist has it, A's does not
    await refused(async () => inject(await asSubject(b, child), '/proxy/echo/b-only/x'), 403, ['allowlist_ancestor_denied']);
    // A's has it, B's (the caller's) does not
    await refused(async () => inject(await asSubject(b, child), '/proxy/echo/a-only/x'), 403, ['allowlist_no_match']);
    // and A itself is denied that URL, as before
    await refused(() => inject(bearer(root.token), '/proxy/echo/b-only/x'), 403, ['allowlist_no_match']);
  });

  it('the delegate delegates further through the route with its own credential; a three-link chain narrows at every link', async () => {
    // a delegated parent as the bearer is refused, next to someone else's credential too
    await refused(() => delegate(bearer(child.token), { agent_id: c }), 401, ['mandate_unbound']);
    await refused(async () => delegate(await asSubject(a, child), { agent_id: c }), 403, ['mandate_subject_mismatch']);
    const made = await delegate(await asSubject(b, child), { agent_id: c, validity: 400 });
    expect(made.statusCode, made.body).toBe(201);
    grandchild = made.json() as IssuedMandate;
    expect(decodeJwt(grandchild.token)).toMatchObject({ sub: c, depth: 2, chain: [{ id: root.id, sub: a }, { id: child.id, sub: b }] });

    // handed to B, usable only by C
    await refused(() => inject(bearer(grandchild.token)), 401, ['mandate_unbound']);
    await refused(async () => inject(await asSubject(b, grandchild)), 403, ['mandate_subject_mismatch']);
    await allowed(async () => inject(await asSubject(c, grandchild)));
    // A and C allow /a-only, the middle ancestor B does not
    await refused(async () => inject(await asSubject(c, grandchild), '/proxy/echo/a-only/x'), 403, ['allowlist_ancestor_denied']);
    // only C allows /c-only
    await refused(async () => inject(await asSubject(c, grandchild), '/proxy/echo/c-only/x'), 403, ['allowlist_ancestor_denied']);
  });

  it('records the refusal of an unbound mandate as a decision', async () => {
    const response = await inject(bearer(child.token));
    expect(response.statusCode).toBe(401);
    const decisionId = response.headers['x-caracal-decision-id'];
    expect(decisionId).toBeTruthy();
    const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (d) => d.some((x) => x.decision_id === decisionId));
    expect(decisions.find((x) => x.decision_id === decisionId)).toMatchObject({ allow: false, status: 401, reasons: ['token_mandate_unbound'] });
  });
});

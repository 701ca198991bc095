import { generateKeyPairSync } from 'node:crypto';
import { SignJWT, decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signingKeyFromPem } from '../../src/authority/tokens/keys.js';
import type { IssuedMandate } from '../../src/authority/tokens/mandates.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';

/** Mandates, delegation, revocation and emergency stop through a real gateway (embedded backends). */
describe('mandates and delegation', () => {
  let h: Harness;
  let root: string; // principal with a delegable policy
  let child: string;
  let grandchild: string;
  let stranger: string;

  const call = (token: string, method = 'GET', url = '/proxy/echo/v1/x', headers: Record<string, string> = {}) =>
    h.assembled.gateway.app.inject({ method: method as 'GET', url, headers: { authorization: `Bearer ${token}`, ...headers } });
  /**
   * A call under a mandate the way its subject makes it: a root mandate as the bearer, a delegated
   * one in `caracal-mandate` next to the subject's own access token (a delegated mandate alone is
   * refused: its delegator holds it too).
   */
  const act = async (m: IssuedMandate, method = 'GET', url = '/proxy/echo/v1/x', headers: Record<string, string> = {}) =>
    m.depth === 0 ? call(m.token, method, url, headers) : call(await h.token(m.principalId), method, url, { 'caracal-mandate': m.token, ...headers });
  const issue = (args: Record<string, unknown>) => h.op('mandate.issue', args) as Promise<IssuedMandate>;
  const delegate = (parent: IssuedMandate, args: Record<string, unknown>) => h.op('mandate.delegate', { parentToken: parent.token, parentId: parent.id, ...args }) as Promise<IssuedMandate>;
  async function refusal(promise: Promise<unknown>): Promise<CaracalError> {
    try {
      await promise;
    } catch (err) {
      expect(err).toBeInstanceOf(CaracalError);
      return err as CaracalError;
    }
    throw new Error('expected a refusal');
  }
  /** Polls until the gateway's answer has the status, bounded (the change travels by agent.lifecycle). */
  async function eventually(credential: string | IssuedMandate, status: number) {
    const deadline = Date.now() + 3_000;
    for (;;) {
      const response = typeof credential === 'string' ? await call(credential) : await act(credential);
      if (response.statusCode === status || Date.now() > deadline) return response;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  beforeAll(async () => {
    h = await createHarness();
    root = await h.registerAgent();
    child = await h.registerAgent();
    grandchild = await h.registerAgent();
    stranger = await h.registerAgent();
    await h.op('policy.create', { principalId: root, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600, delegationDepth: 1 });
    for (const id of [root, child, grandchild, stranger]) await h.allowUpstream(id);
  });
  afterAll(async () => h?.close());

  it('issues a mandate within the policy and the gateway enforces its scope', async () => {
    const m = await issue({ principalId: root, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 600 });
    expect(decodeJwt(m.token)).toMatchObject({ sub: root, jti: m.id, depth: 0, parent: null, chain: [], scope: { resources: ['api:external/echo'], actions: ['read'] } });
    expect((await call(m.token)).statusCode).toBe(200);
    const write = await call(m.token, 'POST');
    expect(write.statusCode).toBe(403);
    expect(write.json().reasons).toEqual(['scope_action']);
  });

  it('refuses to issue beyond the policy: wider scope, longer validity, no policy', async () => {
    expect((await refusal(issue({ principalId: root, resources: ['mcp:github/*'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['scope_exceeds_policy']);
    expect((await refusal(issue({ principalId: root, resources: ['api:external/echo'], actions: ['delete'], validitySeconds: 60 }))).reasons).toEqual(['scope_exceeds_policy']);
    expect((await refusal(issue({ principalId: root, resources: ['api:external/**'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['scope_exceeds_policy']);
    expect((await refusal(issue({ principalId: root, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 3601 }))).reasons).toEqual(['validity_exceeds_policy']);
    expect((await refusal(issue({ principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['no_policy']);
  });

  it('delegates only narrower scope and time, within the root depth, and the delegate can act', async () => {
    const parent = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read', 'write'], validitySeconds: 600 });
    const narrowed = await delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    expect(decodeJwt(narrowed.token)).toMatchObject({ sub: child, parent: parent.id, depth: 1, root: parent.id, chain: [{ id: parent.id, sub: root }] });
    expect((await act(narrowed)).statusCode).toBe(200);
    expect((await act(narrowed, 'POST')).json().reasons).toEqual(['scope_action']);

    expect((await refusal(delegate(parent, { principalId: child, resources: ['api:external/**'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['scope_widening']);
    expect((await refusal(delegate(parent, { principalId: child, resources: ['mcp:github/x'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['scope_widening']);
    expect((await refusal(delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['delete'], validitySeconds: 60 }))).reasons).toEqual(['scope_widening']);
    expect((await refusal(delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['*'], validitySeconds: 60 }))).reasons).toEqual(['scope_widening']);
    expect((await refusal(delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 601 }))).reasons).toEqual(['validity_exceeds_parent']);
    // depth: the root policy allows 1, so the child cannot delegate further
    expect((await refusal(delegate(narrowed, { principalId: grandchild, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['delegation_depth']);
  });

  it('lets an agent delegate through the gateway with its own mandate, under the same rules', async () => {
    const parent = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read', 'write'], validitySeconds: 600 });
    const post = (token: string | null, body: unknown, headers: Record<string, string> = {}) =>
      h.assembled.gateway.app.inject({ method: 'POST', url: '/v1/mandates/delegate', headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers }, payload: body as object });
    const created = await post(parent.token, { agent_id: child, resources: ['api:external/echo'], actions: ['read'], validity: 120 });
    expect(created.statusCode).toBe(201);
    const childMandate = created.json() as IssuedMandate;
    expect(childMandate).toMatchObject({ principalId: child, parentId: parent.id, depth: 1 });
    expect((await act(childMandate)).statusCode).toBe(200);

    expect((await post(null, { agent_id: child, resources: ['api:external/echo'], actions: ['read'], validity: 60 })).statusCode).toBe(401);
    const withAccess = await post(await h.token(root), { agent_id: child, resources: ['api:external/echo'], actions: ['read'], validity: 60 });
    expect(withAccess.statusCode).toBe(403);
    expect(withAccess.json().reasons).toEqual(['mandate_required']);
    const widening = await post(parent.token, { agent_id: child, resources: ['api:external/**'], actions: ['read'], validity: 60 });
    expect(widening.statusCode).toBe(403);
    expect(widening.json().reasons).toEqual(['scope_widening']);
    // a delegated parent only next to its subject's own credential; then the depth rule applies
    const childAlone = await post(childMandate.token, { agent_id: grandchild, resources: ['api:external/echo'], actions: ['read'], validity: 60 });
    expect(childAlone.statusCode).toBe(401);
    expect(childAlone.json().reasons).toEqual(['mandate_unbound']);
    const tooDeep = await post(await h.token(child), { agent_id: grandchild, resources: ['api:external/echo'], actions: ['read'], validity: 60 }, { 'caracal-mandate': childMandate.token });
    expect(tooDeep.json().reasons).toEqual(['delegation_depth']);
    // someone else's mandate named as parent while holding this one
    const other = await issue({ principalId: root, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 600 });
    expect((await post(parent.token, { parent: other.id, agent_id: child, resources: ['api:external/echo'], actions: ['read'], validity: 60 })).json().reasons).toEqual(['mandate_parent_mismatch']);
    for (const bad of [{}, { agent_id: child, resources: 'x', actions: ['read'], validity: 60 }, { agent_id: child, resources: ['api:external/echo'], actions: ['read'], validity: 60, admin: true }]) {
      const response = await post(parent.token, bad);
      expect(response.statusCode).toBe(400);
      expect(response.json().request_id).toBeTruthy();
    }
    const malformed = await h.assembled.gateway.app.inject({ method: 'POST', url: '/v1/mandates/delegate', headers: { authorization: `Bearer ${parent.token}`, 'content-type': 'application/json' }, payload: '{"agent_id":' });
    expect(malformed.statusCode).toBe(400);
    await h.op('mandate.revoke', { mandateId: parent.id });
    expect((await post(parent.token, { agent_id: child, resources: ['api:external/echo'], actions: ['read'], validity: 60 })).json().reasons).toEqual(['mandate_revoked']);
  });

  it('lets only the subject of the parent delegate it', async () => {
    const victims = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 });
    const strangersOwn = await issue({ principalId: root, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 600 });
    // naming the victim's mandate while holding another one
    const err = await refusal(h.op('mandate.delegate', { parentToken: strangersOwn.token, parentId: victims.id, principalId: stranger, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 60 }));
    expect(err.reasons).toEqual(['mandate_parent_mismatch']);
    // an access token is not a mandate
    const access = await h.token(root);
    const notMandate = await refusal(h.op('mandate.delegate', { parentToken: access, parentId: decodeJwt(access).jti, principalId: stranger, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 60 }));
    expect(notMandate.reasons).toEqual(['mandate_required']);
  });

  it('denies a mandate presented by a principal other than its subject', async () => {
    const m = await issue({ principalId: root, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 600 });
    const strangerAccess = await h.token(stranger);
    const response = await call(strangerAccess, 'GET', '/proxy/echo/v1/x', { 'caracal-mandate': m.token });
    expect(response.statusCode).toBe(403);
    expect(response.json().reasons).toContain('mandate_subject_mismatch');
    // the mandate header never reaches the upstream, even on an allowed call by its own subject
    const own = await call(await h.token(root), 'GET', '/proxy/echo/v1/x', { 'caracal-mandate': m.token });
    expect(own.statusCode).toBe(200);
    expect(own.json().headers['caracal-mandate']).toBeUndefined();
  });

  it('revokes with and without cascade; a revoked ancestor stops the whole chain', async () => {
    const parent = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 });
    const a = await delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    const b = await delegate(parent, { principalId: grandchild, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    for (const m of [parent, a, b]) expect((await act(m)).statusCode).toBe(200);

    expect(await h.op('mandate.revoke', { mandateId: a.id })).toEqual({ revoked: [a.id] });
    expect((await eventually(a, 403)).json().reasons).toEqual(['mandate_revoked']);
    expect((await act(b)).statusCode).toBe(200);

    // revoking the parent without cascade still stops b: its chain holds a revoked ancestor
    expect(await h.op('mandate.revoke', { mandateId: parent.id })).toEqual({ revoked: [parent.id] });
    expect((await eventually(b, 403)).json().reasons).toEqual(['mandate_revoked']);
    expect((await eventually(parent, 403)).json().reasons).toEqual(['mandate_revoked']);

    const p2 = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 });
    const c2 = await delegate(p2, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    const cascaded = (await h.op('mandate.revoke', { mandateId: p2.id, cascade: true })) as { revoked: string[] };
    expect(cascaded.revoked.sort()).toEqual([p2.id, c2.id].sort());
    expect((await eventually(c2, 403)).json().reasons).toEqual(['mandate_revoked']);
    // delegation from a revoked parent is refused
    expect((await refusal(delegate(p2, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 60 }))).reasons).toEqual(['mandate_revoked']);
  });

  it('stops delegates when their delegator is suspended', async () => {
    const parent = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 });
    const d = await delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    await h.op('agent.suspend', { id: root });
    try {
      expect((await eventually(d, 403)).json().reasons).toEqual(['delegator_inactive']);
    } finally {
      await h.op('agent.resume', { id: root });
    }
    expect((await eventually(d, 200)).statusCode).toBe(200);
  });

  it('emergency stop: global and per principal (including its delegates), then resume', async () => {
    const parent = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 });
    const d = await delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    const strangerAccess = await h.token(stranger);
    await h.op('policy.create', { principalId: stranger, resources: ['api:external/echo'], actions: ['read'], maxValiditySeconds: 600 });
    expect((await eventually(strangerAccess, 200)).statusCode).toBe(200);

    await h.op('emergency.stop', { principalId: root, reason: 'test' });
    expect((await eventually(d, 403)).json().reasons).toEqual(['emergency_stop']);
    expect((await call(strangerAccess)).statusCode).toBe(200);
    await h.op('emergency.resume', { principalId: root });
    expect((await eventually(d, 200)).statusCode).toBe(200);

    await h.op('emergency.stop', {});
    try {
      expect((await eventually(strangerAccess, 403)).json().reasons).toEqual(['emergency_stop']);
    } finally {
      await h.op('emergency.resume', {});
    }
    expect((await eventually(strangerAccess, 200)).statusCode).toBe(200);
    expect((await refusal(h.op('emergency.resume', {}))).code).toBe('CARACAL_NOT_FOUND');
  });

  it('denies an attack corpus with a 4xx and never reaches the upstream', async () => {
    const key = await h.ctx.signingKey();
    const parent = await issue({ principalId: root, resources: ['api:external/*'], actions: ['read'], validitySeconds: 600 });
    const real = await delegate(parent, { principalId: child, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300 });
    const claims = decodeJwt(real.token);
    const otherKey = await signingKeyFromPem(generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), 'x');
    const forge = (header: Record<string, unknown>, payload: Record<string, unknown>, signer = otherKey) =>
      new SignJWT(payload).setProtectedHeader({ alg: 'ES256', ...header }).sign(signer.privateKey);
    const now = Math.floor(Date.now() / 1000);
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const corpus: [string, string][] = [
      // a child mandate minted by the child itself, claiming our kid
      ['child-signed child', await forge({ kid: key.kid }, { ...claims, jti: 'forged', scope: { resources: ['api:external/**'], actions: ['*'] } })],
      ['kid pointing elsewhere', await forge({ kid: 'https://evil.example/key' }, claims)],
      ['jku header', await forge({ kid: key.kid, jku: 'http://127.0.0.1:9/jwks.json' }, claims, key)],
      ['x5u header', await forge({ kid: key.kid, x5u: 'http://127.0.0.1:9/cert.pem' }, claims, key)],
      ['embedded jwk', await forge({ kid: key.kid, jwk: otherKey.publicJwk }, claims)],
      ['wrong issuer', await forge({ kid: key.kid }, { ...claims, iss: 'someone-else' }, key)],
      ['wrong audience', await forge({ kid: key.kid }, { ...claims, aud: 'another-service' }, key)],
      ['not yet valid', await forge({ kid: key.kid }, { ...claims, nbf: now + 3600, iat: now + 3600 }, key)],
      ['expired', await forge({ kid: key.kid }, { ...claims, exp: now - 3600, iat: now - 7200, nbf: now - 7200 }, key)],
      ['chain that hides its ancestor', `${real.token.split('.')[0]}.${b64({ ...claims, chain: [], depth: 0, parent: null, root: claims.jti })}.${real.token.split('.')[2]}`],
      ['alg none', `${b64({ alg: 'none', kid: key.kid })}.${b64(claims)}.`],
      ['truncated', real.token.slice(0, real.token.length - 7)],
      ['garbage', 'eyJ.eyJ.x'],
      ['inconsistent chain claims', await forge({ kid: key.kid }, { ...claims, depth: 3 }, key)],
      // genuine, but a delegated mandate is no credential of its own
      ['delegated mandate as the bearer', real.token],
    ];
    const before = h.upstream.requests;
    for (const [name, token] of corpus) {
      const response = await call(token);
      expect(response.statusCode, name).toBeGreaterThanOrEqual(400);
      expect(response.statusCode, name).toBeLessThan(500);
      expect(response.json().request_id, name).toBeTruthy();
    }
    // x-caracal-* headers from the client change nothing and are not forwarded
    const spoof = await act(real, 'GET', '/proxy/echo/v1/x', { 'x-caracal-principal': root, 'x-caracal-decision': 'allow', 'x-caracal-mandate': parent.token });
    expect(spoof.statusCode).toBe(200);
    const forwarded = spoof.json().headers as Record<string, string>;
    // the only x-caracal-* header an upstream may see is the gateway's own decision id
    expect(Object.keys(forwarded).filter((name) => name.startsWith('x-caracal') && name !== 'x-caracal-decision-id')).toEqual([]);
    if (forwarded['x-caracal-decision-id'] !== undefined) expect(forwarded['x-caracal-decision-id']).toBe(spoof.headers['x-caracal-decision-id']);
    const spoofWrite = await act(real, 'POST', '/proxy/echo/v1/x', { 'x-caracal-principal': root, 'x-caracal-scope': 'write' });
    expect(spoofWrite.statusCode).toBe(403);
    expect(h.upstream.requests).toBe(before + 1);
  });
});

import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { decodeProtectedHeader } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { generateSigningKeyFile, signingKeyFromPem, type SigningKey } from '../../src/authority/tokens/keys.js';
import type { IssuedMandate } from '../../src/authority/tokens/mandates.js';
import { issueAccessToken } from '../../src/authority/tokens/tokens.js';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';

describe('signing key rotation', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'caracal-keys-'));
  const oldFile = path.join(dir, 'old.pem');
  const newFile = path.join(dir, 'new.pem');
  let h: Harness;
  let oldKey: SigningKey;
  let newKey: SigningKey;
  let agent: string;
  // Far longer than any harness start: the test moves the clock past the end itself, so the
  // overlap is still open when the gateway is ready, however long that took.
  const overlapMs = 10 * 60_000;
  let overlapEnds: number;

  const kidOf = (token: string) => decodeProtectedHeader(token).kid;
  const call = (token: string) => h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/x', headers: { authorization: `Bearer ${token}` } });
  const kids = async () => ((await h.assembled.gateway.app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json().keys as { kid: string }[]).map((k) => k.kid);

  beforeAll(async () => {
    generateSigningKeyFile(oldFile);
    generateSigningKeyFile(newFile);
    oldKey = await signingKeyFromPem(readFileSync(oldFile, 'utf8'), oldFile);
    newKey = await signingKeyFromPem(readFileSync(newFile, 'utf8'), newFile);
    overlapEnds = Date.now() + overlapMs;
    h = await createHarness({
      configOverrides: { auth: { signingKeyPath: newFile, previousKeys: [{ path: oldFile, validUntil: new Date(overlapEnds).toISOString() }] } },
    });
    agent = await h.registerAgent();
    await h.grant(agent, ['api:external/echo'], ['read']);
  });
  afterEach(() => {
    vi.useRealTimers();
  });
  afterAll(async () => h?.close());

  it('accepts tokens of both keys during the overlap, publishes both, and only the new one after', async () => {
    // Only Date is faked, and it keeps advancing in real time until the test moves it.
    vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
    expect(Date.now()).toBeLessThan(overlapEnds);
    const settings = h.ctx.tokenSettings;
    // Valid for longer than the overlap, so after it only the signing key can make the difference.
    const byOld = (await issueAccessToken(oldKey, settings, agent, 3_600)).token;
    const byNew = (await issueAccessToken(newKey, settings, agent, 3_600)).token;

    expect((await call(byOld)).statusCode).toBe(200);
    expect(h.assembled.tokenCache.get(byOld, Math.floor(Date.now() / 1000))).toMatchObject({ kid: oldKey.kid, principalId: agent });
    expect((await call(byNew)).statusCode).toBe(200);
    expect(await kids()).toEqual([newKey.kid, oldKey.kid]);
    const issued = (await h.op('token.issue', { principalId: agent })) as { token: string };
    expect(kidOf(issued.token)).toBe(newKey.kid);
    expect((await call(issued.token)).statusCode).toBe(200);

    vi.setSystemTime(overlapEnds + 1_000);
    const rejected = await call(byOld);
    expect(rejected.statusCode).toBe(401); // even though its verification was cached
    expect(rejected.json()).toMatchObject({ error: 'CARACAL_TOKEN_INVALID', request_id: rejected.headers['x-request-id'] });
    const freshByOld = await call((await issueAccessToken(oldKey, settings, agent, 3_600)).token);
    expect(freshByOld.statusCode).toBe(401);
    expect(freshByOld.json().error).toBe('CARACAL_TOKEN_INVALID');
    expect((await call(byNew)).statusCode).toBe(200);
    expect((await call(issued.token)).statusCode).toBe(200);
    expect(await kids()).toEqual([newKey.kid]);
  });

  it('signs new tokens and mandates with the current key only', async () => {
    const issued = (await h.op('token.issue', { principalId: agent })) as { token: string };
    expect(kidOf(issued.token)).toBe(newKey.kid);
    const mandate = (await h.op('mandate.issue', { principalId: agent, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 600 })) as IssuedMandate;
    expect(kidOf(mandate.token)).toBe(newKey.kid);
    expect((await call(mandate.token)).statusCode).toBe(200);
  });
});

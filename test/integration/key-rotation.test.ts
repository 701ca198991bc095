import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeyFile, signingKeyFromPem, type SigningKey } from '../../src/authority/keys.js';
import { issueAccessToken } from '../../src/authority/tokens.js';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';

describe('signing key rotation', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'caracal-keys-'));
  const oldFile = path.join(dir, 'old.pem');
  const newFile = path.join(dir, 'new.pem');
  let h: Harness;
  let oldKey: SigningKey;
  let newKey: SigningKey;
  let agent: string;
  const overlapMs = 2_500;
  let overlapEnds: number;

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
  afterAll(async () => h?.close());

  it('accepts tokens of both keys during the overlap, publishes both, and only the new one after', async () => {
    const settings = h.ctx.tokenSettings;
    const byOld = (await issueAccessToken(oldKey, settings, agent, 300)).token;
    const byNew = (await issueAccessToken(newKey, settings, agent, 300)).token;
    const call = (token: string) => h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/x', headers: { authorization: `Bearer ${token}` } });
    const kids = async () => ((await h.assembled.gateway.app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json().keys as { kid: string }[]).map((k) => k.kid);

    expect((await call(byOld)).statusCode).toBe(200); // now also in the verified-token cache
    expect((await call(byNew)).statusCode).toBe(200);
    expect(await kids()).toEqual([newKey.kid, oldKey.kid]);
    expect((await h.op('token.issue', { principalId: agent })) as { token: string }).toBeTruthy();

    await new Promise((resolve) => setTimeout(resolve, Math.max(0, overlapEnds - Date.now()) + 200));
    const rejected = await call(byOld);
    expect(rejected.statusCode).toBe(401); // even though it was cached
    expect(rejected.json().error).toBe('CARACAL_TOKEN_INVALID');
    expect((await call((await issueAccessToken(oldKey, settings, agent, 300)).token)).statusCode).toBe(401);
    expect((await call(byNew)).statusCode).toBe(200);
    expect(await kids()).toEqual([newKey.kid]);
  });

  it('signs new tokens and mandates with the current key only', async () => {
    const issued = (await h.op('token.issue', { principalId: agent })) as { token: string };
    const header = JSON.parse(Buffer.from(issued.token.split('.')[0]!, 'base64url').toString());
    expect(header.kid).toBe(newKey.kid);
  });
});

import { execFileSync } from 'node:child_process';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';

describe('caracal mandate / emergency / keys CLI', () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-mandate-cli-'));
  let env: Record<string, string> = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' };

  const caracal = cliRunner(() => env);

  let agent: string;
  let child: string;
  beforeAll(async () => {
    // A P-256 key made with `openssl ecparam -genkey` (SEC1 PEM, as the README suggests) signs Caracal's tokens.
    const keyFile = path.join(home, 'sec1-key.pem');
    execFileSync('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyFile]);
    env = { ...env, CARACAL_SIGNING_KEY: keyFile };
    agent = (await caracal('agent', 'register', '--name', 'root-agent', '--owner', 'o@example.com', '--quiet')).out.trim();
    child = (await caracal('agent', 'register', '--name', 'child-agent', '--owner', 'o@example.com', '--quiet')).out.trim();
    expect((await caracal('policy', 'create', '--agent-id', agent, '--resources', 'api:external/*', '--actions', 'read', 'write', '--max-validity', '3600', '--delegation-depth', '1')).code).toBe(0);
  }, 60_000); // three CLI runs, each opening PGlite: over the default 10 s hook timeout on a busy machine

  it('issues, delegates, lists and revokes with cascade', async () => {
    const issued = JSON.parse((await caracal('mandate', 'issue', '--agent-id', agent, '--resources', 'api:external/echo', '--actions', 'read', '--validity', '600', '--json')).out);
    expect(issued).toMatchObject({ principalId: agent, depth: 0, resources: ['api:external/echo'] });
    const delegated = await caracal('mandate', 'delegate', '--parent', issued.id, '--agent-id', child, '--resources', 'api:external/echo', '--actions', 'read', '--validity', '60', '--parent-token', issued.token, '--json');
    expect(delegated.err).toBe('');
    expect(JSON.parse(delegated.out)).toMatchObject({ principalId: child, parentId: issued.id, depth: 1 });
    expect((await caracal('mandate', 'list', '--agent-id', child)).out).toContain(issued.id);
    const revoked = JSON.parse((await caracal('mandate', 'revoke', '--mandate-id', issued.id, '--cascade', '--json')).out);
    expect(revoked.revoked).toHaveLength(2);
    expect((await caracal('mandate', 'revoke', '--mandate-id', issued.id)).out).toContain('already revoked');
  });

  it('prints the mandate id and the token on one line with --print-id, the token alone with --quiet', async () => {
    const grant = ['--agent-id', agent, '--resources', 'api:external/echo', '--actions', 'read', '--validity', '600'];
    const run = await caracal('mandate', 'issue', ...grant, '--print-id');
    expect(run.err).toBe('');
    expect(run.out).toMatch(/^[0-9a-f-]{36} [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
    const [id, token] = run.out.trim().split(' ') as [string, string];
    // The id is the token's jti and is what revoke takes.
    expect(JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'))).toMatchObject({ jti: id, sub: agent });
    expect((await caracal('mandate', 'revoke', '--mandate-id', id)).out).toBe(`revoked 1: ${id}\n`);
    // --print-id wins over --quiet; --quiet alone stays the bare token.
    expect((await caracal('mandate', 'issue', ...grant, '--quiet', '--print-id')).out).toMatch(/^[0-9a-f-]{36} \S+\n$/);
    expect((await caracal('mandate', 'issue', ...grant, '--quiet')).out).toMatch(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/);
    // The human form names the id too.
    expect((await caracal('mandate', 'issue', ...grant)).out).toMatch(/^id\s+[0-9a-f-]{36}$/m);
  }, 60_000);

  it('answers bad mandate input with one line and a non-zero exit', async () => {
    expectOneLineError(await caracal('mandate', 'issue', '--agent-id', agent, '--resources', 'mcp:github/*', '--actions', 'read', '--validity', '60'), /exceeds the principal's authority policy \(resources mcp:github\/\*\)/);
    expectOneLineError(await caracal('mandate', 'issue', '--agent-id', agent, '--resources', 'api:external/echo', '--actions', 'read', '--validity', '7200'), /exceeds the policy's max-validity 3600s/);
    expectOneLineError(await caracal('mandate', 'issue', '--agent-id', agent, '--resources', 'api:external/echo', '--actions', 'read', '--validity', 'soon'), /--validity must be a positive integer/);
    expectOneLineError(await caracal('mandate', 'delegate', '--parent', 'x', '--agent-id', child, '--resources', 'api:external/echo', '--actions', 'read', '--validity', '60'), /needs the parent mandate/);
    expectOneLineError(await caracal('mandate', 'delegate', '--parent', 'x', '--agent-id', child, '--resources', 'a:b', '--actions', 'read', '--validity', '60', '--parent-token', 'not.a.jwt'), /not a compact JWS|cannot be decoded/);
    expectOneLineError(await caracal('mandate', 'revoke', '--mandate-id', '0190f0f0-0000-7000-8000-000000000000'), /not found/);
    expectOneLineError(await caracal('mandate', 'revoke', '--mandate-id', "x'; drop table mandates;--"), /not a valid mandate id/);
  });

  it('stops and resumes in an emergency, with clear errors', async () => {
    expect((await caracal('emergency', 'stop', '--agent-id', agent, '--reason', 'drill')).out).toContain(`principal ${agent}`);
    expect(JSON.parse((await caracal('emergency', 'status', '--json')).out)).toEqual([expect.objectContaining({ scope: agent, reason: 'drill' })]);
    expect((await caracal('emergency', 'resume', '--agent-id', agent)).code).toBe(0);
    expectOneLineError(await caracal('emergency', 'resume'), /no emergency stop in force/);
    expectOneLineError(await caracal('emergency', 'stop', '--agent-id', '0190f0f0-0000-7000-8000-000000000000'), /not found/);
  });

  it('generates a signing key file readable only by its owner, and never overwrites one', async () => {
    const file = path.join(home, 'keys', 'next.pem');
    const run = await caracal('keys', 'generate', '--out', file);
    expect(run.out).toMatch(/^wrote .*next\.pem kid=[A-Za-z0-9_-]{43}\n$/);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expectOneLineError(await caracal('keys', 'generate', '--out', file), /exists; refusing to overwrite/);
  });
});

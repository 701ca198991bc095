import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';

describe('caracal CLI on the embedded default', () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-cli-'));
  const env = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' };

  const caracal = cliRunner(() => env);

  let agentId: string;
  beforeAll(async () => {
    const run = await caracal('agent', 'register', '--name', 'my-agent', '--description', 'My AI agent', '--owner', 'user@example.com', '--json');
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    agentId = JSON.parse(run.out).id;
  });

  it('registers with the runbook flags and lists as a table or JSON', async () => {
    const table = await caracal('agent', 'list');
    expect(table.out.split('\n')[0]).toMatch(/^ID\s+NAME\s+KIND\s+OWNER\s+STATUS/);
    expect(table.out).toContain('my-agent');
    const json = JSON.parse((await caracal('agent', 'list', '--json')).out);
    expect(json).toEqual([expect.objectContaining({ id: agentId, name: 'my-agent', owner: 'user@example.com', status: 'active' })]);
  });

  it('creates a policy exactly as the runbook writes it', async () => {
    const run = await caracal('policy', 'create', '--agent-id', agentId, '--resources', 'api:external/*', '--actions', 'read', 'write', 'execute', '--max-validity', '86400', '--delegation-depth', '1', '--json');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.out)).toMatchObject({ principalId: agentId, resources: ['api:external/*'], actions: ['read', 'write', 'execute'], maxValiditySeconds: 86400, delegationDepth: 1 });
    const listed = JSON.parse((await caracal('policy', 'list', '--agent-id', agentId, '--json')).out);
    expect(listed).toHaveLength(1);
    const shown = JSON.parse((await caracal('agent', 'get', agentId, '--json')).out);
    expect(shown.policies).toHaveLength(1);
  });

  it('issues a token that is a compact ES256 JWT for the principal', async () => {
    const run = await caracal('token', 'issue', '--agent-id', agentId, '--ttl', '120');
    expect(run.code).toBe(0);
    const [header, payload] = run.out.trim().split('.').slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString()));
    expect(header).toMatchObject({ alg: 'ES256' });
    expect(payload.sub).toBe(agentId);
    expect(payload.exp - payload.iat).toBe(120);
  });

  it('suspends and resumes; a suspended principal gets no token', async () => {
    expect((await caracal('agent', 'suspend', '--agent-id', agentId)).out).toContain('suspended');
    expectOneLineError(await caracal('token', 'issue', '--agent-id', agentId), /suspended/);
    expect((await caracal('agent', 'resume', agentId)).out).toContain('active');
  });

  it('refuses db reset without --confirm and keeps the data', async () => {
    expectOneLineError(await caracal('db', 'reset'), /--confirm/);
    expect(JSON.parse((await caracal('agent', 'list', '--json')).out)).toHaveLength(1);
  });

  it('runs db init, migrate up and health-check', async () => {
    expect((await caracal('db', 'init')).code).toBe(0);
    expect((await caracal('db', 'migrate', 'up')).out).toContain('up to date');
    const health = await caracal('db', 'health-check', '--json');
    expect(health.code).toBe(0);
    expect(JSON.parse(health.out)).toMatchObject({ ok: true, backend: 'pglite', pending: [] });
  });

  it('creates the topics of the design on the embedded log', async () => {
    const run = await caracal('kafka', 'create-topics', '--partitions', '2');
    expect(run.code).toBe(0);
    for (const topic of ['caracal.policy.decisions', 'caracal.metering.events', 'caracal.agent.lifecycle', 'caracal.dlq']) expect(run.out).toContain(`${topic}  partitions=2`);
    expect((await caracal('kafka', 'consumer-lag', '--consumer-group', 'ledger-writer-group', '--json')).code).toBe(0);
  });

  it('answers bad input with one line and a non-zero exit', async () => {
    expectOneLineError(await caracal('agent', 'list', '--colour'), /unknown option '--colour'/);
    expectOneLineError(await caracal('agent', 'register', '--name', 'x'), /required option '--owner/);
    expectOneLineError(await caracal('agent', 'frobnicate'), /unknown command|too many arguments/);
    expectOneLineError(await caracal('agent', 'register', '--name', 'my-agent', '--owner', 'a@b'), /already exists/);
    expectOneLineError(await caracal('agent', 'register', '--name', 'evil\u001b[2Jname', '--owner', 'a@b'), /name: must not contain control characters/);
    expectOneLineError(await caracal('agent', 'get', 'no-such-agent'), /not found/);
    expectOneLineError(await caracal('agent', 'get', "1' OR '1'='1"), /not a valid principal id/);
    expectOneLineError(await caracal('token', 'issue', '--agent-id', '0190f0f0-0000-7000-8000-000000000000'), /not found/);
    expectOneLineError(await caracal('token', 'issue', '--agent-id', agentId, '--ttl', '999999999'), /ttlSeconds/);
    expectOneLineError(await caracal('policy', 'create', '--agent-id', agentId, '--resources', 'not a pattern', '--actions', 'read', '--max-validity', '60'), /resources\.0: must look like/);
    expectOneLineError(await caracal('policy', 'create', '--agent-id', agentId, '--resources', 'api:x/*', '--actions', 'READ;drop', '--max-validity', '-5'), /actions\.0.*maxValiditySeconds/);
    expectOneLineError(await caracal('kafka', 'create-topics', '--partitions', '0'), /--partitions must be a positive integer/);
    expectOneLineError(await caracal('agent', 'register', '--name', 'a'.repeat(500), '--owner', 'x'), /name/);
  });

  it('rejects a malformed config file with one line naming it', async () => {
    const file = path.join(home, 'bad.yaml');
    writeFileSync(file, 'gateway: {port: [\n');
    expectOneLineError(await caracal('--config', file, 'agent', 'list'), /bad\.yaml: not valid YAML/);
    writeFileSync(file, 'gateway:\n  port: 99999\n');
    expectOneLineError(await caracal('--config', file, 'agent', 'list'), /gateway\.port/);
  });
});

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';

describe('caracal consumers and dlq commands on the embedded default', { timeout: 90_000 }, () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-dlq-cli-'));
  const caracal = cliRunner(() => ({ CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' }));

  it('lists an empty DLQ as a table or JSON', async () => {
    const table = await caracal('dlq', 'list');
    expect(table.code).toBe(0);
    expect(table.out).toContain('0 entries');
    const json = await caracal('dlq', 'list', '--json');
    expect(JSON.parse(json.out)).toEqual([]);
  });

  it('answers bad input with one line and a non-zero exit', async () => {
    expectOneLineError(await caracal('dlq', 'get', '--event-id', 'no-such-event'), /no DLQ entry/);
    expectOneLineError(await caracal('dlq', 'get', '--event-id', "'; drop table dlq_events; --"), /event id/);
    expectOneLineError(await caracal('dlq', 'redrive', '--event-id', 'no-such-event'), /no DLQ entry/);
    expectOneLineError(await caracal('dlq', 'list', '--limit', '0'), /limit/);
    expectOneLineError(await caracal('consumers', 'start', '--only', 'bogus'), /unknown consumer "bogus"/);
  });

  it('records the CLI\'s own operations in the audit log (os user, host) and queries them', async () => {
    const registered = await caracal('agent', 'register', '--name', 'audited-by-cli', '--owner', 'o@example.com', '--quiet');
    expect(registered.code).toBe(0);
    const agentId = registered.out.trim();
    const run = await caracal('audit', 'query', '--agent-id', agentId, '--start-time', '-1h', '--end-time', 'now', '--json');
    expect(run.code).toBe(0);
    const records = JSON.parse(run.out) as { eventType: string; actor: string; data: { operation: string; transport: string } }[];
    // agent.register names its principal only in its result; the policy below names it in its arguments.
    const policy = await caracal('policy', 'create', '--agent-id', agentId, '--resources', 'api:external/x', '--actions', 'read', '--max-validity', '60');
    expect(policy.code).toBe(0);
    const after = JSON.parse((await caracal('audit', 'query', '--agent-id', agentId, '--start-time', '-1h', '--json')).out) as typeof records;
    expect(after.length).toBeGreaterThan(records.length);
    expect(after.at(-1)).toMatchObject({ eventType: 'dev.caracal.admin.action.v1', actor: expect.stringMatching(/^os_user:/), data: { operation: 'policy.create', transport: 'cli' } });
    const table = await caracal('audit', 'query', '--start-time', '-1h');
    expect(table.out.split('\n')[0]).toMatch(/^TIME\s+TYPE\s+PRINCIPAL/);
    expectOneLineError(await caracal('audit', 'query', '--start-time', 'yesterday-ish'), /--start-time must be/);
    expectOneLineError(await caracal('audit', 'query', '--start-time', 'now', '--end-time', '-1h'), /end must be after start/);
  });

  it('redrives nothing when nothing is pending', async () => {
    const run = await caracal('dlq', 'redrive', '--json');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.out)).toMatchObject({ redriven: 0 });
  });
});

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
    expectOneLineError(await caracal('consumers', 'start', '--only', 'ledger-writer'), /not built yet/);
  });

  it('redrives nothing when nothing is pending', async () => {
    const run = await caracal('dlq', 'redrive', '--json');
    expect(run.code).toBe(0);
    expect(JSON.parse(run.out)).toMatchObject({ redriven: 0 });
  });
});

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';

describe('caracal allowlist on the embedded default', () => {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-allowlist-cli-'));
  const env = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' };

  const caracal = cliRunner(() => env);

  let agentId: string;
  let otherId: string;
  let regexId: string;
  let globId: string;
  beforeAll(async () => {
    const run = await caracal('agent', 'register', '--name', 'allowlisted-agent', '--owner', 'user@example.com', '--quiet');
    expect(run.err).toBe('');
    agentId = run.out.trim();
    otherId = (await caracal('agent', 'register', '--name', 'other-agent', '--owner', 'user@example.com', '--quiet')).out.trim();
  });

  it("runs the runbook's two create commands verbatim", async () => {
    // The shell turns "^https://api\\.openai\\.com/.*$" into ^https://api\.openai\.com/.*$
    const regex = await caracal('allowlist', 'create', '--agent-id', agentId, '--pattern', '^https://api\\.openai\\.com/.*$', '--pattern-type', 'regex');
    expect(regex.err).toBe('');
    expect(regex.code).toBe(0);
    expect(regex.out).toMatch(/^id\s+\S+$/m);
    expect(regex.out).toMatch(/^pattern\s+\^https:\/\/api\\\.openai\\\.com\/\.\*\$$/m);
    expect(regex.out).toMatch(/^patternType\s+regex$/m);
    regexId = /^id\s+(\S+)$/m.exec(regex.out)![1]!;

    const glob = await caracal('allowlist', 'create', '--agent-id', agentId, '--pattern', 'https://api.anthropic.com/*', '--pattern-type', 'glob', '--json');
    expect(glob.code).toBe(0);
    const created = JSON.parse(glob.out);
    expect(created).toMatchObject({ principalId: agentId, pattern: 'https://api.anthropic.com/*', patternType: 'glob' });
    globId = created.id;
  });

  it('lists as a table or JSON, for one agent or all', async () => {
    const table = await caracal('allowlist', 'list', '--agent-id', agentId);
    expect(table.code).toBe(0);
    const lines = table.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID\s+PRINCIPAL\s+TYPE\s+PATTERN\s+CREATED$/);
    expect(lines).toHaveLength(3);
    expect(table.out).toContain('^https://api\\.openai\\.com/.*$');
    expect(table.out).toContain('https://api.anthropic.com/*');

    const json = JSON.parse((await caracal('allowlist', 'list', '--json')).out);
    expect(json.map((e: { id: string }) => e.id)).toEqual([regexId, globId]);
    expect(JSON.parse((await caracal('allowlist', 'list', '--agent-id', otherId, '--json')).out)).toEqual([]);
    expect((await caracal('allowlist', 'list', '--agent-id', otherId)).out).toBe('(none)\n');
  });

  it('tests URLs: allowed by which entry, or not allowed, exit 0 either way', async () => {
    const openai = await caracal('allowlist', 'test', '--agent-id', agentId, '--url', 'https://api.openai.com/v1/chat/completions');
    expect(openai.code).toBe(0);
    expect(openai.out).toBe(`allowed: matches entry ${regexId} (regex "^https://api\\\\.openai\\\\.com/.*$")\n`);

    const anthropic = JSON.parse((await caracal('allowlist', 'test', '--agent-id', agentId, '--url', 'https://api.anthropic.com/v1', '--json')).out);
    expect(anthropic).toMatchObject({ allowed: true, reason: 'matched', entryId: globId, pattern: 'https://api.anthropic.com/*', patternType: 'glob', entries: 2 });

    const deep = await caracal('allowlist', 'test', '--agent-id', agentId, '--url', 'https://api.anthropic.com/v1/messages');
    expect(deep.code).toBe(0);
    expect(deep.out).toBe(`not allowed: matches none of the 2 entries of principal ${agentId}\n`);

    const evil = JSON.parse((await caracal('allowlist', 'test', '--agent-id', agentId, '--url', 'https://api.openai.com.evil.com/v1', '--json')).out);
    expect(evil).toMatchObject({ allowed: false, reason: 'no_match', entryId: null });

    const empty = await caracal('allowlist', 'test', '--agent-id', otherId, '--url', 'https://api.openai.com/v1');
    expect(empty.code).toBe(0);
    expect(empty.out).toMatch(/^not allowed: principal \S+ has no allowlist entries and allowlists\.whenEmpty is "deny"$/m);

    const long = JSON.parse((await caracal('allowlist', 'test', '--agent-id', agentId, '--url', `https://api.openai.com/${'a'.repeat(9000)}`, '--json')).out);
    expect(long).toMatchObject({ allowed: false, reason: 'url_too_long' });
  });

  it('deletes by --id or positional id; the URL is then not allowed', async () => {
    const byFlag = await caracal('allowlist', 'delete', '--id', globId);
    expect(byFlag.code).toBe(0);
    expect(byFlag.out).toBe(`${globId} deleted\n`);
    expect((await caracal('allowlist', 'test', '--agent-id', agentId, '--url', 'https://api.anthropic.com/v1')).out).toMatch(/^not allowed/);
    expectOneLineError(await caracal('allowlist', 'delete', globId), /allowlist entry \S+ not found/);

    const again = JSON.parse((await caracal('allowlist', 'create', '--agent-id', agentId, '--pattern', 'https://api.anthropic.com/*', '--pattern-type', 'glob', '--json')).out);
    const positional = await caracal('allowlist', 'delete', again.id, '--json');
    expect(positional.code).toBe(0);
    expect(JSON.parse(positional.out)).toMatchObject({ id: again.id, patternType: 'glob' });
    expect(JSON.parse((await caracal('allowlist', 'list', '--json')).out).map((e: { id: string }) => e.id)).toEqual([regexId]);
  });

  it('answers bad input with one line and a non-zero exit', async () => {
    const create = (pattern: string, type = 'regex', agent = agentId) => caracal('allowlist', 'create', '--agent-id', agent, '--pattern', pattern, '--pattern-type', type);
    expectOneLineError(await create('^https://api\\.example\\.com/(a+)+$'), /^caracal: pattern: can backtrack catastrophically \(nested quantifier "\(a\+\)\+"\)/);
    expectOneLineError(await create('https://.*\\.example\\.com/.*'), /pattern: can backtrack polynomially/);
    expectOneLineError(await create('https://(api'), /pattern: is not a valid regex \(Invalid regular expression: .*Unterminated group\)/);
    expectOneLineError(await create('https://x/(?<=a)b'), /pattern: lookbehind/);
    expectOneLineError(await create('https://x/*', 'pcre'), /patternType: must be "regex" or "glob"/);
    expectOneLineError(await create('https://x/*', 'glob', '0190f0f0-0000-7000-8000-000000000000'), /principal 0190f0f0-0000-7000-8000-000000000000 not found/);
    expectOneLineError(await create('https://x/*', 'glob', "1' OR '1'='1"), /principalId: is not a valid principal id/);
    expectOneLineError(await create('x'.repeat(2000)), /pattern: is longer than 1024 characters/);
    expectOneLineError(await create('^https://api\\.openai\\.com/.*$'), /already has this regex pattern/);
    expectOneLineError(await caracal('allowlist', 'create', '--agent-id', agentId, '--pattern-type', 'glob'), /required option '--pattern <pattern>' not specified/);
    expectOneLineError(await caracal('allowlist', 'create', '--pattern', 'https://x/*', '--pattern-type', 'glob'), /required option '--agent-id <id>' not specified/);
    expectOneLineError(await caracal('allowlist', 'create', '--agent-id', agentId, '--pattern', 'https://x/*'), /required option '--pattern-type <type>' not specified/);
    expectOneLineError(await caracal('allowlist', 'test', '--agent-id', agentId), /required option '--url <url>' not specified/);
    expectOneLineError(await caracal('allowlist', 'test', '--agent-id', 'no-such-agent', '--url', 'https://x/'), /principal no-such-agent not found/);
    expectOneLineError(await caracal('allowlist', 'delete'), /needs an entry id/);
    expectOneLineError(await caracal('allowlist', 'delete', '--id', 'a', 'b'), /give the entry id once/);
    expectOneLineError(await caracal('allowlist', 'list', '--colour'), /unknown option '--colour'/);
    // Nothing was stored by the failed attempts.
    expect(JSON.parse((await caracal('allowlist', 'list', '--json')).out)).toHaveLength(1);
  });
});

import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POLICIES_DIR } from '../../src/paths.js';
import { runCli, startCli, type LongRunning } from '../helpers/processes.js';
import { requireServices } from '../helpers/services.js';

/**
 * The README's policy lifecycle, from the outside: `caracal dev` following its database bundle store, and the CLI
 * (through the running gateway's admin API, since it owns the embedded database) building, publishing, diffing,
 * shadowing, activating and rolling back — real processes, the real opa, HTTP calls.
 */
describe('policy lifecycle on the embedded default (caracal dev, policy.store db)', () => {
  let dir: string;
  let gateway: LongRunning | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'caracal-lifecycle-'));
  });
  afterAll(async () => {
    if (gateway) {
      const output = gateway.output();
      await gateway.stop();
      console.error(output.slice(-4000));
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('publish → diff → shadow → activate → rollback refused → shadow off, each visible at the gateway', async () => {
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CARACAL_HOME: path.join(dir, 'home'),
      CARACAL_GATEWAY_PORT: '0',
      CARACAL_ADMIN_PORT: '0',
      CARACAL_METRICS_PORT: '0',
      CARACAL_LOG_LEVEL: 'warn',
      CARACAL_POLICY_STORE: 'db',
      CARACAL_POLICY_RELOAD_MS: '200',
      CARACAL_OPA_BIN: process.env.CARACAL_OPA_BIN ?? requireServices().opaBin,
    };
    const run = (...args: string[]) => runCli(args, env);
    const cli = async (...args: string[]) => {
      const result = await run(...args);
      expect(result.stderr, `caracal ${args.join(' ')}`).toBe('');
      expect(result.code, `caracal ${args.join(' ')}`).toBe(0);
      return result.stdout.trim();
    };

    gateway = startCli(['dev'], env);
    const [, gatewayUrl] = await gateway.waitFor(/caracal gateway listening on (http:\/\/[\d.:]+)/, 90_000);
    const [, metricsUrl] = await gateway.waitFor(/metrics\s+(http:\/\/[\d.:]+)\/metrics/);
    const agent = await cli('agent', 'register', '--name', 'lifecycle', '--owner', 'ops@example.com', '--quiet');
    await cli('policy', 'create', '--agent-id', agent, '--resources', 'api:external/echo', '--actions', 'read', '--max-validity', '3600');
    await cli('allowlist', 'create', '--agent-id', agent, '--pattern', 'http://127.0.0.1:*/**', '--pattern-type', 'glob');
    const token = await cli('token', 'issue', '--agent-id', agent);
    const call = async (p: string) => {
      const response = await fetch(`${gatewayUrl}/proxy/echo/${p}`, { headers: { authorization: `Bearer ${token}` } });
      await response.arrayBuffer();
      return { status: response.status, revision: response.headers.get('x-caracal-bundle-revision') };
    };
    const eventually = async (p: string, done: (r: Awaited<ReturnType<typeof call>>) => boolean) => {
      let result = await call(p);
      for (let i = 0; i < 100 && !done(result); i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        result = await call(p);
      }
      return result;
    };
    // The store has nothing active: the committed default bundle serves.
    const first = await eventually('reports/a', (r) => r.status === 200);
    expect(first.status).toBe(200);
    const defaultRevision = first.revision;
    expect((await call('public/a')).status).toBe(200);

    // A candidate: the core policy and one rule that closes /reports/.
    const policies = path.join(dir, 'policies');
    await mkdir(path.join(policies, 'caracal'), { recursive: true });
    await writeFile(path.join(policies, 'caracal', 'authz.rego'), await readFile(path.join(POLICIES_DIR, 'caracal', 'authz.rego')));
    await writeFile(path.join(policies, 'caracal', 'reports.rego'), 'package caracal.authz\n\nextra_deny_reasons contains "reports_closed" if {\n\tstartswith(input.request.path, "/reports/")\n}\n');
    expect(await cli('bundle', 'build', '--policies', policies, '--out', `${dir}/build/`, '--revision', 'tight-1')).toMatch(/^built .*bundle\.tar\.gz revision=tight-1 /);
    const bundle = path.join(dir, 'build', 'bundle.tar.gz');
    expect(await cli('bundle', 'publish', bundle)).toMatch(/^published tight-1 sha256=[0-9a-f]{64} to db \(new\)$/);
    expect(await cli('bundle', 'publish', bundle)).toMatch(/\(already published\)$/);

    // Replayed through the running gateway (it owns the ledger): exactly the /reports/ call flips.
    const today = new Date().toISOString().slice(0, 10);
    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    let diff = JSON.parse(await cli('bundle', 'diff', '--revision', 'tight-1', '--start-time', today, '--end-time', tomorrow, '--json')) as {
      totals: { allow_to_deny: number; unchanged: number };
      flips: { path: string; change: string; candidate: { reasons: string[] } }[];
    };
    for (let i = 0; i < 50 && diff.totals.allow_to_deny + diff.totals.unchanged < 2; i++) {
      // The ledger writer seals in batches: wait for both decisions to be in it.
      await new Promise((resolve) => setTimeout(resolve, 200));
      diff = JSON.parse(await cli('bundle', 'diff', '--revision', 'tight-1', '--start-time', today, '--end-time', tomorrow, '--json'));
    }
    expect(diff.flips.map((f) => [f.path, f.change, f.candidate.reasons])).toEqual([['/proxy/echo/reports/a', 'allow_to_deny', ['reports_closed']]]);

    // Shadow: decided twice, enforced once.
    expect(await cli('bundle', 'shadow', '--revision', 'tight-1')).toBe('shadow tight-1 (was none)');
    const shadowCounts = async () => {
      const text = await (await fetch(`${metricsUrl}/metrics`)).text();
      const count = (agreement: string) => Number(text.match(new RegExp(`caracal_policy_shadow_decisions_total\\{agreement="${agreement}"\\} (\\d+)`))?.[1] ?? 0);
      return { agree: count('agree'), disagree: count('disagree'), loaded: text.includes('caracal_policy_shadow_bundle_info{revision="tight-1"} 1') };
    };
    for (let i = 0; i < 50 && !(await shadowCounts()).loaded; i++) await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await call('reports/b')).toEqual({ status: 200, revision: defaultRevision });
    expect(await call('public/b')).toEqual({ status: 200, revision: defaultRevision });
    expect(await shadowCounts()).toEqual({ agree: 1, disagree: 1, loaded: true });

    // Activate: enforced, named in the header.
    expect(await cli('bundle', 'activate', '--revision', 'tight-1')).toBe('activated tight-1 (was none)');
    expect(await eventually('reports/c', (r) => r.revision === 'tight-1')).toEqual({ status: 403, revision: 'tight-1' });
    expect(await call('public/c')).toEqual({ status: 200, revision: 'tight-1' });
    const ready = (await (await fetch(`${gatewayUrl}/ready`)).json()) as { bundle_revision: string; checks: { policy: { ok: boolean; shadow_revision?: string } } };
    expect(ready).toMatchObject({ bundle_revision: 'tight-1', checks: { policy: { ok: true, shadow_revision: 'tight-1' } } });

    // Nothing was active before it: rollback is refused in one line, nothing changes.
    const rollback = await run('bundle', 'rollback');
    expect(rollback.code).not.toBe(0);
    expect(rollback.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^caracal: nothing to roll back to in db/)]);
    const listed = JSON.parse(await cli('bundle', 'list', '--json')) as { active: { revision: string }; shadow: { revision: string } | null; history: { action: string }[] };
    expect(listed).toMatchObject({ active: { revision: 'tight-1' }, shadow: { revision: 'tight-1' } });
    expect(listed.history.map((h) => h.action)).toEqual(['activate', 'shadow']);
    expect(await cli('bundle', 'shadow', '--off')).toBe('shadow off (was tight-1)');

    expect(await gateway.stop()).toBe(0);
    gateway = undefined;
  }, 240_000);
});

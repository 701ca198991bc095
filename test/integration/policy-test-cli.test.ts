import { execFile } from 'node:child_process';
import { appendFile, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { PACKAGE_ROOT, POLICIES_DIR } from '../../src/paths.js';
import { cliRunner } from '../helpers/cli.js';
import { requireServices } from '../helpers/services.js';
import { assertWellFormedXml, type XmlElement } from '../helpers/xml.js';

const execFileAsync = promisify(execFile);

/** `caracal policy test` against real opa (exit codes: 0 ok, 3 Rego test, 4 coverage, 5 fixture, 6 compile). */
describe('caracal policy test', () => {
  let opaBin: string;
  let tmp: string;
  const caracal = cliRunner(() => ({ CARACAL_OPA_BIN: opaBin, HOME: tmp, CARACAL_HOME: path.join(tmp, 'home') }));

  /** A copy of policies/ that a test may change. */
  async function copyPolicies(name: string): Promise<string> {
    const dir = path.join(tmp, name);
    await cp(POLICIES_DIR, dir, { recursive: true });
    return dir;
  }

  const suites = (xml: string): Map<string, XmlElement> => {
    const [root] = assertWellFormedXml(xml);
    expect(root!.name).toBe('testsuites');
    return new Map(root!.children.map((s) => [s.attrs.name!, s]));
  };
  const lastLine = (text: string) => text.trimEnd().split('\n').at(-1);

  beforeAll(async () => {
    opaBin = requireServices().opaBin;
    tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-policy-test-cli-'));
  });
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it('passes on the real policies/ (exit 0, every fixture on WASM and opa eval), through bin/caracal.js', async () => {
    const junit = path.join(tmp, 'real.xml');
    const { stdout } = await execFileAsync(process.execPath, [path.join(PACKAGE_ROOT, 'bin', 'caracal.js'), 'policy', 'test', '--format', 'junit', '--out', junit], {
      env: { ...process.env, CARACAL_OPA_BIN: opaBin },
      cwd: tmp,
    });
    expect(stdout).toContain(`junit report: ${junit}`);
    expect(stdout).toMatch(/fixtures \(wasm \+ opa eval\): (\d+) passed, 0 failed/);
    expect(lastLine(stdout)).toMatch(/^\d+ passed, 0 failed$/);
    const s = suites(await readFile(junit, 'utf8'));
    expect([...s.keys()]).toEqual(['rego tests', 'coverage', 'decision fixtures']);
    expect(Number(s.get('decision fixtures')!.attrs.tests)).toBeGreaterThanOrEqual(20);
    for (const suite of s.values()) expect(suite.attrs).toMatchObject({ failures: '0', errors: '0' });
  });

  it('a fixture that expects allow where the policy denies: exit 5, named in the text and the JUnit failure', async () => {
    const dir = await copyPolicies('divergent');
    // Its own fixtures folder: policies/fixtures/ is one document (data.fixtures) that authz_test.rego replays too.
    await mkdir(path.join(dir, 'caracal', 'fixtures'), { recursive: true });
    await writeFile(
      path.join(dir, 'caracal', 'fixtures', 'divergent.yaml'),
      [
        `- name: "divergent <&\\"'> allow"`,
        '  input:',
        '    principal: {id: agent-1, status: suspended, kind: agent}',
        '    policies: [{id: p-ext, resources: ["api:external/*"], actions: [read]}]',
        '    request: {upstream: echo, method: GET, path: /v1, resource: "api:external/echo", action: read}',
        '    mandate: null',
        '    allowlist: {checked: true, matched: true, entry_id: al-1}',
        '    emergency: {global: false, principal: false}',
        '    now: 1767225600',
        '  expected: {allow: true, reasons: []}',
        '',
      ].join('\n'),
    );
    const text = await caracal('policy', 'test', '--policies', dir);
    expect(text.code).toBe(5);
    expect(text.out).toContain(`fixture "divergent <&"'> allow" (caracal/fixtures/divergent.yaml) wasm: expected allow=true reasons=[], got allow=false reasons=["principal_suspended"]`);
    expect(text.out).toContain(`fixture "divergent <&"'> allow" (caracal/fixtures/divergent.yaml) opa eval: expected allow=true`);
    expect(lastLine(text.out)).toMatch(/^\d+ passed, 1 failed$/);

    const out = path.join(tmp, 'divergent.xml');
    const junit = await caracal('policy', 'test', '--policies', dir, '--format', 'junit', '--out', out);
    expect(junit.code).toBe(5);
    const xml = await readFile(out, 'utf8');
    expect(xml).toContain('name="divergent &lt;&amp;&quot;&apos;&gt; allow"');
    const fixtures = suites(xml).get('decision fixtures')!;
    expect(fixtures.attrs.failures).toBe('1');
    const failed = fixtures.children.filter((c) => c.children.some((f) => f.name === 'failure'));
    expect(failed.map((c) => c.attrs.name)).toEqual([`divergent <&"'> allow`]);
    expect(failed[0]!.children[0]!.attrs.message).toMatch(/wasm: expected allow=true reasons=\[\], got allow=false/);
  });

  it('a Rego syntax error: exit 6, the parse error reported (JUnit to stdout without --out)', async () => {
    const dir = await copyPolicies('syntax');
    await appendFile(path.join(dir, 'caracal', 'authz.rego'), '\nthis is not rego {\n');
    const run = await caracal('policy', 'test', '--policies', dir, '--format', 'junit');
    expect(run.code).toBe(6);
    const rego = suites(run.out).get('rego tests')!;
    expect(rego.attrs.errors).toBe('1');
    expect(rego.children[0]!.children[0]!.attrs.message).toMatch(/could not load the policies: .*rego_parse_error/);
  });

  it('a failing Rego test: exit 3, the test named', async () => {
    const dir = await copyPolicies('failing');
    await appendFile(path.join(dir, 'caracal', 'authz_test.rego'), '\ntest_deliberately_failing if {\n\tdata.caracal.authz.decision.allow with input as {}\n}\n');
    const run = await caracal('policy', 'test', '--policies', dir);
    expect(run.code).toBe(3);
    expect(run.out).toMatch(/data\.caracal\.authz_test\.test_deliberately_failing \(caracal\/authz_test\.rego:\d+\): FAIL/);
    expect(run.out).toContain('coverage: SKIPPED: not computed: a Rego test failed');
    expect(lastLine(run.out)).toMatch(/^\d+ passed, 1 failed$/);
  });

  it('uncovered Rego below the gate: exit 4, the uncovered lines named; a lower gate passes', async () => {
    const dir = await copyPolicies('uncovered');
    const helpers = Array.from({ length: 40 }, (_v, i) => `uncovered_helper_${i}(x) := y if {\n\ty := x + ${i}\n\ty > 0\n}\n`).join('\n');
    await appendFile(path.join(dir, 'caracal', 'authz.rego'), `\n${helpers}`);
    const run = await caracal('policy', 'test', '--policies', dir, '--coverage-min', '99');
    expect(run.code).toBe(4);
    expect(run.out).toMatch(/coverage: FAILED: coverage [\d.]+% is below the 99% gate/);
    expect(run.out).toMatch(/not covered: caracal\/authz\.rego:/);
    const ok = await caracal('policy', 'test', '--policies', dir, '--coverage-min', '0');
    expect(ok.code).toBe(0);
  });

  it('usage errors exit 2 with one line', async () => {
    for (const args of [['--coverage-min', '101'], ['--coverage-min', 'abc'], ['--format', 'xml']]) {
      const run = await caracal('policy', 'test', ...args);
      expect(run.code, args.join(' ')).toBe(2);
      expect(run.err.trimEnd().split('\n')).toHaveLength(1);
    }
  });
});

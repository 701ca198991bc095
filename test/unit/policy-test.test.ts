import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  compareDecision,
  findFixtureFiles,
  formatJunit,
  formatText,
  parseFixtureFile,
  type PolicyTestReport,
  xmlEscape,
} from '../../src/policy/policy-test.js';
import { assertWellFormedXml } from '../helpers/xml.js';

const report = (over: Partial<PolicyTestReport> = {}): PolicyTestReport => ({
  policiesDir: '/p',
  compileError: null,
  rego: [
    { name: 'data.x_test.test_ok', package: 'data.x_test', file: 'x_test.rego', row: 1, seconds: 0.001, status: 'passed' },
    { name: 'data.x_test.test_bad', package: 'data.x_test', file: 'x_test.rego', row: 3, seconds: 0.002, status: 'failed', message: 'FAIL <&"\'>' },
  ],
  coverage: { min: 90, percent: null, status: 'skipped', message: 'not computed: a Rego test failed', notCovered: [] },
  fixtures: [
    { name: 'fine', file: 'fixtures/a.yaml', status: 'passed', failures: [] },
    { name: `odd <name> & "quotes" 'too'\u0001`, file: 'fixtures/a.yaml', status: 'failed', failures: ['wasm: expected <allow> & got "deny"', 'opa eval: same'] },
  ],
  passed: 2,
  failed: 2,
  exitCode: 3,
  seconds: 1.5,
  ...over,
});

describe('policy test: JUnit XML', () => {
  it('escapes < & " \' > and drops characters XML 1.0 forbids', () => {
    expect(xmlEscape(`a<b&c"d'e>f`)).toBe('a&lt;b&amp;c&quot;d&apos;e&gt;f');
    expect(xmlEscape('x\u0000y\u001fz\ttab')).toBe('xyz&#9;tab');
    expect(xmlEscape('line1\nline2')).toBe('line1&#10;line2');
  });

  it('is well-formed, with one suite each for rego tests, coverage and fixtures, failures carrying messages', () => {
    const xml = formatJunit(report());
    const [root] = assertWellFormedXml(xml);
    expect(root!.name).toBe('testsuites');
    expect(root!.attrs).toMatchObject({ tests: '5', failures: '2', errors: '0', skipped: '1' });
    const suites = root!.children;
    expect(suites.map((s) => s.attrs.name)).toEqual(['rego tests', 'coverage', 'decision fixtures']);
    const [rego, coverage, fixtures] = suites;
    expect(rego!.attrs).toMatchObject({ tests: '2', failures: '1' });
    expect(rego!.children.map((c) => c.attrs.name)).toEqual(['test_ok', 'test_bad']);
    expect(rego!.children[1]!.children[0]!.attrs.message).toBe('FAIL <&"\'>');
    expect(coverage!.children[0]!.children[0]!.name).toBe('skipped');
    const odd = fixtures!.children[1]!;
    expect(odd.attrs.name).toBe(`odd <name> & "quotes" 'too'`);
    expect(odd.children[0]!.name).toBe('failure');
    expect(odd.children[0]!.attrs.message).toBe('wasm: expected <allow> & got "deny"');
    expect(odd.children[0]!.text).toBe('wasm: expected <allow> & got "deny"\nopa eval: same');
  });

  it('reports a compile error as an error case in the rego suite', () => {
    const xml = formatJunit(report({ compileError: 'opa test could not load the policies: x.rego:1: rego_parse_error <eof>', rego: [], fixtures: [], exitCode: 6 }));
    assertWellFormedXml(xml);
    expect(xml).toContain('<error message="opa test could not load the policies: x.rego:1: rego_parse_error &lt;eof&gt;"');
  });

  it('the checker itself rejects malformed XML', () => {
    const head = '<?xml version="1.0" encoding="UTF-8"?>\n';
    expect(() => assertWellFormedXml(`${head}<a><b></a></b>`)).toThrow(/mismatched/);
    expect(() => assertWellFormedXml(`${head}<a x="1 & 2"/>`)).toThrow(/unescaped &/);
    expect(() => assertWellFormedXml(`${head}<a>1 < 2</a>`)).toThrow();
    expect(() => assertWellFormedXml(`${head}<a>`)).toThrow(/unclosed/);
  });
});

describe('policy test: text summary', () => {
  it('ends with exactly "N passed, N failed"', () => {
    const text = formatText(report());
    const lines = text.trimEnd().split('\n');
    expect(lines.at(-1)).toBe('2 passed, 2 failed');
    expect(text).toContain('FAIL <&"\'>');
    expect(text).toContain('wasm: expected <allow> & got "deny"');
  });
});

describe('policy test: fixtures', () => {
  it('parses YAML fixtures and rejects malformed ones naming the file and entry', () => {
    const ok = parseFixtureFile('- name: a\n  input: {x: 1}\n  expected: {allow: false, reasons: [no_policy], policy_ids: []}\n', 'fixtures/f.yaml');
    expect(ok).toEqual([{ name: 'a', file: 'fixtures/f.yaml', input: { x: 1 }, expected: { allow: false, reasons: ['no_policy'], policy_ids: [] } }]);
    expect(() => parseFixtureFile('name: a', 'f.yaml')).toThrow(/f\.yaml: expected a list of fixtures/);
    expect(() => parseFixtureFile('- name: a\n  input: {}\n  expected: {allow: maybe, reasons: []}\n', 'f.yaml')).toThrow(/fixture 1 \(a\): expected\.allow/);
    expect(() => parseFixtureFile('- name: a\n  input: {}\n  expected: {allow: true, reasons: [1]}\n', 'f.yaml')).toThrow(/expected\.reasons/);
    expect(() => parseFixtureFile('- input: {}\n', 'f.yaml')).toThrow(/non-empty string "name"/);
    expect(() => parseFixtureFile('- [unclosed', 'f.yaml')).toThrow(/f\.yaml: invalid YAML/);
  });

  it('compares allow and reasons exactly (ordered: the policy sorts them), policy_ids only when given', () => {
    const got = { allow: false, reasons: ['a', 'b'], policy_ids: [] };
    expect(compareDecision({ allow: false, reasons: ['a', 'b'] }, got)).toBeNull();
    expect(compareDecision({ allow: false, reasons: ['b', 'a'] }, got)).toMatch(/expected allow=false reasons=\["b","a"\], got allow=false reasons=\["a","b"\]/);
    expect(compareDecision({ allow: true, reasons: [] }, got)).toMatch(/expected allow=true/);
    expect(compareDecision({ allow: false, reasons: ['a', 'b'], policy_ids: ['p'] }, got)).toMatch(/policy_ids=\["p"\].*policy_ids=\[\]/);
    expect(compareDecision({ allow: false, reasons: [] }, undefined)).toMatch(/got no decision/);
  });

  describe('finding fixture files', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'caracal-fixture-find-'));
      for (const f of ['fixtures/a.yaml', 'fixtures/b.yml', 'fixtures/c.json', 'caracal/fixtures/d.yaml', 'examples/x/fixtures/e.yaml', '.hidden/fixtures/f.yaml', 'caracal/g.yaml']) {
        await mkdir(path.join(dir, path.dirname(f)), { recursive: true });
        await writeFile(path.join(dir, f), '[]');
      }
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });
    it('takes fixtures/*.yaml|yml anywhere but in folders the bundle build ignores', async () => {
      expect(await findFixtureFiles(dir)).toEqual(['caracal/fixtures/d.yaml', 'fixtures/a.yaml', 'fixtures/b.yml']);
    });
  });
});

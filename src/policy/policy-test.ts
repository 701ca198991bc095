/**
 * `caracal policy test`: the policies folder's Rego unit tests (`opa test`), its coverage gate, and
 * its decision fixtures replayed on the compiled WASM (the gateway's engine) and through `opa eval`
 * (the reference interpreter). Produces a report, rendered as text or JUnit XML.
 *
 * Decision fixtures are YAML files `fixtures/*.yaml` (or `.yml`) in any folder of the policies
 * tree outside the folders the bundle build ignores (`examples/`, hidden folders): a list of
 * `{name, input, expected: {allow, reasons, policy_ids?}}`. `reasons` and `policy_ids` compare as
 * exact lists: the policy guarantees both sorted and without duplicates (policies/README.md).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { parse as parseYaml } from 'yaml';

import { CaracalError, isCaracalError, toError } from '../errors/catalog.js';
import { BUILD_IGNORE, buildBundle } from './bundle.js';
import { type DecisionInput, PolicyEngine } from './engine.js';

/** Exit codes of `caracal policy test` (1 and 2 keep the CLI's meaning: error, usage). */
export const POLICY_TEST_EXIT = {
  ok: 0,
  /** The run itself failed (no opa binary, I/O error): one line on stderr. */
  error: 1,
  /** Usage error (bad flag or value), as for every command. */
  usage: 2,
  /** A Rego test failed or errored. */
  regoTests: 3,
  /** Coverage below `--coverage-min`. */
  coverage: 4,
  /** A decision fixture disagrees with the WASM or with `opa eval`, or a fixture file is invalid. */
  fixtures: 5,
  /** The policies do not load or compile (`opa test`, `opa build -t wasm` or `opa eval` refuse them). */
  compile: 6,
} as const;

export const DEFAULT_COVERAGE_MIN = 90;
/** The query both evaluators answer. */
export const DECISION_QUERY = 'data.caracal.authz.decision';

export interface PolicyTestOptions {
  opaBin: string;
  policiesDir: string;
  /** Percent, 0–100 (default 90). */
  coverageMin?: number;
  /** Per `opa` invocation (default 120 s). */
  timeoutMs?: number;
}

export type CaseStatus = 'passed' | 'failed' | 'error' | 'skipped';

export interface RegoTestCase {
  /** `data.<package>.<name>`. */
  name: string;
  package: string;
  file: string;
  row: number | null;
  seconds: number;
  status: CaseStatus;
  message?: string;
}

export interface CoverageResult {
  min: number;
  /** null when not computed (the policies failed to load or a test failed). */
  percent: number | null;
  status: CaseStatus;
  message: string;
  /** `file:rows` not covered, for the report. */
  notCovered: string[];
}

export interface ExpectedDecision {
  allow: boolean;
  reasons: string[];
  policy_ids?: string[];
}

export interface DecisionFixture {
  name: string;
  /** Root-relative path of the YAML file. */
  file: string;
  input: unknown;
  expected: ExpectedDecision;
}

export interface FixtureCase {
  name: string;
  file: string;
  status: CaseStatus;
  /** One line per evaluator that disagrees (or why the file is invalid). */
  failures: string[];
}

export interface PolicyTestReport {
  policiesDir: string;
  /** Set when the policies do not load or compile; the later stages are then skipped. */
  compileError: string | null;
  rego: RegoTestCase[];
  coverage: CoverageResult;
  fixtures: FixtureCase[];
  passed: number;
  failed: number;
  exitCode: number;
  seconds: number;
}

// ------------------------------------------------------------------------------------------------
// opa

interface OpaRun {
  code: number;
  stdout: string;
  stderr: string;
}

function runOpa(opaBin: string, args: string[], cwd: string, timeoutMs: number): Promise<OpaRun> {
  return new Promise((resolve, reject) => {
    execFile(opaBin, args, { cwd, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) {
        const errno = (err as NodeJS.ErrnoException).code;
        if (errno === 'ENOENT') {
          reject(new CaracalError('CARACAL_DEPENDENCY', `opa binary not found at ${opaBin} (set CARACAL_OPA_BIN or pass --opa)`));
          return;
        }
        if (typeof errno !== 'number' || err.killed) {
          reject(new CaracalError('CARACAL_DEPENDENCY', `opa ${args[0]} failed: ${err.message.split('\n')[0]}`));
          return;
        }
        resolve({ code: errno, stdout, stderr });
        return;
      }
      resolve({ code: 0, stdout, stderr });
    });
  });
}

function firstLines(text: string, max = 20): string {
  const lines = text.trim().split('\n');
  return lines.length > max ? [...lines.slice(0, max), `… (${lines.length - max} more lines)`].join('\n') : lines.join('\n');
}

interface OpaTestJson {
  location?: { file?: string; row?: number };
  package?: string;
  name?: string;
  fail?: boolean;
  skip?: boolean;
  error?: { message?: string; code?: string } | string;
  output?: string;
  duration?: number;
}

function regoCases(results: OpaTestJson[]): RegoTestCase[] {
  return results.map((t) => {
    const pkg = t.package ?? 'data';
    const name = `${pkg}.${t.name ?? '?'}`;
    const file = t.location?.file ?? '';
    const base: RegoTestCase = { name, package: pkg, file, row: t.location?.row ?? null, seconds: (t.duration ?? 0) / 1e9, status: 'passed' };
    if (t.error !== undefined && t.error !== null) {
      const msg = typeof t.error === 'string' ? t.error : (t.error.message ?? JSON.stringify(t.error));
      return { ...base, status: 'error', message: `${name}: ERROR: ${msg}` };
    }
    if (t.fail) {
      const where = base.row !== null ? `${file}:${base.row}` : file;
      return { ...base, status: 'failed', message: `${name} (${where}): FAIL${t.output ? `\n${t.output}` : ''}` };
    }
    if (t.skip) return { ...base, status: 'skipped', message: 'skipped (todo_ test)' };
    return base;
  });
}

interface CoverageJson {
  coverage?: number;
  files?: Record<string, { not_covered?: { start?: { row?: number }; end?: { row?: number } }[] }>;
}

function notCoveredLines(json: CoverageJson): string[] {
  const out: string[] = [];
  for (const [file, report] of Object.entries(json.files ?? {})) {
    const ranges = (report.not_covered ?? [])
      .map((r) => {
        const a = r.start?.row;
        const b = r.end?.row;
        return a === undefined ? null : a === b || b === undefined ? String(a) : `${a}-${b}`;
      })
      .filter((r): r is string => r !== null);
    if (ranges.length > 0) out.push(`${file}:${ranges.join(',')}`);
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Fixtures

/** Folder names skipped while looking for fixtures: what the bundle build skips (examples, hidden). */
function skippedFolder(name: string): boolean {
  return name.startsWith('.') || name === 'node_modules' || (BUILD_IGNORE.includes(name) && name !== 'fixtures');
}

/** Root-relative paths (with "/") of every `fixtures/*.yaml|yml`, sorted. */
export async function findFixtureFiles(policiesDir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(path.join(policiesDir, rel), { withFileTypes: true });
    for (const entry of entries) {
      const child = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        if (!skippedFolder(entry.name)) await walk(child);
      } else if (entry.isFile() && path.posix.basename(rel) === 'fixtures' && /\.ya?ml$/.test(entry.name)) {
        found.push(child);
      }
    }
  };
  await walk('');
  return found.sort();
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/**
 * Parses one fixture file. YAML 1.1 (what `opa test` uses when it loads the file as data: `yes`
 * is a boolean there too). Throws a one-line CaracalError naming the file and the entry.
 */
export function parseFixtureFile(text: string, file: string): DecisionFixture[] {
  let doc: unknown;
  try {
    doc = parseYaml(text, { version: '1.1', prettyErrors: false });
  } catch (err) {
    throw new CaracalError('CARACAL_VALIDATION', `${file}: invalid YAML: ${toError(err).message.split('\n')[0]}`);
  }
  if (!Array.isArray(doc)) throw new CaracalError('CARACAL_VALIDATION', `${file}: expected a list of fixtures`);
  return doc.map((entry: unknown, i) => {
    const where = `${file}: fixture ${i + 1}`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new CaracalError('CARACAL_VALIDATION', `${where}: not a mapping`);
    const { name, input, expected } = entry as Record<string, unknown>;
    if (typeof name !== 'string' || name.trim() === '') throw new CaracalError('CARACAL_VALIDATION', `${where}: needs a non-empty string "name"`);
    if (input === undefined) throw new CaracalError('CARACAL_VALIDATION', `${where} (${name}): needs an "input"`);
    if (typeof expected !== 'object' || expected === null || Array.isArray(expected)) {
      throw new CaracalError('CARACAL_VALIDATION', `${where} (${name}): needs an "expected" mapping`);
    }
    const exp = expected as Record<string, unknown>;
    if (typeof exp.allow !== 'boolean') throw new CaracalError('CARACAL_VALIDATION', `${where} (${name}): expected.allow must be true or false`);
    if (!isStringArray(exp.reasons)) throw new CaracalError('CARACAL_VALIDATION', `${where} (${name}): expected.reasons must be a list of strings`);
    if (exp.policy_ids !== undefined && !isStringArray(exp.policy_ids)) {
      throw new CaracalError('CARACAL_VALIDATION', `${where} (${name}): expected.policy_ids must be a list of strings`);
    }
    const out: ExpectedDecision = { allow: exp.allow, reasons: exp.reasons };
    if (exp.policy_ids !== undefined) out.policy_ids = exp.policy_ids as string[];
    return { name, file, input, expected: out };
  });
}

interface GotDecision {
  allow: unknown;
  reasons: unknown;
  policy_ids: unknown;
}

const show = (d: { allow: unknown; reasons: unknown; policy_ids?: unknown }, withIds: boolean): string =>
  `allow=${JSON.stringify(d.allow)} reasons=${JSON.stringify(d.reasons)}${withIds ? ` policy_ids=${JSON.stringify(d.policy_ids)}` : ''}`;

/** null when `got` matches `expected` (policy_ids only when the fixture names them), else "expected … got …". */
export function compareDecision(expected: ExpectedDecision, got: GotDecision | undefined): string | null {
  const withIds = expected.policy_ids !== undefined;
  if (got === undefined) return `expected ${show(expected, withIds)}, got no decision (undefined)`;
  const same =
    got.allow === expected.allow && isDeepStrictEqual(got.reasons, expected.reasons) && (!withIds || isDeepStrictEqual(got.policy_ids, expected.policy_ids));
  return same ? null : `expected ${show(expected, withIds)}, got ${show(got, withIds)}`;
}

/** `opa eval` over the same sources the bundle compiles, every fixture input in one run. */
async function opaEvalAll(opaBin: string, policiesDir: string, inputs: unknown[], tmp: string, timeoutMs: number): Promise<(GotDecision | undefined)[] | string> {
  const inputFile = path.join(tmp, 'inputs.json');
  await writeFile(inputFile, JSON.stringify({ inputs }));
  const args = ['eval', '--format=json'];
  for (const pattern of BUILD_IGNORE) args.push('--ignore', pattern);
  args.push('-d', '.', '--input', inputFile, `{i: d | some i, x in input.inputs; d := ${DECISION_QUERY} with input as x}`);
  const run = await runOpa(opaBin, args, policiesDir, timeoutMs);
  let value: unknown;
  try {
    const out = JSON.parse(run.stdout) as { result?: { expressions?: { value?: unknown }[] }[]; errors?: { message?: string }[] };
    if (run.code !== 0 || out.errors) return firstLines(run.stderr || run.stdout);
    value = out.result?.[0]?.expressions?.[0]?.value;
  } catch {
    return firstLines(run.stderr || run.stdout || `opa eval exited ${run.code}`);
  }
  if (typeof value !== 'object' || value === null) return `opa eval returned no result: ${firstLines(run.stdout)}`;
  const byIndex = value as Record<string, GotDecision>;
  return inputs.map((_x, i) => byIndex[String(i)]);
}

// ------------------------------------------------------------------------------------------------
// The run

export async function runPolicyTests(options: PolicyTestOptions): Promise<PolicyTestReport> {
  const started = Date.now();
  const policiesDir = path.resolve(options.policiesDir);
  const min = options.coverageMin ?? DEFAULT_COVERAGE_MIN;
  const timeoutMs = options.timeoutMs ?? 120_000;
  const report: PolicyTestReport = {
    policiesDir,
    compileError: null,
    rego: [],
    coverage: { min, percent: null, status: 'skipped', message: 'not computed', notCovered: [] },
    fixtures: [],
    passed: 0,
    failed: 0,
    exitCode: POLICY_TEST_EXIT.ok,
    seconds: 0,
  };
  const finish = (): PolicyTestReport => {
    const all: CaseStatus[] = [...report.rego.map((t) => t.status), report.coverage.status, ...report.fixtures.map((f) => f.status)];
    report.passed = all.filter((s) => s === 'passed').length;
    report.failed = all.filter((s) => s === 'failed' || s === 'error').length + (report.compileError !== null ? 1 : 0);
    if (report.compileError !== null) report.exitCode = POLICY_TEST_EXIT.compile;
    else if (report.rego.some((t) => t.status === 'failed' || t.status === 'error')) report.exitCode = POLICY_TEST_EXIT.regoTests;
    else if (report.coverage.status === 'failed') report.exitCode = POLICY_TEST_EXIT.coverage;
    else if (report.fixtures.some((f) => f.status === 'failed' || f.status === 'error')) report.exitCode = POLICY_TEST_EXIT.fixtures;
    report.seconds = (Date.now() - started) / 1000;
    return report;
  };

  try {
    await readdir(policiesDir);
  } catch (err) {
    throw new CaracalError('CARACAL_VALIDATION', `policies folder not readable: ${policiesDir} (${toError(err).message.split('\n')[0]})`);
  }

  // 1. Rego unit tests. Run inside the folder: file names in the report are folder-relative.
  const tests = await runOpa(options.opaBin, ['test', '.', '--format=json'], policiesDir, timeoutMs);
  let parsed: unknown;
  try {
    parsed = JSON.parse(tests.stdout);
  } catch {
    parsed = undefined;
  }
  if (!Array.isArray(parsed)) {
    report.compileError = `opa test could not load the policies: ${firstLines(tests.stderr || tests.stdout || `exit ${tests.code}`)}`;
    return finish();
  }
  report.rego = regoCases(parsed as OpaTestJson[]);
  const regoFailed = report.rego.some((t) => t.status === 'failed' || t.status === 'error');

  // 2. Coverage (opa reports it only when every test passes).
  if (regoFailed) {
    report.coverage.message = 'not computed: a Rego test failed';
  } else {
    const cov = await runOpa(options.opaBin, ['test', '.', '--coverage', '--format=json'], policiesDir, timeoutMs);
    let json: CoverageJson | undefined;
    try {
      json = JSON.parse(cov.stdout) as CoverageJson;
    } catch {
      json = undefined;
    }
    if (json === undefined || typeof json.coverage !== 'number') {
      report.coverage = { ...report.coverage, status: 'error', message: `opa did not report coverage: ${firstLines(cov.stderr || cov.stdout, 5)}` };
    } else {
      const percent = json.coverage;
      const notCovered = notCoveredLines(json);
      report.coverage = percent >= min
        ? { min, percent, status: 'passed', message: `coverage ${percent}% (gate ${min}%)`, notCovered }
        : { min, percent, status: 'failed', message: `coverage ${percent}% is below the ${min}% gate`, notCovered };
    }
  }

  // 3. Decision fixtures on the compiled WASM and through opa eval.
  const fixtures: DecisionFixture[] = [];
  for (const file of await findFixtureFiles(policiesDir)) {
    try {
      fixtures.push(...parseFixtureFile(await readFile(path.join(policiesDir, file), 'utf8'), file));
    } catch (err) {
      if (!isCaracalError(err)) throw err;
      report.fixtures.push({ name: `(file ${file})`, file, status: 'error', failures: [err.message] });
    }
  }
  const seen = new Map<string, string>();
  for (const f of fixtures) {
    const other = seen.get(f.name);
    if (other !== undefined) report.fixtures.push({ name: f.name, file: f.file, status: 'error', failures: [`duplicate fixture name (also in ${other})`] });
    seen.set(f.name, f.file);
  }
  if (fixtures.length === 0) return finish();

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-policy-test-'));
  try {
    let engine: PolicyEngine;
    try {
      const built = await buildBundle({ opaBin: options.opaBin, policiesDir, outFile: path.join(tmp, 'bundle.tar.gz'), revision: 'policy-test', timeoutMs });
      engine = await PolicyEngine.fromBundleFile(built.outFile);
    } catch (err) {
      if (isCaracalError(err) && err.code === 'CARACAL_VALIDATION') {
        report.compileError = `the WASM build failed: ${firstLines(err.message)}`;
        return finish();
      }
      throw err;
    }
    const interpreted = await opaEvalAll(options.opaBin, policiesDir, fixtures.map((f) => f.input), tmp, timeoutMs);
    if (typeof interpreted === 'string') {
      report.compileError = `opa eval failed: ${interpreted}`;
      return finish();
    }
    fixtures.forEach((f, i) => {
      const failures: string[] = [];
      const wasm = engine.evaluate(f.input as DecisionInput);
      const wasmGot = { allow: wasm.allow, reasons: wasm.reasons, policy_ids: wasm.policyIds };
      const wasmDiff = wasm.outcome === 'result' ? compareDecision(f.expected, wasmGot) : `engine outcome ${wasm.outcome}${wasm.error ? ` (${wasm.error.message})` : ''}, ${compareDecision(f.expected, wasmGot) ?? 'decision as expected'}`;
      if (wasmDiff !== null) failures.push(`fixture "${f.name}" (${f.file}) wasm: ${wasmDiff}`);
      const evalDiff = compareDecision(f.expected, interpreted[i]);
      if (evalDiff !== null) failures.push(`fixture "${f.name}" (${f.file}) opa eval: ${evalDiff}`);
      report.fixtures.push({ name: f.name, file: f.file, status: failures.length === 0 ? 'passed' : 'failed', failures });
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return finish();
}

// ------------------------------------------------------------------------------------------------
// Rendering

/** Text summary; the last line is exactly `N passed, N failed`. */
export function formatText(report: PolicyTestReport): string {
  const lines: string[] = [`policies: ${report.policiesDir}`];
  if (report.compileError !== null) {
    lines.push(`compile: FAILED`, ...report.compileError.split('\n').map((l) => `  ${l}`));
  }
  const count = (items: { status: CaseStatus }[], s: CaseStatus[]) => items.filter((i) => s.includes(i.status)).length;
  if (report.rego.length > 0 || report.compileError === null) {
    lines.push(`rego tests: ${count(report.rego, ['passed'])} passed, ${count(report.rego, ['failed', 'error'])} failed, ${count(report.rego, ['skipped'])} skipped`);
    for (const t of report.rego) if (t.status === 'failed' || t.status === 'error') lines.push(`  ${(t.message ?? t.name).split('\n').join('\n    ')}`);
  }
  lines.push(`coverage: ${report.coverage.status === 'passed' ? '' : `${report.coverage.status.toUpperCase()}: `}${report.coverage.message}`);
  if (report.coverage.status === 'failed' && report.coverage.notCovered.length > 0) lines.push(`  not covered: ${report.coverage.notCovered.join(' ')}`);
  lines.push(`fixtures (wasm + opa eval): ${count(report.fixtures, ['passed'])} passed, ${count(report.fixtures, ['failed', 'error'])} failed`);
  for (const f of report.fixtures) for (const m of f.failures) lines.push(`  ${m}`);
  lines.push(`${report.passed} passed, ${report.failed} failed`);
  return `${lines.join('\n')}\n`;
}

/** Escapes XML text and attribute values; drops characters XML 1.0 cannot carry at all. */
export function xmlEscape(value: string): string {
  return value
    // eslint-disable-next-line no-control-regex -- removing the control characters XML 1.0 forbids is the point
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '')
    .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
    .replace(/\n/g, '&#10;')
    .replace(/\r/g, '&#13;')
    .replace(/\t/g, '&#9;');
}

interface JunitCase {
  classname: string;
  name: string;
  file?: string;
  seconds: number;
  status: CaseStatus;
  message?: string;
}

function junitSuite(name: string, cases: JunitCase[]): string {
  const failures = cases.filter((c) => c.status === 'failed').length;
  const errors = cases.filter((c) => c.status === 'error').length;
  const skipped = cases.filter((c) => c.status === 'skipped').length;
  const time = cases.reduce((s, c) => s + c.seconds, 0);
  const out = [`  <testsuite name="${xmlEscape(name)}" tests="${cases.length}" failures="${failures}" errors="${errors}" skipped="${skipped}" time="${time.toFixed(3)}">`];
  for (const c of cases) {
    const attrs = `classname="${xmlEscape(c.classname)}" name="${xmlEscape(c.name)}"${c.file ? ` file="${xmlEscape(c.file)}"` : ''} time="${c.seconds.toFixed(3)}"`;
    if (c.status === 'passed') {
      out.push(`    <testcase ${attrs}/>`);
      continue;
    }
    const message = c.message ?? c.status;
    const firstLine = message.split('\n')[0]!;
    const tag = c.status === 'failed' ? 'failure' : c.status === 'error' ? 'error' : 'skipped';
    out.push(`    <testcase ${attrs}>`);
    out.push(
      tag === 'skipped'
        ? `      <skipped message="${xmlEscape(firstLine)}"/>`
        : `      <${tag} message="${xmlEscape(firstLine)}" type="${tag}">${xmlEscape(message).replace(/&#10;/g, '\n')}</${tag}>`,
    );
    out.push('    </testcase>');
  }
  out.push('  </testsuite>');
  return out.join('\n');
}

/** JUnit XML: one testsuite each for the Rego tests, the coverage gate and the decision fixtures. */
export function formatJunit(report: PolicyTestReport): string {
  const rego: JunitCase[] = report.rego.map((t) => ({
    classname: t.package,
    name: t.name.startsWith(`${t.package}.`) ? t.name.slice(t.package.length + 1) : t.name,
    file: t.file,
    seconds: t.seconds,
    status: t.status,
    message: t.message,
  }));
  if (report.compileError !== null) {
    rego.unshift({ classname: 'opa', name: 'compile policies', seconds: 0, status: 'error', message: report.compileError });
  }
  const coverage: JunitCase[] = [
    {
      classname: 'opa.coverage',
      name: `coverage >= ${report.coverage.min}%`,
      seconds: 0,
      status: report.coverage.status,
      message: report.coverage.notCovered.length > 0 && report.coverage.status === 'failed'
        ? `${report.coverage.message}\nnot covered: ${report.coverage.notCovered.join(' ')}`
        : report.coverage.message,
    },
  ];
  const fixtures: JunitCase[] = report.fixtures.map((f) => ({
    classname: `fixtures.${f.file}`,
    name: f.name,
    file: f.file,
    seconds: 0,
    status: f.status,
    message: f.failures.join('\n') || undefined,
  }));
  const all = [...rego, ...coverage, ...fixtures];
  const n = (s: CaseStatus) => all.filter((c) => c.status === s).length;
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="caracal policy test" tests="${all.length}" failures="${n('failed')}" errors="${n('error')}" skipped="${n('skipped')}" time="${report.seconds.toFixed(3)}">`,
    junitSuite('rego tests', rego),
    junitSuite('coverage', coverage),
    junitSuite('decision fixtures', fixtures),
    '</testsuites>',
    '',
  ].join('\n');
}

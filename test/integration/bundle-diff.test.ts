/**
 * `caracal bundle diff` (src/policy/replay.ts, src/cli/commands/bundle-diff.ts): decisions recorded by the real
 * gateway over a day, written to the ledger by the real ledger writer, replayed through a candidate bundle built with
 * the real opa. The flips it reports are checked against the set the test works out from the requests themselves.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsumers } from '../../src/consumers/index.js';
import { EVENT_TYPES } from '../../src/events/cloudevents.js';
import { POLICIES_DIR } from '../../src/paths.js';
import { buildBundle, signBundle } from '../../src/policy/bundle.js';
import { loadSigningKey } from '../../src/policy/signing.js';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';
import { randomName, requireServices } from '../helpers/services.js';

const DAY = '2026-03-10';
const DAY_START = Date.parse(`${DAY}T00:00:00Z`);
const HOUR = 3_600_000;
const NEW_REASON = 'echo_path_not_allowed';

/**
 * An extra module of package caracal.authz (the extension point `extra_deny_reasons`, as
 * policies/examples/code-hosting does): a call to the echo upstream is denied unless its path, as
 * `api:external/echo/<path>`, is under one of the patterns.
 */
function pathRule(patterns: string[]): string {
  return `package caracal.authz

echo_path_patterns := ${JSON.stringify(patterns)}

echo_path_resource := concat("", [input.request.resource, input.request.path])

echo_path_allowed if {
	some pattern in echo_path_patterns
	glob.match(pattern, ["/"], echo_path_resource)
}

extra_deny_reasons contains "${NEW_REASON}" if {
	input.request.resource == "api:external/echo"
	not echo_path_allowed
}
`;
}

const BASELINE_PATTERNS = ['api:external/echo/reports/**', 'api:external/echo/public/**'];
/** The one change: reports/ tightened to reports/2026/. */
const CANDIDATE_PATTERNS = ['api:external/echo/reports/2026/**', 'api:external/echo/public/**'];

/** The paths called, round robin: some stay allowed, some flip, some are denied by both. */
const PATHS = ['/reports/2026/q1.csv', '/reports/2025/q4.csv', '/public/index.html', '/reports/summary', '/private/keys', '/reports/2026/03/daily.json', '/reports/archive/2019/a.txt'];

interface Sent {
  decisionId: string;
  status: number;
  path: string;
  method: string;
  at: number;
}

describe('caracal bundle diff', () => {
  let dir: string;
  let home: string;
  let origin: string;
  let baselineFile: string;
  let candidateFile: string;
  let permissiveFile: string;
  const sent: Sent[] = [];
  const caracal = cliRunner(() => ({ CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent', CARACAL_LEDGER_ORIGIN: origin }));

  /** A policy folder: the core policy plus `extra` modules, built with the real opa. */
  async function build(name: string, extra: Record<string, string>, core = true): Promise<string> {
    const policies = path.join(dir, `${name}-policies`);
    await mkdir(path.join(policies, 'caracal'), { recursive: true });
    if (core) await writeFile(path.join(policies, 'caracal', 'authz.rego'), await readFile(path.join(POLICIES_DIR, 'caracal', 'authz.rego')));
    for (const [file, text] of Object.entries(extra)) await writeFile(path.join(policies, file), text);
    const opaBin = process.env.CARACAL_OPA_BIN ?? requireServices().opaBin;
    return (await buildBundle({ opaBin, policiesDir: policies, outFile: path.join(dir, `${name}.tar.gz`), revision: name })).outFile;
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-diff-'));
    baselineFile = await build('baseline', { 'echo_paths.rego': pathRule(BASELINE_PATTERNS) });
    candidateFile = await build('candidate', { 'echo_paths.rego': pathRule(CANDIDATE_PATTERNS) });
    // Decides everything "allow", anonymous requests too: a gateway refuses to load it.
    permissiveFile = await build('permissive', { 'caracal/authz.rego': 'package caracal.authz\n\ndecision := {"allow": true, "reasons": [], "policy_ids": []}\n' }, false);

    origin = `caracal.test/${randomName('diff')}`;
    let now = DAY_START - HOUR;
    const h: Harness = await createHarness({
      clock: () => now,
      configOverrides: {
        policy: { bundlePath: baselineFile },
        ledger: { origin, batchMaxEvents: 100, batchMaxMs: 200 },
        gateway: { limits: { unauthenticatedPerSource: { ratePerSecond: 100_000, burst: 100_000 }, perPrincipal: { maxConcurrent: 64, rate: { ratePerSecond: 100_000, burst: 100_000 } } } },
      },
    });
    home = h.ctx.config.home;
    try {
      const agents = [await h.registerAgent(), await h.registerAgent()];
      for (const agent of agents) await h.grant(agent, ['api:external/echo'], ['read']);
      const tokens = await Promise.all(agents.map((agent) => h.token(agent, 3_600)));
      const call = async (token: string, method: string, p: string, at: number) => {
        now = at;
        const reply = await h.assembled.gateway.app.inject({ method, url: `/proxy/echo${p}`, headers: { authorization: `Bearer ${token}` } });
        expect([200, 403]).toContain(reply.statusCode);
        sent.push({ decisionId: reply.headers['x-caracal-decision-id'] as string, status: reply.statusCode, path: p, method, at });
      };
      let n = 0;
      // The hour before the day and the hour after it: the same paths, outside the window.
      for (const at of [DAY_START - HOUR, DAY_START - 1, DAY_START + 24 * HOUR, DAY_START + 24 * HOUR + 30 * 60_000]) {
        for (const token of tokens) await call(token, 'GET', PATHS[n++ % PATHS.length]!, at);
      }
      // The day: every hour each agent calls four paths (and one POST, denied by its grant), at varied minutes.
      for (let hour = 0; hour < 24; hour++) {
        for (const [a, token] of tokens.entries()) {
          for (let k = 0; k < 4; k++) await call(token, 'GET', PATHS[n++ % PATHS.length]!, DAY_START + hour * HOUR + (a * 4 + k) * 7 * 60_000 + k * 1_000);
          await call(token, 'POST', '/reports/2025/upload', DAY_START + hour * HOUR + 59 * 60_000);
        }
      }
      // The ledger writer appends them all; then the gateway stops (the embedded database has one owner).
      const consumers = await startConsumers(h.ctx, ['ledger-writer'], { baseDelayMs: 10, maxDelayMs: 50, maxAttempts: 3, prepare: false });
      try {
        const deadline = Date.now() + 60_000;
        for (;;) {
          const { rows } = await h.ctx.db.query<{ n: string | number }>('SELECT count(*) AS n FROM ledger_entries WHERE origin = $1 AND event_type = $2', [origin, EVENT_TYPES.decision]);
          if (Number(rows[0]!.n) >= sent.length) break;
          if (Date.now() > deadline) throw new Error(`only ${rows[0]!.n} of ${sent.length} decisions reached the ledger`);
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      } finally {
        await consumers.stop();
      }
    } finally {
      await h.close();
    }
  }, 180_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    if (home) await rm(home, { recursive: true, force: true });
  });

  const inDay = (s: Sent) => s.at >= DAY_START && s.at < DAY_START + 24 * HOUR;
  /** Worked out from the requests alone: allowed in the day, under reports/ but not under reports/2026/. */
  const expectedFlips = () => sent.filter((s) => inDay(s) && s.status === 200 && s.path.startsWith('/reports/') && !s.path.startsWith('/reports/2026/')).map((s) => s.decisionId);

  interface DiffJson {
    origin: string;
    candidate: { revision: string };
    totals: Record<string, number>;
    flips: { decision_id: string; change: string; time: string; path: string; recorded: { allow: boolean; reasons: string[]; bundle_revision: string }; candidate: { allow: boolean; reasons: string[] }; redacted: boolean }[];
    flips_omitted: number;
  }

  it('a recorded day of decisions reports the exact set that flips under a policy change that tightens one resource pattern', async () => {
    // The recording is what the test thinks it is: each kind of outcome happened inside and outside the window.
    expect(sent.filter(inDay)).toHaveLength(24 * 2 * 5);
    expect(expectedFlips().length).toBeGreaterThan(20);
    expect(sent.filter((s) => !inDay(s) && s.status === 200 && s.path.startsWith('/reports/') && !s.path.startsWith('/reports/2026/')).length).toBeGreaterThan(0);

    const run = await caracal('bundle', 'diff', '--bundle', candidateFile, '--start-time', DAY, '--end-time', '2026-03-11', '--json');
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    const report = JSON.parse(run.out) as DiffJson;
    expect(report.origin).toBe(origin);
    expect(report.candidate.revision).toBe('candidate');
    // Exactly the decisions of the window: none before or after it, every one with its input.
    // The POSTs were denied by the grant (scope_action) and still are, now with the new reason too: other reasons.
    const posts = sent.filter((s) => inDay(s) && s.method === 'POST').map((s) => s.decisionId);
    expect(report.totals).toEqual({
      decisions: 240,
      replayed: 240,
      without_input: 0,
      unreadable: 0,
      redacted: 0,
      unchanged: 240 - expectedFlips().length - posts.length,
      allow_to_deny: expectedFlips().length,
      deny_to_allow: 0,
      reasons_changed: posts.length,
      candidate_errors: 0,
    });
    const flips = report.flips.filter((f) => f.change === 'allow_to_deny');
    expect(flips.map((f) => f.decision_id).sort()).toEqual(expectedFlips().sort());
    const others = report.flips.filter((f) => f.change !== 'allow_to_deny');
    expect(others.map((f) => f.decision_id).sort()).toEqual(posts.sort());
    for (const other of others) expect(other).toMatchObject({ change: 'reasons_changed', recorded: { allow: false, reasons: ['scope_action'] }, candidate: { allow: false, reasons: [NEW_REASON, 'scope_action'].sort() } });
    for (const flip of flips) {
      expect(flip).toMatchObject({ change: 'allow_to_deny', recorded: { allow: true, reasons: [], bundle_revision: 'baseline' }, candidate: { allow: false, reasons: [NEW_REASON] }, redacted: false });
      const time = Date.parse(flip.time);
      expect(time).toBeGreaterThanOrEqual(DAY_START);
      expect(time).toBeLessThan(DAY_START + 24 * HOUR);
    }
    expect(report.flips_omitted).toBe(0);
  });

  it('replaying through the recorded bundle changes nothing; an offset names the same instant', async () => {
    const run = await caracal('bundle', 'diff', '--bundle', baselineFile, '--start-time', '2026-03-10T01:00:00+01:00', '--end-time', '2026-03-11T00:00:00.000Z', '--json');
    expect(run.code).toBe(0);
    const report = JSON.parse(run.out) as DiffJson;
    expect(report.totals).toMatchObject({ decisions: 240, replayed: 240, unchanged: 240, allow_to_deny: 0, deny_to_allow: 0, reasons_changed: 0 });
    expect(report.flips).toEqual([]);
  });

  it('prints a summary and a table capped by --limit, saying how many more', async () => {
    const flips = expectedFlips().length;
    const changed = flips + 48;
    const run = await caracal('bundle', 'diff', '--bundle', candidateFile, '--start-time', DAY, '--end-time', '2026-03-11', '--limit', '3');
    expect(run.code).toBe(0);
    const lines = run.out.trimEnd().split('\n');
    expect(lines[0]).toBe(
      `replayed 240 of 240 decisions in [2026-03-10T00:00:00.000Z, 2026-03-11T00:00:00.000Z) through revision candidate: ${flips} allow → deny, 0 deny → allow, 48 with other reasons, ${240 - changed} unchanged`,
    );
    expect(lines[1]).toMatch(/^TIME +DECISION +PRINCIPAL +RESOURCE +PATH +ACTION +RECORDED → CANDIDATE +REASONS/);
    for (const line of lines.slice(2, 5)) {
      expect(line).toContain('api:external/echo');
      expect(line.includes(`allow → deny`) ? line.includes(`- → ${NEW_REASON}`) : line.includes(`deny → deny`) && line.includes(`scope_action → ${NEW_REASON},scope_action`)).toBe(true);
    }
    expect(lines[5]).toBe(`… and ${changed - 3} more (--limit ${changed} to list them, or --json)`);
    expect(lines).toHaveLength(6);
  });

  it('takes the candidate by revision from a bundle store: the database, or a directory', async () => {
    const storeDir = path.join(dir, 'store');
    for (const to of ['db', `dir:${storeDir}`]) {
      const published = await caracal('bundle', 'publish', candidateFile, '--to', to);
      expect(published.code, published.err).toBe(0);
      const run = await caracal('bundle', 'diff', '--revision', 'candidate', '--store', to, '--start-time', DAY, '--end-time', '2026-03-11', '--json');
      expect(run.code, run.err).toBe(0);
      const report = JSON.parse(run.out) as DiffJson;
      expect(report.candidate.revision).toBe('candidate');
      expect(report.flips.filter((f) => f.change === 'allow_to_deny').map((f) => f.decision_id).sort()).toEqual(expectedFlips().sort());
    }
    // Without --store: policy.store, else the database.
    const byDefault = await caracal('bundle', 'diff', '--revision', 'candidate', '--start-time', DAY, '--end-time', '2026-03-11', '--json');
    expect(byDefault.code, byDefault.err).toBe(0);
    expect((JSON.parse(byDefault.out) as DiffJson).totals.allow_to_deny).toBe(expectedFlips().length);
    for (const to of ['db', `dir:${storeDir}`]) {
      expectOneLineError(await caracal('bundle', 'diff', '--revision', 'never-published', '--store', to, '--start-time', DAY, '--end-time', '2026-03-11'), /never-published/);
    }
    expectOneLineError(await caracal('bundle', 'diff', '--revision', 'candidate', '--store', 'ftp://x', '--start-time', DAY, '--end-time', '2026-03-11'), /unknown bundle store/);
  });

  it('on the embedded database held by a running gateway, says so in one line (as the ledger commands do)', async () => {
    // Another live process holds the home's lock: the parent of this one stands in for a gateway.
    const lock = path.join(home, 'lock');
    await writeFile(lock, String(process.ppid));
    try {
      expectOneLineError(await caracal('bundle', 'diff', '--bundle', candidateFile, '--start-time', DAY, '--end-time', '2026-03-11'), /in use by another caracal process/);
    } finally {
      await rm(lock, { force: true });
    }
  });

  it('a window outside the recording replays nothing', async () => {
    const run = await caracal('bundle', 'diff', '--bundle', candidateFile, '--start-time', '2026-03-12', '--end-time', '2026-03-13', '--json');
    expect(run.code).toBe(0);
    expect((JSON.parse(run.out) as DiffJson).totals).toMatchObject({ decisions: 0, replayed: 0 });
  });

  it('loads the candidate as the gateway would: signature keys of policy.signing, and the smoke evaluation', async () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const keyFile = path.join(dir, 'signing.pem');
    const pubFile = path.join(dir, 'signing.pub.pem');
    await writeFile(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await writeFile(pubFile, publicKey.export({ type: 'spki', format: 'pem' }));
    const configFile = path.join(dir, 'signing.yaml');
    await writeFile(configFile, `policy:\n  signing:\n    publicKeys:\n      - keyId: default\n        path: ${pubFile}\n`);

    const unsigned = await caracal('-c', configFile, 'bundle', 'diff', '--bundle', candidateFile, '--start-time', DAY, '--end-time', '2026-03-11');
    expectOneLineError(unsigned, /unsigned/);

    const signedFile = path.join(dir, 'candidate.signed.tar.gz');
    await signBundle({ inFile: candidateFile, outFile: signedFile, key: await loadSigningKey(keyFile, 'default') });
    const signed = await caracal('-c', configFile, 'bundle', 'diff', '--bundle', signedFile, '--start-time', DAY, '--end-time', '2026-03-11', '--json');
    expect(signed.code).toBe(0);
    expect((JSON.parse(signed.out) as DiffJson).totals).toMatchObject({ allow_to_deny: expectedFlips().length, reasons_changed: 48 });

    expectOneLineError(await caracal('bundle', 'diff', '--bundle', permissiveFile, '--start-time', DAY, '--end-time', '2026-03-11'), /allowed an anonymous request.*refuse/);
  });

  it('refuses hostile and mistaken arguments with one line and a non-zero exit', async () => {
    const range = ['--start-time', DAY, '--end-time', '2026-03-11'];
    const cases: [string[], RegExp][] = [
      [['--start-time', DAY, '--end-time', '2026-03-11'], /give the candidate/],
      [['--bundle', candidateFile, '--revision', 'candidate', ...range], /--revision or --bundle, not both/],
      [['--bundle', candidateFile, '--store', 'dir:/tmp', ...range], /--store goes with --revision/],
      [['--revision', '../../etc/passwd', ...range], /--revision must be a plain token/],
      [['--revision', `r${'x'.repeat(200)}`, ...range], /--revision must be a plain token/],
      [['--bundle', candidateFile, '--start-time', DAY], /give the range/],
      [['--bundle', candidateFile, '--start-time', 'yesterday', '--end-time', '2026-03-11'], /--start-time must be an ISO 8601 time/],
      [['--bundle', candidateFile, '--start-time', '2026-03-10T00:00:00', '--end-time', '2026-03-11'], /--start-time must be an ISO 8601 time with Z or an offset/],
      [['--bundle', candidateFile, '--start-time', '2026-02-30', '--end-time', '2026-03-11'], /not a calendar date/],
      [['--bundle', candidateFile, '--start-time', '2026-03-10T25:00:00Z', '--end-time', '2026-03-11'], /is not a valid time/],
      [['--bundle', candidateFile, '--start-time', DAY, '--end-time', DAY], /--end-time must be after --start-time/],
      [['--bundle', candidateFile, '--start-time', '2026-03-11', '--end-time', DAY], /--end-time must be after --start-time/],
      [['--bundle', candidateFile, ...range, '--limit', '0'], /--limit must be a positive integer/],
      [['--bundle', candidateFile, ...range, '--limit', '-5'], /--limit must be a positive integer/],
      [['--bundle', path.join(dir, 'missing.tar.gz'), ...range], /missing\.tar\.gz does not exist/],
      [['--bundle', dir, ...range], /is not a file/],
      [['--bundle', '', ...range], /--bundle must name a bundle file/],
      [['--bundle', candidateFile, ...range, '--surprise'], /unknown option/],
    ];
    for (const [args, pattern] of cases) expectOneLineError(await caracal('bundle', 'diff', ...args), pattern);

    // Garbage candidates: random bytes, gzip of something that is not a tar, a tar without WASM, a file too large.
    const garbage = path.join(dir, 'garbage.tar.gz');
    await writeFile(garbage, Buffer.from('definitely not a bundle \u0000\u0001\u0002'));
    expectOneLineError(await caracal('bundle', 'diff', '--bundle', garbage, ...range), /garbage\.tar\.gz/);
    await writeFile(garbage, gzipSync(Buffer.from('{"not": "a tar"}')));
    expectOneLineError(await caracal('bundle', 'diff', '--bundle', garbage, ...range), /garbage\.tar\.gz/);
    const huge = path.join(dir, 'huge.tar.gz');
    await writeFile(huge, '');
    await truncate(huge, 65 * 1024 * 1024); // sparse: refused by its size before it is read
    expectOneLineError(await caracal('bundle', 'diff', '--bundle', huge, ...range), /more than the \d+ allowed/);
  });
});

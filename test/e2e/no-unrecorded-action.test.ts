import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, it, type ExpectStatic } from 'vitest';
import type { AuditRecord } from '../../src/audit/audit-store.js';
import { generateSigningKeyFile } from '../../src/authority/tokens/keys.js';
import { EVENT_TYPES } from '../../src/events/cloudevents.js';
import { freePort, RestartableGateway } from '../helpers/fault-gateway.js';
import { startLoad, type LoadFigures, type RunningLoad } from '../helpers/fault-load.js';
import { startPrivateServices, type PrivateServices } from '../helpers/fault-services.js';
import { runCli, startCli, type LongRunning } from '../helpers/processes.js';
import { startRecordingUpstream, type RecordingUpstream } from '../helpers/recording-upstream.js';

/**
 * "No unrecorded action" (docs/architecture.md) under faults, from the outside: real gateway and
 * consumer processes, a recording upstream, a client load. Every call the upstream received was
 * allowed, and an allow reaches the upstream only after its decision is durable — so every
 * decision id the upstream saw must end up in the audit log as exactly one allow, whatever was
 * killed or restarted on the way. (The converse is not required: a request can be decided and
 * recorded and the gateway killed before it proxies.)
 *
 * 1. PostgreSQL + Kafka + Redis, private to this file (scripts/services.sh in a temp dir: the
 *    shared services other files use at the same time are never stopped): the gateway is
 *    SIGKILLed and restarted three times, Kafka is down for 10 s, PostgreSQL is restarted under
 *    the consumers — all during the load.
 * 2. The embedded default (`caracal dev`: gateway and consumers in one process on PGlite): the
 *    process is SIGKILLed and restarted three times during the load.
 */

const LOOPS = 6;
/** Per loop; with LOOPS, bounds the events the consumers have to catch up on. */
const MAX_PER_LOOP = 6_000;
const CATCH_UP_MS = 120_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a test started, undone in reverse order at its end, and again in afterAll (for a test that timed out). */
class Cleanups {
  private readonly steps: (() => Promise<unknown>)[] = [];
  static readonly all = new Set<Cleanups>();
  constructor() {
    Cleanups.all.add(this);
  }
  push(step: () => Promise<unknown>): void {
    this.steps.push(step);
  }
  async run(): Promise<void> {
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      await step().catch((err) => console.error('cleanup failed:', err));
    }
  }
}
afterAll(async () => {
  await Promise.all([...Cleanups.all].map((c) => c.run()));
}, 180_000);

interface Setup {
  cleanups: Cleanups;
  home: string;
  env: NodeJS.ProcessEnv;
  upstream: RecordingUpstream;
  gatewayUrl: string;
  cli(...args: string[]): Promise<string>;
}

/** A home, a signing key, a spool dir that outlives the gateway processes, the upstream, the config. */
async function setUp(cleanups: Cleanups, extraEnv: Record<string, string>): Promise<Setup> {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-fault-home-'));
  cleanups.push(async () => rmSync(home, { recursive: true, force: true }));
  const upstream = await startRecordingUpstream();
  cleanups.push(() => upstream.close());
  const keyFile = path.join(home, 'signing.pem');
  generateSigningKeyFile(keyFile);
  const configFile = path.join(home, 'caracal.yaml');
  // The default per-principal rate (200/s) would turn most of one agent's load into 429s: the
  // subject here is recording, not rate limiting.
  writeFileSync(
    configFile,
    [
      'gateway:',
      '  accessLog: false',
      '  upstreams:',
      '    - name: rec',
      `      url: ${upstream.url}`,
      '  limits:',
      '    perPrincipal: {maxConcurrent: 1000, rate: {ratePerSecond: 1000000, burst: 1000000}}',
      '',
    ].join('\n'),
  );
  const gatewayPort = await freePort();
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    CARACAL_HOME: home,
    CARACAL_CONFIG: configFile,
    CARACAL_SIGNING_KEY: keyFile,
    CARACAL_GATEWAY_PORT: String(gatewayPort),
    CARACAL_ADMIN_PORT: '0',
    CARACAL_METRICS_PORT: '0',
    CARACAL_CONSUMERS_METRICS_PORT: '0',
    CARACAL_LOG_LEVEL: 'warn',
    CARACAL_SPOOL: 'true',
    // Outside the home and the same for every gateway process: what one process left unshipped
    // when it was killed, the next one ships.
    CARACAL_SPOOL_DIR: mkdtempSync(path.join(tmpdir(), 'caracal-fault-spool-')),
    ...extraEnv,
  };
  cleanups.push(async () => rmSync(env.CARACAL_SPOOL_DIR!, { recursive: true, force: true }));
  const cli = async (...args: string[]) => {
    const result = await runCli(args, env);
    if (result.code !== 0) throw new Error(`caracal ${args.join(' ')} exited ${result.code}:\n${result.stderr}${result.stdout}`);
    return result.stdout.trim();
  };
  return { cleanups, home, env, upstream, gatewayUrl: `http://127.0.0.1:${gatewayPort}`, cli };
}

/** An agent allowed to GET anything on the recording upstream, and a token for it. */
async function grantAgent(s: Setup): Promise<{ agent: string; token: string }> {
  const agent = await s.cli('agent', 'register', '--name', 'fault-agent', '--owner', 'ops@example.com', '--quiet');
  await s.cli('policy', 'create', '--agent-id', agent, '--resources', 'api:external/rec', '--actions', 'read', '--max-validity', '3600');
  await s.cli('allowlist', 'create', '--agent-id', agent, '--pattern', `${s.upstream.url}/**`, '--pattern-type', 'glob');
  const token = await s.cli('token', 'issue', '--agent-id', agent, '--ttl', '3600');
  // The gateway hears of the new grants through agent.lifecycle: bounded wait for the first allow.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const status = await fetch(`${s.gatewayUrl}/proxy/rec/warm-up`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(10_000) }).then(
      (r) => r.status,
      (err: Error) => err.message,
    );
    if (status === 200) return { agent, token };
    if (Date.now() > deadline) throw new Error(`the agent is still refused (${status}) 30 s after its grants`);
    await sleep(100);
  }
}

function startAgentLoad(s: Setup, token: string): RunningLoad {
  const load = startLoad({ url: `${s.gatewayUrl}/proxy/rec/item`, headers: { authorization: `Bearer ${token}` }, loops: LOOPS, maxPerLoop: MAX_PER_LOOP, maxMs: 200_000 });
  s.cleanups.push(() => load.stop());
  return load;
}

/** (a): SIGKILL three times, each time started again on the same port and spool, load running. */
async function killAndRestartThrice(gateway: RestartableGateway, load: RunningLoad, log: string[], afterMs: number): Promise<void> {
  for (let round = 1; round <= 3; round++) {
    load.setPhase(`kill ${round}`);
    await gateway.kill();
    const t0 = performance.now();
    await gateway.start();
    log.push(`gateway SIGKILL ${round}: back and ready after ${Math.round(performance.now() - t0)} ms`);
    load.setPhase(`after restart ${round}`);
    await sleep(afterMs);
  }
}

/** Decision id → its decision events in the audit log: how many, and how many of them allow. */
type Recorded = Map<string, { events: number; allows: number }>;

function tally(recorded: Recorded, decisionId: string, allow: boolean, n = 1): void {
  const entry = recorded.get(decisionId) ?? { events: 0, allows: 0 };
  entry.events += n;
  if (allow) entry.allows += n;
  recorded.set(decisionId, entry);
}

interface Verdict {
  upstreamRequests: number;
  withoutDecisionId: number;
  upstreamSeen: number;
  auditAllowIds: number;
  auditAllowRows: number;
  /** Seen by the upstream, no allow in the audit log. */
  lost: string[];
  /** Seen by the upstream, more than one decision event in the audit log. */
  duplicated: string[];
}

/** Compares the decision ids the upstream saw with the decisions in the audit log. */
function judge(upstream: RecordingUpstream, recorded: Recorded): Verdict {
  const seen = new Set<string>();
  let withoutDecisionId = 0;
  for (const request of upstream.requests) {
    const id = request.headers['x-caracal-decision-id'];
    if (typeof id === 'string' && id.length > 0) seen.add(id);
    else withoutDecisionId++;
  }
  const lost: string[] = [];
  const duplicated: string[] = [];
  for (const id of seen) {
    const entry = recorded.get(id);
    if (!entry || entry.allows === 0) lost.push(id);
    else if (entry.events > 1) duplicated.push(id);
  }
  let allowIds = 0;
  let allowRows = 0;
  for (const entry of recorded.values()) {
    if (entry.allows > 0) allowIds++;
    allowRows += entry.allows;
  }
  return { upstreamRequests: upstream.requests.length, withoutDecisionId, upstreamSeen: seen.size, auditAllowIds: allowIds, auditAllowRows: allowRows, lost, duplicated };
}

/** Polls `readRecorded` until nothing the upstream saw is missing, or the time is up. */
async function untilCaughtUp(upstream: RecordingUpstream, readRecorded: () => Promise<Recorded>): Promise<{ verdict: Verdict; ms: number }> {
  const t0 = performance.now();
  for (;;) {
    let verdict: Verdict | undefined;
    try {
      verdict = judge(upstream, await readRecorded());
    } catch (err) {
      if (performance.now() - t0 > CATCH_UP_MS) throw err;
    }
    const ms = Math.round(performance.now() - t0);
    if (verdict && (verdict.lost.length === 0 || ms > CATCH_UP_MS)) return { verdict, ms };
    await sleep(1_000);
  }
}

function report(title: string, load: LoadFigures, verdict: Verdict, extra: string[]): string {
  const phases = Object.entries(load.byPhase).map(([phase, counts]) => `    ${phase.padEnd(22)} ${JSON.stringify(counts)}`);
  return [
    `\nno unrecorded action — ${title}`,
    ...extra.map((line) => `  ${line}`),
    `  requests sent          ${load.sent}`,
    `  statuses               ${JSON.stringify(load.statuses)}`,
    '  statuses by phase',
    ...phases,
    `  upstream requests      ${verdict.upstreamRequests} (without a decision id: ${verdict.withoutDecisionId})`,
    `  upstream-seen ids      ${verdict.upstreamSeen}`,
    `  audit allows           ${verdict.auditAllowIds} decision ids, ${verdict.auditAllowRows} rows`,
    `  lost                   ${verdict.lost.length}${verdict.lost.length ? ` e.g. ${verdict.lost.slice(0, 5).join(', ')}` : ''}`,
    `  duplicated             ${verdict.duplicated.length}${verdict.duplicated.length ? ` e.g. ${verdict.duplicated.slice(0, 5).join(', ')}` : ''}`,
    '',
  ].join('\n');
}

function expectNothingUnrecorded(expect: ExpectStatic, verdict: Verdict): void {
  expect(verdict.upstreamSeen).toBeGreaterThan(0);
  expect(verdict.withoutDecisionId, 'upstream requests without x-caracal-decision-id').toBe(0);
  expect(verdict.lost, 'decision ids the upstream saw with no allow in the audit log').toEqual([]);
  expect(verdict.duplicated, 'decision ids the upstream saw with more than one decision event in the audit log').toEqual([]);
}

// Concurrently (each with its test context's `expect`): the two share nothing — own services,
// homes, ports — and much of each is waiting (fixed windows, Kafka's session timeout after the
// broker restart), so side by side they finish well before they would one after the other.
describe.concurrent('no unrecorded action under faults', () => {
  it('PostgreSQL + Kafka + Redis: gateway SIGKILL ×3, Kafka down 10 s, PostgreSQL restarted under the consumers', async ({ expect }) => {
    const t0 = performance.now();
    const log: string[] = [];
    let services: PrivateServices | undefined;
    let gateway: RestartableGateway | undefined;
    let consumers: LongRunning | undefined;
    let passed = false;
    const cleanups = new Cleanups();
    try {
      services = await startPrivateServices();
      const svc = services;
      cleanups.push(() => svc.stop(!passed));
      log.push(`private services in ${svc.dir} up after ${Math.round(performance.now() - t0)} ms`);
      const s = await setUp(cleanups, { DATABASE_URL: svc.databaseUrl, KAFKA_BROKERS: svc.kafkaBrokers, REDIS_URL: svc.redisUrl });

      // The consumers first: they migrate the database and create the topics.
      const consumerProc = startCli(['consumers', 'start', '--only', 'audit-logger'], s.env);
      consumers = consumerProc;
      cleanups.push(() => consumerProc.stop());
      await consumerProc.waitFor(/caracal consumers running: audit-logger/, 90_000);

      const gw = new RestartableGateway(['gateway', 'start'], s.env, s.gatewayUrl);
      gateway = gw;
      cleanups.push(() => gw.stop());
      const g0 = performance.now();
      await gw.start();
      log.push(`gateway first start: ready after ${Math.round(performance.now() - g0)} ms`);
      const { token } = await grantAgent(s);

      const load = startAgentLoad(s, token);
      load.setPhase('warm-up');
      await sleep(2_000);

      await killAndRestartThrice(gw, load, log, 2_000);

      // (b) The broker away for 10 s from the moment it is down; the spool takes the decisions.
      load.setPhase('kafka stopping');
      await svc.run('stop-kafka');
      load.setPhase('kafka down');
      await sleep(10_000);
      load.setPhase('kafka starting');
      const k0 = performance.now();
      await svc.run('start-kafka');
      log.push(`kafka down 10 s, then answering metadata again after ${Math.round(performance.now() - k0)} ms`);
      load.setPhase('after kafka');
      await sleep(3_000);

      // (c) PostgreSQL restarted under the consumers (and the gateway).
      load.setPhase('postgres restarting');
      const p0 = performance.now();
      await svc.run('restart-postgres');
      log.push(`postgres restarted (fast) and ready after ${Math.round(performance.now() - p0)} ms`);
      load.setPhase('after postgres');
      await sleep(3_000);

      const figures = await load.stop();
      log.push(`load ran until ${Math.round((performance.now() - t0) / 1000)} s into the test; gateway processes started: ${gw.starts}; gateway alive at the end: ${gw.alive()}; consumers alive: ${consumerProc.child.exitCode === null}`);

      const readRecorded = async (): Promise<Recorded> => {
        const client = new pg.Client({ connectionString: svc.databaseUrl, connectionTimeoutMillis: 5_000 });
        await client.connect();
        try {
          const { rows } = await client.query<{ decision_id: string; allow: boolean; n: number }>(
            `SELECT decision_id, coalesce((data->>'allow')::boolean, false) AS allow, count(*)::int AS n FROM audit_log
             WHERE event_type = $1 AND decision_id IS NOT NULL
             GROUP BY 1, 2`,
            [EVENT_TYPES.decision],
          );
          const recorded: Recorded = new Map();
          for (const row of rows) tally(recorded, row.decision_id, row.allow, row.n);
          return recorded;
        } finally {
          await client.end().catch(() => {});
        }
      };
      const { verdict, ms } = await untilCaughtUp(s.upstream, readRecorded);
      log.push(`consumers caught up ${ms} ms after the load stopped; whole test ${Math.round((performance.now() - t0) / 1000)} s`);
      console.log(report('PostgreSQL + Kafka + Redis', figures, verdict, log));

      expectNothingUnrecorded(expect, verdict);
      // The point of the spool: allows go on while the broker is away.
      expect(figures.byPhase['kafka down']?.['200'] ?? 0, 'allowed calls while Kafka was down').toBeGreaterThan(0);
      passed = true;
    } finally {
      if (!passed) {
        console.error(`no-unrecorded-action (services) failed; ${log.join('; ')}`);
        if (gateway) console.error(gateway.output());
        if (consumers) console.error(`--- consumers ---\n${consumers.output().slice(-6_000)}`);
        if (services) console.error(`service logs kept in ${services.dir}`);
      }
      await cleanups.run();
    }
  }, 300_000);

  it('embedded default (caracal dev on PGlite): SIGKILL ×3', async ({ expect }) => {
    const t0 = performance.now();
    const log: string[] = [];
    let gateway: RestartableGateway | undefined;
    let passed = false;
    const cleanups = new Cleanups();
    try {
      const s = await setUp(cleanups, {});
      // `caracal dev`: PGlite belongs to one process, so the consumers run inside the gateway's
      // process (`gateway start` on the embedded default runs none, and `consumers start` could
      // not open the database while it runs). Killing it kills them too.
      const gw = new RestartableGateway(['dev'], s.env, s.gatewayUrl);
      gateway = gw;
      cleanups.push(() => gw.stop());
      const g0 = performance.now();
      await gw.start();
      log.push(`gateway first start: ready after ${Math.round(performance.now() - g0)} ms`);
      const { agent, token } = await grantAgent(s);
      const since = new Date(Date.now() - 60_000).toISOString();

      const load = startAgentLoad(s, token);
      load.setPhase('warm-up');
      await sleep(2_000);
      // Longer windows than on the services: PGlite makes each start slow, and the load thin.
      await killAndRestartThrice(gw, load, log, 5_000);
      const figures = await load.stop();
      log.push(`load ran until ${Math.round((performance.now() - t0) / 1000)} s into the test; processes started: ${gw.starts}; alive at the end: ${gw.alive()}`);

      // Through the CLI, which sends `audit.query` to the running process's admin API, a page
      // (at most 10,000 records, oldest first) at a time.
      const readRecorded = async (): Promise<Recorded> => {
        const recorded: Recorded = new Map();
        const seenEvents = new Set<string>();
        let start = since;
        for (let page = 0; page < 100; page++) {
          const records = JSON.parse(
            await s.cli('audit', 'query', '--agent-id', agent, '--start-time', start, '--end-time', new Date(Date.now() + 60_000).toISOString(), '--limit', '10000', '--json'),
          ) as AuditRecord[];
          let fresh = 0;
          for (const record of records) {
            if (seenEvents.has(record.eventId)) continue;
            seenEvents.add(record.eventId);
            fresh++;
            if (record.eventType === EVENT_TYPES.decision && record.decisionId) tally(recorded, record.decisionId, (record.data as { allow?: unknown })?.allow === true);
          }
          if (records.length < 10_000) return recorded;
          // The next page starts at the last time seen (inclusive; repeats are skipped above).
          if (fresh === 0) throw new Error(`more than 10,000 audit records at ${start}`);
          start = records[records.length - 1]!.occurredAt;
        }
        throw new Error('more than 100 pages of audit records');
      };
      const { verdict, ms } = await untilCaughtUp(s.upstream, readRecorded);
      log.push(`consumers caught up ${ms} ms after the load stopped; whole test ${Math.round((performance.now() - t0) / 1000)} s`);
      console.log(report('embedded default (caracal dev)', figures, verdict, log));

      expectNothingUnrecorded(expect, verdict);
      passed = true;
    } finally {
      if (!passed) {
        console.error(`no-unrecorded-action (embedded) failed; ${log.join('; ')}`);
        if (gateway) console.error(gateway.output());
      }
      await cleanups.run();
    }
  }, 300_000);
});

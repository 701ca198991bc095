import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { signingKeyFromPem } from '../../src/authority/tokens/keys.js';
import { issueAccessToken } from '../../src/authority/tokens/tokens.js';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import type { DecisionData } from '../../src/events/cloudevents.js';
import { KafkaEventLog } from '../../src/events/kafka-event-log.js';
import { LocalEventLog } from '../../src/events/local-event-log.js';
import type { EventLog } from '../../src/events/event-log.js';
import { PgliteDb } from '../../src/store/pglite-db.js';
import { readDecisions } from '../helpers/gateway-harness.js';
import { runCli, startCli, type LongRunning } from '../helpers/processes.js';
import { randomName, requireServices } from '../helpers/services.js';

/**
 * The README walkthrough, from the outside: real processes, the real CLI, HTTP calls. Once on the
 * embedded default (`caracal dev`, what `npm start` runs) and once on PostgreSQL + Kafka + Redis
 * (`caracal gateway start`, prepared with `db migrate up` and `kafka create-topics` as the README shows).
 */
interface Mode {
  name: string;
  env: () => Promise<NodeJS.ProcessEnv>;
  serve: string[];
  /** The event log the gateway wrote to, opened after it stopped. */
  openLog: (env: NodeJS.ProcessEnv) => Promise<{ log: EventLog; close: () => Promise<void> }>;
}

const baseEnv = (home: string): NodeJS.ProcessEnv => ({
  PATH: process.env.PATH,
  HOME: process.env.HOME,
  CARACAL_HOME: home,
  CARACAL_GATEWAY_PORT: '0',
  CARACAL_ADMIN_PORT: '0',
  CARACAL_METRICS_PORT: '0',
  CARACAL_LOG_LEVEL: 'warn',
});

let upstream: EchoUpstream | undefined;
afterAll(async () => upstream?.close());

const modes: Mode[] = [
  {
    name: 'embedded default (caracal dev)',
    serve: ['dev'],
    env: async () => baseEnv(mkdtempSync(path.join(tmpdir(), 'caracal-e2e-'))),
    openLog: async (env) => {
      const db = await PgliteDb.open(path.join(env.CARACAL_HOME!, 'pgdata'));
      return { log: new LocalEventLog(db), close: () => db.close() };
    },
  },
  {
    name: 'PostgreSQL + Kafka + Redis (caracal gateway start)',
    serve: ['gateway', 'start'],
    env: async () => {
      const services = requireServices();
      const home = mkdtempSync(path.join(tmpdir(), 'caracal-e2e-'));
      upstream ??= await startEchoUpstream();
      const keyFile = path.join(home, 'signing.pem');
      writeFileSync(keyFile, generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ format: 'pem', type: 'sec1' }), { mode: 0o600 });
      const config = path.join(home, 'caracal.yaml');
      writeFileSync(config, `gateway:\n  upstreams:\n    - name: echo\n      url: ${upstream.url}/base\n`);
      return {
        ...baseEnv(home),
        CARACAL_CONFIG: config,
        CARACAL_SIGNING_KEY: keyFile,
        DATABASE_URL: services.databaseUrl,
        CARACAL_DB_SCHEMA: randomName('e2e'),
        KAFKA_BROKERS: services.kafkaBrokers.join(','),
        CARACAL_TOPIC_PREFIX: `${randomName('e2e')}.`,
        REDIS_URL: services.redisUrl,
      };
    },
    openLog: async (env) => {
      const log = await KafkaEventLog.connect({ brokers: env.KAFKA_BROKERS!.split(','), clientId: 'e2e-reader', logLevel: 'silent' });
      return { log, close: () => log.close() };
    },
  },
];

describe.each(modes)('walkthrough on the $name', (mode) => {
  it('registers, grants, issues, allows, denies with a reason, rejects bad tokens, and records every decision', async () => {
    const env = await mode.env();
    const cli = async (...args: string[]) => {
      const result = await runCli(args, env);
      expect(result.stderr, `caracal ${args.join(' ')}`).toBe('');
      expect(result.code, `caracal ${args.join(' ')}`).toBe(0);
      return result.stdout.trim();
    };
    if (env.DATABASE_URL) {
      expect(await cli('db', 'migrate', 'up')).toMatch(/applied 0001_principals/);
      expect(await cli('kafka', 'create-topics')).toContain('policy.decisions');
      expect(await cli('db', 'health-check')).toMatch(/healthy/);
    }

    let gateway: LongRunning | undefined = startCli(mode.serve, env);
    try {
      const [, gatewayUrl] = await gateway.waitFor(/caracal gateway listening on (http:\/\/[\d.:]+)/, 90_000);
      const [, metricsUrl] = await gateway.waitFor(/metrics\s+(http:\/\/[\d.:]+)\/metrics/);

      // The README walkthrough's commands, with ids substituted (through the admin API on the embedded default).
      const agent = await cli('agent', 'register', '--name', 'my-agent', '--description', 'My AI agent', '--owner', 'user@example.com', '--quiet');
      expect(agent).toMatch(/^[0-9a-f-]{36}$/);
      await cli('policy', 'create', '--agent-id', agent, '--resources', 'api:external/echo', '--actions', 'read', '--max-validity', '86400', '--delegation-depth', '1');
      // Agents with no allowlist entry are denied; the regex form here (the README uses a glob), for the local upstream.
      await cli('allowlist', 'create', '--agent-id', agent, '--pattern', '^http://127\\.0\\.0\\.1:[0-9]+/.*$', '--pattern-type', 'regex');
      expect(JSON.parse(await cli('agent', 'list', '--json'))).toEqual([expect.objectContaining({ id: agent, status: 'active' })]);
      const token = await cli('token', 'issue', '--agent-id', agent);

      const decisionIds: string[] = [];
      const call = async (method: string, pathName: string, headers: Record<string, string>) => {
        const response = await fetch(`${gatewayUrl}${pathName}`, { method, headers });
        const id = response.headers.get('x-caracal-decision-id');
        if (id) decisionIds.push(id);
        return { status: response.status, body: (await response.json()) as Record<string, unknown>, headers: response.headers };
      };
      const auth = { authorization: `Bearer ${token}` };

      // Allowed (the gateway may need a moment to hear about the new policy: bounded retry).
      let allowed = await call('GET', '/proxy/echo/hello?x=1', auth);
      for (let i = 0; i < 40 && allowed.status === 403; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        allowed = await call('GET', '/proxy/echo/hello?x=1', auth);
      }
      expect(allowed.status).toBe(200);
      expect(allowed.body.path).toMatch(/\/hello\?x=1$/);
      expect((allowed.body.headers as Record<string, string>).authorization).toBeUndefined();

      // Outside the policy: write on a read-only grant → 403 with the reason.
      const denied = await call('POST', '/proxy/echo/hello', auth);
      expect(denied.status).toBe(403);
      expect(denied.body).toMatchObject({ error: 'CARACAL_POLICY_DENIED', reasons: ['scope_action'] });
      expect(denied.body.decision_id).toBeTruthy();
      expect(denied.body.request_id).toBe(denied.headers.get('x-request-id'));

      // Bad, expired and alg:none tokens → 401.
      const keyFile = env.CARACAL_SIGNING_KEY ?? path.join(env.CARACAL_HOME!, 'keys', 'signing-es256.pem');
      const key = await signingKeyFromPem(readFileSync(keyFile, 'utf8'), keyFile);
      const expired = await issueAccessToken(key, { issuer: 'caracal', audience: 'caracal-gateway', clockSkewSeconds: 30 }, agent, 60, new Date(Date.now() - 3_600_000));
      const [, payload] = token.split('.');
      const algNone = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${payload}.`;
      for (const bad of ['garbage', expired.token, algNone]) {
        const rejected = await call('GET', '/proxy/echo/hello', { authorization: `Bearer ${bad}` });
        expect(rejected.status).toBe(401);
        expect(String(rejected.body.error)).toMatch(/^CARACAL_(TOKEN_INVALID|TOKEN_EXPIRED)$/);
      }
      expect((await call('GET', '/proxy/elsewhere/x', auth)).status).toBe(404);

      const ready = await fetch(`${gatewayUrl}/ready`);
      expect(ready.status).toBe(200);
      const metrics = await (await fetch(`${metricsUrl}/metrics`)).text();
      expect(metrics).toMatch(/caracal_gateway_requests_total\{[^}]*status="403"[^}]*\} 1/);

      expect(await gateway.stop()).toBe(0);
      gateway = undefined;

      // Every decision the gateway announced in a header is an event in the log.
      const { log, close } = await mode.openLog(env);
      try {
        const topic = `${env.CARACAL_TOPIC_PREFIX ?? 'caracal.'}policy.decisions`;
        const decisions = await readDecisions(log, topic, (d) => decisionIds.every((id) => d.some((x: DecisionData) => x.decision_id === id)), 30_000);
        const recorded = new Set(decisions.map((d) => d.decision_id));
        expect(decisionIds.length).toBeGreaterThanOrEqual(5);
        for (const id of decisionIds) expect(recorded.has(id), id).toBe(true);
        expect(decisions.find((d) => d.allow)).toMatchObject({ principal_id: agent, resource: 'api:external/echo', action: 'read', status: 200 });
        expect(decisions.filter((d) => d.status === 401)).toHaveLength(3);
      } finally {
        await close();
      }
    } finally {
      if (gateway) {
        const output = gateway.output();
        await gateway.stop();
        console.error(output.slice(-4000));
      }
    }
  });
});

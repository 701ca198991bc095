// Two `caracal gateway start` processes on one PostgreSQL, Kafka and Redis; one agent with a budget for exactly N
// calls of a priced upstream; 1,000 calls at once, split between the two gateways: exactly N are allowed and exactly N
// reach the upstream — the reservation is one Redis script shared by both processes, never check-then-act.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSigningKeyFile } from '../../src/authority/tokens/keys.js';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import { freePort, RestartableGateway } from '../helpers/fault-gateway.js';
import { runCli } from '../helpers/processes.js';
import { requireServices } from '../helpers/services.js';

const CALLS = 1_000;
const ALLOWED = 123;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('a budget shared by two gateway processes on one Redis', () => {
  const id = randomBytes(4).toString('hex');
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-budget-e2e-'));
  const gateways: RestartableGateway[] = [];
  let paid: EchoUpstream;
  let free: EchoUpstream;
  let env: NodeJS.ProcessEnv;
  const cli = async (...args: string[]) => {
    const result = await runCli(args, env);
    if (result.code !== 0) throw new Error(`caracal ${args.join(' ')} exited ${result.code}:\n${result.stderr}${result.stdout}`);
    return result.stdout.trim();
  };

  beforeAll(async () => {
    const services = requireServices();
    paid = await startEchoUpstream();
    free = await startEchoUpstream();
    const keyFile = path.join(home, 'signing.pem');
    generateSigningKeyFile(keyFile);
    const configFile = path.join(home, 'caracal.yaml');
    writeFileSync(
      configFile,
      [
        'gateway:',
        '  accessLog: false',
        '  upstreams:',
        '    - name: paid',
        `      url: ${paid.url}`,
        '      pricing: {currency: USD, perRequest: "0.01"}',
        '    - name: free',
        `      url: ${free.url}`,
        '  limits:',
        '    perPrincipal: {maxConcurrent: 100000, rate: {ratePerSecond: 1000000, burst: 1000000}}',
        '',
      ].join('\n'),
    );
    env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CARACAL_HOME: home,
      CARACAL_CONFIG: configFile,
      CARACAL_SIGNING_KEY: keyFile,
      DATABASE_URL: services.databaseUrl,
      CARACAL_DB_SCHEMA: `budget_e2e_${id}`,
      KAFKA_BROKERS: services.kafkaBrokers.join(','),
      CARACAL_TOPIC_PREFIX: `budget-e2e-${id}.`,
      CARACAL_GROUP_PREFIX: `budget-e2e-${id}.`,
      REDIS_URL: services.redisUrl,
      CARACAL_REDIS_KEY_PREFIX: `budget-e2e-${id}:`,
      CARACAL_ADMIN_PORT: '0',
      CARACAL_METRICS_PORT: '0',
      CARACAL_LOG_LEVEL: 'warn',
    };
    await cli('db', 'init');
    for (let n = 0; n < 2; n++) {
      const port = await freePort();
      const gwEnv = { ...env, CARACAL_GATEWAY_PORT: String(port), CARACAL_SPOOL_DIR: mkdtempSync(path.join(tmpdir(), 'caracal-budget-spool-')) };
      const gateway = new RestartableGateway(['gateway', 'start'], gwEnv, `http://127.0.0.1:${port}`);
      gateways.push(gateway);
      await gateway.start();
    }
  }, 240_000);

  afterAll(async () => {
    for (const gateway of gateways) await gateway.stop().catch(() => {});
    await paid?.close();
    await free?.close();
    rmSync(home, { recursive: true, force: true });
  }, 60_000);

  it(`allows exactly ${ALLOWED} of ${CALLS} concurrent calls and sends exactly ${ALLOWED} to the upstream`, async () => {
    const agent = await cli('agent', 'register', '--name', 'budgeted', '--owner', 'ops@example.com', '--quiet');
    await cli('policy', 'create', '--agent-id', agent, '--resources', 'api:external/*', '--actions', 'read', '--max-validity', '3600');
    for (const upstream of [paid, free]) await cli('allowlist', 'create', '--agent-id', agent, '--pattern', `${upstream.url}/**`, '--pattern-type', 'glob');
    await cli('budget', 'set', '--agent-id', agent, '--limit', (ALLOWED / 100).toFixed(2), '--window', 'daily', '--currency', 'USD');
    const token = await cli('token', 'issue', '--agent-id', agent, '--ttl', '3600');
    const headers = { authorization: `Bearer ${token}` };
    // Both gateways have heard of the grants (agent.lifecycle) once each allows a call to the unpriced upstream.
    for (const gateway of gateways) {
      const deadline = Date.now() + 30_000;
      while ((await fetch(`${gateway.url}/proxy/free/warm-up`, { headers }).then((r) => r.status)) !== 200) {
        if (Date.now() > deadline) throw new Error(`${gateway.url} still refuses the agent 30 s after its grants`);
        await sleep(100);
      }
    }

    const statuses = await Promise.all(
      Array.from({ length: CALLS }, async (_, i) => {
        const reply = await fetch(`${gateways[i % 2]!.url}/proxy/paid/item-${i}`, { headers });
        const body = (await reply.json()) as { reasons?: string[] };
        return { status: reply.status, gateway: i % 2, reasons: body.reasons ?? [] };
      }),
    );
    const allowed = statuses.filter((s) => s.status === 200);
    expect(allowed).toHaveLength(ALLOWED);
    expect(statuses.filter((s) => s.status === 429 && s.reasons.includes('budget_exceeded'))).toHaveLength(CALLS - ALLOWED);
    expect(paid.requests).toBe(ALLOWED);
    // Both processes took part: the limit held across them, not within one.
    expect(new Set(allowed.map((s) => s.gateway)).size).toBe(2);
    const status = JSON.parse(await cli('budget', 'get', '--agent-id', agent, '--window', 'daily', '--json')) as { limit: string };
    expect(status.limit).toBe('1.23');
  }, 180_000);
});

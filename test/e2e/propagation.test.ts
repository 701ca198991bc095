import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IssuedMandate } from '../../src/authority/tokens/mandates.js';
import { loadConfig } from '../../src/config/load.js';
import { AppContext } from '../../src/context.js';
import { generateSigningKeyFile } from '../../src/authority/tokens/keys.js';
import { startEchoUpstream, type EchoUpstream } from '../../src/dev/echo-upstream.js';
import { topicSpecs } from '../../src/events/topics.js';
import { createLogger } from '../../src/logging/logger.js';
import { runOperation } from '../../src/operations/index.js';
import { migrateUp } from '../../src/store/migrate.js';
import { startCli, type LongRunning } from '../helpers/processes.js';
import { randomName, requireServices } from '../helpers/services.js';

/**
 * Revocation, suspension and emergency stop must reach every running gateway within 1 s
 * (docs/architecture.md, "The authority model"). Two `caracal gateway start` processes on PostgreSQL + Kafka + Redis; the change is
 * made through the operations (as the CLI and admin API do) and each gateway is polled until it
 * denies. The measured times are printed.
 */
describe('propagation of authority changes to two gateway processes', () => {
  let upstream: EchoUpstream;
  let env: NodeJS.ProcessEnv;
  let ctx: AppContext;
  const gateways: { proc: LongRunning; url: string }[] = [];
  const measured: string[] = [];

  beforeAll(async () => {
    const services = requireServices();
    upstream = await startEchoUpstream();
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-prop-'));
    const keyFile = path.join(home, 'signing.pem');
    generateSigningKeyFile(keyFile);
    const configFile = path.join(home, 'caracal.yaml');
    writeFileSync(configFile, `gateway:\n  upstreams:\n    - name: echo\n      url: ${upstream.url}\n`);
    env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CARACAL_HOME: home,
      CARACAL_CONFIG: configFile,
      CARACAL_SIGNING_KEY: keyFile,
      CARACAL_GATEWAY_PORT: '0',
      CARACAL_ADMIN_PORT: '0',
      CARACAL_METRICS_PORT: '0',
      CARACAL_LOG_LEVEL: 'warn',
      DATABASE_URL: services.databaseUrl,
      CARACAL_DB_SCHEMA: randomName('prop'),
      KAFKA_BROKERS: services.kafkaBrokers.join(','),
      CARACAL_TOPIC_PREFIX: `${randomName('prop')}.`,
      REDIS_URL: services.redisUrl,
    };
    ctx = await AppContext.fromConfig(loadConfig({ env, cwd: home }), { logger: createLogger('silent') });
    await migrateUp(ctx.db);
    await (await ctx.events()).createTopics(topicSpecs(ctx.config));
    for (let i = 0; i < 2; i++) {
      // Each gateway process has its own spool directory: two refuse to share one.
      const proc = startCli(['gateway', 'start'], { ...env, CARACAL_SPOOL_DIR: path.join(home, `spool-${i}`) });
      const [, url] = await proc.waitFor(/caracal gateway listening on (http:\/\/[\d.:]+)/, 90_000);
      gateways.push({ proc, url: url! });
    }
  });

  afterAll(async () => {
    for (const g of gateways) await g.proc.stop();
    await ctx?.close();
    await upstream?.close();
    if (measured.length) console.log(`\npropagation to 2 gateway processes (PostgreSQL + Kafka):\n${measured.join('\n')}\n`);
  });

  const op = (name: string, args: Record<string, unknown>) => runOperation(ctx, name, args);
  const status = async (url: string, token: string) => (await fetch(`${url}/proxy/echo/x`, { headers: { authorization: `Bearer ${token}` } })).status;

  /** Polls every gateway until all answer `expected`; returns ms per gateway since `since`. */
  async function untilAll(token: string, expected: number, since: number, limitMs = 5_000): Promise<number[]> {
    return Promise.all(
      gateways.map(async (g) => {
        for (;;) {
          const code = await status(g.url, token);
          const elapsed = performance.now() - since;
          if (code === expected) return Math.round(elapsed);
          if (elapsed > limitMs) throw new Error(`gateway ${g.url} still answers ${code} after ${limitMs} ms`);
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      }),
    );
  }

  async function setUpAgent(): Promise<{ agent: string; mandate: IssuedMandate; access: string }> {
    const agent = ((await op('agent.register', { name: randomName('prop'), owner: 'ops@example.com' })) as { id: string }).id;
    await op('policy.create', { principalId: agent, resources: ['api:external/*'], actions: ['read'], maxValiditySeconds: 3600 });
    await op('allowlist.create', { principalId: agent, pattern: `${upstream.url}/**`, patternType: 'glob' });
    const mandate = (await op('mandate.issue', { principalId: agent, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 600 })) as IssuedMandate;
    const access = ((await op('token.issue', { principalId: agent })) as { token: string }).token;
    await untilAll(mandate.token, 200, performance.now());
    await untilAll(access, 200, performance.now());
    return { agent, mandate, access };
  }

  it('revocation reaches both gateways within 1 s', async () => {
    const { mandate, access } = await setUpAgent();
    const t0 = performance.now();
    await op('mandate.revoke', { mandateId: mandate.id });
    const times = await untilAll(mandate.token, 403, t0);
    measured.push(`  mandate revoke     ${times.map((t) => `${t} ms`).join(' / ')}`);
    for (const t of times) expect(t).toBeLessThan(1_000);
    expect(await status(gateways[0]!.url, access)).toBe(200); // only the mandate was revoked
  });

  it('suspension reaches both gateways within 1 s', async () => {
    const { agent, access } = await setUpAgent();
    const t0 = performance.now();
    await op('agent.suspend', { id: agent });
    const times = await untilAll(access, 403, t0);
    measured.push(`  agent suspend      ${times.map((t) => `${t} ms`).join(' / ')}`);
    for (const t of times) expect(t).toBeLessThan(1_000);
  });

  it('an emergency stop reaches both gateways within 1 s, and so does the resume', async () => {
    const { access } = await setUpAgent();
    const t0 = performance.now();
    await op('emergency.stop', { reason: 'drill' });
    const times = await untilAll(access, 403, t0);
    measured.push(`  emergency stop     ${times.map((t) => `${t} ms`).join(' / ')}`);
    const t1 = performance.now();
    await op('emergency.resume', {});
    const back = await untilAll(access, 200, t1);
    measured.push(`  emergency resume   ${back.map((t) => `${t} ms`).join(' / ')}`);
    for (const t of [...times, ...back]) expect(t).toBeLessThan(1_000);
  });
});

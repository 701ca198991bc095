// `caracal spend summary` and the spend part of `caracal ledger query`, on both backends, from metering events that
// reach the audit log the real way (the metering topic → the audit-logger consumer). A delegation chain root → child →
// grandchild: with --by agent each row rolls up the spend of the agents below it. Bad input is one line, non-zero exit.
import { meteringEvent } from '../helpers/metering-events.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startConsumers, type RunningConsumers } from '../../src/consumers/index.js';
import { type CloudEvent, type MeteringData } from '../../src/events/cloudevents.js';
import { eventMessage } from '../../src/events/publisher.js';
import { buildAdminApp } from '../../src/gateway/admin.js';
import { windowBounds } from '../../src/metering/money.js';
import type { AgentSpend, SpendSummary } from '../../src/metering/reconcile.js';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { requireServices } from '../helpers/services.js';

async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

function metering(
  principalId: string,
  chain: string[],
  costMicros: number,
  fields: { currency?: string; upstream?: string; model?: string | null; input?: number | null; output?: number | null; at?: Date } = {},
): CloudEvent<MeteringData> {
  const at = fields.at ?? new Date();
  const upstream = fields.upstream ?? 'alpha';
  const overrides: Partial<MeteringData> = { chain, upstream, currency: fields.currency ?? 'USD', model: fields.model ?? null, input_tokens: fields.input ?? null, output_tokens: fields.output ?? null, request_bytes: 1, response_bytes: 2, started_at: at.toISOString() };
  return meteringEvent(principalId, costMicros, overrides, new Date(at.getTime() + 5));
}

const row = (summary: SpendSummary, key: string | null, currency: string) => summary.rows.find((r) => r.key === key && r.currency === currency);

describe.each(BACKENDS)('spend queries on the %s backend', (backend) => {
  let h: Harness;
  let consumers: RunningConsumers;
  let admin: FastifyInstance | undefined;
  let root: string;
  let child: string;
  let grandchild: string;
  let other: string;
  let old: CloudEvent<MeteringData>;
  const token = 'spend-admin-credential-0123456789';
  let adminUrl = '';
  // Services: the CLI on the harness's schema. Embedded: through the harness's admin API (one process owns a PGlite
  // home); `ledger query` reads the database itself, so it runs on the home once the harness has closed.
  const env = (): Record<string, string> => {
    const base = { CARACAL_HOME: mkdtempSync(path.join(tmpdir(), 'caracal-spend-cli-')), CARACAL_LOG_LEVEL: 'silent' };
    if (backend === 'embedded') return { ...base, CARACAL_ADMIN_URL: adminUrl, CARACAL_ADMIN_TOKEN: token };
    const services = requireServices();
    return { ...base, DATABASE_URL: services.databaseUrl, CARACAL_DB_SCHEMA: h.ctx.config.database.schema, KAFKA_BROKERS: services.kafkaBrokers.join(','), CARACAL_TOPIC_PREFIX: h.ctx.config.kafka.topicPrefix, REDIS_URL: services.redisUrl };
  };
  const caracal = cliRunner(env);
  const summary = async (...args: string[]) => {
    const run = await caracal('spend', 'summary', ...args, '--json');
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    return JSON.parse(run.out) as SpendSummary;
  };

  beforeAll(async () => {
    h = await createHarness({ backend });
    consumers = await startConsumers(h.ctx, ['audit-logger'], { prepare: false, baseDelayMs: 10, maxDelayMs: 50 });
    if (backend === 'embedded') {
      admin = await buildAdminApp(h.ctx, token);
      await admin.listen({ host: '127.0.0.1', port: 0 });
      const address = admin.server.address();
      adminUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    }
    [root, child, grandchild, other] = [await h.registerAgent(), await h.registerAgent(), await h.registerAgent(), await h.registerAgent()];
    // Two days ago: outside today, outside the last 24 hours.
    old = metering(child, [root], 9_000_000, { at: new Date(Date.now() - 2 * 86_400_000) });
    const events = [
      metering(root, [], 1_000_000, { upstream: 'alpha', model: 'm-large', input: 10, output: 20 }),
      metering(child, [root], 2_000_000, { upstream: 'beta', model: 'm-small', input: 5, output: 6 }),
      metering(grandchild, [child, root], 500_000, { upstream: 'alpha', model: 'm-small', input: 1, output: 2 }),
      metering(grandchild, [child, root], 3_000_000, { currency: 'EUR', upstream: 'alpha' }),
      metering(other, [], 4_000_000, { upstream: 'beta' }),
      old,
    ];
    await (await h.ctx.events()).publish(
      h.ctx.topics.metering,
      events.map((e) => eventMessage(e.data.principal_id, e)),
    );
    const recorded = async () => Number((await h.ctx.db.query<{ n: string | number }>('SELECT count(*) AS n FROM audit_log WHERE event_id = ANY($1::text[])', [events.map((e) => e.id)])).rows[0]!.n);
    expect(await until(async () => (await recorded()) === events.length)).toBe(true);
  }, 120_000);

  afterAll(async () => {
    await admin?.close();
    await consumers?.stop();
    await h?.close();
  });

  it("totals per currency for today's period (the default window), calls and tokens", async () => {
    const daily = await summary();
    const { start, end } = windowBounds('daily', new Date());
    expect(daily).toMatchObject({ window: 'daily', period_start: start.toISOString(), period_end: end.toISOString(), by: null, agent_id: null, rows: [] });
    expect(daily.totals).toEqual([
      { currency: 'EUR', spent_micros: 3_000_000, spent: '3.00', calls: 1, input_tokens: 0, output_tokens: 0 },
      { currency: 'USD', spent_micros: 7_500_000, spent: '7.50', calls: 4, input_tokens: 16, output_tokens: 28 },
    ]);
    // The call of two days ago counts in the month it started in, when that is this month.
    const monthly = await summary('--window', 'monthly');
    const inMonth = new Date(old.data.started_at) >= windowBounds('monthly', new Date()).start;
    expect(monthly.totals.find((t) => t.currency === 'USD')).toMatchObject({ spent_micros: 7_500_000 + (inMonth ? 9_000_000 : 0), calls: 4 + (inMonth ? 1 : 0) });

    const table = await caracal('spend', 'summary');
    expect(table.code).toBe(0);
    const lines = table.out.trimEnd().split('\n');
    expect(lines[0]).toBe(`daily period ${start.toISOString()} .. ${end.toISOString()}`);
    expect(lines[1]).toMatch(/^CURRENCY\s+SPENT\s+CALLS\s+INPUT TOKENS\s+OUTPUT TOKENS$/);
    expect(lines.slice(2)).toEqual([expect.stringMatching(/^EUR\s+3\.00\s+1\s+0\s+0$/), expect.stringMatching(/^USD\s+7\.50\s+4\s+16\s+28$/)]);
  });

  it('per agent, each row rolls up the spend of the agents below it in the delegation chain', async () => {
    const byAgent = await summary('--by', 'agent');
    expect(byAgent.by).toBe('agent');
    const expected: [string, string, number, number, number][] = [
      // agent, currency, own spend, own calls, rolled up
      [root, 'USD', 1_000_000, 1, 3_500_000],
      [root, 'EUR', 0, 0, 3_000_000],
      [child, 'USD', 2_000_000, 1, 2_500_000],
      [child, 'EUR', 0, 0, 3_000_000],
      [grandchild, 'USD', 500_000, 1, 500_000],
      [grandchild, 'EUR', 3_000_000, 1, 3_000_000],
      [other, 'USD', 4_000_000, 1, 4_000_000],
    ];
    expect(byAgent.rows).toHaveLength(expected.length);
    for (const [agent, currency, own, calls, rolled] of expected) {
      expect(row(byAgent, agent, currency), `${agent} ${currency}`).toMatchObject({ spent_micros: own, calls, rolled_up_micros: rolled });
    }
    expect(row(byAgent, root, 'USD')).toMatchObject({ spent: '1.00', rolled_up: '3.50', input_tokens: 10, output_tokens: 20 });
    // Largest roll-up first.
    expect(byAgent.rows[0]).toMatchObject({ key: other, rolled_up_micros: 4_000_000 });

    // One agent: only the calls charged to it — its own and those below it; nobody above it gets a row.
    const mine = await summary('--by', 'agent', '--agent-id', child);
    expect(mine.agent_id).toBe(child);
    expect(mine.rows.map((r) => [r.key, r.currency, r.spent_micros, r.rolled_up_micros]).sort()).toEqual(
      [
        [child, 'EUR', 0, 3_000_000],
        [child, 'USD', 2_000_000, 2_500_000],
        [grandchild, 'EUR', 3_000_000, 3_000_000],
        [grandchild, 'USD', 500_000, 500_000],
      ].sort(),
    );
    expect(mine.totals.map((t) => [t.currency, t.spent_micros, t.calls])).toEqual([
      ['EUR', 3_000_000, 1],
      ['USD', 2_500_000, 2],
    ]);
    expect((await summary('--agent-id', root)).totals.map((t) => [t.currency, t.spent_micros, t.calls])).toEqual([
      ['EUR', 3_000_000, 1],
      ['USD', 3_500_000, 3],
    ]);

    const table = await caracal('spend', 'summary', '--by', 'agent', '--window', 'daily');
    expect(table.code).toBe(0);
    const lines = table.out.trimEnd().split('\n');
    expect(lines[1]).toMatch(/^AGENT\s+CURRENCY\s+SPENT\s+CALLS\s+INPUT TOKENS\s+OUTPUT TOKENS\s+ROLLED UP$/);
    expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^${root}\\s+USD\\s+1\\.00\\s+1\\s+10\\s+20\\s+3\\.50$`)));
    expect(lines.slice(-2)).toEqual(['total 3.00 EUR in 1 call', 'total 7.50 USD in 4 calls']);
  });

  it('per upstream and per model', async () => {
    const byUpstream = await summary('--by', 'upstream');
    expect(byUpstream.rows.map((r) => [r.key, r.currency, r.spent_micros, r.calls])).toEqual([
      ['beta', 'USD', 6_000_000, 2],
      ['alpha', 'EUR', 3_000_000, 1],
      ['alpha', 'USD', 1_500_000, 2],
    ]);
    expect(byUpstream.rows[0]!.rolled_up_micros).toBeUndefined();
    const byModel = await summary('--by', 'model', '--window', 'hourly');
    expect(byModel.rows.map((r) => [r.key, r.currency, r.spent_micros, r.calls]).sort()).toEqual(
      [
        ['m-large', 'USD', 1_000_000, 1],
        ['m-small', 'USD', 2_500_000, 2],
        [null, 'EUR', 3_000_000, 1],
        [null, 'USD', 4_000_000, 1],
      ].sort(),
    );
    expect((await caracal('spend', 'summary', '--by', 'model')).out).toMatch(/^MODEL\s+CURRENCY/m);
  });

  it('answers bad input with one line and a non-zero exit', async () => {
    expectOneLineError(await caracal('spend', 'summary', '--window', 'yearly'), /window must be one of hourly, daily, weekly, monthly, got "yearly"$/m);
    expectOneLineError(await caracal('spend', 'summary', '--window', 'daily\n--by agent'), /window must be one of/);
    expectOneLineError(await caracal('spend', 'summary', '--by', 'team'), /by must be one of agent, upstream, model, got "team"$/m);
    expectOneLineError(await caracal('spend', 'summary', '--by', '\u001b[2J'), /got "\\u001b\[2J"$/m);
    expectOneLineError(await caracal('spend', 'summary', '--agent-id', "x'; DROP TABLE audit_log; --"), /principalId: is not a valid principal id/);
    expectOneLineError(await caracal('spend', 'summary', '--agent-id', ''), /principalId: /);
    expectOneLineError(await caracal('spend', 'summary', '--colour'), /unknown option '--colour'/);
    expectOneLineError(await caracal('spend', 'summary', 'extra'), /too many arguments/);
    // Nothing was harmed.
    expect((await summary()).totals).toHaveLength(2);
  });

  it("`ledger query` gains the agent's proxied calls and their cost in the window", async () => {
    let ledgerEnv: Record<string, string>;
    if (backend === 'embedded') {
      // The CLI reads the database itself: the harness's process ends first.
      const home = h.ctx.config.home;
      await admin?.close();
      admin = undefined;
      await consumers.stop();
      await h.close();
      ledgerEnv = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' };
    } else {
      const { CARACAL_ADMIN_URL: _url, CARACAL_ADMIN_TOKEN: _token, ...rest } = env();
      ledgerEnv = rest;
    }
    const ledger = cliRunner(() => ledgerEnv);
    const json = await ledger('ledger', 'query', '--agent-id', grandchild, '--time-window', 'daily', '--spend', '--json');
    expect(json.err).toBe('');
    const result = JSON.parse(json.out) as { entries: unknown[]; spend: AgentSpend };
    expect(result.entries).toEqual([]);
    expect(result.spend.calls).toBe(2);
    expect(result.spend.spend.map((s) => [s.currency, s.spent_micros, s.calls])).toEqual([
      ['EUR', 3_000_000, 1],
      ['USD', 500_000, 1],
    ]);
    // Without --spend the JSON is the entries, as before.
    expect(JSON.parse((await ledger('ledger', 'query', '--agent-id', grandchild, '--time-window', 'daily', '--json')).out)).toEqual([]);
    // The call of two days ago is outside the last day, inside the last week.
    expect((await ledger('ledger', 'query', '--agent-id', child, '--time-window', 'daily')).out).toBe('(none)\n0 entries\n1 proxied call, spent 2.00 USD\n');
    expect((await ledger('ledger', 'query', '--agent-id', child, '--time-window', 'weekly')).out).toBe('(none)\n0 entries\n2 proxied calls, spent 11.00 USD\n');
    // An agent without calls reads as before; --spend says so.
    expect((await ledger('ledger', 'query', '--agent-id', 'nobody', '--time-window', 'hourly')).out).toBe('(none)\n0 entries\n');
    expect((await ledger('ledger', 'query', '--agent-id', 'nobody', '--time-window', 'hourly', '--spend')).out).toBe('(none)\n0 entries\n0 proxied calls\n');
    expectOneLineError(await ledger('ledger', 'query', '--agent-id', root, '--time-window', 'yearly'), /--time-window must be one of/);
  });
});

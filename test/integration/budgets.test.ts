import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { ZodError } from 'zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { parseEvent, type LifecycleData } from '../../src/events/cloudevents.js';
import { buildAdminApp } from '../../src/gateway/admin.js';
import { budgetsForPrincipals, deleteBudget, getBudget, getBudgets, listBudgets, setBudget, type Budget } from '../../src/metering/budgets.js';
import { MAX_AMOUNT_MICROS, windowBounds, type BudgetWindow } from '../../src/metering/money.js';
import type { BudgetView, SetBudgetReport } from '../../src/operations/budgets.js';
import type { LogMessage } from '../../src/events/event-log.js';
import type { Queryable } from '../../src/store/db.js';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';
import { BACKENDS, createHarness, readTopic, type Harness } from '../helpers/gateway-harness.js';
import { randomName, requireServices } from '../helpers/services.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const UNKNOWN = '0190f0f0-0000-7000-8000-000000000000';

/** The error `promise` rejects with (fails the test when it resolves). */
async function refusal(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a refusal');
}

/** The current period of `window` as the server computed it: the one containing now, or (at a boundary) the one before. */
function expectCurrentPeriod(window: BudgetWindow, view: { periodStart: string; periodEnd: string }, before: Date, after: Date): void {
  const candidates = [windowBounds(window, before), windowBounds(window, after)].map(({ start, end }) => ({ periodStart: start.toISOString(), periodEnd: end.toISOString() }));
  expect(candidates).toContainEqual({ periodStart: view.periodStart, periodEnd: view.periodEnd });
}

describe.each(BACKENDS)('budgets on the %s backend', (backend) => {
  let h: Harness;
  let db: Queryable;

  beforeAll(async () => {
    h = await createHarness({ backend });
    db = h.ctx.db;
  }, 120_000);
  afterAll(async () => h?.close());

  describe('store', () => {
    it('creates, replaces and reads budgets: one per principal and window, several windows per principal', async () => {
      const agent = await h.registerAgent();
      const first = await setBudget(db, { principalId: agent, window: 'daily', limitMicros: 100_000_000, currency: 'USD' });
      expect(first.created).toBe(true);
      expect(first.budget).toEqual({
        principalId: agent,
        window: 'daily',
        limitMicros: 100_000_000,
        limit: '100.00',
        currency: 'USD',
        createdAt: expect.stringMatching(ISO),
        updatedAt: expect.stringMatching(ISO),
      });

      await new Promise((resolve) => setTimeout(resolve, 5));
      const replaced = await setBudget(db, { principalId: agent, window: 'daily', limitMicros: 100_000, currency: 'eur' });
      expect(replaced.created).toBe(false);
      expect(replaced.budget).toMatchObject({ window: 'daily', limitMicros: 100_000, limit: '0.10', currency: 'EUR', createdAt: first.budget.createdAt });
      expect(replaced.budget.updatedAt > first.budget.updatedAt).toBe(true);

      await setBudget(db, { principalId: agent, window: 'monthly', limitMicros: MAX_AMOUNT_MICROS, currency: 'JPY' });
      await setBudget(db, { principalId: agent, window: 'hourly', limitMicros: 1, currency: 'USD' });
      const all = await getBudgets(db, agent);
      expect(all.map((b) => [b.window, b.limit, b.currency])).toEqual([
        ['hourly', '0.000001', 'USD'],
        ['daily', '0.10', 'EUR'],
        ['monthly', '1000000000.00', 'JPY'],
      ]);
      // The largest limit survives the bigint column exactly.
      expect(all[2]!.limitMicros).toBe(MAX_AMOUNT_MICROS);
      expect(await getBudget(db, agent, 'daily')).toEqual(all[1]);
      expect(await getBudget(db, agent, 'weekly')).toBeNull();
      expect(await listBudgets(db, { principalId: agent })).toEqual(all);
      expect((await listBudgets(db)).filter((b) => b.principalId === agent)).toEqual(all);
      expect(await getBudgets(db, UNKNOWN)).toEqual([]);
    });

    it('refuses unknown principals and invalid values, storing nothing', async () => {
      const agent = await h.registerAgent();
      const notFound = await refusal(setBudget(db, { principalId: UNKNOWN, window: 'daily', limitMicros: 1, currency: 'USD' }));
      expect(notFound).toMatchObject({ code: 'CARACAL_NOT_FOUND', message: `principal ${UNKNOWN} not found` });
      const invalid = [
        { limitMicros: 0 },
        { limitMicros: -1 },
        { limitMicros: 1.5 },
        { limitMicros: MAX_AMOUNT_MICROS + 1 },
        { limitMicros: Number.NaN },
        { window: 'yearly' },
        { currency: 'XYZ' },
        { currency: 'US' },
        { principalId: "1' OR '1'='1" },
      ];
      for (const bad of invalid) {
        const input = { principalId: agent, window: 'daily', limitMicros: 1_000_000, currency: 'USD', ...bad } as Parameters<typeof setBudget>[1];
        expect(await refusal(setBudget(db, input)), JSON.stringify(bad)).toBeInstanceOf(ZodError);
      }
      expect(await getBudgets(db, agent)).toEqual([]);
    });

    it('keeps the database checks as a backstop for rows written by hand', async () => {
      const agent = await h.registerAgent();
      const insert = (window: string, limit: string, currency: string) =>
        db.query('INSERT INTO budgets (principal_id, budget_window, limit_micros, currency) VALUES ($1, $2, $3, $4)', [agent, window, limit, currency]);
      for (const [window, limit, currency] of [
        ['daily', '0', 'USD'],
        ['daily', '-5', 'USD'],
        ['daily', '1000000000000001', 'USD'],
        ['yearly', '1', 'USD'],
        ['daily', '1', 'usd'],
        ['daily', '1', 'USDD'],
      ]) {
        await expect(insert(window!, limit!, currency!), `${window} ${limit} ${currency}`).rejects.toThrow(/violates check constraint/);
      }
      await expect(db.query('INSERT INTO budgets (principal_id, budget_window, limit_micros, currency) VALUES ($1, $2, $3, $4)', [UNKNOWN, 'daily', '1', 'USD'])).rejects.toThrow(/foreign key/);
      await insert('daily', '1000000000000000', 'USD');
      await expect(insert('daily', '1', 'USD')).rejects.toMatchObject({ code: 'CARACAL_CONFLICT' });
      expect(await getBudgets(db, agent)).toEqual([expect.objectContaining({ window: 'daily', limitMicros: MAX_AMOUNT_MICROS })]);
    });

    it('deletes one window or all, NOT_FOUND when nothing matched', async () => {
      const agent = await h.registerAgent();
      for (const window of ['hourly', 'weekly', 'monthly'] as const) await setBudget(db, { principalId: agent, window, limitMicros: 5_000_000, currency: 'USD' });
      expect((await deleteBudget(db, agent, 'weekly')).map((b) => b.window)).toEqual(['weekly']);
      expect(await refusal(deleteBudget(db, agent, 'weekly'))).toMatchObject({ code: 'CARACAL_NOT_FOUND', message: `principal ${agent} has no weekly budget` });
      expect(await refusal(deleteBudget(db, UNKNOWN, 'weekly'))).toMatchObject({ code: 'CARACAL_NOT_FOUND', message: `principal ${UNKNOWN} not found` });
      expect((await deleteBudget(db, agent)).map((b) => b.window)).toEqual(['hourly', 'monthly']);
      expect(await refusal(deleteBudget(db, agent))).toMatchObject({ code: 'CARACAL_NOT_FOUND', message: `principal ${agent} has no budget` });
      expect(await getBudgets(db, agent)).toEqual([]);
    });

    it('reads the budgets of a whole delegation chain in one query', async () => {
      const [a, b, c] = [await h.registerAgent(), await h.registerAgent(), await h.registerAgent()];
      await setBudget(db, { principalId: a, window: 'monthly', limitMicros: 300_000_000, currency: 'USD' });
      await setBudget(db, { principalId: a, window: 'hourly', limitMicros: 1_000_000, currency: 'USD' });
      await setBudget(db, { principalId: c, window: 'daily', limitMicros: 20_000_000, currency: 'EUR' });
      let queries = 0;
      const counting: Queryable = { query: (sql, params) => (queries++, db.query(sql, params)) };
      const chain = await budgetsForPrincipals(counting, [a, b, c, UNKNOWN, a]);
      expect(queries).toBe(1);
      expect([...chain.keys()]).toEqual([a, b, c, UNKNOWN]);
      expect(chain.get(a)!.map((x) => x.window)).toEqual(['hourly', 'monthly']);
      expect(chain.get(b)).toEqual([]);
      expect(chain.get(c)).toEqual([expect.objectContaining({ principalId: c, window: 'daily', limit: '20.00', currency: 'EUR' })]);
      expect(chain.get(UNKNOWN)).toEqual([]);
      expect(await budgetsForPrincipals(counting, [])).toEqual(new Map());
      expect(queries).toBe(1);
      // Ids are parameters, never SQL.
      expect((await budgetsForPrincipals(db, ["x') OR ('1'='1"])).get("x') OR ('1'='1")).toEqual([]);
    });

    it("goes with its principal (ON DELETE CASCADE)", async () => {
      const agent = await h.registerAgent();
      await setBudget(db, { principalId: agent, window: 'daily', limitMicros: 1_000_000, currency: 'USD' });
      await db.query('DELETE FROM principals WHERE id = $1', [agent]);
      expect((await db.query('SELECT 1 FROM budgets WHERE principal_id = $1', [agent])).rowCount).toBe(0);
    });
  });

  describe('operations', () => {
    it('set, get, list, delete: decimal text in, exact micro-units out, the current period shown', async () => {
      const agent = await h.registerAgent();
      const created = (await h.op('budget.set', { principalId: agent, window: 'weekly', limit: '0.1' })) as SetBudgetReport;
      expect(created).toMatchObject({ principalId: agent, window: 'weekly', limitMicros: 100_000, limit: '0.10', currency: 'USD', created: true });
      const replaced = (await h.op('budget.set', { principalId: agent, window: 'weekly', limit: '12.345678', currency: ' eur ' })) as SetBudgetReport;
      expect(replaced).toMatchObject({ limitMicros: 12_345_678, limit: '12.345678', currency: 'EUR', created: false });
      await h.op('budget.set', { principalId: agent, window: 'hourly', limit: '1' });

      const before = new Date();
      const one = (await h.op('budget.get', { principalId: agent, window: 'weekly' })) as BudgetView;
      const all = (await h.op('budget.get', { principalId: agent })) as BudgetView[];
      const after = new Date();
      expect(one).toMatchObject({ principalId: agent, window: 'weekly', limit: '12.345678', currency: 'EUR' });
      expectCurrentPeriod('weekly', one, before, after);
      expect(new Date(one.periodStart).getUTCDay()).toBe(1);
      expect(all.map((v) => v.window)).toEqual(['hourly', 'weekly']);
      expectCurrentPeriod('hourly', all[0]!, before, after);
      expect((await h.op('budget.list', { principalId: agent })) as Budget[]).toEqual(await getBudgets(db, agent));

      expect(await refusal(h.op('budget.get', { principalId: agent, window: 'daily' }))).toMatchObject({ code: 'CARACAL_NOT_FOUND', message: `principal ${agent} has no daily budget` });
      expect(await refusal(h.op('budget.get', { principalId: UNKNOWN }))).toMatchObject({ code: 'CARACAL_NOT_FOUND', message: `principal ${UNKNOWN} not found` });
      expect(((await h.op('budget.delete', { principalId: agent, window: 'hourly' })) as Budget[]).map((b) => b.window)).toEqual(['hourly']);
      expect(((await h.op('budget.delete', { principalId: agent })) as Budget[]).map((b) => b.window)).toEqual(['weekly']);
      expect(await h.op('budget.get', { principalId: agent })).toEqual([]);
    });

    it('refuses bad arguments with one clear line naming the field, before looking the principal up', async () => {
      const agent = await h.registerAgent();
      const set = (args: Record<string, unknown>) => refusal(h.op('budget.set', { principalId: agent, window: 'daily', limit: '10', ...args }));
      const cases: [Record<string, unknown>, RegExp][] = [
        [{ limit: '-1' }, /^limit must be a positive decimal amount/],
        [{ limit: 'NaN' }, /^limit must be a positive decimal amount/],
        [{ limit: '1e3' }, /^limit must be a positive decimal amount/],
        [{ limit: '99999999999999999999' }, /^limit must be a positive decimal amount/],
        [{ limit: '0' }, /^limit must be more than zero$/],
        [{ limit: '1000000001' }, /^limit must be at most 1000000000\.00$/],
        [{ limit: 10 }, /^limit: must be a decimal string such as "100\.00"/],
        [{ limit: 'x'.repeat(65) }, /^limit: /],
        [{ window: 'yearly' }, /^window must be one of hourly, daily, weekly, monthly, got "yearly"$/],
        [{ window: 7 }, /^window: must be one of hourly, daily, weekly, monthly$/],
        [{ currency: 'XYZ' }, /^currency must be an ISO 4217 currency code/],
        [{ currency: null }, /^currency: must be an ISO 4217 currency code/],
        [{ principalId: "1' OR '1'='1" }, /^principalId: is not a valid principal id$/],
        [{ principalId: UNKNOWN, limit: '-1' }, /^limit must be/],
        [{ principalId: UNKNOWN }, new RegExp(`^principal ${UNKNOWN} not found$`)],
        [{ extra: 1 }, /unknown argument\(s\) extra/],
      ];
      for (const [args, message] of cases) {
        const err = await set(args);
        expect(err, JSON.stringify(args)).toBeInstanceOf(CaracalError);
        expect((err as CaracalError).code, JSON.stringify(args)).toBe(message.source.includes('not found') ? 'CARACAL_NOT_FOUND' : 'CARACAL_VALIDATION');
        expect(err.message, JSON.stringify(args)).toMatch(message);
      }
      expect(await refusal(h.op('budget.set', { principalId: agent, limit: '10' }))).toMatchObject({ code: 'CARACAL_VALIDATION', message: expect.stringMatching(/^window: /) });
      expect(await refusal(h.op('budget.get', { principalId: agent, window: 'Daily' }))).toMatchObject({ code: 'CARACAL_VALIDATION' });
      expect(await refusal(h.op('budget.delete', { principalId: agent, window: 'sometimes' }))).toMatchObject({ code: 'CARACAL_VALIDATION' });
      expect(await getBudgets(db, agent)).toEqual([]);
    });

    it('announces every change on agent.lifecycle (entity budget: window, limit, currency)', async () => {
      const agent = await h.registerAgent();
      await h.op('budget.set', { principalId: agent, window: 'daily', limit: '5' });
      await h.op('budget.set', { principalId: agent, window: 'daily', limit: '7.5', currency: 'EUR' });
      await h.op('budget.set', { principalId: agent, window: 'monthly', limit: '100' });
      await h.op('budget.delete', { principalId: agent });
      const budgetEvents = (messages: LogMessage[]) =>
        messages.map((m) => parseEvent(m.value).data as LifecycleData).filter((d) => d.entity === 'budget' && d.principal_id === agent);
      const messages = await readTopic(await h.ctx.events(), h.ctx.topics.lifecycle, (m) => budgetEvents(m).length >= 5, 30_000);
      expect(budgetEvents(messages)).toEqual([
        { entity: 'budget', action: 'created', principal_id: agent, entity_id: 'daily', attributes: { window: 'daily', limit: '5.00', currency: 'USD' } },
        { entity: 'budget', action: 'replaced', principal_id: agent, entity_id: 'daily', attributes: { window: 'daily', limit: '7.50', currency: 'EUR' } },
        { entity: 'budget', action: 'created', principal_id: agent, entity_id: 'monthly', attributes: { window: 'monthly', limit: '100.00', currency: 'USD' } },
        { entity: 'budget', action: 'deleted', principal_id: agent, entity_id: 'daily', attributes: { window: 'daily', limit: '7.50', currency: 'EUR' } },
        { entity: 'budget', action: 'deleted', principal_id: agent, entity_id: 'monthly', attributes: { window: 'monthly', limit: '100.00', currency: 'USD' } },
      ]);
    }, 60_000);
  });

  describe('caracal budget (CLI)', () => {
    // Embedded: the CLI's own home (one process owns a PGlite home). Services: the harness's schema and topics.
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-budget-cli-'));
    const env = (): Record<string, string> => {
      const base: Record<string, string> = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent' };
      if (backend === 'embedded') return base;
      const services = requireServices();
      return {
        ...base,
        DATABASE_URL: services.databaseUrl,
        CARACAL_DB_SCHEMA: h.ctx.config.database.schema,
        KAFKA_BROKERS: services.kafkaBrokers.join(','),
        CARACAL_TOPIC_PREFIX: h.ctx.config.kafka.topicPrefix,
        REDIS_URL: services.redisUrl,
      };
    };
    const caracal = cliRunner(env);
    let agent: string;
    let other: string;
    const stored = async (principalId = agent) => JSON.parse((await caracal('budget', 'list', '--agent-id', principalId, '--json')).out) as Budget[];

    beforeAll(async () => {
      const run = await caracal('agent', 'register', '--name', randomName('budgeted'), '--owner', 'ops@example.com', '--quiet');
      expect(run.err).toBe('');
      agent = run.out.trim();
      other = (await caracal('agent', 'register', '--name', randomName('other'), '--owner', 'ops@example.com', '--quiet')).out.trim();
    }, 60_000);

    it('sets budgets as a record or JSON, and replaces one for the same window', async () => {
      const daily = await caracal('budget', 'set', '--agent-id', agent, '--limit', '100.00', '--window', 'daily');
      expect(daily.err).toBe('');
      expect(daily.code).toBe(0);
      expect(daily.out).toMatch(new RegExp(`^principalId\\s+${agent}$`, 'm'));
      expect(daily.out).toMatch(/^window\s+daily$/m);
      expect(daily.out).toMatch(/^limit\s+100\.00$/m);
      expect(daily.out).toMatch(/^currency\s+USD$/m);
      expect(daily.out).toMatch(/^status\s+created$/m);

      const weekly = await caracal('budget', 'set', '--agent-id', agent, '--limit', '25.5', '--window', 'weekly', '--currency', 'eur', '--json');
      expect(weekly.code).toBe(0);
      expect(JSON.parse(weekly.out)).toMatchObject({ principalId: agent, window: 'weekly', limit: '25.50', limitMicros: 25_500_000, currency: 'EUR', created: true });

      const again = await caracal('budget', 'set', '--agent-id', agent, '--limit', '150', '--window', 'daily');
      expect(again.code).toBe(0);
      expect(again.out).toMatch(/^limit\s+150\.00$/m);
      expect(again.out).toMatch(/^status\s+replaced$/m);
      expect((await stored()).map((b) => [b.window, b.limit, b.currency])).toEqual([
        ['daily', '150.00', 'USD'],
        ['weekly', '25.50', 'EUR'],
      ]);
    });

    it('lists as a table or JSON, for one agent or all', async () => {
      const table = await caracal('budget', 'list', '--agent-id', agent);
      expect(table.code).toBe(0);
      const lines = table.out.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^AGENT\s+WINDOW\s+LIMIT\s+CURRENCY\s+UPDATED$/);
      expect(lines).toHaveLength(3);
      expect(lines[1]).toMatch(new RegExp(`^${agent}\\s+daily\\s+150\\.00\\s+USD\\s+\\S+Z$`));
      expect(lines[2]).toMatch(new RegExp(`^${agent}\\s+weekly\\s+25\\.50\\s+EUR\\s+\\S+Z$`));
      const everyone = JSON.parse((await caracal('budget', 'list', '--json')).out) as Budget[];
      expect(everyone.filter((b) => b.principalId === agent)).toHaveLength(2);
      expect((await caracal('budget', 'list', '--agent-id', other)).out).toBe('(none)\n');
      expect(JSON.parse((await caracal('budget', 'list', '--agent-id', other, '--json')).out)).toEqual([]);
    });

    it('gets one window with its current period and when it resets, or all of them', async () => {
      const before = new Date();
      const one = await caracal('budget', 'get', '--agent-id', agent, '--window', 'daily');
      const json = JSON.parse((await caracal('budget', 'get', '--agent-id', agent, '--window', 'weekly', '--json')).out) as BudgetView;
      const table = await caracal('budget', 'get', '--agent-id', agent);
      const after = new Date();
      expect(one.code).toBe(0);
      expect(one.out).toMatch(/^limit\s+150\.00$/m);
      const start = /^periodStart\s+(\S+)$/m.exec(one.out)![1]!;
      const resets = /^resetsAt\s+(\S+)$/m.exec(one.out)![1]!;
      expectCurrentPeriod('daily', { periodStart: start, periodEnd: resets }, before, after);
      expect(json).toMatchObject({ window: 'weekly', limit: '25.50', currency: 'EUR' });
      expectCurrentPeriod('weekly', json, before, after);
      const lines = table.out.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^WINDOW\s+LIMIT\s+CURRENCY\s+PERIOD START\s+RESETS AT\s+UPDATED$/);
      expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 3))).toEqual([
        ['daily', '150.00', 'USD'],
        ['weekly', '25.50', 'EUR'],
      ]);
      expect((await caracal('budget', 'get', '--agent-id', other)).out).toBe('(none)\n');
    });

    it('deletes one window or all, then there is nothing to delete', async () => {
      const weekly = await caracal('budget', 'delete', '--agent-id', agent, '--window', 'weekly');
      expect(weekly.code).toBe(0);
      expect(weekly.out).toBe(`deleted the weekly budget of ${agent} (25.50 EUR)\n`);
      expectOneLineError(await caracal('budget', 'delete', '--agent-id', agent, '--window', 'weekly'), new RegExp(`principal ${agent} has no weekly budget`));
      await caracal('budget', 'set', '--agent-id', agent, '--limit', '3', '--window', 'hourly');
      const all = await caracal('budget', 'delete', '--agent-id', agent, '--json');
      expect(all.code).toBe(0);
      expect((JSON.parse(all.out) as Budget[]).map((b) => b.window)).toEqual(['hourly', 'daily']);
      expectOneLineError(await caracal('budget', 'delete', '--agent-id', agent), new RegExp(`principal ${agent} has no budget$`, 'm'));
      expectOneLineError(await caracal('budget', 'get', '--agent-id', agent, '--window', 'daily'), /has no daily budget/);
      expect(await stored()).toEqual([]);
    });

    it('answers hostile and missing input with one line and a non-zero exit, storing nothing', async () => {
      const set = (...args: string[]) => caracal('budget', 'set', '--agent-id', agent, '--window', 'daily', ...args);
      const limit = /limit must be a positive decimal amount with at most 6 decimals, such as 100\.00/;
      expectOneLineError(await set('--limit', '-1'), limit);
      expectOneLineError(await set('--limit=-100'), limit);
      expectOneLineError(await set('--limit', 'NaN'), limit);
      expectOneLineError(await set('--limit', 'Infinity'), limit);
      expectOneLineError(await set('--limit', '1e3'), limit);
      expectOneLineError(await set('--limit', '1,000.00'), limit);
      expectOneLineError(await set('--limit', '1.0000001'), limit);
      expectOneLineError(await set('--limit', '99999999999999999999'), limit);
      expectOneLineError(await set('--limit', ''), limit);
      expectOneLineError(await set('--limit', '1\n2'), /got "1\\n2"$/m);
      expectOneLineError(await set('--limit', '\u001b[2J5'), /got "\\u001b\[2J5"$/m);
      expectOneLineError(await set('--limit', "1; DROP TABLE budgets; --"), limit);
      expectOneLineError(await set('--limit', '0'), /limit must be more than zero/);
      expectOneLineError(await set('--limit', '1000000000.01'), /limit must be at most 1000000000\.00/);
      expectOneLineError(await set('--limit', '10', '--currency', 'XYZ'), /currency must be an ISO 4217 currency code such as USD or EUR, got "XYZ"/);
      expectOneLineError(await set('--limit', '10', '--currency', "USD'); DROP TABLE budgets; --"), /currency must be an ISO 4217 currency code/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '10', '--window', 'yearly'), /window must be one of hourly, daily, weekly, monthly, got "yearly"/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '10', '--window', "daily' --"), /window must be one of/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', UNKNOWN, '--limit', '10', '--window', 'daily'), new RegExp(`principal ${UNKNOWN} not found`));
      expectOneLineError(await caracal('budget', 'set', '--agent-id', "1' OR '1'='1", '--limit', '10', '--window', 'daily'), /principalId: is not a valid principal id/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', 'x; DROP TABLE budgets', '--limit', '10', '--window', 'daily'), /principalId: is not a valid principal id/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--window', 'daily'), /required option '--limit <amount>' not specified/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '10'), /required option '--window <window>' not specified/);
      expectOneLineError(await caracal('budget', 'set', '--limit', '10', '--window', 'daily'), /required option '--agent-id <id>' not specified/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '10', '--window', 'daily', '--colour'), /unknown option '--colour'/);
      expectOneLineError(await caracal('budget', 'get', '--window', 'daily'), /required option '--agent-id <id>' not specified/);
      expectOneLineError(await caracal('budget', 'get', '--agent-id', agent, '--window', 'fortnightly'), /window must be one of/);
      expectOneLineError(await caracal('budget', 'get', '--agent-id', UNKNOWN), new RegExp(`principal ${UNKNOWN} not found`));
      expectOneLineError(await caracal('budget', 'delete'), /required option '--agent-id <id>' not specified/);
      expectOneLineError(await caracal('budget', 'delete', '--agent-id', UNKNOWN), new RegExp(`principal ${UNKNOWN} not found`));
      expectOneLineError(await caracal('budget', 'delete', '--agent-id', agent, '--window', 'DAILY'), /window must be one of/);
      expectOneLineError(await caracal('budget', 'list', '--agent-id', "' OR 1=1 --"), /principalId: is not a valid principal id/);
      expectOneLineError(await caracal('budget', 'list', 'extra'), /too many arguments/);
      // Nothing was stored, and the table is still there.
      expect(await stored()).toEqual([]);
      expect(await stored(other)).toEqual([]);
      expect((await caracal('budget', 'list', '--json')).code).toBe(0);
    });
  });

  describe('through the admin API (CARACAL_ADMIN_URL; DATABASE_URL points nowhere)', () => {
    const token = 'budget-admin-credential-0123456789';
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-budget-admin-'));
    let app: FastifyInstance;
    let env: Record<string, string>;
    const caracal = cliRunner(() => env);

    beforeAll(async () => {
      app = await buildAdminApp(h.ctx, token);
      await app.listen({ host: '127.0.0.1', port: 0 });
      const address = app.server.address();
      const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
      env = { CARACAL_HOME: home, CARACAL_LOG_LEVEL: 'silent', DATABASE_URL: 'postgres://127.0.0.1:1/x', CARACAL_ADMIN_URL: url, CARACAL_ADMIN_TOKEN: token };
    });
    afterAll(async () => app?.close());

    it('runs set, get, list and delete on the gateway, with the same one-line errors', async () => {
      const agent = await h.registerAgent();
      const set = await caracal('budget', 'set', '--agent-id', agent, '--limit', '42.42', '--window', 'monthly', '--currency', 'gbp', '--json');
      expect(set.err).toBe('');
      expect(JSON.parse(set.out)).toMatchObject({ principalId: agent, window: 'monthly', limit: '42.42', currency: 'GBP', created: true });
      expect(await getBudgets(db, agent)).toEqual([expect.objectContaining({ window: 'monthly', limitMicros: 42_420_000, currency: 'GBP' })]);
      const got = await caracal('budget', 'get', '--agent-id', agent, '--window', 'monthly');
      expect(got.code).toBe(0);
      expect(got.out).toMatch(/^resetsAt\s+\d{4}-\d{2}-01T00:00:00\.000Z$/m);
      expect((await caracal('budget', 'list', '--agent-id', agent)).out).toMatch(/monthly\s+42\.42\s+GBP/);

      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '-1', '--window', 'daily'), /limit must be a positive decimal amount/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '1', '--window', 'yearly'), /window must be one of/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '1', '--window', 'daily', '--currency', 'XYZ'), /currency must be an ISO 4217/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', UNKNOWN, '--limit', '1', '--window', 'daily'), /not found/);
      expectOneLineError(await caracal('budget', 'set', '--agent-id', agent, '--limit', '1\n2', '--window', 'daily'), /limit must be/);

      // A JSON number is refused: amounts are decimal text.
      const numeric = await app.inject({ method: 'POST', url: '/admin/v1/ops/budget.set', headers: { authorization: `Bearer ${token}` }, payload: { principalId: agent, window: 'daily', limit: 0.1 } });
      expect(numeric.statusCode).toBe(400);
      expect(numeric.json()).toMatchObject({ error: 'CARACAL_VALIDATION', message: expect.stringMatching(/^limit: must be a decimal string/) });

      const deleted = await caracal('budget', 'delete', '--agent-id', agent);
      expect(deleted.out).toBe(`deleted the monthly budget of ${agent} (42.42 GBP)\n`);
      expect(await getBudgets(db, agent)).toEqual([]);
      // Nothing was opened locally.
      expect(readdirSync(home)).toEqual([]);
    });
  });
});

import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { SignJWT, decodeJwt, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findMandate, type IssuedMandate, type Mandate } from '../../src/authority/tokens/mandates.js';
import { TokenRejected, TokenVerifier, type VerifiedToken } from '../../src/authority/tokens/tokens.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { MAX_AMOUNT_MICROS } from '../../src/metering/money.js';
import { cliRunner, expectOneLineError } from '../helpers/cli.js';
import { BACKENDS, createHarness, type Harness } from '../helpers/gateway-harness.js';
import { randomName, requireServices } from '../helpers/services.js';

/**
 * A delegated mandate's own budget (set at delegation): checked like principals' budgets, stored on
 * the mandate's row, signed into the child's token, and carried by every link of a descendant's
 * chain — through the operation, the gateway's delegation route and the CLI, on both backends.
 */
describe.each(BACKENDS)('mandate budgets on the %s backend', (backend) => {
  let h: Harness;
  let rootP: string; // has a policy with delegation depth 2
  let childP: string;
  let grandP: string;
  let victim: string; // the target of every refused delegation: nothing may ever be stored for it
  let root: IssuedMandate;

  const issueRoot = async () => (await h.op('mandate.issue', { principalId: rootP, resources: ['api:external/*'], actions: ['read', 'write'], validitySeconds: 600 })) as IssuedMandate;
  const delegate = (parent: IssuedMandate, args: Record<string, unknown>) =>
    h.op('mandate.delegate', { parentToken: parent.token, parentId: parent.id, resources: ['api:external/echo'], actions: ['read'], validitySeconds: 300, ...args }) as Promise<IssuedMandate>;
  const verifier = async () => new TokenVerifier(await h.ctx.keyRing(), h.ctx.tokenSettings);
  const verify = async (token: string): Promise<VerifiedToken> => (await verifier()).verify(token);
  const stored = async (id: string) =>
    (await h.ctx.db.query<{ budget_limit_micros: string | number | null; budget_window: string | null; budget_currency: string | null }>(
      'SELECT budget_limit_micros, budget_window, budget_currency FROM mandates WHERE id = $1',
      [id],
    )).rows[0];
  const countFor = async (principalId: string) => Number((await h.ctx.db.query<{ n: string | number }>('SELECT count(*) AS n FROM mandates WHERE principal_id = $1', [principalId])).rows[0]!.n);
  async function refusal(promise: Promise<unknown>): Promise<CaracalError> {
    try {
      await promise;
    } catch (err) {
      expect(err).toBeInstanceOf(CaracalError);
      return err as CaracalError;
    }
    throw new Error('expected a refusal');
  }
  async function rejected(promise: Promise<unknown>): Promise<TokenRejected> {
    try {
      await promise;
    } catch (err) {
      expect(err).toBeInstanceOf(TokenRejected);
      return err as TokenRejected;
    }
    throw new Error('expected the token to be rejected');
  }
  /** A call under a delegated mandate, the way its subject makes it. */
  const act = async (m: IssuedMandate) =>
    h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/v1/x', headers: { authorization: `Bearer ${await h.token(m.principalId)}`, 'caracal-mandate': m.token } });

  beforeAll(async () => {
    h = await createHarness({ backend });
    [rootP, childP, grandP, victim] = [await h.registerAgent(), await h.registerAgent(), await h.registerAgent(), await h.registerAgent()];
    await h.op('policy.create', { principalId: rootP, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600, delegationDepth: 2 });
    for (const id of [rootP, childP, grandP, victim]) await h.allowUpstream(id);
    root = await issueRoot();
  }, 120_000);
  afterAll(async () => h?.close());

  it('stores a delegated budget on the row, returns it on list and get, and signs it into the token', async () => {
    expect(root.budget).toBeNull();
    expect(decodeJwt(root.token)).not.toHaveProperty('budget');
    expect((await verify(root.token)).mandate?.budget).toBeUndefined();

    const child = await delegate(root, { principalId: childP, budget: { limit: '5.00', window: 'daily' } });
    const budget = { limitMicros: 5_000_000, window: 'daily', currency: 'USD' };
    expect(child.budget).toEqual(budget);
    expect(await stored(child.id)).toEqual({ budget_limit_micros: expect.anything(), budget_window: 'daily', budget_currency: 'USD' });
    expect(Number((await stored(child.id))!.budget_limit_micros)).toBe(5_000_000);
    expect((await findMandate(h.ctx.db, child.id))?.budget).toEqual(budget);
    expect(((await h.op('mandate.list', { principalId: childP })) as Mandate[]).find((m) => m.id === child.id)?.budget).toEqual(budget);
    expect((await findMandate(h.ctx.db, root.id))?.budget).toBeNull();

    // the claim, signed and verified; the root link carries no budget (the root has none)
    expect(decodeJwt(child.token)).toMatchObject({ budget: { limit_micros: 5_000_000, window: 'daily', currency: 'USD' } });
    const verified = await verify(child.token);
    expect(verified.mandate?.budget).toEqual({ limit_micros: 5_000_000, window: 'daily', currency: 'USD' });
    expect(verified.mandate?.chain).toEqual([{ id: root.id, sub: rootP }]);
    // the gateway accepts the new claims
    expect((await act(child)).statusCode).toBe(200);
  });

  it("lists every ancestor's budget in a grandchild's chain, with its own budget", async () => {
    const child = await delegate(root, { principalId: childP, budget: { limit: '5.00', window: 'daily', currency: 'USD' } });
    // larger than the parent's, another window and currency: budgets only add limits
    const grandchild = await delegate(child, { principalId: grandP, validitySeconds: 200, budget: { limit: '1000', window: 'monthly', currency: 'eur' } });
    expect(grandchild.budget).toEqual({ limitMicros: 1_000_000_000, window: 'monthly', currency: 'EUR' });
    const verified = await verify(grandchild.token);
    expect(verified.mandate).toMatchObject({
      depth: 2,
      budget: { limit_micros: 1_000_000_000, window: 'monthly', currency: 'EUR' },
      chain: [
        { id: root.id, sub: rootP },
        { id: child.id, sub: childP, budget: { limit_micros: 5_000_000, window: 'daily', currency: 'USD' } },
      ],
    });
    expect(verified.mandate?.chain[0]).not.toHaveProperty('budget');
    expect((await act(grandchild)).statusCode).toBe(200);

    // a delegate without a budget: null on the row, absent from its token and from its link below
    const plain = await delegate(root, { principalId: childP });
    expect(plain.budget).toBeNull();
    expect(await stored(plain.id)).toEqual({ budget_limit_micros: null, budget_window: null, budget_currency: null });
    expect(decodeJwt(plain.token)).not.toHaveProperty('budget');
    const under = await delegate(plain, { principalId: grandP, validitySeconds: 100, budget: { limit: '0.000001', window: 'hourly' } });
    const underClaims = (await verify(under.token)).mandate!;
    expect(underClaims.budget).toEqual({ limit_micros: 1, window: 'hourly', currency: 'USD' });
    expect(underClaims.chain).toEqual([
      { id: root.id, sub: rootP },
      { id: plain.id, sub: childP },
    ]);

    // the largest limit survives the bigint column and the claim exactly
    const max = await delegate(root, { principalId: childP, budget: { limit: '1000000000.00', window: 'weekly', currency: 'JPY' } });
    expect(max.budget).toEqual({ limitMicros: MAX_AMOUNT_MICROS, window: 'weekly', currency: 'JPY' });
    expect((await findMandate(h.ctx.db, max.id))?.budget?.limitMicros).toBe(MAX_AMOUNT_MICROS);
    expect((await verify(max.token)).mandate?.budget?.limit_micros).toBe(MAX_AMOUNT_MICROS);
  });

  it('refuses every bad budget with one clear validation error naming the field, storing nothing', async () => {
    const limit = /^budget\.limit must be a positive decimal amount with at most 6 decimals, such as 100\.00, got /;
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ limit: '-1', window: 'daily' }, limit],
      [{ limit: '-0.50', window: 'daily' }, limit],
      [{ limit: 'NaN', window: 'daily' }, limit],
      [{ limit: 'Infinity', window: 'daily' }, limit],
      [{ limit: '1e3', window: 'daily' }, limit],
      [{ limit: '', window: 'daily' }, limit],
      [{ limit: '1,000.00', window: 'daily' }, limit],
      [{ limit: '1.0000001', window: 'daily' }, limit],
      [{ limit: "1; DROP TABLE mandates; --", window: 'daily' }, limit],
      [{ limit: '1\n2', window: 'daily' }, /^budget\.limit must be .*got "1\\n2"$/],
      [{ limit: '0', window: 'daily' }, /^budget\.limit must be more than zero$/],
      [{ limit: '0.000000', window: 'daily' }, /^budget\.limit must be more than zero$/],
      [{ limit: '1000000000.000001', window: 'daily' }, /^budget\.limit must be at most 1000000000\.00$/],
      [{ limit: '99999999999999999999', window: 'daily' }, limit],
      [{ limit: '5', window: 'yearly' }, /^budget\.window must be one of hourly, daily, weekly, monthly, got "yearly"$/],
      [{ limit: '5', window: 'DAILY' }, /^budget\.window must be one of/],
      [{ limit: '5', window: 'daily', currency: 'XYZ' }, /^budget\.currency must be an ISO 4217 currency code such as USD or EUR, got "XYZ"$/],
      [{ limit: '5', window: 'daily', currency: 'US' }, /^budget\.currency must be an ISO 4217/],
      [{ limit: '5', window: 'daily', currency: "USD'); --" }, /^budget\.currency must be an ISO 4217/],
      // wrong types and shapes, refused by the argument schema, naming the field
      [{ limit: 5, window: 'daily' }, /^budget\.limit: must be a decimal string/],
      [{ limit: '5' }, /^budget\.window: must be one of/],
      [{ window: 'daily' }, /^budget\.limit: must be a decimal string/],
      [{ limit: '5', window: 'daily', extra: true }, /^unknown argument\(s\) extra$/],
    ];
    for (const [budget, message] of cases) {
      const err = await refusal(delegate(root, { principalId: victim, budget }));
      expect(err.code, JSON.stringify(budget)).toBe('CARACAL_VALIDATION');
      expect(err.message, JSON.stringify(budget)).toMatch(message);
      expect(err.message.split('\n'), JSON.stringify(budget)).toHaveLength(1);
    }
    expect(await countFor(victim)).toBe(0);
  });

  it('keeps the database checks as a backstop for rows written by hand', async () => {
    const child = await delegate(root, { principalId: childP, budget: { limit: '1', window: 'daily' } });
    const update = (limit: string | null, window: string | null, currency: string | null) =>
      h.ctx.db.query('UPDATE mandates SET budget_limit_micros = $2, budget_window = $3, budget_currency = $4 WHERE id = $1', [child.id, limit, window, currency]);
    for (const [limit, window, currency] of [
      ['0', 'daily', 'USD'],
      ['-5', 'daily', 'USD'],
      ['1000000000000001', 'daily', 'USD'],
      ['1', 'yearly', 'USD'],
      ['1', 'daily', 'usd'],
      ['1', null, 'USD'],
      [null, 'daily', null],
    ] as const) {
      await expect(update(limit, window, currency), `${limit} ${window} ${currency}`).rejects.toThrow(/violates check constraint/);
    }
    expect((await findMandate(h.ctx.db, child.id))?.budget).toEqual({ limitMicros: 1_000_000, window: 'daily', currency: 'USD' });
  });

  describe('tokens', () => {
    let child: IssuedMandate;
    let grandchild: IssuedMandate;
    let claims: JWTPayload;
    /** The claims signed by the gateway's real key, as if Caracal had issued them. */
    const signReal = async (payload: JWTPayload) => {
      const key = await h.ctx.signingKey();
      return new SignJWT(payload).setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: key.kid }).sign(key.privateKey);
    };

    beforeAll(async () => {
      child = await delegate(root, { principalId: childP, budget: { limit: '5.00', window: 'daily' } });
      grandchild = await delegate(child, { principalId: grandP, validitySeconds: 200, budget: { limit: '2.50', window: 'hourly' } });
      claims = decodeJwt(grandchild.token);
    });

    it('fails verification when a budget claim was tampered with (signature)', async () => {
      const [header, , signature] = grandchild.token.split('.') as [string, string, string];
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      const chain = claims.chain as { id: string; sub: string; budget?: unknown }[];
      const tampered = [
        { ...claims, budget: { limit_micros: MAX_AMOUNT_MICROS, window: 'monthly', currency: 'USD' } },
        (({ budget: _dropped, ...rest }) => rest)(claims),
        { ...claims, chain: [chain[0], { ...chain[1], budget: { limit_micros: MAX_AMOUNT_MICROS, window: 'daily', currency: 'USD' } }] },
        { ...claims, chain: [chain[0], { id: chain[1]!.id, sub: chain[1]!.sub }] },
      ];
      for (const payload of tampered) {
        const token = `${header}.${b64(payload)}.${signature}`;
        expect((await rejected(verify(token))).failure).toBe('bad_signature');
        const response = await h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/v1/x', headers: { authorization: `Bearer ${await h.token(grandP)}`, 'caracal-mandate': token } });
        expect(response.statusCode).toBe(401);
      }
    });

    it('fails verification when a budget claim signed by the real key is malformed (schema)', async () => {
      const chain = claims.chain as { id: string; sub: string; budget?: unknown }[];
      const good = { limit_micros: 1_000_000, window: 'daily', currency: 'USD' };
      const badBudgets: unknown[] = [
        null,
        'daily',
        {},
        { ...good, limit_micros: 0 },
        { ...good, limit_micros: -1 },
        { ...good, limit_micros: 1.5 },
        { ...good, limit_micros: MAX_AMOUNT_MICROS + 1 },
        { ...good, limit_micros: '1000000' },
        { ...good, window: 'yearly' },
        { ...good, currency: 'usd' },
        { ...good, currency: 'USDD' },
        { ...good, admin: true },
        { window: 'daily', currency: 'USD' },
      ];
      for (const bad of badBudgets) {
        for (const payload of [
          { ...claims, budget: bad },
          { ...claims, chain: [chain[0], { ...chain[1], budget: bad }] },
        ]) {
          const err = await rejected(verify(await signReal(payload)));
          expect(err.failure, JSON.stringify(payload)).toBe('bad_claims');
        }
      }
      // a budget claim does not turn an access token into anything: without mandate claims it is refused
      const access = decodeJwt(await h.token(childP));
      expect((await rejected(verify(await signReal({ ...access, budget: good })))).failure).toBe('bad_claims');
      // the control: the same claims, well-formed, verify
      expect((await verify(await signReal({ ...claims, budget: good }))).mandate?.budget).toEqual(good);
    });

    it('still verifies tokens issued before budgets (no budget fields anywhere)', async () => {
      const chain = claims.chain as { id: string; sub: string }[];
      const { budget: _dropped, ...rest } = claims;
      const legacy = await signReal({ ...rest, chain: chain.map(({ id, sub }) => ({ id, sub })) });
      const verified = await verify(legacy);
      expect(verified.mandate?.budget).toBeUndefined();
      expect(verified.mandate?.chain).toEqual([
        { id: root.id, sub: rootP },
        { id: child.id, sub: childP },
      ]);
      const response = await h.assembled.gateway.app.inject({ method: 'GET', url: '/proxy/echo/v1/x', headers: { authorization: `Bearer ${await h.token(grandP)}`, 'caracal-mandate': legacy } });
      expect(response.statusCode, response.body).toBe(200);
    });
  });

  it('delegates with a budget through the gateway route, and refuses a bad one with 400', async () => {
    const post = (headers: Record<string, string>, body: Record<string, unknown>) =>
      h.assembled.gateway.app.inject({ method: 'POST', url: '/v1/mandates/delegate', headers, payload: { resources: ['api:external/echo'], actions: ['read'], validity: 300, ...body } });
    const made = await post({ authorization: `Bearer ${root.token}` }, { agent_id: childP, budget: { limit: '12.34', window: 'weekly', currency: 'gbp' } });
    expect(made.statusCode, made.body).toBe(201);
    const child = made.json() as IssuedMandate;
    expect(child.budget).toEqual({ limitMicros: 12_340_000, window: 'weekly', currency: 'GBP' });
    expect((await findMandate(h.ctx.db, child.id))?.budget).toEqual(child.budget);
    expect((await verify(child.token)).mandate?.budget).toEqual({ limit_micros: 12_340_000, window: 'weekly', currency: 'GBP' });

    // the delegate delegates further with its own credential: its budget is in the grandchild's chain
    const further = await post({ authorization: `Bearer ${await h.token(childP)}`, 'caracal-mandate': child.token }, { agent_id: grandP, validity: 200, budget: { limit: '1', window: 'daily' } });
    expect(further.statusCode, further.body).toBe(201);
    const grandchild = further.json() as IssuedMandate;
    expect((await verify(grandchild.token)).mandate).toMatchObject({
      budget: { limit_micros: 1_000_000, window: 'daily', currency: 'USD' },
      chain: [{ id: root.id, sub: rootP }, { id: child.id, sub: childP, budget: { limit_micros: 12_340_000, window: 'weekly', currency: 'GBP' } }],
    });
    // without a budget (or null) as before
    const none = await post({ authorization: `Bearer ${root.token}` }, { agent_id: childP, budget: null });
    expect(none.statusCode, none.body).toBe(201);
    expect(none.json().budget).toBeNull();

    for (const [budget, message] of [
      [{ limit: '-1', window: 'daily' }, /^budget\.limit must be a positive decimal amount/],
      [{ limit: 'NaN', window: 'daily' }, /^budget\.limit must be a positive decimal amount/],
      [{ limit: '0', window: 'daily' }, /^budget\.limit must be more than zero$/],
      [{ limit: '0.1234567', window: 'daily' }, /^budget\.limit must be a positive decimal amount/],
      [{ limit: '1000000001', window: 'daily' }, /^budget\.limit must be at most 1000000000\.00$/],
      [{ limit: '5', window: 'fortnightly' }, /^budget\.window must be one of hourly, daily, weekly, monthly/],
      [{ limit: '5', window: 'daily', currency: 'XYZ' }, /^budget\.currency must be an ISO 4217/],
      [{ limit: 5, window: 'daily' }, /^budget\.limit: must be a decimal string/],
      [{ limit: '5' }, /^budget\.window: must be one of/],
      [{ limit: '5', window: 'daily', admin: true }, /budget/],
      ['5.00', /^budget: /],
    ] as [unknown, RegExp][]) {
      const response = await post({ authorization: `Bearer ${root.token}` }, { agent_id: victim, budget });
      expect(response.statusCode, JSON.stringify(budget)).toBe(400);
      expect(response.json(), JSON.stringify(budget)).toMatchObject({ error: 'CARACAL_VALIDATION', request_id: expect.any(String) });
      expect(response.json().message, JSON.stringify(budget)).toMatch(message);
    }
    expect(await countFor(victim)).toBe(0);
  });

  describe('caracal mandate delegate --budget-* (CLI)', () => {
    // Embedded: the CLI's own home (one process owns a PGlite home). Services: the harness's schema and topics.
    const home = mkdtempSync(path.join(tmpdir(), 'caracal-mandate-budget-cli-'));
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
    let owner: string;
    let delegateP: string;
    let parent: IssuedMandate;
    const delegateCli = (...extra: string[]) =>
      caracal('mandate', 'delegate', '--parent', parent.id, '--parent-token', parent.token, '--agent-id', delegateP, '--resources', 'api:external/echo', '--actions', 'read', '--validity', '60', ...extra);
    const listed = async () => JSON.parse((await caracal('mandate', 'list', '--agent-id', delegateP, '--json')).out) as Mandate[];

    beforeAll(async () => {
      owner = (await caracal('agent', 'register', '--name', randomName('owner'), '--owner', 'ops@example.com', '--quiet')).out.trim();
      delegateP = (await caracal('agent', 'register', '--name', randomName('delegate'), '--owner', 'ops@example.com', '--quiet')).out.trim();
      expect((await caracal('policy', 'create', '--agent-id', owner, '--resources', 'api:external/*', '--actions', 'read', '--max-validity', '3600', '--delegation-depth', '1')).code).toBe(0);
      const issued = await caracal('mandate', 'issue', '--agent-id', owner, '--resources', 'api:external/*', '--actions', 'read', '--validity', '600', '--json');
      expect(issued.err).toBe('');
      parent = JSON.parse(issued.out) as IssuedMandate;
    }, 120_000);

    it('delegates with a budget and shows it', async () => {
      const run = await delegateCli('--budget-limit', '5.00', '--budget-window', 'daily');
      expect(run.err).toBe('');
      expect(run.code).toBe(0);
      expect(run.out).toMatch(/^budget\s+5\.00 USD daily$/m);
      const id = /^id\s+(\S+)$/m.exec(run.out)![1]!;
      const token = /^token\s+(\S+)$/m.exec(run.out)![1]!;
      expect(decodeJwt(token)).toMatchObject({ jti: id, budget: { limit_micros: 5_000_000, window: 'daily', currency: 'USD' }, chain: [{ id: parent.id, sub: owner }] });

      const json = await delegateCli('--budget-limit', '0.5', '--budget-window', 'monthly', '--budget-currency', 'eur', '--json');
      expect(json.code).toBe(0);
      expect(JSON.parse(json.out)).toMatchObject({ principalId: delegateP, parentId: parent.id, budget: { limitMicros: 500_000, window: 'monthly', currency: 'EUR' } });

      const mine = await listed();
      expect(mine.find((m) => m.id === id)?.budget).toEqual({ limitMicros: 5_000_000, window: 'daily', currency: 'USD' });
      const table = await caracal('mandate', 'list', '--agent-id', delegateP);
      expect(table.out.split('\n')[0]).toMatch(/\bBUDGET\b/);
      expect(table.out).toMatch(/5\.00 USD daily/);
      expect(table.out).toMatch(/0\.50 EUR monthly/);

      // without the flags: no budget, as before
      const plain = await delegateCli('--json');
      expect(plain.code).toBe(0);
      expect(JSON.parse(plain.out).budget).toBeNull();
    }, 60_000);

    it('answers a missing half of the pair, and bad values, with one line and a non-zero exit, storing nothing', async () => {
      const before = (await listed()).length;
      const pair = /--budget-limit and --budget-window go together: give both, or neither/;
      expectOneLineError(await delegateCli('--budget-limit', '5.00'), pair);
      expectOneLineError(await delegateCli('--budget-window', 'daily'), pair);
      expectOneLineError(await delegateCli('--budget-window', 'daily', '--budget-currency', 'USD'), pair);
      expectOneLineError(await delegateCli('--budget-currency', 'EUR'), /--budget-currency needs --budget-limit and --budget-window/);
      expectOneLineError(await delegateCli('--budget-limit', '-1', '--budget-window', 'daily'), /budget\.limit must be a positive decimal amount/);
      expectOneLineError(await delegateCli('--budget-limit', '5', '--budget-window', 'yearly'), /budget\.window must be one of hourly, daily, weekly, monthly, got "yearly"/);
      expectOneLineError(await delegateCli('--budget-limit', '5', '--budget-window', 'daily', '--budget-currency', 'XYZ'), /budget\.currency must be an ISO 4217/);
      expect((await listed()).length).toBe(before);
    }, 60_000);
  });
});

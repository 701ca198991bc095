/**
 * Child-process roles for bench/proxy-overhead.ts and bench/profile.ts, so load generator, proxy and
 * upstream never share an event loop: `upstream`, `bare <upstreamUrl>`, `gateway <upstreamUrl>`. Each
 * prints one JSON line `{url, token?, statsUrl?}` when ready and runs until SIGTERM.
 *
 * `--profile <file>` (bare and gateway roles): SIGUSR2 starts the V8 CPU profiler, the next SIGUSR2 writes
 * `<file>` (a .cpuprofile) and prints `{"profiled": file}` — so a profile covers the load window
 * only, not start-up or the warm-up.
 */
import http from 'node:http';
import { Session } from 'node:inspector/promises';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { issueAccessToken } from '../src/authority/tokens/tokens.js';
import { loadConfig } from '../src/config/load.js';
import { startGateway } from '../src/gateway/server.js';
import { DEFAULT_BUNDLE } from '../src/paths.js';
import { DirectoryBundleStore } from '../src/policy/bundle-store-dir.js';
import { runOperation } from '../src/operations/index.js';
import type { PolicyEvaluator } from '../src/gateway/app.js';
import { DiscardingEventLog } from './null-event-log.js';

const [role, upstreamUrl, ...flags] = process.argv.slice(2);
const ready = (value: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(value)}\n`);
const onTerm = (fn: () => Promise<unknown>) => process.once('SIGTERM', () => void fn().finally(() => process.exit(0)));

if (flags.includes('--profile')) {
  const file = flags[flags.indexOf('--profile') + 1]!;
  const session = new Session();
  session.connect();
  let profiling = false;
  process.on('SIGUSR2', () => {
    void (async () => {
      if (!profiling) {
        profiling = true;
        await session.post('Profiler.enable');
        await session.post('Profiler.start');
        return;
      }
      profiling = false;
      const { profile } = await session.post('Profiler.stop');
      writeFileSync(file, JSON.stringify(profile));
      ready({ profiled: file });
    })();
  });
}

if (role === 'upstream') {
  const body = JSON.stringify({ id: 'chatcmpl-bench', object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' } }] });
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.keepAliveTimeout = 65_000;
  server.listen(0, '127.0.0.1', () => ready({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }));
  onTerm(async () => server.close());
} else if (role === 'bare') {
  const app = Fastify({ logger: false });
  await app.register(proxy, { upstream: upstreamUrl!, prefix: '/proxy/echo' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  ready({ url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` });
  onTerm(() => app.close());
} else if (role === 'gateway') {
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-bench-'));
  // --shadow: the gateway follows a directory store whose active and shadow revisions are both the default bundle, so
  // every decision is also evaluated by the shadow engine and recorded with it (what a shadow costs, not its effect).
  const shadowStore = flags.includes('--shadow') ? path.join(home, 'bundle-store') : null;
  if (shadowStore) {
    const store = new DirectoryBundleStore(shadowStore);
    const { revision } = await store.publish(readFileSync(DEFAULT_BUNDLE));
    await store.activate(revision);
    await store.setShadow(revision);
  }
  const config = loadConfig({
    env: { ...process.env, CARACAL_HOME: home, CARACAL_GATEWAY_PORT: '0', CARACAL_ADMIN_PORT: '0', CARACAL_METRICS_PORT: '0', CARACAL_LOG_LEVEL: 'warn' },
    cwd: home,
    overrides: {
      // The per-principal limiter runs on every request (its cost is measured) but is set wide
      // enough never to refuse: the benchmark measures throughput, not the limit.
      // --priced: the upstream is priced (one micro-unit a call): every request is metered. --budget: priced, and the
      // agent has a budget far above what a run spends: every request also reserves and settles, and none is refused
      // (the cost of budgets, not their effect).
      gateway: {
        upstreams: [{ name: 'echo', url: upstreamUrl!, ...(flags.includes('--budget') || flags.includes('--priced') ? { pricing: { currency: 'USD', perRequest: '0.000001' } } : {}) }],
        limits: { perPrincipal: { maxConcurrent: 10_000, rate: { ratePerSecond: 1_000_000, burst: 1_000_000 } } },
      },
      // --no-token-cache: every request pays the ES256 verification (what the cache saves).
      ...(flags.includes('--no-token-cache') ? { auth: { verifiedTokenCacheSize: 0 } } : {}),
      // --spool / --no-spool: decisions go to the local spool (group commit on local disk, shipped in
      // the background) or straight to the event log; neither: the configuration's default.
      // --discard-events means no durable record at all, so it turns the spool off unless --spool.
      ...(flags.includes('--spool') ? { spool: { enabled: true } } : flags.includes('--no-spool') || flags.includes('--discard-events') ? { spool: { enabled: false } } : {}),
      ...(shadowStore ? { policy: { store: `dir:${shadowStore}` } } : {}),
    },
  });
  // Cost breakdown peers: --discard-events (no durable decision record), --allow-all (no WASM).
  const allowAll: PolicyEvaluator = { revision: 'allow-all', evaluate: () => ({ allow: true, reasons: [], policyIds: [], outcome: 'result' }) };
  const running = await startGateway(config, {
    overrides: {
      ...(flags.includes('--discard-events') ? { events: new DiscardingEventLog() } : {}),
      ...(flags.includes('--allow-all') ? { engine: allowAll } : {}),
    },
  });
  const agent = (await runOperation(running.ctx, 'agent.register', { name: 'bench-agent', owner: 'bench@example.com' })) as { id: string };
  await runOperation(running.ctx, 'policy.create', { principalId: agent.id, resources: ['api:external/*'], actions: ['read', 'write'], maxValiditySeconds: 3600 });
  await runOperation(running.ctx, 'allowlist.create', { principalId: agent.id, pattern: `${upstreamUrl}/**`, patternType: 'glob' });
  if (flags.includes('--budget')) await runOperation(running.ctx, 'budget.set', { principalId: agent.id, window: 'daily', limit: '1000000', currency: 'USD' });
  const key = await running.ctx.signingKey();
  const { token } = await issueAccessToken(key, running.ctx.tokenSettings, agent.id, 3600);
  // --principals N: N more principals, each with a policy, an allowlist entry and its own token
  // (bulk SQL: a bench shortcut), so the load spreads over N verified-token cache entries.
  const many = Number(flags[flags.indexOf('--principals') + 1] ?? 0);
  let tokensFile: string | undefined;
  if (flags.includes('--principals') && many > 0) {
    const db = running.ctx.db;
    await db.query(`INSERT INTO principals (id, name, owner) SELECT 'bench-' || g, 'bench-agent-' || g, 'bench@example.com' FROM generate_series(1, $1::int) g`, [many]);
    await db.query(
      `INSERT INTO authority_policies (id, principal_id, resources, actions, max_validity_seconds)
       SELECT 'bench-policy-' || g, 'bench-' || g, ARRAY['api:external/*'], ARRAY['read','write'], 3600 FROM generate_series(1, $1::int) g`,
      [many],
    );
    await db.query(
      `INSERT INTO allowlist_entries (id, principal_id, pattern, pattern_type)
       SELECT 'bench-allow-' || g, 'bench-' || g, $2, 'glob' FROM generate_series(1, $1::int) g`,
      [many, `${upstreamUrl}/**`],
    );
    const tokens: string[] = [];
    for (let i = 1; i <= many; i++) tokens.push((await issueAccessToken(key, running.ctx.tokenSettings, `bench-${i}`, 3600)).token);
    tokensFile = path.join(home, 'tokens.json');
    writeFileSync(tokensFile, JSON.stringify(tokens));
  }

  // What the gateway really did, counted on the server: the principals of the decision events that
  // reached the event log (the message key is the principal id), not what the load generator meant
  // to send. `GET <statsUrl>` returns and resets the count since the last read; the total runs
  // until a read with `?reset-total`.
  const log = await running.ctx.events();
  const publish = log.publish.bind(log);
  let sinceRead = new Set<string>();
  let total = new Set<string>();
  let decisions = 0;
  log.publish = async (topic, messages) => {
    await publish(topic, messages);
    if (topic !== running.ctx.topics.decisions) return;
    decisions += messages.length;
    for (const message of messages) {
      sinceRead.add(message.key);
      total.add(message.key);
    }
  };
  const stats = http.createServer((req, res) => {
    const body = JSON.stringify({ decisions, distinctPrincipals: sinceRead.size, distinctTotal: total.size });
    sinceRead = new Set();
    decisions = 0;
    if (req.url?.includes('reset-total')) total = new Set();
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  await new Promise<void>((resolve) => stats.listen(0, '127.0.0.1', resolve));
  const statsUrl = `http://127.0.0.1:${(stats.address() as AddressInfo).port}`;

  ready({ url: running.gatewayUrl, token, tokensFile, statsUrl, backends: { db: running.ctx.db.kind, events: log.kind, spool: config.spool.enabled } });
  onTerm(async () => {
    stats.close();
    await running.close();
  });
} else {
  process.stderr.write('usage: servers.js upstream | bare <url> | gateway <url> [--discard-events] [--allow-all] [--spool | --no-spool] [--no-token-cache] [--principals N] [--profile FILE]\n');
  process.exit(2);
}

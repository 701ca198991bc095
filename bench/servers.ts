/**
 * Child-process roles for bench/proxy-overhead.ts, so load generator, proxy and upstream never share
 * an event loop: `upstream`, `bare <upstreamUrl>`, `gateway <upstreamUrl>`. Each prints one JSON line
 * `{url, token?}` when ready and runs until SIGTERM.
 */
import http from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { issueAccessToken } from '../src/authority/tokens/tokens.js';
import { loadConfig } from '../src/config/load.js';
import { startGateway } from '../src/gateway/server.js';
import { runOperation } from '../src/operations/index.js';
import type { PolicyEvaluator } from '../src/gateway/app.js';
import { DiscardingEventLog } from './null-event-log.js';

const [role, upstreamUrl, ...flags] = process.argv.slice(2);
const ready = (value: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(value)}\n`);
const onTerm = (fn: () => Promise<unknown>) => process.once('SIGTERM', () => void fn().finally(() => process.exit(0)));

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
  const config = loadConfig({
    env: { ...process.env, CARACAL_HOME: home, CARACAL_GATEWAY_PORT: '0', CARACAL_ADMIN_PORT: '0', CARACAL_METRICS_PORT: '0', CARACAL_LOG_LEVEL: 'warn' },
    cwd: home,
    overrides: {
      // The per-principal limiter runs on every request (its cost is measured) but is set wide
      // enough never to refuse: the benchmark measures throughput, not the limit.
      gateway: { upstreams: [{ name: 'echo', url: upstreamUrl! }], limits: { perPrincipal: { maxConcurrent: 10_000, rate: { ratePerSecond: 1_000_000, burst: 1_000_000 } } } },
      // --no-token-cache: every request pays the ES256 verification (what the cache saves).
      ...(flags.includes('--no-token-cache') ? { auth: { verifiedTokenCacheSize: 0 } } : {}),
      // --spool: decisions go to the local spool (group commit on local disk), shipped in the background.
      ...(flags.includes('--spool') ? { spool: { enabled: true } } : {}),
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
  ready({ url: running.gatewayUrl, token, tokensFile, backends: { db: running.ctx.db.kind, events: (await running.ctx.events()).kind } });
  onTerm(() => running.close());
} else {
  process.stderr.write('usage: servers.js upstream | bare <url> | gateway <url> [--discard-events] [--allow-all] [--spool] [--no-token-cache] [--principals N]\n');
  process.exit(2);
}

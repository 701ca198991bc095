/**
 * Child-process roles for bench/proxy-overhead.ts, so load generator, proxy and upstream never share
 * an event loop: `upstream`, `bare <upstreamUrl>`, `gateway <upstreamUrl>`. Each prints one JSON line
 * `{url, token?}` when ready and runs until SIGTERM.
 */
import http from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';
import { issueAccessToken } from '../src/authority/tokens.js';
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
    overrides: { gateway: { upstreams: [{ name: 'echo', url: upstreamUrl! }] } },
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
  const { token } = await issueAccessToken(await running.ctx.signingKey(), running.ctx.tokenSettings, agent.id, 3600);
  ready({ url: running.gatewayUrl, token, backends: { db: running.ctx.db.kind, events: (await running.ctx.events()).kind } });
  onTerm(() => running.close());
} else {
  process.stderr.write('usage: servers.js upstream | bare <url> | gateway <url> [--discard-events] [--allow-all]\n');
  process.exit(2);
}

/**
 * Child-process roles for bench/mcp.ts, so the MCP client (the load generator), the gateway and the MCP server never
 * share an event loop. Each prints one JSON line when ready and runs until SIGTERM.
 *
 *   mcp-servers                  the official-SDK MCP server of test/helpers/mcp-server.ts, twice: one answering POSTs
 *                                as an SSE stream (the SDK's default), one as a single JSON body (`jsonResponse`).
 *                                Prints `{sse: {url, origin}, json: {url, origin}}`. Only one is under load at a time.
 *   gateway <sseUrl> <jsonUrl>   the Caracal gateway (default bundle: the core policy) with the two as MCP upstreams
 *                                `code` and `code-json`; one agent granted `call` on `mcp:code/*` and `mcp:code-json/*`,
 *                                both origins allowlisted. Prints `{url, token, statsUrl, backends}`; `GET <statsUrl>`
 *                                returns `{decisions}`, the decision events that reached the event log since the last read.
 */
import http from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { issueAccessToken } from '../src/authority/tokens/tokens.js';
import { loadConfig } from '../src/config/load.js';
import { startGateway } from '../src/gateway/server.js';
import { runOperation } from '../src/operations/index.js';
import { startMcpServer } from '../test/helpers/mcp-server.js';

const [role, ...args] = process.argv.slice(2);
const ready = (value: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(value)}\n`);
const onTerm = (fn: () => Promise<unknown>) => process.once('SIGTERM', () => void fn().finally(() => process.exit(0)));

if (role === 'mcp-servers') {
  // keepAliveMs 0: no SSE keep-alive comments on the standalone GET streams (nothing but the calls on the wire).
  const sse = await startMcpServer({ keepAliveMs: 0 });
  const json = await startMcpServer({ jsonResponse: true, keepAliveMs: 0 });
  // The helper records every request and message it sees; a bench sends tens of thousands: keep memory flat.
  const trim = setInterval(() => {
    for (const server of [sse, json]) for (const list of [server.requests, server.toolCalls, server.sent]) list.length = 0;
  }, 1_000);
  ready({ sse: { url: sse.url, origin: sse.origin }, json: { url: json.url, origin: json.origin } });
  onTerm(async () => {
    clearInterval(trim);
    await Promise.all([sse.close(), json.close()]);
  });
} else if (role === 'gateway' && args.length >= 2) {
  const [sseUrl, jsonUrl] = args as [string, string];
  const home = mkdtempSync(path.join(tmpdir(), 'caracal-bench-mcp-'));
  const config = loadConfig({
    env: { ...process.env, CARACAL_HOME: home, CARACAL_GATEWAY_PORT: '0', CARACAL_ADMIN_PORT: '0', CARACAL_METRICS_PORT: '0', CARACAL_LOG_LEVEL: 'warn' },
    cwd: home,
    overrides: {
      gateway: {
        upstreams: [
          { name: 'code', url: sseUrl, dialect: 'mcp' },
          { name: 'code-json', url: jsonUrl, dialect: 'mcp' },
        ],
        // The per-principal limiter runs on every request (its cost is measured) but never refuses: each session also
        // holds its standalone GET stream open, and the bench measures cost, not the limit.
        limits: { perPrincipal: { maxConcurrent: 10_000, rate: { ratePerSecond: 1_000_000, burst: 1_000_000 } } },
      },
    },
  });
  const running = await startGateway(config);
  const agent = (await runOperation(running.ctx, 'agent.register', { name: 'bench-mcp-agent', owner: 'bench@example.com' })) as { id: string };
  await runOperation(running.ctx, 'policy.create', { principalId: agent.id, resources: ['mcp:code/*', 'mcp:code-json/*'], actions: ['call'], maxValiditySeconds: 3600 });
  for (const url of [sseUrl, jsonUrl]) {
    await runOperation(running.ctx, 'allowlist.create', { principalId: agent.id, pattern: `${new URL(url).origin}/**`, patternType: 'glob' });
  }
  const key = await running.ctx.signingKey();
  const { token } = await issueAccessToken(key, running.ctx.tokenSettings, agent.id, 3600);

  // The decision events that really reached the event log, counted in this process.
  const log = await running.ctx.events();
  const publish = log.publish.bind(log);
  let decisions = 0;
  log.publish = async (topic, messages) => {
    await publish(topic, messages);
    if (topic === running.ctx.topics.decisions) decisions += messages.length;
  };
  const stats = http.createServer((_req, res) => {
    const body = JSON.stringify({ decisions });
    decisions = 0;
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  await new Promise<void>((resolve) => stats.listen(0, '127.0.0.1', resolve));
  const statsUrl = `http://127.0.0.1:${(stats.address() as AddressInfo).port}`;

  ready({ url: running.gatewayUrl, token, statsUrl, backends: { db: running.ctx.db.kind, events: log.kind, spool: config.spool.enabled } });
  onTerm(async () => {
    stats.close();
    await running.close();
  });
} else {
  process.stderr.write('usage: mcp-roles.js mcp-servers | gateway <sseUrl> <jsonUrl>\n');
  process.exit(2);
}

// The MCP gateway end to end: the official MCP SDK client, pointed at /mcp/<server>, talks to an official-SDK server
// (stateful: a session, the GET stream, notifications) through the gateway, whose bundle is the core policy plus the
// code-hosting example rule set (policies/examples/code-hosting). Each message is decided on its own: the tool list
// shows only what the caller may call, read_file works under /public/ only, delete_repo gets a JSON-RPC error with
// the reason, and nothing that was not decided reaches the server.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema, ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POLICIES_DIR } from '../../src/paths.js';
import { buildBundle } from '../../src/policy/bundle.js';
import { argumentDigest } from '../../src/mcp/messages.js';
import type { DecisionData, MeteringData } from '../../src/events/cloudevents.js';
import type { IssuedMandate } from '../../src/authority/tokens/mandates.js';
import { createHarness, readDecisions, readTopic, type ExtraUpstream, type Harness } from '../helpers/gateway-harness.js';
import { startMcpServer, type TestMcpServer } from '../helpers/mcp-server.js';
import { requireServices } from '../helpers/services.js';

const KEY_ENV = 'TEST_MCP_UPSTREAM_KEY';
const upstreamKey = `mcp-upstream-${randomBytes(8).toString('hex')}`;
let tmp: string;
let server: TestMcpServer;
let h: Harness;
let gatewayUrl: string;
let agentId: string;
let token: string;
const savedKey = process.env[KEY_ENV];
const clients: Client[] = [];

beforeAll(async () => {
  process.env[KEY_ENV] = upstreamKey;
  tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-mcp-e2e-'));
  // A team's bundle: the core policy and the code-hosting rule set, one folder (policies/examples/code-hosting/README.md).
  const team = path.join(tmp, 'policies');
  await cp(path.join(POLICIES_DIR, 'caracal'), path.join(team, 'caracal'), { recursive: true });
  await cp(path.join(POLICIES_DIR, 'examples', 'code-hosting'), path.join(team, 'code-hosting'), { recursive: true });
  const bundle = await buildBundle({ opaBin: requireServices().opaBin, policiesDir: team, outFile: path.join(tmp, 'bundle.tar.gz'), revision: 'mcp-e2e' });
  server = await startMcpServer({ requireAuthorization: upstreamKey, keepAliveMs: 0 });
  h = await createHarness({
    configOverrides: { policy: { bundlePath: bundle.outFile } },
    extraUpstreams: [
      { name: 'code', url: server.url, dialect: 'mcp', credentials: { header: 'authorization', valueEnv: KEY_ENV, prefix: 'Bearer ' } },
      // The same server, priced per tool call: read_file 0.01, any other tool 0.001.
      {
        name: 'code-paid',
        url: server.url,
        dialect: 'mcp',
        credentials: { header: 'authorization', valueEnv: KEY_ENV, prefix: 'Bearer ' },
        pricing: { currency: 'USD', perRequest: '0.001', tools: { read_file: '0.01' } } as unknown as NonNullable<ExtraUpstream['pricing']>,
      },
      // The same server, its argument values recorded in the decision events (off unless configured).
      { name: 'code-recorded', url: server.url, dialect: 'mcp', credentials: { header: 'authorization', valueEnv: KEY_ENV, prefix: 'Bearer ' }, recordArguments: true },
    ],
  });
  await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
  gatewayUrl = `http://127.0.0.1:${(h.assembled.gateway.app.server.address() as AddressInfo).port}`;
  agentId = await registerCoder();
  token = await h.token(agentId);
}, 120_000);

afterAll(async () => {
  for (const client of clients) await client.close().catch(() => {});
  await h?.close();
  await server?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
  if (savedKey === undefined) delete process.env[KEY_ENV];
  else process.env[KEY_ENV] = savedKey;
});

async function registerCoder(): Promise<string> {
  const id = await h.registerAgent();
  await h.op('policy.create', { principalId: id, resources: ['mcp:code/*', 'mcp:code-paid/*', 'mcp:code-recorded/*'], actions: ['call', 'read', 'get'], maxValiditySeconds: 3600 });
  await h.op('allowlist.create', { principalId: id, pattern: `${server.origin}/**`, patternType: 'glob' });
  return id;
}

async function connect(bearer = token, serverName = 'code'): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> {
  const client = new Client({ name: 'caracal-e2e', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(`${gatewayUrl}/mcp/${serverName}`), { requestInit: { headers: { authorization: `Bearer ${bearer}` } } });
  await client.connect(transport);
  clients.push(client);
  return { client, transport };
}

async function rejection(call: Promise<unknown>): Promise<Error & { code?: number; data?: unknown }> {
  try {
    await call;
  } catch (err) {
    return err as Error & { code?: number; data?: unknown };
  }
  throw new Error('the call succeeded but was expected to fail');
}

describe('the MCP gateway with the official SDK client and server', () => {
  it('lists only the tools the caller may call, runs read_file, and answers delete_repo with a JSON-RPC error', async () => {
    const { client, transport } = await connect();
    expect(transport.sessionId).toMatch(/.+/);
    expect(server.sessions).toContain(transport.sessionId);

    const { tools } = await client.listTools();
    // Read tools only: writes need a mandate, delete_repo is forbidden, unknown tools are denied.
    expect(tools.map((t) => t.name).sort()).toEqual(['read_file', 'search_code']);

    const ok = await client.callTool({ name: 'read_file', arguments: { path: '/public/readme.md' } });
    expect(ok.content).toEqual([{ type: 'text', text: 'contents of /public/readme.md' }]);

    const before = server.toolCalls.length;
    const forbidden = await rejection(client.callTool({ name: 'delete_repo', arguments: { repo: 'acme/widgets' } }));
    expect(forbidden.message).toMatch(/denied by policy: mcp_tool_forbidden/);
    expect(forbidden.code).toBe(-32003);
    expect((forbidden.data as { caracal: { reasons: string[]; decision_id: string; request_id: string } }).caracal).toMatchObject({ reasons: ['mcp_tool_forbidden'], decision_id: expect.any(String), request_id: expect.any(String) });

    // Allowed and denied by argument value.
    const outside = await rejection(client.callTool({ name: 'read_file', arguments: { path: '/private/keys' } }));
    expect(outside.message).toMatch(/mcp_argument_not_allowed/);
    const sneaky = await rejection(client.callTool({ name: 'read_file', arguments: { path: '/public/../private/keys' } }));
    expect(sneaky.message).toMatch(/mcp_argument_not_allowed/);
    const write = await rejection(client.callTool({ name: 'write_file', arguments: { path: '/public/x', content: 'y' } }));
    expect(write.message).toMatch(/mcp_write_requires_mandate/);
    // None of the refused calls reached the server.
    expect(server.toolCalls.slice(before)).toEqual([]);
    // The upstream saw its own credential, never the agent's token.
    for (const request of server.requests) {
      expect(request.headers.authorization).toBe(`Bearer ${upstreamKey}`);
      expect(JSON.stringify(request.headers)).not.toContain(token);
    }

    // One decision event per decided message: the tool, never the argument values.
    const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (all) => all.some((d) => (d as DecisionData).mcp?.name === 'delete_repo'));
    const deleteDecision = decisions.find((d) => (d as DecisionData).mcp?.name === 'delete_repo') as DecisionData;
    expect(deleteDecision).toMatchObject({ allow: false, resource: 'mcp:code/delete_repo', action: 'call', reasons: ['mcp_tool_forbidden'], principal_id: agentId });
    expect(deleteDecision.mcp).toMatchObject({ method: 'tools/call', name: 'delete_repo', argument_digest: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(JSON.stringify(decisions)).not.toContain('acme/widgets');
  }, 60_000);

  it('passes the GET stream and notifications through as they are sent, and tools/list_changed', async () => {
    const { client, transport } = await connect();
    const received: { data: unknown; at: number }[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (notification) => {
      received.push({ data: notification.params.data, at: Date.now() });
    });
    let listChanged = 0;
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      listChanged++;
    });
    await server.waitForStandaloneStream(transport.sessionId);
    const sends: number[] = [];
    for (let i = 0; i < 3; i++) {
      sends.push((await server.notifyAll(`push ${i}`, transport.sessionId)).sentAt);
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    const deadline = Date.now() + 5_000;
    while (received.length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(received.map((r) => r.data)).toEqual(['push 0', 'push 1', 'push 2']);
    // Each arrives on its own, long before the next is sent (not held back until the stream ends).
    received.forEach((r, i) => expect(r.at - sends[i]!).toBeLessThan(250));

    server.announceToolsChanged(true);
    while (listChanged === 0 && Date.now() < deadline + 5_000) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(listChanged).toBeGreaterThan(0);
    server.announceToolsChanged(false);
  }, 60_000);

  it('ends a session with DELETE, and keeps a session to the principal that opened it', async () => {
    const { transport } = await connect();
    const sessionId = transport.sessionId!;
    const other = await h.token(await registerCoder());
    const hijack = await fetch(`${gatewayUrl}/mcp/code`, {
      method: 'POST',
      headers: { authorization: `Bearer ${other}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-11-25' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'read_file', arguments: { path: '/public/a' } } }),
    });
    expect(hijack.status).toBe(404);
    await transport.terminateSession();
    expect(server.sessions).not.toContain(sessionId);
    const after = await fetch(`${gatewayUrl}/mcp/code`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId },
      body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' }),
    });
    expect(after.status).toBe(404);
  }, 60_000);
});

describe('argument values in decision events', () => {
  it('records them only where the upstream is configured to, next to the digest', async () => {
    const { client } = await connect(token, 'code-recorded');
    await client.callTool({ name: 'read_file', arguments: { path: '/public/recorded.md' } });
    const { client: quiet } = await connect(token, 'code');
    await quiet.callTool({ name: 'read_file', arguments: { path: '/public/unrecorded.md' } });
    const quietDigest = argumentDigest({ path: '/public/unrecorded.md' });
    const find = (all: unknown[]) => ({
      recorded: (all as DecisionData[]).find((d) => d.upstream === 'code-recorded' && d.mcp?.name === 'read_file'),
      plain: (all as DecisionData[]).find((d) => d.upstream === 'code' && d.mcp?.argument_digest === quietDigest),
    });
    const decisions = await readDecisions(await h.ctx.events(), h.ctx.topics.decisions, (all) => {
      const found = find(all);
      return found.recorded !== undefined && found.plain !== undefined;
    });
    const { recorded, plain } = find(decisions);
    expect(recorded!.mcp).toMatchObject({ method: 'tools/call', arguments: { path: '/public/recorded.md' }, argument_digest: argumentDigest({ path: '/public/recorded.md' }) });
    // Elsewhere the digest only: the same call on the plain upstream carries no values.
    expect(plain!.mcp).toEqual({ method: 'tools/call', name: 'read_file', argument_digest: quietDigest });
  }, 60_000);
});

describe('mandates, emergency stops and budgets, per message', () => {
  it('lets a write tool through under a mandate only, and an emergency stop denies every call', async () => {
    const writer = await registerCoder();
    const mandate = (await h.op('mandate.issue', { principalId: writer, resources: ['mcp:code/*'], actions: ['call'], validitySeconds: 600 })) as IssuedMandate;
    const { client } = await connect(mandate.token);
    expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['read_file', 'search_code', 'write_file']);
    const wrote = await client.callTool({ name: 'write_file', arguments: { path: '/public/notes.md', content: 'hello' } });
    expect(wrote.content).toEqual([{ type: 'text', text: 'wrote 5 bytes to /public/notes.md' }]);

    await h.op('emergency.stop', { principalId: writer, reason: 'e2e' });
    const deadline = Date.now() + 5_000;
    let stopped: Error & { code?: number } = new Error('not stopped');
    while (Date.now() < deadline) {
      stopped = await rejection(client.callTool({ name: 'read_file', arguments: { path: '/public/a' } })).catch((e: Error) => e);
      if (/emergency_stop/.test(stopped.message)) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(stopped.message).toMatch(/denied by policy: .*emergency_stop/);
    await h.op('emergency.resume', { principalId: writer });
  }, 60_000);

  it('charges each tool call its price on the caller’s budget, denies the one it cannot cover for its id, and meters the others', async () => {
    const payer = await registerCoder();
    await h.op('budget.set', { principalId: payer, window: 'daily', limit: '0.021', currency: 'USD' });
    const { client } = await connect(await h.token(payer), 'code-paid');
    const before = server.toolCalls.length;
    await client.callTool({ name: 'read_file', arguments: { path: '/public/1' } });
    await client.callTool({ name: 'read_file', arguments: { path: '/public/2' } });
    const over = await rejection(client.callTool({ name: 'read_file', arguments: { path: '/public/3' } }));
    expect(over.message).toMatch(/budget_exceeded/);
    // 0.001 is still left for a tool priced per request.
    await client.callTool({ name: 'search_code', arguments: { query: 'TODO' } });
    expect(server.toolCalls.slice(before).map((c) => c.name)).toEqual(['read_file', 'read_file', 'search_code']);
    const events = await readTopic(await h.ctx.events(), h.ctx.topics.metering, (all) => all.filter((m) => m.value.includes(payer)).length >= 3);
    const mine = events.map((m) => (JSON.parse(m.value) as { data: MeteringData }).data).filter((d) => d.principal_id === payer);
    expect(mine.map((d) => [d.resource, d.cost_micros, d.outcome, d.exact])).toEqual([
      ['mcp:code-paid/read_file', 10_000, 'completed', true],
      ['mcp:code-paid/read_file', 10_000, 'completed', true],
      ['mcp:code-paid/search_code', 1_000, 'completed', true],
    ]);
  }, 60_000);
});

describe('hostile MCP input', () => {
  const post = (body: string, headers: Record<string, string> = {}) =>
    fetch(`${gatewayUrl}/mcp/code`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers }, body });

  it('answers malformed JSON-RPC, huge bodies and bad tool names with clear errors, proxying nothing undecided', async () => {
    const before = server.requests.length;
    const broken = await post('{"jsonrpc":"2.0","id":1,"method":');
    expect(broken.status).toBe(400);
    expect(await broken.json()).toMatchObject({ jsonrpc: '2.0', id: null, error: { code: -32700 } });
    // A message with a usable id is answered for that id (not a whole-body refusal).
    const wrong = await post(JSON.stringify({ jsonrpc: '1.0', id: 1, method: 'ping' }));
    expect(wrong.status).toBe(200);
    expect((await wrong.json()) as object).toMatchObject({ jsonrpc: '2.0', id: 1, error: { code: -32600 } });
    const huge = await post(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'read_file', arguments: { path: 'x'.repeat(5 << 20) } } }));
    expect(huge.status).toBe(413);
    for (const name of ['../etc/passwd', 'read%2ffile', 'rеad_file' /* Cyrillic е */, 'read_file\u200d', 'ａ']) {
      const response = await post(JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params: { name, arguments: {} } }));
      expect(response.status).toBe(200);
      expect(((await response.json()) as { error: { code: number } }).error.code).toBe(-32602);
    }
    expect(server.requests.length).toBe(before);
  });

  it('in a batch (protocol 2025-03-26), answers each message on its own: allowed ones go up, denied ones get their error', async () => {
    const { transport } = await connect();
    const headers = { 'mcp-session-id': transport.sessionId!, 'mcp-protocol-version': '2025-03-26' };
    const before = server.toolCalls.length;
    const batch = [
      { jsonrpc: '2.0', id: 'a', method: 'tools/call', params: { name: 'read_file', arguments: { path: '/public/one' } } },
      { jsonrpc: '2.0', id: 'b', method: 'tools/call', params: { name: 'delete_repo', arguments: { repo: 'x/y' } } },
      { jsonrpc: '2.0', id: 'c', method: 'tools/call', params: { name: 'read_file', arguments: { path: '/etc/shadow' } } },
    ];
    const response = await post(JSON.stringify(batch), headers);
    expect(response.status).toBe(200);
    const text = await response.text();
    const answers = (response.headers.get('content-type')!.startsWith('text/event-stream')
      ? text.split('\n').filter((l) => l.startsWith('data: ')).flatMap((l) => [JSON.parse(l.slice(6)) as unknown].flat())
      : [JSON.parse(text) as unknown].flat()) as { id: string; result?: unknown; error?: { code: number; message: string } }[];
    const byId = new Map(answers.map((a) => [a.id, a]));
    expect(byId.get('a')?.result).toBeDefined();
    expect(byId.get('b')?.error).toMatchObject({ code: -32003, message: expect.stringContaining('mcp_tool_forbidden') });
    expect(byId.get('c')?.error).toMatchObject({ code: -32003, message: expect.stringContaining('mcp_argument_not_allowed') });
    expect(server.toolCalls.slice(before).map((c) => c.name)).toEqual(['read_file']);
    // Colliding ids in one batch are refused as a whole.
    const collide = await post(JSON.stringify([batch[0], { ...batch[0], params: { name: 'delete_repo', arguments: {} } }]), headers);
    expect(collide.status).toBe(400);
    expect(server.toolCalls.slice(before)).toHaveLength(1);
  }, 60_000);

  it('does not reach an MCP server through /proxy, where a POST would be judged as a whole', async () => {
    const response = await fetch(`${gatewayUrl}/proxy/code/mcp`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}' });
    expect(response.status).toBe(404);
    expect(((await response.json()) as { message: string }).message).toContain('/mcp/code');
  });
});

import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  LATEST_PROTOCOL_VERSION,
  LoggingMessageNotificationSchema,
  ToolListChangedNotificationSchema,
  type CallToolResult,
} from '@modelcontextprotocol/sdk/types.js';
import { isNotification, startMcpServer, type TestMcpServer } from '../helpers/mcp-server.js';

interface Connected {
  client: Client;
  transport: StreamableHTTPClientTransport;
  /** content-type of every POST response the client saw, in order. */
  postContentTypes: string[];
}

const open: Client[] = [];

async function connect(server: TestMcpServer, headers: Record<string, string> = {}): Promise<Connected> {
  const postContentTypes: string[] = [];
  const recordingFetch: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    if (init?.method === 'POST') postContentTypes.push(response.headers.get('content-type') ?? '');
    return response;
  };
  const transport = new StreamableHTTPClientTransport(new URL(server.url), { fetch: recordingFetch, requestInit: { headers } });
  const client = new Client({ name: 'caracal-test-client', version: '1.0.0' });
  await client.connect(transport);
  open.push(client);
  return { client, transport, postContentTypes };
}

const text = (result: unknown) => ((result as CallToolResult).content[0] as { type: 'text'; text: string }).text;

function initializeBody(protocolVersion: string, id = 1) {
  return JSON.stringify({
    jsonrpc: '2.0',
    id,
    method: 'initialize',
    params: { protocolVersion, capabilities: {}, clientInfo: { name: 'raw', version: '0' } },
  });
}

const postHeaders = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };

afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close().catch(() => {})));
});

describe('test MCP server (SSE mode)', () => {
  let server: TestMcpServer;
  beforeAll(async () => {
    server = await startMcpServer();
  });
  afterAll(async () => {
    await server.close();
  });

  it('initializes a session and negotiates the latest protocol version', async () => {
    const { client, transport, postContentTypes } = await connect(server);
    expect(transport.sessionId).toMatch(/^[0-9a-f-]{36}$/);
    expect(server.sessions).toContain(transport.sessionId);
    expect(transport.protocolVersion).toBe(LATEST_PROTOCOL_VERSION);
    expect(client.getServerVersion()).toEqual({ name: 'test-code-host', version: '1.0.0' });
    expect(client.getServerCapabilities()).toMatchObject({ tools: { listChanged: true }, logging: {}, resources: {}, prompts: {} });

    const init = server.requests.find((r) => r.method === 'POST' && (r.messages[0] as { method?: string }).method === 'initialize');
    expect(init).toBeDefined();
    expect(init!.sessionId).toBeUndefined();
    expect(init!.status).toBe(200);
    expect(JSON.parse(init!.body)).toMatchObject({ method: 'initialize' });
    const initialized = server.requests.find(
      (r) => r.sessionId === transport.sessionId && (r.messages[0] as { method?: string })?.method === 'notifications/initialized',
    );
    expect(initialized?.status).toBe(202);
    expect(initialized?.headers['mcp-protocol-version']).toBe(LATEST_PROTOCOL_VERSION);
    expect(postContentTypes[0]).toBe('text/event-stream');
    await server.waitForStandaloneStream(transport.sessionId);
  });

  it('echoes an older supported protocol version asked for by the client', async () => {
    for (const version of ['2025-06-18', '2025-03-26', '2024-11-05']) {
      const response = await fetch(server.url, { method: 'POST', headers: postHeaders, body: initializeBody(version) });
      expect(response.status).toBe(200);
      const sessionId = response.headers.get('mcp-session-id');
      const sse = await response.text();
      expect(sse).toContain(`"protocolVersion":"${version}"`);
      await fetch(server.url, { method: 'DELETE', headers: { 'mcp-session-id': sessionId!, 'mcp-protocol-version': version } });
    }
  });

  it('lists the five tools, calls them and records the calls in order', async () => {
    const { client, transport } = await connect(server);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(['delete_repo', 'read_file', 'search_code', 'slow_count', 'write_file']);
    expect(tools.find((t) => t.name === 'read_file')?.inputSchema).toMatchObject({ type: 'object', properties: { path: { type: 'string' } }, required: ['path'] });

    const before = server.toolCalls.length;
    expect(text(await client.callTool({ name: 'read_file', arguments: { path: 'src/index.ts' } }))).toBe('contents of src/index.ts');
    expect(text(await client.callTool({ name: 'delete_repo', arguments: { repo: 'acme/widgets' } }))).toBe('deleted acme/widgets');
    expect(text(await client.callTool({ name: 'write_file', arguments: { path: 'a.txt', content: 'héllo' } }))).toBe('wrote 6 bytes to a.txt');
    expect(text(await client.callTool({ name: 'search_code', arguments: { query: 'TODO' } }))).toContain('TODO');
    expect(server.toolCalls.slice(before)).toEqual([
      expect.objectContaining({ name: 'read_file', arguments: { path: 'src/index.ts' }, sessionId: transport.sessionId }),
      expect.objectContaining({ name: 'delete_repo', arguments: { repo: 'acme/widgets' } }),
      expect.objectContaining({ name: 'write_file', arguments: { path: 'a.txt', content: 'héllo' } }),
      expect.objectContaining({ name: 'search_code', arguments: { query: 'TODO' } }),
    ]);
    const invalid = await client.callTool({ name: 'read_file', arguments: { path: 42 } });
    expect(invalid.isError).toBe(true);
  });

  it('lists and reads resources and the file template', async () => {
    const { client } = await connect(server);
    const { resources } = await client.listResources();
    expect(resources.map((r) => r.uri)).toEqual(['repo://readme']);
    const { resourceTemplates } = await client.listResourceTemplates();
    expect(resourceTemplates.map((t) => t.uriTemplate)).toEqual(['file:///{+path}']);
    const readme = await client.readResource({ uri: 'repo://readme' });
    expect(readme.contents[0]).toMatchObject({ uri: 'repo://readme', mimeType: 'text/markdown' });
    expect((readme.contents[0] as { text: string }).text).toContain('# demo-repo');
    const file = await client.readResource({ uri: 'file:///src/lib/util.ts' });
    expect(file.contents[0]).toMatchObject({ uri: 'file:///src/lib/util.ts', text: 'contents of src/lib/util.ts' });
  });

  it('lists and gets prompts', async () => {
    const { client } = await connect(server);
    const { prompts } = await client.listPrompts();
    expect(prompts.map((p) => p.name).sort()).toEqual(['review_code', 'summarize']);
    expect(prompts.find((p) => p.name === 'review_code')?.arguments).toEqual([expect.objectContaining({ name: 'code', required: true })]);
    const review = await client.getPrompt({ name: 'review_code', arguments: { code: 'let x = 1' } });
    expect(review.messages[0]).toEqual({ role: 'user', content: { type: 'text', text: 'Please review this code:\n\nlet x = 1' } });
    const summary = await client.getPrompt({ name: 'summarize', arguments: { text: 'long text' } });
    expect((summary.messages[0]!.content as { text: string }).text).toContain('long text');
  });

  it('streams slow_count progress notifications as they are sent, not buffered to the end', async () => {
    const { client, transport } = await connect(server);
    const steps = 5;
    const delayMs = 250;
    const received: { progress: number; at: number }[] = [];
    const start = Date.now();
    const result = await client.callTool({ name: 'slow_count', arguments: { n: steps, delayMs } }, undefined, {
      onprogress: (p) => received.push({ progress: p.progress, at: Date.now() }),
    });
    const doneAt = Date.now();
    expect(text(result)).toBe(`counted to ${steps}`);
    expect(received.map((r) => r.progress)).toEqual([1, 2, 3, 4, 5]);

    const sentProgress = server.sent.filter(
      (s) => s.sessionId === transport.sessionId && s.sentAt >= start && isNotification(s.message, 'notifications/progress'),
    );
    expect(sentProgress).toHaveLength(steps);
    expect(sentProgress.every((s) => s.relatedRequestId !== undefined)).toBe(true);
    for (let i = 0; i < steps; i++) {
      const lag = received[i]!.at - sentProgress[i]!.sentAt;
      expect(lag).toBeGreaterThanOrEqual(-5);
      expect(lag).toBeLessThan(1_000);
    }
    // The first step arrived long before the answer (which comes steps × delayMs after the start).
    expect(doneAt - received[0]!.at).toBeGreaterThan((steps - 1) * delayMs * 0.6);
  });

  it('sends logging notifications for slow_count when there is no progressToken', async () => {
    const { client, transport } = await connect(server);
    const logs: { data: unknown; at: number }[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      if (n.params.logger === 'slow_count') logs.push({ data: n.params.data, at: Date.now() });
    });
    const start = Date.now();
    await client.callTool({ name: 'slow_count', arguments: { n: 3, delayMs: 200 } });
    expect(logs.map((l) => l.data)).toEqual(['step 1/3', 'step 2/3', 'step 3/3']);
    const sentLogs = server.sent.filter(
      (s) => s.sessionId === transport.sessionId && s.sentAt >= start && isNotification(s.message, 'notifications/message'),
    );
    expect(sentLogs).toHaveLength(3);
    logs.forEach((l, i) => expect(l.at - sentLogs[i]!.sentAt).toBeLessThan(1_000));
  });

  it('announces tools/list_changed on the GET stream and then lists archive_repo', async () => {
    const { client, transport } = await connect(server);
    await server.waitForStandaloneStream(transport.sessionId);
    const changed: number[] = [];
    client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
      changed.push(Date.now());
    });
    expect((await client.listTools()).tools.map((t) => t.name)).not.toContain('archive_repo');

    const notified = server.announceToolsChanged();
    expect(notified).toContain(transport.sessionId);
    await expect.poll(() => changed.length, { timeout: 2_000, interval: 10 }).toBe(1);
    expect((await client.listTools()).tools.map((t) => t.name)).toContain('archive_repo');
    expect(text(await client.callTool({ name: 'archive_repo', arguments: { repo: 'acme/old' } }))).toBe('archived acme/old');

    server.announceToolsChanged(false);
    await expect.poll(() => changed.length, { timeout: 2_000, interval: 10 }).toBe(2);
    expect((await client.listTools()).tools.map((t) => t.name)).not.toContain('archive_repo');
    const sentChanged = server.sent.filter((s) => s.sessionId === transport.sessionId && isNotification(s.message, 'notifications/tools/list_changed'));
    expect(sentChanged).toHaveLength(2);
    expect(sentChanged.every((s) => s.relatedRequestId === undefined)).toBe(true);
  });

  it('pushes notifyAll messages on the standalone GET stream promptly', async () => {
    const { client, transport } = await connect(server);
    await server.waitForStandaloneStream(transport.sessionId);
    const got: { data: unknown; at: number }[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      got.push({ data: n.params.data, at: Date.now() });
    });
    const { sentAt, sessions } = await server.notifyAll('repo pushed', transport.sessionId);
    expect(sessions).toEqual([transport.sessionId]);
    await expect.poll(() => got.length, { timeout: 2_000, interval: 5 }).toBe(1);
    expect(got[0]!.data).toBe('repo pushed');
    expect(got[0]!.at - sentAt).toBeLessThan(1_000);
    const get = server.requests.find((r) => r.method === 'GET' && r.sessionId === transport.sessionId);
    expect(get?.headers.accept).toContain('text/event-stream');
  });

  it('ends the session on DELETE; the old session id is then refused', async () => {
    const { client, transport } = await connect(server);
    const sessionId = transport.sessionId!;
    await transport.terminateSession();
    expect(transport.sessionId).toBeUndefined();
    expect(server.sessions).not.toContain(sessionId);
    const del = server.requests.find((r) => r.method === 'DELETE' && r.sessionId === sessionId);
    expect(del?.status).toBe(200);

    const stale = await fetch(server.url, {
      method: 'POST',
      headers: { ...postHeaders, 'mcp-session-id': sessionId, 'mcp-protocol-version': LATEST_PROTOCOL_VERSION },
      body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }),
    });
    expect(stale.status).toBe(404);
    expect(await stale.json()).toMatchObject({ error: { code: -32001, message: 'Session not found' } });
    // The client no longer has a session id: the SDK server answers 400.
    await expect(client.listTools()).rejects.toThrow(/400|Mcp-Session-Id/);
  });

  it('answers 400 without a session id, 404 for an unknown one, and records raw requests', async () => {
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' });
    const missing = await fetch(server.url, { method: 'POST', headers: postHeaders, body });
    expect(missing.status).toBe(400);
    const unknown = await fetch(server.url, { method: 'POST', headers: { ...postHeaders, 'mcp-session-id': 'nope' }, body });
    expect(unknown.status).toBe(404);
    const record = server.requests.at(-1)!;
    expect(record).toMatchObject({ method: 'POST', path: '/mcp', body, sessionId: 'nope', batch: false, status: 404 });
    expect(record.messages).toEqual([JSON.parse(body)]);
    expect(record.receivedAt).toBeGreaterThan(Date.now() - 5_000);
  });

  it('accepts a JSON-RPC batch after a 2025-11-25 initialize', async () => {
    const { transport } = await connect(server);
    const batch = [
      { jsonrpc: '2.0', id: 'a', method: 'tools/call', params: { name: 'read_file', arguments: { path: 'x' } } },
      { jsonrpc: '2.0', id: 'b', method: 'tools/call', params: { name: 'delete_repo', arguments: { repo: 'y' } } },
    ];
    const response = await fetch(server.url, {
      method: 'POST',
      headers: { ...postHeaders, 'mcp-session-id': transport.sessionId!, 'mcp-protocol-version': LATEST_PROTOCOL_VERSION },
      body: JSON.stringify(batch),
    });
    expect(response.status).toBe(200);
    const sse = await response.text();
    expect(sse).toContain('contents of x');
    expect(sse).toContain('deleted y');
    const record = server.requests.at(-1)!;
    expect(record.batch).toBe(true);
    expect(record.messages).toHaveLength(2);
    expect(server.toolCalls.slice(-2).map((c) => c.name)).toEqual(['read_file', 'delete_repo']);
  });
});

describe('test MCP server (JSON-response mode)', () => {
  let server: TestMcpServer;
  beforeAll(async () => {
    server = await startMcpServer({ jsonResponse: true });
  });
  afterAll(async () => {
    await server.close();
  });

  it('answers POSTs with application/json', async () => {
    const { client, transport, postContentTypes } = await connect(server);
    expect(transport.sessionId).toBeDefined();
    expect((await client.listTools()).tools).toHaveLength(5);
    expect(text(await client.callTool({ name: 'read_file', arguments: { path: 'README.md' } }))).toBe('contents of README.md');
    // initialize, tools/list, tools/call answered with JSON; notifications/initialized is a bodiless 202.
    expect(postContentTypes.filter((t) => t !== '')).toEqual(['application/json', 'application/json', 'application/json']);

    const batch = await fetch(server.url, {
      method: 'POST',
      headers: { ...postHeaders, 'mcp-session-id': transport.sessionId!, 'mcp-protocol-version': LATEST_PROTOCOL_VERSION },
      body: JSON.stringify([
        { jsonrpc: '2.0', id: 1, method: 'tools/list' },
        { jsonrpc: '2.0', id: 2, method: 'prompts/list' },
      ]),
    });
    expect(batch.headers.get('content-type')).toContain('application/json');
    const answers = (await batch.json()) as { id: number }[];
    expect(answers.map((a) => a.id).sort()).toEqual([1, 2]);
  });

  it('still delivers GET-stream notifications', async () => {
    const { client, transport } = await connect(server);
    await server.waitForStandaloneStream(transport.sessionId);
    const got: unknown[] = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      got.push(n.params.data);
    });
    await server.notifyAll('hello json');
    await expect.poll(() => got, { timeout: 2_000, interval: 5 }).toEqual(['hello json']);
  });
});

describe('test MCP server (bearer credential)', () => {
  let server: TestMcpServer;
  beforeAll(async () => {
    server = await startMcpServer({ requireAuthorization: 'upstream-secret' });
  });
  afterAll(async () => {
    await server.close();
  });

  it('refuses requests without the credential and accepts them with it', async () => {
    await expect(connect(server)).rejects.toThrow(/401|Unauthorized/);
    expect(server.requests.at(-1)?.status).toBe(401);
    await expect(connect(server, { authorization: 'Bearer wrong' })).rejects.toThrow(/401|Unauthorized/);
    const { client } = await connect(server, { authorization: 'Bearer upstream-secret' });
    expect(text(await client.callTool({ name: 'read_file', arguments: { path: 'a' } }))).toBe('contents of a');
    expect(server.requests.at(-1)?.headers.authorization).toBe('Bearer upstream-secret');
  });
});

describe('test MCP server lifecycle', () => {
  it('close() ends open sessions and streams and frees the port', async () => {
    const server = await startMcpServer();
    const { transport } = await connect(server);
    await server.waitForStandaloneStream(transport.sessionId);
    await server.close();
    expect(server.sessions).toEqual([]);
    await expect(fetch(server.url, { method: 'POST', headers: postHeaders, body: initializeBody(LATEST_PROTOCOL_VERSION) })).rejects.toThrow();
  });
});

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { McpServer, ResourceTemplate, type RegisteredTool } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { TransportSendOptions } from '@modelcontextprotocol/sdk/shared/transport.js';
import { isInitializeRequest, isJSONRPCNotification, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';

/**
 * A local MCP server for the gateway's tests, built with the official SDK (`McpServer` + the Node
 * `StreamableHTTPServerTransport`) on plain `node:http`. It stands in for a code-hosting MCP server.
 *
 * Stateful Streamable HTTP at `/mcp`: an `initialize` POST without `mcp-session-id` opens a session (one
 * transport + one `McpServer` per session); later requests are routed by the `mcp-session-id` header. An unknown
 * session id answers 404 (`-32001 Session not found`) and a non-initialize request without one answers 400
 * (`-32000`), as the SDK transport itself does. GET opens the standalone SSE stream, DELETE ends the session.
 *
 * Tools: `read_file`, `write_file`, `delete_repo`, `search_code`, `slow_count` (+ `archive_repo`, disabled until
 * {@link TestMcpServer.announceToolsChanged}). Resources: `repo://readme`, template `file:///{+path}`.
 * Prompts: `review_code`, `summarize`.
 */
export interface TestMcpServerOptions {
  /** Answer POSTs with a single JSON body instead of an SSE stream (the SDK's `enableJsonResponse`). */
  jsonResponse?: boolean;
  /** When set, every request must carry `authorization: Bearer <value>`, otherwise 401. */
  requireAuthorization?: string;
  /** SSE keep-alive comment interval (SDK default 15 s; 0 disables). */
  keepAliveMs?: number;
}

export interface RecordedMcpRequest {
  method: string;
  /** Request target as received (path + query). */
  path: string;
  headers: http.IncomingHttpHeaders;
  /** Raw request body ('' for GET/DELETE). */
  body: string;
  /** Parsed JSON-RPC message(s): one element for a single message, several for a batch; [] when absent or not JSON. */
  messages: unknown[];
  /** Whether the body was a JSON array (a JSON-RPC batch). */
  batch: boolean;
  /** The `mcp-session-id` header the request carried, if any. */
  sessionId: string | undefined;
  /** `Date.now()` when the request arrived. */
  receivedAt: number;
  /** Response status once the headers were sent (undefined before). */
  readonly status: number | undefined;
}

export interface RecordedToolCall {
  name: string;
  arguments: Record<string, unknown>;
  sessionId: string | undefined;
  receivedAt: number;
}

/** A JSON-RPC message the server handed to a session's transport (responses and notifications). */
export interface SentMcpMessage {
  sessionId: string | undefined;
  message: JSONRPCMessage;
  /** Set for messages tied to a request (they travel on that POST's stream); unset → standalone GET stream. */
  relatedRequestId: string | number | undefined;
  /** `Date.now()` just before the message was written to the stream. */
  sentAt: number;
}

export interface TestMcpServer {
  /** The MCP endpoint, e.g. `http://127.0.0.1:PORT/mcp`. */
  readonly url: string;
  /** `http://127.0.0.1:PORT`. */
  readonly origin: string;
  readonly requests: RecordedMcpRequest[];
  /** Every `tools/call` request that reached the server (as received, before validation), in order. */
  readonly toolCalls: RecordedToolCall[];
  /** Every message sent to clients, with its send time. */
  readonly sent: SentMcpMessage[];
  /** Ids of the sessions currently open. */
  readonly sessions: string[];
  /** Whether `archive_repo` is currently enabled (for new and existing sessions). */
  readonly archiveEnabled: boolean;
  /**
   * Enables (default) or disables the `archive_repo` tool in every session; the SDK then sends
   * `notifications/tools/list_changed` on each session's standalone GET stream. Returns the sessions notified.
   */
  announceToolsChanged(enabled?: boolean): string[];
  /**
   * Sends a logging notification (`notifications/message`, level info, logger `test-mcp-server`, data `message`)
   * to every open session (or just `sessionId`) on the standalone GET stream. Returns the send time.
   */
  notifyAll(message: string, sessionId?: string): Promise<{ sentAt: number; sessions: string[] }>;
  /** Resolves once the session (default: the only/last one) has an answered standalone GET SSE stream. */
  waitForStandaloneStream(sessionId?: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

interface Session {
  transport: RecordingTransport;
  server: McpServer;
  archive: RegisteredTool;
}

class RecordingTransport extends StreamableHTTPServerTransport {
  constructor(
    options: ConstructorParameters<typeof StreamableHTTPServerTransport>[0],
    private readonly sentLog: SentMcpMessage[],
  ) {
    super(options);
  }

  override async send(message: JSONRPCMessage, options?: TransportSendOptions): Promise<void> {
    this.sentLog.push({ sessionId: this.sessionId, message, relatedRequestId: options?.relatedRequestId, sentAt: Date.now() });
    return super.send(message, options);
  }
}

const MCP_PATH = '/mcp';
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function jsonRpcError(res: http.ServerResponse, status: number, code: number, message: string, headers: http.OutgoingHttpHeaders = {}) {
  const body = JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function buildMcpServer(archiveEnabled: boolean): { server: McpServer; archive: RegisteredTool } {
  const server = new McpServer({ name: 'test-code-host', version: '1.0.0' }, { capabilities: { logging: {} } });

  server.registerTool(
    'read_file',
    { description: 'Read a file from the repository', inputSchema: { path: z.string() } },
    async ({ path }) => ({ content: [{ type: 'text', text: `contents of ${path}` }] }),
  );
  server.registerTool(
    'write_file',
    { description: 'Write a file to the repository', inputSchema: { path: z.string(), content: z.string() } },
    async ({ path, content }) => ({
      content: [{ type: 'text', text: `wrote ${Buffer.byteLength(content)} bytes to ${path}` }],
    }),
  );
  server.registerTool(
    'delete_repo',
    {
      description: 'Delete a repository',
      inputSchema: { repo: z.string() },
      annotations: { destructiveHint: true },
    },
    async ({ repo }) => ({ content: [{ type: 'text', text: `deleted ${repo}` }] }),
  );
  server.registerTool(
    'search_code',
    { description: 'Search code', inputSchema: { query: z.string() }, annotations: { readOnlyHint: true } },
    async ({ query }) => ({ content: [{ type: 'text', text: `3 matches for ${query}: src/a.ts, src/b.ts, README.md` }] }),
  );
  server.registerTool(
    'slow_count',
    {
      description:
        'Count to n, one notification per step (progress when the request has a progressToken, logging otherwise)',
      inputSchema: { n: z.number(), delayMs: z.number().optional() },
    },
    async ({ n, delayMs }, extra) => {
      const delay = delayMs ?? 100;
      const token = extra._meta?.progressToken;
      for (let i = 1; i <= n; i++) {
        if (extra.signal.aborted) return { content: [{ type: 'text', text: `cancelled at ${i}` }], isError: true };
        if (token !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken: token, progress: i, total: n, message: `step ${i}/${n}` },
          });
        } else {
          // Related to the request, so it travels on the POST's SSE stream (not the standalone GET stream).
          await extra.sendNotification({
            method: 'notifications/message',
            params: { level: 'info', logger: 'slow_count', data: `step ${i}/${n}` },
          });
        }
        await sleep(delay);
      }
      return { content: [{ type: 'text', text: `counted to ${n}` }] };
    },
  );
  const archive = server.registerTool(
    'archive_repo',
    { description: 'Archive a repository', inputSchema: { repo: z.string() } },
    async ({ repo }) => ({ content: [{ type: 'text', text: `archived ${repo}` }] }),
  );
  if (!archiveEnabled) archive.disable(); // not connected yet: no notification goes out

  server.registerResource(
    'readme',
    'repo://readme',
    { title: 'README', description: 'The repository README', mimeType: 'text/markdown' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/markdown', text: '# demo-repo\n\nA repository for tests.\n' }] }),
  );
  server.registerResource(
    'file',
    new ResourceTemplate('file:///{+path}', { list: undefined }),
    { title: 'Repository file', description: 'A file of the repository', mimeType: 'text/plain' },
    async (uri, variables) => {
      const path = Array.isArray(variables.path) ? variables.path.join('/') : (variables.path ?? '');
      return { contents: [{ uri: uri.href, mimeType: 'text/plain', text: `contents of ${path}` }] };
    },
  );

  server.registerPrompt(
    'review_code',
    { description: 'Review a piece of code', argsSchema: { code: z.string() } },
    ({ code }) => ({
      messages: [{ role: 'user', content: { type: 'text', text: `Please review this code:\n\n${code}` } }],
    }),
  );
  server.registerPrompt(
    'summarize',
    { description: 'Summarize a text', argsSchema: { text: z.string() } },
    ({ text }) => ({
      messages: [{ role: 'user', content: { type: 'text', text: `Please summarize:\n\n${text}` } }],
    }),
  );
  return { server, archive };
}

function parseBody(body: string): { messages: unknown[]; batch: boolean } {
  if (body === '') return { messages: [], batch: false };
  try {
    const parsed: unknown = JSON.parse(body);
    return Array.isArray(parsed) ? { messages: parsed, batch: true } : { messages: [parsed], batch: false };
  } catch {
    return { messages: [], batch: false };
  }
}

function isToolCall(message: unknown): message is { method: 'tools/call'; params: { name: string; arguments?: Record<string, unknown> } } {
  if (typeof message !== 'object' || message === null) return false;
  const m = message as { method?: unknown; params?: { name?: unknown } };
  return m.method === 'tools/call' && typeof m.params?.name === 'string';
}

export async function startMcpServer(options: TestMcpServerOptions = {}): Promise<TestMcpServer> {
  const requests: RecordedMcpRequest[] = [];
  const toolCalls: RecordedToolCall[] = [];
  const sent: SentMcpMessage[] = [];
  const sessions = new Map<string, Session>();
  const pending = new Set<Session>(); // created for an initialize that has not (yet) produced a session
  let archiveEnabled = false;
  let closing = false;

  const openSession = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const built = buildMcpServer(archiveEnabled);
    const transport: RecordingTransport = new RecordingTransport(
      {
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: options.jsonResponse ?? false,
        ...(options.keepAliveMs !== undefined ? { keepAliveMs: options.keepAliveMs } : {}),
        onsessioninitialized: (id) => {
          sessions.set(id, session);
          pending.delete(session);
        },
      },
      sent,
    );
    const session: Session = { transport, ...built };
    pending.add(session);
    transport.onclose = () => {
      if (transport.sessionId !== undefined) sessions.delete(transport.sessionId);
      pending.delete(session);
    };
    await built.server.connect(transport);
    await transport.handleRequest(req, res);
    if (transport.sessionId === undefined) {
      // The SDK refused the initialize (e.g. a batch with more than one message): nothing to keep.
      pending.delete(session);
      await built.server.close().catch(() => {});
    }
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks);
    const body = raw.toString('utf8');
    const { messages, batch } = parseBody(body);
    const header = req.headers['mcp-session-id'];
    const sessionId = Array.isArray(header) ? header[0] : header;
    const receivedAt = Date.now();
    requests.push({
      method: req.method ?? '',
      path: req.url ?? '',
      headers: req.headers,
      body,
      messages,
      batch,
      sessionId,
      receivedAt,
      get status() {
        return res.headersSent ? res.statusCode : undefined;
      },
    });

    const pathname = new URL(req.url ?? '/', 'http://mcp.local').pathname;
    if (pathname !== MCP_PATH) return jsonRpcError(res, 404, -32000, `Not found: ${pathname}`);
    if (options.requireAuthorization !== undefined && req.headers.authorization !== `Bearer ${options.requireAuthorization}`) {
      return jsonRpcError(res, 401, -32001, 'Unauthorized', { 'www-authenticate': 'Bearer realm="test-mcp-server"' });
    }
    if (req.method !== 'GET' && req.method !== 'POST' && req.method !== 'DELETE') {
      return jsonRpcError(res, 405, -32000, 'Method not allowed.', { allow: 'GET, POST, DELETE' });
    }
    if (req.method === 'POST') {
      for (const message of messages) {
        if (isToolCall(message)) {
          toolCalls.push({ name: message.params.name, arguments: message.params.arguments ?? {}, sessionId, receivedAt });
        }
      }
    }
    if (closing) return jsonRpcError(res, 503, -32000, 'Server is closing');

    // The SDK transport reads the body itself; hand it the bytes already read (@hono/node-server honours `rawBody`).
    (req as http.IncomingMessage & { rawBody?: Buffer }).rawBody = raw;

    if (sessionId !== undefined) {
      const session = sessions.get(sessionId);
      if (!session) return jsonRpcError(res, 404, -32001, 'Session not found');
      return session.transport.handleRequest(req, res);
    }
    if (req.method === 'POST' && messages.some((m) => isInitializeRequest(m))) return openSession(req, res);
    return jsonRpcError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
  };

  const httpServer = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) jsonRpcError(res, 500, -32603, `Internal error: ${String(error)}`);
      else res.destroy();
    });
  });
  await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  const { port } = httpServer.address() as AddressInfo;
  const origin = `http://127.0.0.1:${port}`;

  const targets = (sessionId?: string): [string, Session][] =>
    sessionId === undefined ? [...sessions] : [...sessions].filter(([id]) => id === sessionId);

  return {
    url: `${origin}${MCP_PATH}`,
    origin,
    requests,
    toolCalls,
    sent,
    get sessions() {
      return [...sessions.keys()];
    },
    get archiveEnabled() {
      return archiveEnabled;
    },
    announceToolsChanged(enabled = true) {
      archiveEnabled = enabled;
      const notified: string[] = [];
      for (const [id, session] of sessions) {
        // enable()/disable() update the registry and make the SDK send notifications/tools/list_changed.
        if (enabled) session.archive.enable();
        else session.archive.disable();
        notified.push(id);
      }
      return notified;
    },
    async notifyAll(message, sessionId) {
      const chosen = targets(sessionId);
      const sentAt = Date.now();
      await Promise.all(
        chosen.map(([, s]) => s.server.sendLoggingMessage({ level: 'info', logger: 'test-mcp-server', data: message })),
      );
      return { sentAt, sessions: chosen.map(([id]) => id) };
    },
    async waitForStandaloneStream(sessionId, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const id = sessionId ?? [...sessions.keys()].at(-1);
        if (id !== undefined && requests.some((r) => r.method === 'GET' && r.sessionId === id && r.status === 200)) return;
        if (Date.now() > deadline) throw new Error(`no standalone GET stream for session ${id ?? '(none)'} within ${timeoutMs} ms`);
        await sleep(10);
      }
    },
    async close() {
      closing = true;
      const all = [...sessions.values(), ...pending];
      await Promise.all(all.map((s) => s.transport.close().catch(() => {})));
      await Promise.all(all.map((s) => s.server.close().catch(() => {})));
      sessions.clear();
      pending.clear();
      await new Promise<void>((resolve) => {
        httpServer.close(() => resolve());
        httpServer.closeAllConnections();
      });
    },
  };
}

/** Whether a recorded message is a JSON-RPC notification (handy when filtering `sent`). */
export function isNotification(message: JSONRPCMessage, method?: string): boolean {
  return isJSONRPCNotification(message) && (method === undefined || message.method === method);
}

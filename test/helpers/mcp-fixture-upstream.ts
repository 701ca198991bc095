/**
 * MCP servers for the gateway's hostile-traffic tests (test/e2e/mcp-hostile.test.ts). Two kinds, because the
 * findings they reproduce need two kinds of upstream:
 *
 *   startSdkFixture       the official SDK (McpServer + StreamableHTTPServerTransport), for behaviour only a real
 *                         server has: request ids routed to streams inside the transport, resumable streams (an event
 *                         store, so a GET with Last-Event-ID replays past answers), completions of a prompt argument
 *                         and of a resource template, a listing that takes its time, a tool call that takes its time,
 *                         answers as JSON (the SDK's enableJsonResponse) instead of an event stream when asked.
 *   startScriptedUpstream plain node:http speaking just enough Streamable HTTP (initialize opens a session, requests
 *                         are answered as JSON, GET holds an event stream open) to misbehave on demand: text/plain
 *                         answers, invalid JSON, gzip although the gateway asked for none, a listing of thousands of
 *                         tools, a repeated member name followed by nesting far past any sane depth. The SDK
 *                         cannot be made to do these, and a gateway must survive servers that do.
 *
 * Both record every request as it arrived (headers and body), so a test can tell what reached the server and what
 * the gateway kept back.
 */
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { z } from 'zod';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { completable } from '@modelcontextprotocol/sdk/server/completable.js';
import { StreamableHTTPServerTransport, type EventStore } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest, ListToolsRequestSchema, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';

export interface FixtureRequest {
  method: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** The JSON-RPC messages of the body (one for a single message, several for a batch; none when not JSON). */
  messages: { id?: unknown; method?: string; params?: Record<string, unknown> }[];
  sessionId: string | undefined;
}

export interface FixtureToolCall {
  name: string;
  arguments: Record<string, unknown>;
  /** The gateway's request id (x-request-id): what ties a call to its decision and metering events. */
  requestId: string | undefined;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function readRequest(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function record(req: http.IncomingMessage, raw: Buffer): { entry: FixtureRequest; parsed: unknown } {
  const body = raw.toString('utf8');
  let parsed: unknown;
  try {
    parsed = body === '' ? undefined : JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const messages = (parsed === undefined ? [] : Array.isArray(parsed) ? parsed : [parsed]).filter((m): m is FixtureRequest['messages'][number] => typeof m === 'object' && m !== null);
  const header = req.headers['mcp-session-id'];
  return { entry: { method: req.method ?? '', headers: req.headers, body, messages, sessionId: Array.isArray(header) ? header[0] : header }, parsed };
}

function sendJson(res: http.ServerResponse, status: number, body: string, headers: http.OutgoingHttpHeaders = {}): void {
  if (res.destroyed) return;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

const SESSION_NOT_FOUND = JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } });

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function stop(server: http.Server): Promise<void> {
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

// ---------------------------------------------------------------------------------------------------------------
// The official SDK server

/** The tools of the SDK fixture: the code-hosting example's read tools, a write tool and the forbidden one. */
export const SDK_FIXTURE_TOOLS = ['read_file', 'search_code', 'write_file', 'delete_repo'] as const;

/** What the completions of the SDK fixture know: values only a caller allowed to use the prompt may see. */
export const SECRET_COMPLETIONS = ['alice (salary 180k)', 'bob (on notice)'];

export interface SdkFixtureOptions {
  /** Sessions keep their events (OrderedEventStore): streams are resumable, and a GET with Last-Event-ID replays. */
  eventStore?: boolean;
  /** How long a tool call with the query "slow" takes (default 1,500 ms): a call still running when the agent leaves. */
  slowCallMs?: number;
  /** Sessions answer POSTs with application/json instead of an event stream (the SDK's enableJsonResponse). */
  jsonResponse?: boolean;
}

export interface SdkFixture {
  /** The MCP endpoint, `http://127.0.0.1:PORT/mcp`. */
  readonly url: string;
  readonly origin: string;
  readonly requests: FixtureRequest[];
  /** Every tools/call that reached the server, in order. */
  readonly toolCalls: FixtureToolCall[];
  /** tools/list waits this long inside the server before it answers (a listing that does I/O); settable, default 0. */
  listDelayMs: number;
  /** Sessions opened while this is true answer POSTs as application/json (settable; default the option's value). */
  jsonResponse: boolean;
  close(): Promise<void>;
}

/**
 * A session's events in the order they were stored, for replay after Last-Event-ID. Not the SDK example's
 * InMemoryEventStore: it orders events by an id made of the time in milliseconds and a random suffix, so two events
 * of one millisecond (a POST's priming event and its answer) replay in a random order, and a replay from the priming
 * event finds nothing half of the time.
 */
class OrderedEventStore implements EventStore {
  private readonly events: { id: string; streamId: string; message: JSONRPCMessage }[] = [];

  async storeEvent(streamId: string, message: JSONRPCMessage): Promise<string> {
    const id = `${streamId}_${String(this.events.length).padStart(8, '0')}`;
    this.events.push({ id, streamId, message });
    return id;
  }

  async getStreamIdForEventId(eventId: string): Promise<string | undefined> {
    return this.events.find((e) => e.id === eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId: string, { send }: { send: (eventId: string, message: JSONRPCMessage) => Promise<void> }): Promise<string> {
    const at = this.events.findIndex((e) => e.id === lastEventId);
    if (at < 0) return '';
    const streamId = this.events[at]!.streamId;
    for (const event of this.events.slice(at + 1)) if (event.streamId === streamId) await send(event.id, event.message);
    return streamId;
  }
}

function buildSdkServer(fixture: { listDelayMs: number }, slowCallMs: number): McpServer {
  const server = new McpServer({ name: 'fixture-code-host', version: '1.0.0' }, { capabilities: { logging: {} } });
  for (const name of SDK_FIXTURE_TOOLS) {
    server.registerTool(name, { description: `${name} (fixture)`, inputSchema: { path: z.string().optional(), query: z.string().optional(), repo: z.string().optional() } }, async (args) => {
      if (args.query === 'slow') await sleep(slowCallMs);
      return { content: [{ type: 'text', text: `${name} ran with ${JSON.stringify(args)}` }] };
    });
  }
  // The listing is answered by the server itself, after a delay: the request is then in flight inside the SDK
  // transport (its id mapped to the POST's stream), which is where a second request reusing the id does harm.
  server.server.setRequestHandler(ListToolsRequestSchema, async () => {
    if (fixture.listDelayMs > 0) await sleep(fixture.listDelayMs);
    return { tools: SDK_FIXTURE_TOOLS.map((name) => ({ name, inputSchema: { type: 'object' as const } })) };
  });
  server.registerPrompt('hr_review', { description: 'Review an employee', argsSchema: { employee: completable(z.string(), (value) => SECRET_COMPLETIONS.filter((v) => v.startsWith(value))) } }, ({ employee }) => ({
    messages: [{ role: 'user', content: { type: 'text', text: `Review ${employee}` } }],
  }));
  server.registerResource(
    'file',
    new ResourceTemplate('file:///{+path}', { list: undefined, complete: { path: (value) => ['private/keys', 'public/readme'].filter((v) => v.startsWith(value)) } }),
    { mimeType: 'text/plain' },
    async (uri) => ({ contents: [{ uri: uri.href, text: `contents of ${uri.href}` }] }),
  );
  return server;
}

export async function startSdkFixture(options: SdkFixtureOptions = {}): Promise<SdkFixture> {
  const requests: FixtureRequest[] = [];
  const toolCalls: FixtureToolCall[] = [];
  const transports = new Map<string, StreamableHTTPServerTransport>();
  const servers: McpServer[] = [];
  const state = { listDelayMs: 0, jsonResponse: options.jsonResponse ?? false };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const { entry, parsed } = record(req, await readRequest(req));
    requests.push(entry);
    for (const m of entry.messages) {
      if (m.method === 'tools/call' && typeof m.params?.name === 'string') {
        const requestId = req.headers['x-request-id'];
        toolCalls.push({ name: m.params.name, arguments: (m.params.arguments ?? {}) as Record<string, unknown>, requestId: typeof requestId === 'string' ? requestId : undefined });
      }
    }
    if (new URL(req.url ?? '/', 'http://fixture').pathname !== '/mcp') return sendJson(res, 404, '{}');
    if (entry.sessionId !== undefined) {
      const transport = transports.get(entry.sessionId);
      if (!transport) return sendJson(res, 404, SESSION_NOT_FOUND);
      return transport.handleRequest(req, res, parsed);
    }
    if (req.method === 'POST' && isInitializeRequest(parsed)) {
      const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: state.jsonResponse,
        ...(options.eventStore ? { eventStore: new OrderedEventStore() } : {}),
        onsessioninitialized: (id) => {
          transports.set(id, transport);
        },
      });
      transport.onclose = () => {
        if (transport.sessionId !== undefined) transports.delete(transport.sessionId);
      };
      const server = buildSdkServer(state, options.slowCallMs ?? 1_500);
      servers.push(server);
      await server.connect(transport);
      return transport.handleRequest(req, res, parsed);
    }
    return sendJson(res, 400, JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32000, message: 'Bad Request: Mcp-Session-Id header is required' } }));
  };

  const httpServer = http.createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) sendJson(res, 500, '{}');
      else res.destroy();
    });
  });
  const origin = await listen(httpServer);
  return {
    url: `${origin}/mcp`,
    origin,
    requests,
    toolCalls,
    get listDelayMs() {
      return state.listDelayMs;
    },
    set listDelayMs(ms: number) {
      state.listDelayMs = ms;
    },
    get jsonResponse() {
      return state.jsonResponse;
    },
    set jsonResponse(json: boolean) {
      state.jsonResponse = json;
    },
    async close() {
      await Promise.all([...transports.values()].map((t) => t.close().catch(() => {})));
      await Promise.all(servers.map((s) => s.close().catch(() => {})));
      await stop(httpServer);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The scripted server

/**
 * How the scripted server answers a POST that has something to answer (requests; notifications alone get 202):
 *   json          as a server should: application/json, one message or an array for a batch
 *   text-plain    200 text/plain (a proxy's error page, a maintenance message)
 *   invalid-json  200 application/json whose body is cut off mid-message
 *   gzip          the JSON answer gzip-encoded, whatever accept-encoding said (a compressing proxy in front)
 *   gzip-sse      the answer as an event stream (one event per message), gzip-encoded the same way
 *   deep          application/json, valid JSON: each answer repeats its first member name ("jsonrpc") and then carries
 *                 `deepNesting` nested arrays (a scan that stops at the first repeated name never sees the depth)
 */
export type ScriptedMode = 'json' | 'text-plain' | 'invalid-json' | 'gzip' | 'gzip-sse' | 'deep';

/** How deep the `deep` mode nests its arrays by default: far past what the gateway reads, and what recursion survives. */
export const DEEP_NESTING = 200_000;

export interface ScriptedUpstreamOptions {
  /** The tool names tools/list answers with (default read_file, search_code). */
  tools?: readonly string[];
}

export interface ScriptedUpstream {
  readonly url: string;
  readonly origin: string;
  readonly requests: FixtureRequest[];
  /** Sessions opened by initialize (and not ended by DELETE). */
  readonly sessions: ReadonlySet<string>;
  /** GET event streams open right now. */
  readonly openStreams: number;
  mode: ScriptedMode;
  /** How many arrays the `deep` mode nests (settable; default DEEP_NESTING). */
  deepNesting: number;
  close(): Promise<void>;
}

export async function startScriptedUpstream(options: ScriptedUpstreamOptions = {}): Promise<ScriptedUpstream> {
  const requests: FixtureRequest[] = [];
  const sessions = new Set<string>();
  const streams = new Set<http.ServerResponse>();
  // Serialised once: a listing of thousands of tools is answered many times (a batch of 64), and the test process is
  // also the gateway's, so the server must not spend the time the test measures the gateway by.
  const toolsJson = JSON.stringify((options.tools ?? ['read_file', 'search_code']).map((name) => ({ name, inputSchema: { type: 'object' } })));
  const state = { mode: 'json' as ScriptedMode, deepNesting: DEEP_NESTING };
  // Built once per depth: the arrays are large, and the test process is also the gateway's.
  let deepArrays = { depth: 0, text: '' };

  const answer = (m: FixtureRequest['messages'][number]): string => {
    const id = JSON.stringify(m.id);
    switch (m.method) {
      case 'initialize': {
        const version = typeof m.params?.protocolVersion === 'string' ? m.params.protocolVersion : '2025-11-25';
        return JSON.stringify({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: version, capabilities: { tools: {} }, serverInfo: { name: 'scripted', version: '1.0.0' } } });
      }
      case 'tools/list':
        return `{"jsonrpc":"2.0","id":${id},"result":{"tools":${toolsJson}}}`;
      case 'ping':
        return `{"jsonrpc":"2.0","id":${id},"result":{}}`;
      case 'tools/call':
        return JSON.stringify({ jsonrpc: '2.0', id: m.id, result: { content: [{ type: 'text', text: `ran ${String(m.params?.name)}` }] } });
      default:
        return JSON.stringify({ jsonrpc: '2.0', id: m.id, error: { code: -32601, message: `Method not found: ${String(m.method)}` } });
    }
  };

  const httpServer = http.createServer((req, res) => {
    readRequest(req).then(
      (raw) => {
        const { entry, parsed } = record(req, raw);
        requests.push(entry);
        const session = entry.sessionId;
        if (session !== undefined && !sessions.has(session)) return sendJson(res, 404, SESSION_NOT_FOUND);
        if (req.method === 'GET') {
          // A stateless server has no stream to offer; a session's stream stays open until either side ends it.
          if (session === undefined) return sendJson(res, 405, '{}', { allow: 'POST' });
          res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
          res.write(': stream open\n\n');
          streams.add(res);
          res.once('close', () => streams.delete(res));
          return;
        }
        if (req.method === 'DELETE') {
          if (session !== undefined) sessions.delete(session);
          return sendJson(res, 200, '{}');
        }
        if (req.method !== 'POST' || parsed === undefined) return sendJson(res, 400, '{}');
        const requestsIn = entry.messages.filter((m) => typeof m.method === 'string' && m.id !== undefined);
        if (requestsIn.length === 0) {
          res.writeHead(202).end();
          return;
        }
        const headers: http.OutgoingHttpHeaders = {};
        if (requestsIn.some((m) => m.method === 'initialize')) {
          const id = randomUUID();
          sessions.add(id);
          headers['mcp-session-id'] = id;
        }
        const answers = requestsIn.map(answer);
        const body = Array.isArray(parsed) ? `[${answers.join(',')}]` : answers[0]!;
        switch (state.mode) {
          case 'json':
            return sendJson(res, 200, body, headers);
          case 'text-plain':
            res.writeHead(200, { 'content-type': 'text/plain', ...headers }).end('Service temporarily unavailable');
            return;
          case 'invalid-json':
            return sendJson(res, 200, body.slice(0, Math.ceil(body.length / 2)), headers);
          case 'gzip': {
            const zipped = gzipSync(body);
            res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': zipped.length, ...headers }).end(zipped);
            return;
          }
          case 'deep': {
            if (deepArrays.depth !== state.deepNesting) deepArrays = { depth: state.deepNesting, text: '['.repeat(state.deepNesting) + ']'.repeat(state.deepNesting) };
            const deep = requestsIn.map((m) => `{"jsonrpc":"2.0","jsonrpc":"2.0","id":${JSON.stringify(m.id)},"result":{"tools":${toolsJson},"x":${deepArrays.text}}}`);
            return sendJson(res, 200, Array.isArray(parsed) ? `[${deep.join(',')}]` : deep[0]!, headers);
          }
          case 'gzip-sse': {
            const zipped = gzipSync(answers.map((a) => `event: message\ndata: ${a}\n\n`).join(''));
            res.writeHead(200, { 'content-type': 'text/event-stream', 'content-encoding': 'gzip', 'content-length': zipped.length, ...headers }).end(zipped);
            return;
          }
        }
      },
      () => res.destroy(),
    );
  });
  const origin = await listen(httpServer);
  return {
    url: `${origin}/mcp`,
    origin,
    requests,
    sessions,
    get openStreams() {
      return streams.size;
    },
    get mode() {
      return state.mode;
    },
    set mode(mode: ScriptedMode) {
      state.mode = mode;
    },
    get deepNesting() {
      return state.deepNesting;
    },
    set deepNesting(depth: number) {
      state.deepNesting = depth;
    },
    async close() {
      for (const res of streams) res.destroy();
      await stop(httpServer);
    },
  };
}

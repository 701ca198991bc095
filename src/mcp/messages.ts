/**
 * The MCP protocol layer of the gateway: what an agent POSTs to `/mcp/<server>` (one JSON-RPC 2.0 message, or a batch
 * where the protocol version allows one), what each message asks for in policy terms, and the JSON-RPC errors the
 * gateway answers with. Pure functions, no network: the proxy (src/gateway) decides and forwards. README.md in this
 * directory explains the choices (what refuses a whole body and what refuses one message, why unknown methods are
 * denied, how listings and streamed answers are filtered).
 *
 * Message shapes and protocol versions follow the official SDK (@modelcontextprotocol/sdk `types.js`): ids are
 * strings or integers, messages are strict objects (no members beyond JSON-RPC's), batches exist only in 2025-03-26
 * (added there, removed in 2025-06-18).
 */
import { createHash } from 'node:crypto';
import { CaracalError, type ErrorCode } from '../errors/catalog.js';
import { canonicalJson } from '../ledger/canonical.js';
import { decodeUtf8, hasMember, inspectJson, isCleanText, isJsonObject, MAX_JSON_DEPTH, quote, type JsonObject } from './json.js';

export { isJsonObject, MAX_JSON_DEPTH, type JsonObject } from './json.js';
export { createMcpResponseRewriter, MAX_MCP_EVENT_BYTES, MAX_MCP_JSON_BYTES, rewriteJsonBody, type McpResponseRewriter, type McpResponseRewriterOptions, type MessageRewrite, type RewriterResult } from './rewriter.js';

// ---------------------------------------------------------------------------------------------------------------
// Codes, limits, versions

/** JSON-RPC 2.0: the body is not JSON (or not UTF-8). */
export const JSONRPC_PARSE_ERROR = -32700;
/** JSON-RPC 2.0: the JSON is not a valid request (shape, id, batch rules, size). */
export const JSONRPC_INVALID_REQUEST = -32600;
/** JSON-RPC 2.0: the method's params are invalid (a tool name, a URI, arguments). */
export const JSONRPC_INVALID_PARAMS = -32602;
/**
 * The gateway's own code for "denied by policy", in JSON-RPC's implementation-defined server-error range. Not -32001:
 * the official SDK uses it for a request timeout (a client may retry on it) and for "Session not found"; not -32002
 * (MCP's "resource not found") nor -32042 (URL elicitation required).
 */
export const MCP_POLICY_DENIED = -32003;

/** The protocol version assumed when a request carries no MCP-Protocol-Version (the spec's rule, and the SDK's). */
export const ASSUMED_PROTOCOL_VERSION = '2025-03-26';
/** The protocol versions in which a POST body may be a JSON-RPC batch. */
export const BATCH_PROTOCOL_VERSIONS: readonly string[] = ['2025-03-26'];

/** Whether a body may be a batch under this protocol version (null: none was sent, 2025-03-26 is assumed). */
export function batchesAllowed(protocolVersion: string | null): boolean {
  return BATCH_PROTOCOL_VERSIONS.includes(protocolVersion ?? ASSUMED_PROTOCOL_VERSION);
}

export const MAX_ID_LENGTH = 256;
export const MAX_METHOD_LENGTH = 256;
export const MAX_NAME_LENGTH = 128;
export const MAX_URI_LENGTH = 2048;
/** The largest `arguments` of a tool call or prompt, as RFC 8785 canonical JSON bytes. */
export const MAX_ARGUMENT_BYTES = 1 << 20;

const SERVER_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;

// ---------------------------------------------------------------------------------------------------------------
// Messages

export type RequestId = string | number;
export type Params = JsonObject | unknown[];

export interface JsonRpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

/** A request (id and method): what the gateway decides. `json` is the message as received, for re-serialising. */
export interface McpRequest {
  kind: 'request';
  id: RequestId;
  method: string;
  params: Params | undefined;
  json: JsonObject;
}

/** A notification (method, no id): decided too, but never answered. */
export interface McpNotification {
  kind: 'notification';
  method: string;
  params: Params | undefined;
  json: JsonObject;
}

/** A response (id and result or error): the agent answering a request of the server (sampling, elicitation, roots). */
export interface McpResponse {
  kind: 'response';
  id: RequestId;
  result: JsonObject | undefined;
  error: JsonRpcErrorObject | undefined;
  json: JsonObject;
}

export type McpMessage = McpRequest | McpNotification | McpResponse;

export interface JsonRpcErrorResponse {
  jsonrpc: '2.0';
  id: RequestId | null;
  error: JsonRpcErrorObject;
}

/** A valid id: a string (≤ 256 characters, no control characters or unpaired surrogates) or a safe integer. */
export function isRequestId(value: unknown): value is RequestId {
  if (typeof value === 'number') return Number.isSafeInteger(value);
  return typeof value === 'string' && value.length <= MAX_ID_LENGTH && isCleanText(value);
}

/**
 * The identity of an id for matching and collisions: an integer and every string that Number() reads as that integer
 * are the same id (`1`, `"1"`, `"01"`, `"1e0"`), because the official SDK matches responses by `Number(id)`. Use it to
 * key pending requests when matching upstream answers.
 */
export function requestIdKey(id: RequestId): string {
  if (typeof id === 'number') return `n:${id === 0 ? 0 : id}`;
  const number = Number(id);
  return Number.isFinite(number) ? `n:${number === 0 ? 0 : number}` : `s:${id}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Errors

export type McpErrorScope = 'body' | 'message';

/**
 * A refused body or message. `scope` says what is refused: the whole body (answer once, with `id`, usually null,
 * and an HTTP error status) or one message (answer it with `toJsonRpc()` among the others' answers); `rpcCode` is the
 * JSON-RPC code to answer with.
 */
export class McpMessageError extends CaracalError {
  readonly rpcCode: number;
  readonly scope: McpErrorScope;
  readonly id: RequestId | null;

  constructor(code: ErrorCode, message: string, init: { rpcCode: number; scope: McpErrorScope; reason: string; id?: RequestId | null }) {
    super(code, message, { reasons: [init.reason], details: { jsonrpc_code: init.rpcCode } });
    this.rpcCode = init.rpcCode;
    this.scope = init.scope;
    this.id = init.id ?? null;
  }

  /** The JSON-RPC error answer: this message, and the Caracal code and reasons under `data.caracal`. */
  toJsonRpc(): JsonRpcErrorResponse {
    return jsonRpcError(this.id, this.rpcCode, this.message, { caracal: { error: this.code, reasons: this.reasons } });
  }
}

const bodyError = (rpcCode: number, message: string, reason: string, code: ErrorCode = 'CARACAL_BAD_REQUEST', id: RequestId | null = null) =>
  new McpMessageError(code, message, { rpcCode, scope: 'body', reason, id });

/** A JSON-RPC 2.0 error response. `data` is left out when undefined. */
export function jsonRpcError(id: RequestId | null, code: number, message: string, data?: unknown): JsonRpcErrorResponse {
  if (!Number.isSafeInteger(code)) throw new CaracalError('CARACAL_INTERNAL', `a JSON-RPC error code must be an integer, not ${quote(code)}`);
  const error: JsonRpcErrorObject = { code, message };
  if (data !== undefined) error.data = data;
  return { jsonrpc: '2.0', id, error };
}

export interface Denial {
  reasons: readonly string[];
  decisionId: string | null;
  requestId: string;
}

const MAX_DENIAL_MESSAGE = 300;

/**
 * The answer to a message the policy denied. The SDK client turns it into `McpError` whose message reads
 * `MCP error -32003: denied by policy: <reasons>`; the reasons and the ids are also under `data.caracal`, in the shape
 * of Caracal's HTTP error bodies.
 */
export function deniedResponse(id: RequestId, denial: Denial): JsonRpcErrorResponse {
  let message = denial.reasons.length > 0 ? `denied by policy: ${denial.reasons.join(', ')}` : 'denied by policy';
  if (message.length > MAX_DENIAL_MESSAGE) message = `${message.slice(0, MAX_DENIAL_MESSAGE - 1)}…`;
  return jsonRpcError(id, MCP_POLICY_DENIED, message, {
    caracal: { error: 'CARACAL_POLICY_DENIED', reasons: [...denial.reasons], decision_id: denial.decisionId, request_id: denial.requestId },
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing a POST body

export interface ParseOptions {
  /** The largest body, in bytes. */
  maxBytes: number;
  /** The most messages in one batch. */
  maxBatch: number;
  /** The MCP-Protocol-Version of the request (or of the session), null when there is none. */
  protocolVersion: string | null;
  /** The deepest nesting of objects and arrays (default MAX_JSON_DEPTH). */
  maxDepth?: number;
}

/** One member of the body: a message, or a malformed request that can be answered by its id. */
export type ParsedEntry = { ok: true; index: number; message: McpMessage } | { ok: false; index: number; id: RequestId; error: McpMessageError };

export interface ParsedBody {
  /** The body was an array: the answers go back as an array too. */
  batch: boolean;
  /** Every member, in body order. */
  entries: ParsedEntry[];
}

const REQUEST_MEMBERS = new Set(['jsonrpc', 'id', 'method', 'params']);
const RESPONSE_MEMBERS = new Set(['jsonrpc', 'id', 'result', 'error']);
const ERROR_MEMBERS = new Set(['code', 'message', 'data']);

function unexpectedMember(value: JsonObject, allowed: Set<string>): string | null {
  for (const key of Object.keys(value)) if (!allowed.has(key)) return `has a member ${quote(key)} that JSON-RPC does not define`;
  return null;
}

/** What is wrong with a request or notification, or null. */
function requestProblem(value: JsonObject): string | null {
  if (value.jsonrpc !== '2.0') return 'is not JSON-RPC 2.0 (jsonrpc must be "2.0")';
  const extra = unexpectedMember(value, REQUEST_MEMBERS);
  if (extra) return extra;
  const method = value.method;
  if (!hasMember(value, 'method')) return 'has no method';
  if (typeof method !== 'string' || method.length === 0 || method.length > MAX_METHOD_LENGTH || !isCleanText(method)) {
    return `has a method that is not a string of 1-${MAX_METHOD_LENGTH} characters without control characters (${quote(method)})`;
  }
  if (hasMember(value, 'params') && !isJsonObject(value.params) && !Array.isArray(value.params)) return `has params that are neither an object nor an array (${quote(value.params)})`;
  return null;
}

/** What is wrong with a response, or null. */
function responseProblem(value: JsonObject): string | null {
  if (value.jsonrpc !== '2.0') return 'is not JSON-RPC 2.0 (jsonrpc must be "2.0")';
  const extra = unexpectedMember(value, RESPONSE_MEMBERS);
  if (extra) return extra;
  if (!hasMember(value, 'id')) return 'is a response without an id';
  const hasResult = hasMember(value, 'result');
  if (hasResult === hasMember(value, 'error')) return 'is a response with both result and error';
  if (hasResult) return isJsonObject(value.result) ? null : `is a response whose result is not an object (${quote(value.result)})`;
  const error = value.error;
  if (!isJsonObject(error)) return 'is an error response whose error is not an object';
  if (!Number.isSafeInteger(error.code) || typeof error.message !== 'string') return 'is an error response without an integer code and a string message';
  return unexpectedMember(error, ERROR_MEMBERS);
}

function readMember(value: unknown, index: number, batch: boolean): ParsedEntry {
  const where = batch ? `batch member ${index}` : 'the message';
  if (!isJsonObject(value)) throw bodyError(JSONRPC_INVALID_REQUEST, `${where} is not a JSON object (${quote(value)})`, 'mcp_invalid_message');
  let id: RequestId | null = null;
  if (hasMember(value, 'id')) {
    if (!isRequestId(value.id)) {
      throw bodyError(JSONRPC_INVALID_REQUEST, `${where} has an id that is not a string of at most ${MAX_ID_LENGTH} characters or an integer (${quote(value.id)})`, 'mcp_id_invalid');
    }
    id = value.id;
  }
  if (hasMember(value, 'result') || hasMember(value, 'error')) {
    // A response cannot be answered (JSON-RPC never responds to a response), so a malformed one refuses the body.
    const problem = responseProblem(value);
    if (problem !== null || id === null) throw bodyError(JSONRPC_INVALID_REQUEST, `${where} ${problem ?? 'is a response without an id'}`, 'mcp_invalid_message');
    const error = isJsonObject(value.error) ? (value.error as unknown as JsonRpcErrorObject) : undefined;
    return { ok: true, index, message: { kind: 'response', id, result: isJsonObject(value.result) ? value.result : undefined, error, json: value } };
  }
  const problem = requestProblem(value);
  if (problem !== null) {
    if (id === null) throw bodyError(JSONRPC_INVALID_REQUEST, `${where} ${problem}`, 'mcp_invalid_message');
    const error = new McpMessageError('CARACAL_BAD_REQUEST', `${where} ${problem}`, { rpcCode: JSONRPC_INVALID_REQUEST, scope: 'message', reason: 'mcp_invalid_message', id });
    return { ok: false, index, id, error };
  }
  const method = value.method as string;
  const params = value.params as Params | undefined;
  if (id === null) return { ok: true, index, message: { kind: 'notification', method, params, json: value } };
  return { ok: true, index, message: { kind: 'request', id, method, params, json: value } };
}

/**
 * Reads a POST body: one JSON-RPC message, or a batch where `protocolVersion` allows it. Throws McpMessageError
 * (scope 'body') when the body as a whole is refused: too large (413), not UTF-8 or not JSON (-32700), a repeated
 * member name or too deep, not an object or array, a batch that is not allowed, empty or too long, a member that
 * cannot be answered by its own id (not an object, a bad id, a malformed notification or response), two members with
 * colliding ids, `initialize` in a batch (all -32600). A malformed request with a usable id refuses only itself: its
 * entry has `ok: false` and the error to answer it with.
 */
export function parseMcpBody(raw: Buffer, options: ParseOptions): ParsedBody {
  if (!(options.maxBytes > 0) || !Number.isSafeInteger(options.maxBatch) || options.maxBatch < 1) {
    throw new CaracalError('CARACAL_INTERNAL', 'parseMcpBody needs a positive maxBytes and maxBatch');
  }
  if (raw.length > options.maxBytes) {
    throw bodyError(JSONRPC_INVALID_REQUEST, `the MCP message body is larger than ${options.maxBytes} bytes`, 'mcp_body_too_large', 'CARACAL_PAYLOAD_TOO_LARGE');
  }
  const text = decodeUtf8(raw);
  if (text === null) throw bodyError(JSONRPC_PARSE_ERROR, 'the body is not valid UTF-8', 'mcp_parse_error');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw bodyError(JSONRPC_PARSE_ERROR, 'the body is not JSON', 'mcp_parse_error');
  }
  const maxDepth = options.maxDepth ?? MAX_JSON_DEPTH;
  const shape = inspectJson(text, maxDepth);
  if (shape.tooDeep) throw bodyError(JSONRPC_INVALID_REQUEST, `the body nests objects and arrays deeper than ${maxDepth} levels`, 'mcp_too_deep');
  if (shape.duplicateKey !== null) {
    throw bodyError(JSONRPC_INVALID_REQUEST, `the member name ${quote(shape.duplicateKey)} appears twice in one object (parsers disagree on which one counts)`, 'mcp_duplicate_member');
  }

  let entries: ParsedEntry[];
  const batch = Array.isArray(value);
  if (batch) {
    const list = value as unknown[];
    if (!batchesAllowed(options.protocolVersion)) {
      throw bodyError(JSONRPC_INVALID_REQUEST, `protocol version ${options.protocolVersion} does not allow JSON-RPC batches (only ${BATCH_PROTOCOL_VERSIONS.join(', ')} does)`, 'mcp_batch_not_allowed');
    }
    if (list.length === 0) throw bodyError(JSONRPC_INVALID_REQUEST, 'the batch is empty', 'mcp_batch_empty');
    if (list.length > options.maxBatch) throw bodyError(JSONRPC_INVALID_REQUEST, `the batch has ${list.length} messages; at most ${options.maxBatch} are allowed`, 'mcp_batch_too_large');
    entries = list.map((member, index) => readMember(member, index, true));
  } else {
    entries = [readMember(value, 0, false)];
  }

  if (batch) {
    // Requests (answered by the server) and responses (answering the server's requests) are separate id spaces.
    const requests = new Map<string, number>();
    const responses = new Map<string, number>();
    for (const entry of entries) {
      const isResponse = entry.ok && entry.message.kind === 'response';
      const id = entry.ok ? (entry.message.kind === 'notification' ? null : entry.message.id) : entry.id;
      if (id === null) continue;
      const seen = isResponse ? responses : requests;
      const key = requestIdKey(id);
      const earlier = seen.get(key);
      if (earlier !== undefined) {
        throw bodyError(JSONRPC_INVALID_REQUEST, `batch members ${earlier} and ${entry.index} have the same ${isResponse ? 'response' : 'request'} id (${quote(id)})`, 'mcp_duplicate_id');
      }
      seen.set(key, entry.index);
      if (entry.ok && entry.message.kind === 'request' && entry.message.method === 'initialize') {
        throw bodyError(JSONRPC_INVALID_REQUEST, 'initialize must not be part of a batch', 'mcp_initialize_in_batch');
      }
    }
  }
  return { batch, entries };
}

// ---------------------------------------------------------------------------------------------------------------
// Classifying a message

export interface McpToolAction {
  kind: 'tool';
  resource: string;
  action: 'call';
  tool: string;
  arguments: JsonObject;
}

export interface McpResourceAction {
  kind: 'resource';
  resource: string;
  action: 'read';
  uri: string;
}

export interface McpPromptAction {
  kind: 'prompt';
  resource: string;
  action: 'get';
  prompt: string;
  arguments: Record<string, string>;
}

/** Session plumbing (initialize, ping, listings, notifications, responses). `method` is null for a response. */
export interface McpSessionAction {
  kind: 'session';
  resource: string;
  action: 'session';
  method: string | null;
}

/** A method this layer does not know: deny it (fail closed) unless the gateway is configured to let it through. */
export interface McpUnknownAction {
  kind: 'unknown';
  resource: string;
  method: string;
}

export type McpInvalidReason = 'mcp_params_invalid' | 'mcp_tool_name_invalid' | 'mcp_prompt_name_invalid' | 'mcp_resource_uri_invalid' | 'mcp_arguments_invalid' | 'mcp_arguments_too_large';

/** A known method whose params are refused before any policy runs: answer with `code` (-32602). */
export interface McpInvalidAction {
  kind: 'invalid';
  resource: string;
  reason: McpInvalidReason;
  message: string;
  code: typeof JSONRPC_INVALID_PARAMS;
}

export type McpAction = McpToolAction | McpResourceAction | McpPromptAction | McpSessionAction | McpUnknownAction | McpInvalidAction;

export interface ClassifyOptions {
  /** The largest arguments, as canonical JSON bytes (default MAX_ARGUMENT_BYTES). */
  maxArgumentBytes?: number;
}

/**
 * Requests that are session plumbing rather than an act on a tool, resource or prompt. Not `completion/complete`: it
 * tells what a given prompt or resource would accept, so classify decides it as using that prompt or resource.
 */
export const SESSION_METHODS: ReadonlySet<string> = new Set([
  'initialize',
  'ping',
  'tools/list',
  'resources/list',
  'resources/templates/list',
  'prompts/list',
  'logging/setLevel',
]);

/**
 * A tool or prompt name the gateway accepts: 1-128 characters of A-Z a-z 0-9 _ . - , not starting with a dot and
 * without "..". Checked as it is, never normalised: a look-alike (Cyrillic, fullwidth), an invisible character or an
 * encoded slash is simply not such a name.
 */
export function isSafeName(name: unknown): name is string {
  if (typeof name !== 'string' || name.length === 0 || name.length > MAX_NAME_LENGTH || name.charCodeAt(0) === 0x2e || name.includes('..')) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    const ok = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || c === 0x2e || c === 0x2d;
    if (!ok) return false;
  }
  return true;
}

/** A resource URI (or URI template) the gateway accepts: 1-2048 characters, no control characters or unpaired surrogates. */
export function isSafeUri(uri: unknown): uri is string {
  return typeof uri === 'string' && uri.length > 0 && uri.length <= MAX_URI_LENGTH && isCleanText(uri);
}

/** A "." or ".." segment, wherever it is: a server that joins the query or fragment onto a path resolves those too. */
const DOT_SEGMENT = /(?:^|\/)\.\.?(?:[/?#]|$)/;
const ENCODED_OCTET = /%([0-9A-Fa-f]{2})/g;
/** The unreserved characters of RFC 3986 (§2.3): percent-encoding one gives the same URI spelled another way. */
const UNRESERVED = /^[A-Za-z0-9._~-]$/;

/**
 * What in a URI (or URI template) lets the MCP server read another resource than the one the policy was asked
 * about, or null. The policy compares the URI as a string; the server decodes and resolves it. So a "." or ".."
 * segment, a backslash (a path separator to WHATWG's special schemes and on Windows), a percent-encoded "/" or "\"
 * (a separator once decoded), a percent-encoded unreserved character (`%2e` is ".", `%73` is "s": a prefix or exact
 * rule is escaped by spelling the URI differently) or control character (`%00` cuts a path short) are refused.
 */
function uriEscapeProblem(uri: string): string | null {
  if (uri.includes('\\')) return 'it has a backslash';
  if (DOT_SEGMENT.test(uri)) return 'it has a "." or ".." segment';
  for (const [octet, hex] of uri.matchAll(ENCODED_OCTET)) {
    const char = String.fromCharCode(parseInt(hex!, 16));
    if (char === '/' || char === '\\') return `it has a percent-encoded separator (${octet})`;
    if (UNRESERVED.test(char)) return `it percent-encodes the character ${JSON.stringify(char)} (${octet})`;
    if (char < ' ' || char === '\u007f') return `it percent-encodes a control character (${octet})`;
  }
  return null;
}

/**
 * Why a URI is not in canonical form, or null when it is: an absolute URL that WHATWG's parser (`new URL`, what the
 * SDK and most servers use) reads as exactly itself, with a lower-case host and none of uriEscapeProblem's escapes.
 * A URI the parser would rewrite (dot segments, `%2e%2e`, backslashes, an upper-case scheme or host, a default port,
 * a fullwidth "／" it percent-encodes) is refused rather than rewritten: the policy must see what the server reads.
 */
function canonicalUriProblem(uri: string): string | null {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return 'it is not an absolute URL (scheme:…)';
  }
  if (url.href !== uri) return `it would be read as ${quote(url.href)}`;
  // WHATWG keeps the case of a host it cannot interpret (mcp://S/a), RFC 3986 (§6.2.2.1) says it does not matter.
  if (url.host !== url.host.toLowerCase()) return 'its host is not lower case';
  return uriEscapeProblem(uri);
}

/**
 * A resource URI the gateway accepts for `resources/read`: isSafeUri, and in canonical form, so that the URI the
 * policy decides on is the resource the server reads (`file:///public/%2e%2e/secret` must not pass a rule for
 * `file:///public/`). Opaque URIs are fine (`urn:x:y`, `mcp://server/a/b`, `http://h/x?q=1`); anything not a URL is not.
 */
export function isCanonicalUri(uri: unknown): uri is string {
  return isSafeUri(uri) && canonicalUriProblem(uri) === null;
}

function assertServer(server: string): void {
  if (typeof server !== 'string' || !SERVER_NAME.test(server)) {
    throw new CaracalError('CARACAL_INTERNAL', `the MCP server name ${quote(server)} was not validated (expected [a-z0-9][a-z0-9_-]{0,63})`, { reasons: ['mcp_server_name_invalid'] });
  }
}

/** The policy resource of a tool: `mcp:<server>/<tool>`. */
export function toolResource(server: string, tool: string): string {
  assertServer(server);
  return `mcp:${server}/${tool}`;
}

/**
 * The policy resource of a resource: `mcp:<server>/resource/<uri>`, the URI as sent, never normalised (classify only
 * accepts a URI already in canonical form, and a template without escapes).
 */
export function resourceResource(server: string, uri: string): string {
  assertServer(server);
  return `mcp:${server}/resource/${uri}`;
}

/** The policy resource of a prompt: `mcp:<server>/prompt/<name>`. */
export function promptResource(server: string, prompt: string): string {
  assertServer(server);
  return `mcp:${server}/prompt/${prompt}`;
}

/** The canonical byte length of arguments, or null when they have no canonical form (unpaired surrogates, …). */
function canonicalSize(args: JsonObject): number | null {
  try {
    return Buffer.byteLength(canonicalJson(args), 'utf8');
  } catch {
    return null;
  }
}

/**
 * What the gateway decides for a message sent to `server` (a name the caller validated; asserted here):
 *   tools/call      → tool `mcp:<server>/<tool>` action call, with the arguments (default {})
 *   resources/read  → resource `mcp:<server>/resource/<uri>` action read (the uri in canonical form: isCanonicalUri)
 *   prompts/get     → prompt `mcp:<server>/prompt/<name>` action get, with the arguments (strings)
 *   completion/complete → what its `params.ref` would use: `ref/prompt` the prompt (action get, arguments {}),
 *                     `ref/resource` the resource `mcp:<server>/resource/<uri>` (action read; the uri may be a
 *                     template, so not canonical form but isSafeUri without ".." segments, "\", %2e %2f %5c, …)
 *   SESSION_METHODS requests, `notifications/*` notifications, responses → session `mcp:<server>`
 *   anything else   → unknown (deny), including a known method sent as the wrong kind (a notification `tools/call`)
 * Params the gateway cannot decide on safely (a name that is not isSafeName, a bad or non-canonical URI, a missing
 * or unknown completion ref, arguments that are not an object or exceed the cap) give `invalid` with a reason;
 * nothing is ever rewritten into another name.
 */
export function classify(message: McpMessage, server: string, options: ClassifyOptions = {}): McpAction {
  assertServer(server);
  const base = `mcp:${server}`;
  const session = (method: string | null): McpSessionAction => ({ kind: 'session', resource: base, action: 'session', method });
  const invalid = (reason: McpInvalidReason, text: string): McpInvalidAction => ({ kind: 'invalid', resource: base, reason, message: text, code: JSONRPC_INVALID_PARAMS });
  if (message.kind === 'response') return session(null);
  if (message.kind === 'notification') {
    return message.method.startsWith('notifications/') && message.method.length > 'notifications/'.length ? session(message.method) : { kind: 'unknown', resource: base, method: message.method };
  }
  const method = message.method;
  const maxArgumentBytes = options.maxArgumentBytes ?? MAX_ARGUMENT_BYTES;
  const params = message.params;
  // Arguments are the agent's: an object of any members (even one named "kind"), so the answer is wrapped.
  const checkArguments = (value: unknown, strings: boolean): { args: JsonObject } | { refused: McpInvalidAction } => {
    const args = value === undefined ? {} : value;
    if (!isJsonObject(args)) return { refused: invalid('mcp_arguments_invalid', `${method} arguments must be an object, not ${quote(args)}`) };
    if (strings && !Object.values(args).every((v) => typeof v === 'string')) return { refused: invalid('mcp_arguments_invalid', `${method} arguments must all be strings`) };
    const size = canonicalSize(args);
    if (size === null) return { refused: invalid('mcp_arguments_invalid', `${method} arguments have no canonical JSON form (an unpaired surrogate, or nested too deep)`) };
    if (size > maxArgumentBytes) return { refused: invalid('mcp_arguments_too_large', `${method} arguments are ${size} bytes; at most ${maxArgumentBytes} are allowed`) };
    return { args };
  };
  switch (method) {
    case 'tools/call': {
      if (!isJsonObject(params)) return invalid('mcp_params_invalid', 'tools/call needs params: an object with the tool name');
      if (!isSafeName(params.name)) {
        return invalid('mcp_tool_name_invalid', `the tool name ${quote(params.name)} is not 1-${MAX_NAME_LENGTH} characters of A-Z a-z 0-9 _ . - (not starting with a dot, without "..")`);
      }
      const checked = checkArguments(params.arguments, false);
      if ('refused' in checked) return checked.refused;
      return { kind: 'tool', resource: `${base}/${params.name}`, action: 'call', tool: params.name, arguments: checked.args };
    }
    case 'resources/read': {
      if (!isJsonObject(params)) return invalid('mcp_params_invalid', 'resources/read needs params: an object with the uri');
      if (!isSafeUri(params.uri)) {
        return invalid('mcp_resource_uri_invalid', `the resource uri ${quote(params.uri)} is not a string of 1-${MAX_URI_LENGTH} characters without control characters`);
      }
      const problem = canonicalUriProblem(params.uri);
      if (problem !== null) return invalid('mcp_resource_uri_invalid', `the resource uri ${quote(params.uri)} is not in canonical form: ${problem}`);
      return { kind: 'resource', resource: `${base}/resource/${params.uri}`, action: 'read', uri: params.uri };
    }
    case 'completion/complete': {
      // Completions reveal what a prompt or resource template would accept, so they are decided as using it.
      const ref = isJsonObject(params) ? params.ref : undefined;
      if (!isJsonObject(ref)) return invalid('mcp_params_invalid', 'completion/complete needs params: an object with a ref (ref/prompt or ref/resource)');
      if (ref.type === 'ref/prompt') {
        if (!isSafeName(ref.name)) {
          return invalid('mcp_prompt_name_invalid', `the prompt name ${quote(ref.name)} is not 1-${MAX_NAME_LENGTH} characters of A-Z a-z 0-9 _ . - (not starting with a dot, without "..")`);
        }
        return { kind: 'prompt', resource: `${base}/prompt/${ref.name}`, action: 'get', prompt: ref.name, arguments: {} };
      }
      if (ref.type === 'ref/resource') {
        // A URI template ("file:///{+path}") is not a URL, so it cannot be in canonical form; it must not escape either.
        if (!isSafeUri(ref.uri)) {
          return invalid('mcp_resource_uri_invalid', `the resource uri ${quote(ref.uri)} is not a string of 1-${MAX_URI_LENGTH} characters without control characters`);
        }
        const problem = uriEscapeProblem(ref.uri);
        if (problem !== null) return invalid('mcp_resource_uri_invalid', `the resource uri ${quote(ref.uri)} is refused: ${problem}`);
        return { kind: 'resource', resource: `${base}/resource/${ref.uri}`, action: 'read', uri: ref.uri };
      }
      return invalid('mcp_params_invalid', `completion/complete needs a ref of type ref/prompt or ref/resource, not ${quote(ref.type)}`);
    }
    case 'prompts/get': {
      if (!isJsonObject(params)) return invalid('mcp_params_invalid', 'prompts/get needs params: an object with the prompt name');
      if (!isSafeName(params.name)) {
        return invalid('mcp_prompt_name_invalid', `the prompt name ${quote(params.name)} is not 1-${MAX_NAME_LENGTH} characters of A-Z a-z 0-9 _ . - (not starting with a dot, without "..")`);
      }
      const checked = checkArguments(params.arguments, true);
      if ('refused' in checked) return checked.refused;
      return { kind: 'prompt', resource: `${base}/prompt/${params.name}`, action: 'get', prompt: params.name, arguments: checked.args as Record<string, string> };
    }
    default:
      return SESSION_METHODS.has(method) ? session(method) : { kind: 'unknown', resource: base, method };
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Arguments digest

/**
 * SHA-256 (hex) of the RFC 8785 canonical JSON of `args` (src/ledger/canonical.ts): what decision events record
 * instead of the argument values. Equal for arguments that differ only in member order or number spelling (1.0, 1).
 * Arguments that `classify` accepted always have one; anything else that has no canonical form throws.
 */
export function argumentDigest(args: unknown): string {
  let canonical: string;
  try {
    canonical = canonicalJson(args);
  } catch (err) {
    const why = err instanceof Error && !(err instanceof RangeError) ? err.message : 'nested too deep';
    throw new CaracalError('CARACAL_BAD_REQUEST', `the arguments have no canonical JSON form: ${why}`, { reasons: ['mcp_arguments_invalid'], cause: err });
  }
  return createHash('sha256').update(canonical, 'utf8').digest('hex');
}

// ---------------------------------------------------------------------------------------------------------------
// Listing filters

export type ListMethod = 'tools/list' | 'resources/list' | 'prompts/list' | 'resources/templates/list';

const LISTS: Record<ListMethod, { field: string; key: string; valid: (value: unknown) => boolean }> = {
  'tools/list': { field: 'tools', key: 'name', valid: isSafeName },
  'prompts/list': { field: 'prompts', key: 'name', valid: isSafeName },
  // A listed resource whose URI is not canonical could never be read (classify refuses it), so it is not listed.
  'resources/list': { field: 'resources', key: 'uri', valid: isCanonicalUri },
  'resources/templates/list': { field: 'resourceTemplates', key: 'uriTemplate', valid: isSafeUri },
};

export function isListMethod(method: string): method is ListMethod {
  return Object.prototype.hasOwnProperty.call(LISTS, method);
}

/**
 * A listing's result with the entries the agent may not use removed: tools and prompts by `name`, resources by `uri`,
 * resource templates by `uriTemplate`. Every other member (`nextCursor`, `_meta`, …) is kept, and so is each kept
 * entry as it was. Fails closed: a result that is not an object, or whose list is missing or not an array, becomes
 * an empty list; an entry that is not an object, has no such string, or whose name `classify` would refuse
 * (isSafeName; isCanonicalUri for resources, isSafeUri for templates) is removed without asking `allowed`. An
 * exception from `allowed` propagates.
 */
export function filterListResult(method: ListMethod, result: unknown, allowed: (name: string) => boolean): JsonObject {
  if (!isListMethod(method)) throw new CaracalError('CARACAL_INTERNAL', `${quote(method)} is not a listing method`);
  const { field, key, valid } = LISTS[method];
  if (!isJsonObject(result)) return { [field]: [] };
  const list = result[field];
  const kept = Array.isArray(list) ? list.filter((entry) => isJsonObject(entry) && valid(entry[key]) && allowed(entry[key] as string)) : [];
  return { ...result, [field]: kept };
}

/**
 * filterListResult applied to an upstream response message (for a `rewrite` callback): a result is filtered, an
 * error response passes unchanged, and a message with neither is dropped (null).
 */
export function filterListResponse(method: ListMethod, message: JsonObject, allowed: (name: string) => boolean): JsonObject | null {
  if (hasMember(message, 'result')) return { ...message, result: filterListResult(method, message.result, allowed) };
  if (hasMember(message, 'error')) return message;
  return null;
}

import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { CompleteRequestSchema, JSONRPCErrorResponseSchema, JSONRPCMessageSchema, LATEST_PROTOCOL_VERSION, McpError, SUPPORTED_PROTOCOL_VERSIONS } from '@modelcontextprotocol/sdk/types.js';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { CaracalError, isCaracalError } from '../../src/errors/catalog.js';
import { inspectJson } from '../../src/mcp/json.js';
import {
  argumentDigest,
  batchesAllowed,
  classify,
  deniedResponse,
  filterListResponse,
  filterListResult,
  isCanonicalUri,
  isSafeName,
  isSafeUri,
  jsonRpcError,
  JSONRPC_INVALID_PARAMS,
  JSONRPC_INVALID_REQUEST,
  JSONRPC_PARSE_ERROR,
  MCP_POLICY_DENIED,
  McpMessageError,
  parseMcpBody,
  promptResource,
  requestIdKey,
  resourceResource,
  toolResource,
  type McpAction,
  type McpMessage,
  type ParseOptions,
} from '../../src/mcp/messages.js';

const OPTIONS: ParseOptions = { maxBytes: 1 << 20, maxBatch: 100, protocolVersion: '2025-03-26' };

const body = (value: unknown): Buffer => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value), 'utf8');
const parse = (value: unknown, options: Partial<ParseOptions> = {}) => parseMcpBody(Buffer.isBuffer(value) ? value : body(value), { ...OPTIONS, ...options });

/** The McpMessageError a body is refused with (fails the test when it is not refused). */
function refused(value: unknown, options: Partial<ParseOptions> = {}): McpMessageError {
  try {
    parse(value, options);
  } catch (err) {
    expect(err).toBeInstanceOf(McpMessageError);
    expect(isCaracalError(err)).toBe(true);
    return err as McpMessageError;
  }
  throw new Error(`not refused: ${String(value).slice(0, 80)}`);
}

const req = (id: unknown, method: string, params?: unknown) => ({ jsonrpc: '2.0', id, method, ...(params === undefined ? {} : { params }) });
const note = (method: string, params?: unknown) => ({ jsonrpc: '2.0', method, ...(params === undefined ? {} : { params }) });
const call = (name: unknown, args?: unknown): McpMessage => {
  const params: Record<string, unknown> = { name };
  if (args !== undefined) params.arguments = args;
  return { kind: 'request', id: 1, method: 'tools/call', params, json: req(1, 'tools/call', params) };
};
const request = (method: string, params?: Record<string, unknown> | unknown[]): McpMessage => ({ kind: 'request', id: 1, method, params, json: req(1, method, params) });
const read = (uri: unknown): McpMessage => request('resources/read', { uri });
const complete = (ref: unknown): McpMessage => request('completion/complete', { ref, argument: { name: 'path', value: '' } });

describe('parseMcpBody: one message', () => {
  it('reads a request, a notification, a result response and an error response', () => {
    const r = parse(req(7, 'tools/call', { name: 'read', arguments: { path: '/x' } }));
    expect(r.batch).toBe(false);
    expect(r.entries).toEqual([
      { ok: true, index: 0, message: { kind: 'request', id: 7, method: 'tools/call', params: { name: 'read', arguments: { path: '/x' } }, json: req(7, 'tools/call', { name: 'read', arguments: { path: '/x' } }) } },
    ]);
    expect(parse(req('abc', 'ping')).entries[0]).toMatchObject({ ok: true, message: { kind: 'request', id: 'abc', method: 'ping', params: undefined } });
    expect(parse(req(1, 'x', [1, 2])).entries[0]).toMatchObject({ ok: true, message: { params: [1, 2] } });
    expect(parse(note('notifications/initialized')).entries[0]).toMatchObject({ ok: true, message: { kind: 'notification', method: 'notifications/initialized' } });
    expect(parse({ jsonrpc: '2.0', id: 3, result: { roots: [] } }).entries[0]).toMatchObject({ ok: true, message: { kind: 'response', id: 3, result: { roots: [] }, error: undefined } });
    expect(parse({ jsonrpc: '2.0', id: 'k', error: { code: -1, message: 'no', data: { x: 1 } } }).entries[0]).toMatchObject({
      ok: true,
      message: { kind: 'response', id: 'k', result: undefined, error: { code: -1, message: 'no', data: { x: 1 } } },
    });
  });

  it('accepts ids that are strings or safe integers, including 0, negatives and the empty string', () => {
    for (const id of [0, -5, Number.MAX_SAFE_INTEGER, '', 'x'.repeat(256), 'ü-😀']) {
      expect(parse(req(id, 'ping')).entries[0]).toMatchObject({ ok: true, message: { id } });
    }
  });

  it.each<[string, unknown]>([
    ['null', null],
    ['a float', 1.5],
    ['an object', {}],
    ['an array', [1]],
    ['a boolean', true],
    ['an unsafe integer', 2 ** 53],
    ['a huge number', 1e300],
    ['a string of 257 characters', 'x'.repeat(257)],
    ['a string with a control character', 'a\u0000b'],
    ['a string with an unpaired surrogate', 'a\ud800'],
  ])('refuses the whole body for an id that is %s', (_what, id) => {
    const err = refused(req(id, 'ping'));
    expect(err).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST, id: null, code: 'CARACAL_BAD_REQUEST', statusCode: 400, reasons: ['mcp_id_invalid'] });
    // In a response or a notification-looking message alike.
    expect(refused({ jsonrpc: '2.0', id, result: {} }).reasons).toEqual(['mcp_id_invalid']);
  });

  it('refuses a body larger than maxBytes with 413, before reading it', () => {
    const huge = body(req(1, 'tools/call', { name: 'x', arguments: { blob: 'a'.repeat(2_000_000) } }));
    const err = refused(huge);
    expect(err).toMatchObject({ code: 'CARACAL_PAYLOAD_TOO_LARGE', statusCode: 413, rpcCode: JSONRPC_INVALID_REQUEST, scope: 'body', reasons: ['mcp_body_too_large'] });
    expect(err.message).toMatch(/larger than 1048576 bytes/);
    expect(parse(body(req(1, 'ping')), { maxBytes: Buffer.byteLength(JSON.stringify(req(1, 'ping'))) }).entries).toHaveLength(1);
  });

  it.each<[string, Buffer]>([
    ['an empty body', Buffer.alloc(0)],
    ['a truncated object', body('{"jsonrpc":"2.0","id":1')],
    ['trailing garbage', body('{"jsonrpc":"2.0","id":1,"method":"ping"}x')],
    ['two concatenated objects', body('{"jsonrpc":"2.0","method":"a"}{"jsonrpc":"2.0","method":"b"}')],
    ['single quotes', body("{'jsonrpc':'2.0'}")],
    ['NaN', body('{"jsonrpc":"2.0","id":NaN,"method":"x"}')],
    ['invalid UTF-8', Buffer.concat([body('{"jsonrpc":"2.0","id":1,"method":"p'), Buffer.from([0xff, 0xfe]), body('"}')])],
    ['an overlong UTF-8 encoding of "/"', Buffer.concat([body('{"jsonrpc":"2.0","id":1,"method":"a'), Buffer.from([0xc0, 0xaf]), body('b"}')])],
    ['a UTF-8 byte-order mark', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body(req(1, 'ping'))])],
    ['a UTF-16 body', Buffer.from(JSON.stringify(req(1, 'ping')), 'utf16le')],
  ])('refuses %s as a parse error (-32700)', (_what, raw) => {
    expect(refused(raw)).toMatchObject({ rpcCode: JSONRPC_PARSE_ERROR, scope: 'body', id: null, reasons: ['mcp_parse_error'], statusCode: 400 });
  });

  it.each<[string, unknown]>([
    ['a number', 1],
    ['a string', '"hello"'],
    ['null', null],
    ['true', true],
  ])('refuses a body that is %s (-32600)', (_what, value) => {
    expect(refused(value)).toMatchObject({ rpcCode: JSONRPC_INVALID_REQUEST, scope: 'body', reasons: ['mcp_invalid_message'] });
  });

  it.each<[string, Record<string, unknown>]>([
    ['jsonrpc "1.0"', { jsonrpc: '1.0', id: 4, method: 'ping' }],
    ['jsonrpc 2.0 as a number', { jsonrpc: 2.0, id: 4, method: 'ping' }],
    ['no jsonrpc', { id: 4, method: 'ping' }],
    ['no method', { jsonrpc: '2.0', id: 4 }],
    ['a numeric method', { jsonrpc: '2.0', id: 4, method: 7 }],
    ['an empty method', { jsonrpc: '2.0', id: 4, method: '' }],
    ['a method of 257 characters', { jsonrpc: '2.0', id: 4, method: 'm'.repeat(257) }],
    ['a method with NUL', { jsonrpc: '2.0', id: 4, method: 'tools/call\u0000' }],
    ['a method with a newline', { jsonrpc: '2.0', id: 4, method: 'ping\n' }],
    ['params null', { jsonrpc: '2.0', id: 4, method: 'ping', params: null }],
    ['params a string', { jsonrpc: '2.0', id: 4, method: 'ping', params: 'x' }],
    ['params a number', { jsonrpc: '2.0', id: 4, method: 'ping', params: 3 }],
    ['an extra member', { jsonrpc: '2.0', id: 4, method: 'ping', extra: true }],
  ])('refuses only the message, answerable by its id, for a request with %s', (_what, message) => {
    const parsed = parse(message);
    expect(parsed.entries).toHaveLength(1);
    const entry = parsed.entries[0]!;
    if (entry.ok) throw new Error('expected a refused entry');
    expect(entry.id).toBe(4);
    expect(entry.error).toMatchObject({ scope: 'message', rpcCode: JSONRPC_INVALID_REQUEST, id: 4, reasons: ['mcp_invalid_message'] });
    expect(entry.error.toJsonRpc()).toEqual({
      jsonrpc: '2.0',
      id: 4,
      error: { code: JSONRPC_INVALID_REQUEST, message: entry.error.message, data: { caracal: { error: 'CARACAL_BAD_REQUEST', reasons: ['mcp_invalid_message'] } } },
    });
    expect(JSONRPCErrorResponseSchema.safeParse(entry.error.toJsonRpc()).success).toBe(true);
    // Without an id the same problem cannot be answered: the whole body is refused.
    const { id: _id, ...withoutId } = message;
    expect(refused(withoutId)).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST });
  });

  it.each<[string, Record<string, unknown>]>([
    ['both result and error', { jsonrpc: '2.0', id: 1, result: {}, error: { code: 1, message: 'x' } }],
    ['a result that is not an object', { jsonrpc: '2.0', id: 1, result: 'ok' }],
    ['a null result', { jsonrpc: '2.0', id: 1, result: null }],
    ['an error without a code', { jsonrpc: '2.0', id: 1, error: { message: 'x' } }],
    ['an error with a fractional code', { jsonrpc: '2.0', id: 1, error: { code: 1.5, message: 'x' } }],
    ['an error without a message', { jsonrpc: '2.0', id: 1, error: { code: 1 } }],
    ['an error with an extra member', { jsonrpc: '2.0', id: 1, error: { code: 1, message: 'x', stack: 'y' } }],
    ['no id', { jsonrpc: '2.0', result: {} }],
    ['a method as well', { jsonrpc: '2.0', id: 1, method: 'ping', result: {} }],
    ['the wrong jsonrpc', { jsonrpc: '1.0', id: 1, result: {} }],
  ])('refuses the whole body for a response with %s (a response is never answered)', (_what, message) => {
    expect(refused(message)).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST, reasons: ['mcp_invalid_message'] });
  });

  it('refuses a member name repeated in one object, however it is spelled, and nesting deeper than the limit', () => {
    for (const text of [
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"evil"}}',
      '{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}',
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","n\\u0061me":"evil"}}',
      '{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":[{"k":1,"k":2}]}}',
    ]) {
      expect(refused(text)).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST, reasons: ['mcp_duplicate_member'] });
    }
    // The same name in different objects, and names that only look alike, are fine.
    expect(parse('{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":{"k":1},"b":{"k":2},"\\"k":3,"k\\\\":4}}').entries[0]!.ok).toBe(true);
    const deep = (n: number) => `{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":${'['.repeat(n)}${']'.repeat(n)}}}`;
    expect(parse(deep(98)).entries[0]!.ok).toBe(true); // 2 levels of objects + 98 arrays = 100
    expect(refused(deep(99)).reasons).toEqual(['mcp_too_deep']);
    expect(refused(deep(1_000_000), { maxBytes: 4 << 20 }).reasons).toEqual(['mcp_too_deep']);
  });
});

describe('parseMcpBody: batches', () => {
  const batch = [req(1, 'tools/list'), note('notifications/progress', { progress: 1 }), { jsonrpc: '2.0', id: 1, result: {} }, req('2', 'ping')];

  it('are read in 2025-03-26 and when no version is known (2025-03-26 is assumed)', () => {
    for (const protocolVersion of ['2025-03-26', null]) {
      const parsed = parse(batch, { protocolVersion });
      expect(parsed.batch).toBe(true);
      expect(parsed.entries.map((e) => (e.ok ? e.message.kind : 'error'))).toEqual(['request', 'notification', 'response', 'request']);
      expect(parsed.entries.map((e) => e.index)).toEqual([0, 1, 2, 3]);
    }
    expect(parse([req(1, 'ping')]).batch).toBe(true);
  });

  it('are refused in every other version the SDK knows, and in versions it does not', () => {
    expect(SUPPORTED_PROTOCOL_VERSIONS).toContain('2025-03-26');
    for (const version of [...SUPPORTED_PROTOCOL_VERSIONS.filter((v) => v !== '2025-03-26'), LATEST_PROTOCOL_VERSION, '2099-01-01', 'garbage', '']) {
      expect(batchesAllowed(version)).toBe(false);
      expect(refused(batch, { protocolVersion: version })).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST, reasons: ['mcp_batch_not_allowed'] });
      // A single message is fine in any version.
      expect(parse(req(1, 'ping'), { protocolVersion: version }).batch).toBe(false);
    }
  });

  it('refuses an empty batch and a batch of 10,000 at once', () => {
    expect(refused([])).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST, reasons: ['mcp_batch_empty'] });
    const many = Array.from({ length: 10_000 }, (_, i) => req(i, 'ping'));
    const started = performance.now();
    const err = refused(many);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(err).toMatchObject({ scope: 'body', reasons: ['mcp_batch_too_large'] });
    expect(err.message).toMatch(/10000 messages; at most 100/);
    expect(parse(Array.from({ length: 100 }, (_, i) => req(i, 'ping'))).entries).toHaveLength(100);
  });

  it('answers a malformed request member by its id and keeps the rest', () => {
    const parsed = parse([req(1, 'tools/list'), { jsonrpc: '1.0', id: 2, method: 'ping' }, { jsonrpc: '2.0', id: 3, method: 42 }, note('notifications/initialized')]);
    expect(parsed.entries.map((e) => e.ok)).toEqual([true, false, false, true]);
    const [, second, third] = parsed.entries;
    if (second!.ok || third!.ok) throw new Error('unreachable');
    expect(second!.error.message).toMatch(/^batch member 1 is not JSON-RPC 2.0/);
    expect(second!.error.toJsonRpc().id).toBe(2);
    expect(third!.error.message).toMatch(/^batch member 2 has a method that is not a string/);
  });

  it.each<[string, unknown[], string]>([
    ['a member that is not an object', [req(1, 'ping'), 5], 'mcp_invalid_message'],
    ['a member that is null', [req(1, 'ping'), null], 'mcp_invalid_message'],
    ['a nested batch', [[req(1, 'ping')]], 'mcp_invalid_message'],
    ['a member with a null id', [req(1, 'ping'), req(null, 'ping')], 'mcp_id_invalid'],
    ['a member with a float id', [req(1, 'ping'), req(1.5, 'ping')], 'mcp_id_invalid'],
    ['a member with an object id', [req(1, 'ping'), req({}, 'ping')], 'mcp_id_invalid'],
    ['a malformed notification (no id to answer)', [req(1, 'ping'), { jsonrpc: '2.0', method: 7 }], 'mcp_invalid_message'],
    ['a malformed response', [req(1, 'ping'), { jsonrpc: '2.0', id: 9, result: 'x' }], 'mcp_invalid_message'],
    ['two requests with the same id', [req(1, 'ping'), req(1, 'tools/list')], 'mcp_duplicate_id'],
    ['a request id as a number and as a string', [req(1, 'ping'), req('1', 'tools/list')], 'mcp_duplicate_id'],
    ['ids that Number() reads alike', [req(10, 'ping'), req('1e1', 'tools/list')], 'mcp_duplicate_id'],
    ['a malformed request sharing a valid one’s id', [req(5, 'ping'), { jsonrpc: '1.0', id: 5, method: 'ping' }], 'mcp_duplicate_id'],
    ['two responses with the same id', [{ jsonrpc: '2.0', id: 'a', result: {} }, { jsonrpc: '2.0', id: 'a', error: { code: 1, message: 'x' } }], 'mcp_duplicate_id'],
    ['initialize in a batch', [req(1, 'initialize', {}), note('notifications/initialized')], 'mcp_initialize_in_batch'],
  ])('refuses the whole batch for %s', (_what, members, reason) => {
    expect(refused(members)).toMatchObject({ scope: 'body', rpcCode: JSONRPC_INVALID_REQUEST, id: null, reasons: [reason] });
  });

  it('keeps request ids and response ids apart (they answer different sides)', () => {
    const parsed = parse([req(1, 'ping'), { jsonrpc: '2.0', id: 1, result: {} }]);
    expect(parsed.entries.every((e) => e.ok)).toBe(true);
  });

  it('never throws anything but McpMessageError, whatever the body', () => {
    const member = fc.oneof(
      fc.record({ jsonrpc: fc.constantFrom('2.0', '1.0', 2), id: fc.oneof(fc.integer(), fc.double(), fc.string(), fc.constant(null)), method: fc.oneof(fc.string(), fc.integer()) }, { requiredKeys: [] }),
      fc.jsonValue(),
    );
    fc.assert(
      fc.property(fc.oneof(member, fc.array(member, { maxLength: 6 })), fc.constantFrom('2025-03-26', '2025-06-18', null), (value, protocolVersion) => {
        try {
          const parsed = parse(value, { protocolVersion });
          for (const entry of parsed.entries) if (!entry.ok) expect(entry.error.scope).toBe('message');
        } catch (err) {
          expect(err).toBeInstanceOf(McpMessageError);
          expect((err as McpMessageError).scope).toBe('body');
        }
      }),
      { numRuns: 500 },
    );
  });
});

describe('ids', () => {
  it('collide when the SDK would match them to the same request', () => {
    expect(requestIdKey(1)).toBe(requestIdKey('1'));
    expect(requestIdKey(1)).toBe(requestIdKey('01'));
    expect(requestIdKey(0)).toBe(requestIdKey(-0));
    expect(requestIdKey('abc')).not.toBe(requestIdKey('abd'));
    expect(requestIdKey('Infinity')).toBe('s:Infinity');
  });
});

describe('inspectJson', () => {
  it('finds repeated names after unescaping, ignores braces in strings, and ends on text that is not JSON', () => {
    expect(inspectJson('{"a":"{\\"a\\":1}","b":["}",{"a":1}]}')).toEqual({ duplicateKey: null, tooDeep: false });
    expect(inspectJson('{"\\u00e9":1,"é":2}')).toEqual({ duplicateKey: 'é', tooDeep: false });
    expect(inspectJson('{"a":1,"b":{"c":1},"a":2}').duplicateKey).toBe('a');
    expect(inspectJson('{"a')).toEqual({ duplicateKey: null, tooDeep: false });
    expect(inspectJson('"\\')).toEqual({ duplicateKey: null, tooDeep: false });
  });
});

describe('classify', () => {
  it('maps a tool call to its resource, with the arguments (default {})', () => {
    expect(classify(call('read_file', { path: '/tmp/x' }), 'fs')).toEqual({ kind: 'tool', resource: 'mcp:fs/read_file', action: 'call', tool: 'read_file', arguments: { path: '/tmp/x' } });
    expect(classify(call('a.b-C_9'), 'fs')).toMatchObject({ kind: 'tool', tool: 'a.b-C_9', arguments: {} });
    expect(classify(call('x'.repeat(128)), 'fs')).toMatchObject({ kind: 'tool' });
    // Arguments are the agent's: a member named "kind" is just a member.
    expect(classify(call('t', { kind: 'invalid', refused: true }), 'fs')).toMatchObject({ kind: 'tool', arguments: { kind: 'invalid', refused: true } });
    expect(toolResource('fs', 'read_file')).toBe('mcp:fs/read_file');
  });

  it.each<[string, unknown]>([
    ['a parent path', '../x'],
    ['a nested parent path', 'a/../../etc'],
    ['a slash', 'a/b'],
    ['a backslash', 'a\\b'],
    ['an encoded slash', '%2f'],
    ['an encoded slash inside', 'read%2Ffile'],
    ['a Cyrillic look-alike', '\u0430dmin'],
    ['a fullwidth look-alike', 'ａｄｍｉｎ'],
    ['a zero-width joiner', 'ad\u200dmin'],
    ['a zero-width space', 'admin\u200b'],
    ['a NUL', 'admin\u0000'],
    ['a newline', 'admin\n'],
    ['a space', 'read file'],
    ['129 characters', 'x'.repeat(129)],
    ['nothing', ''],
    ['a leading dot', '.hidden'],
    ['a double dot', 'a..b'],
    ['only dots', '..'],
    ['a colon', 'mcp:other'],
    ['an emoji', 'tool😀'],
    ['a dotless i', 'admın'],
    ['a number', 42],
    ['null', null],
    ['no name', undefined],
    ['an array', ['read']],
    ['an object', { name: 'read' }],
  ])('refuses a tool name with %s, without normalising it', (_what, name) => {
    const action = classify(call(name), 'fs');
    expect(action).toMatchObject({ kind: 'invalid', resource: 'mcp:fs', reason: 'mcp_tool_name_invalid', code: JSONRPC_INVALID_PARAMS });
    expect(isSafeName(name)).toBe(false);
  });

  it('never turns a name into another one: a tool action names exactly what was sent, or there is none', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 140 }), fc.stringMatching(/^[A-Za-z0-9_.-]{1,130}$/), fc.string({ unit: fc.constantFrom('a', '.', '/', '%', '\u0430', '-'), maxLength: 8 })), (name) => {
        const action = classify(call(name), 'srv');
        if (action.kind === 'tool') {
          expect(action.tool).toBe(name);
          expect(action.resource).toBe(`mcp:srv/${name}`);
          expect(name).toMatch(/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$/);
          expect(name).not.toContain('..');
        } else expect(action).toMatchObject({ kind: 'invalid', reason: 'mcp_tool_name_invalid' });
      }),
      { numRuns: 2_000 },
    );
  });

  it.each<[string, Record<string, unknown> | unknown[] | undefined, string]>([
    ['no params', undefined, 'mcp_params_invalid'],
    ['params as an array', ['read', {}], 'mcp_params_invalid'],
    ['arguments as an array', { name: 'read', arguments: [1] }, 'mcp_arguments_invalid'],
    ['arguments as a string', { name: 'read', arguments: '{"a":1}' }, 'mcp_arguments_invalid'],
    ['arguments null', { name: 'read', arguments: null }, 'mcp_arguments_invalid'],
    ['arguments with an unpaired surrogate', { name: 'read', arguments: { a: '\ud800' } }, 'mcp_arguments_invalid'],
    ['arguments with an unpaired surrogate in a key', { name: 'read', arguments: { ['\udc00']: 1 } }, 'mcp_arguments_invalid'],
  ])('refuses a tool call with %s', (_what, params, reason) => {
    expect(classify(request('tools/call', params), 'fs')).toMatchObject({ kind: 'invalid', reason, code: JSONRPC_INVALID_PARAMS });
  });

  it('caps the arguments by their canonical size', () => {
    const args = { blob: 'x'.repeat(100) };
    const size = Buffer.byteLength(JSON.stringify(args));
    expect(classify(call('t', args), 'fs', { maxArgumentBytes: size })).toMatchObject({ kind: 'tool' });
    expect(classify(call('t', args), 'fs', { maxArgumentBytes: size - 1 })).toMatchObject({ kind: 'invalid', reason: 'mcp_arguments_too_large' });
    expect(classify(call('t', { blob: 'x'.repeat(1 << 20) }), 'fs')).toMatchObject({ kind: 'invalid', reason: 'mcp_arguments_too_large' });
  });

  it('maps resources/read to the resource URI as sent', () => {
    expect(classify(read('file:///etc/hosts'), 'fs')).toEqual({ kind: 'resource', resource: 'mcp:fs/resource/file:///etc/hosts', action: 'read', uri: 'file:///etc/hosts' });
    const longest = `file:///${'x'.repeat(2040)}`;
    expect(classify(read(longest), 'fs')).toMatchObject({ kind: 'resource', uri: longest });
    expect(classify(read('doc://h/caf%C3%A9/%F0%9F%98%80'), 'fs')).toMatchObject({ kind: 'resource', uri: 'doc://h/caf%C3%A9/%F0%9F%98%80' });
    expect(resourceResource('fs', 'a://b')).toBe('mcp:fs/resource/a://b');
    for (const uri of ['', `${longest}x`, 'file:///a\u0000b', 'file:///a\nb', 'file:///a\u007f', 'file:///a\u0085', 'file:///\ud800', 42, null, undefined, {}]) {
      expect(classify(read(uri), 'fs')).toMatchObject({ kind: 'invalid', reason: 'mcp_resource_uri_invalid' });
      expect(isSafeUri(uri)).toBe(false);
      expect(isCanonicalUri(uri)).toBe(false);
    }
    expect(classify(request('resources/read'), 'fs')).toMatchObject({ kind: 'invalid', reason: 'mcp_params_invalid' });
  });

  it.each<[string, string]>([
    ['a plain file URI', 'file:///public/report.txt'],
    ['a URN (an opaque path)', 'urn:x:y'],
    ['a URN whose opaque path has dots', 'urn:x:../y'],
    ['an MCP URI with a host', 'mcp://server/a/b'],
    ['a host and no path', 'repo://readme'],
    ['a query', 'http://h/x?q=1'],
    ['an empty query and fragment', 'http://h/x?#'],
    ['a fragment', 'http://h/x#part'],
    ['".." inside a query value', 'mcp://s/a?x=..'],
    ['a file name starting with a dot', 'http://h/.well-known/x'],
    ['a file name of three dots', 'file:///a/...'],
    ['an encoded space', 'file:///a%20b'],
    ['an encoded percent sign', 'file:///100%25'],
    ['an IPv6 host', 'http://[::1]/'],
    ['user info', 'http://u@h/x'],
    ['a Windows drive', 'file:///C:/x'],
  ])('accepts a URI in canonical form: %s', (_what, uri) => {
    expect(new URL(uri).href).toBe(uri);
    expect(isCanonicalUri(uri)).toBe(true);
    expect(classify(read(uri), 'fs')).toEqual({ kind: 'resource', resource: `mcp:fs/resource/${uri}`, action: 'read', uri });
  });

  it.each<[string, string, string | null]>([
    // WHATWG's parser rewrites these: refused, and the message says what the server would read.
    ['encoded dot segments', 'file:///public/%2e%2e/secret', 'file:///secret'],
    ['encoded dot segments in mixed case', 'file:///public/%2E%2e/secret', 'file:///secret'],
    ['one encoded dot of two', 'mcp://s/public/.%2e/secret', 'mcp://s/secret'],
    ['a parent segment', 'file:///public/../secret', 'file:///secret'],
    ['a parent segment below the prefix', 'file:///public/a/../../secret', 'file:///secret'],
    ['a trailing parent segment', 'file:///public/..', 'file:///'],
    ['a current segment', 'file:///public/./x', 'file:///public/x'],
    ['a current segment inside', 'file:///a/./b', 'file:///a/b'],
    ['a leading current segment', 'file:///./public/x', 'file:///public/x'],
    ['backslashes in a special scheme', 'file:///public\\..\\secret', 'file:///secret'],
    ['a parent segment in a non-special scheme', 'mcp://s/public/../secret', 'mcp://s/secret'],
    ['an upper-case scheme', 'FILE:///x', 'file:///x'],
    ['an upper-case host', 'file://HOST/x', 'file://host/x'],
    ['localhost in a file URI', 'file://localhost/x', 'file:///x'],
    ['a default port', 'http://h:80/x', 'http://h/x'],
    ['no path after the host', 'http://h', 'http://h/'],
    ['a single slash after the scheme', 'http:/h/x', 'http://h/x'],
    ['a numeric host spelled in hex', 'http://0x7f.1/', 'http://127.0.0.1/'],
    ['a fullwidth solidus', 'file:///public／..／secret', 'file:///public%EF%BC%8F..%EF%BC%8Fsecret'],
    ['fullwidth dots', 'file:///public/．．/secret', 'file:///public/%EF%BC%8E%EF%BC%8E/secret'],
    ['a space', 'file:///a b', 'file:///a%20b'],
    ['a leading space', ' file:///x', 'file:///x'],
    ['a Unicode host', 'doc://é/x', 'doc://%C3%A9/x'],
    ['a pipe for a drive colon', 'file:///c|/x', 'file:///c:/x'],
    // WHATWG reads these as themselves, but a server that decodes or joins strings does not.
    ['an encoded slash after dots', 'file:///public/..%2fsecret', null],
    ['an upper-case encoded slash', 'file:///public%2F..%2Fsecret', null],
    ['an encoded backslash', 'http://h/public/..%5csecret', null],
    ['an upper-case encoded backslash', 'http://h/public/..%5Csecret', null],
    ['an encoded dot that is not a whole segment', 'file:///public/%2e%2e%2fsecret', null],
    ['an encoded dot in the query', 'http://h/x?q=%2e', null],
    ['an encoded letter (the same URI, spelled otherwise)', 'file:///p%75blic/x', null],
    ['an encoded tilde', 'http://h/%7euser', null],
    ['an encoded NUL', 'file:///public/x%00/../y', 'file:///public/y'],
    ['an encoded NUL alone', 'file:///secret.txt%00.png', null],
    ['an encoded DEL', 'file:///a%7Fb', null],
    ['a backslash in a non-special scheme', 'mcp://s/public\\..\\secret', null],
    ['a parent segment in the query', 'file:///public/x?/../../secret', null],
    ['a parent segment in the fragment', 'file:///public/x#/..', null],
    ['an upper-case opaque host', 'mcp://S/a', null],
    ['an encoded opaque host', 'mcp://%73/a', null],
    // Not URLs at all.
    ['no scheme', 'public/x', null],
    ['a path only', '/etc/passwd', null],
    ['a bare word', 'x', null],
    ['a template', 'file:///{path}', 'file:///%7Bpath%7D'],
  ])('refuses a URI not in canonical form: %s', (_what, uri, readAs) => {
    expect(isSafeUri(uri)).toBe(true);
    expect(isCanonicalUri(uri)).toBe(false);
    const action = classify(read(uri), 'fs');
    expect(action).toMatchObject({ kind: 'invalid', resource: 'mcp:fs', reason: 'mcp_resource_uri_invalid', code: JSONRPC_INVALID_PARAMS });
    if (action.kind !== 'invalid') throw new Error('unreachable');
    expect(action.message).toContain(`the resource uri ${JSON.stringify(uri)} is not in canonical form`);
    if (readAs !== null) {
      expect(new URL(uri).href).toBe(readAs);
      expect(action.message).toContain(`it would be read as ${JSON.stringify(readAs)}`);
    } else {
      expect(action.message).not.toContain('would be read as');
    }
  });

  it('quotes a long URI and what it would be read as, truncated', () => {
    const uri = `file:///public/${'a/'.repeat(100)}${'../'.repeat(101)}secret`;
    const action = classify(read(uri), 'fs');
    if (action.kind !== 'invalid') throw new Error('expected a refusal');
    expect(action.message).toMatch(/^the resource uri "file:\/\/\/public\/a\/a\/[a/]*…" is not in canonical form: it would be read as "file:\/\/\/secret"$/);
    const longer = `file:///public/${'x'.repeat(100)}/./y`;
    const message = (classify(read(longer), 'fs') as { message: string }).message;
    expect(message).toMatch(/ it would be read as "file:\/\/\/public\/x+…"$/);
    expect(message.length).toBeLessThan(200);
  });

  it('never lets a server that decodes, converts backslashes and resolves dot segments read outside a prefix it accepted', () => {
    const piece = fc.constantFrom('/', '.', '..', '%2e', '%2E', '%2f', '%2F', '%5c', '%5C', '%25', '%', '2e', '\\', 'a', 'secret', 'public', '?', '#', '／', '．', ':', 'A');
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 10 }), (pieces) => {
        const uri = `file:///public/${pieces.join('')}`;
        if (!isCanonicalUri(uri)) {
          expect(classify(read(uri), 'fs')).toMatchObject({ kind: 'invalid', reason: 'mcp_resource_uri_invalid' });
          return;
        }
        expect(new URL(uri).href).toBe(uri);
        expect(uri).not.toMatch(/\\|%2f|%5c|%2e|(^|\/)\.\.?([/?#]|$)/i);
        let decoded: string;
        try {
          decoded = decodeURIComponent(new URL(uri).pathname);
        } catch {
          return; // the server cannot decode it either
        }
        expect(posix.normalize(decoded.replaceAll('\\', '/'))).toMatch(/^\/public\//);
      }),
      { numRuns: 3_000 },
    );
  });

  it('decides completion/complete on a prompt as getting that prompt', () => {
    const ref = { type: 'ref/prompt', name: 'summarise' };
    expect(CompleteRequestSchema.safeParse(complete(ref).json).success).toBe(true);
    expect(classify(complete(ref), 'docs')).toEqual({ kind: 'prompt', resource: 'mcp:docs/prompt/summarise', action: 'get', prompt: 'summarise', arguments: {} });
    expect(classify(complete(ref), 'docs')).toEqual(classify(request('prompts/get', { name: 'summarise' }), 'docs'));
    // Previously resolved arguments are completion context, not prompt arguments.
    const withContext = request('completion/complete', { ref, argument: { name: 'a', value: 'x' }, context: { arguments: { b: 'y' } } });
    expect(classify(withContext, 'docs')).toMatchObject({ kind: 'prompt', prompt: 'summarise', arguments: {} });
  });

  it('decides completion/complete on a resource (a URI template) as reading it', () => {
    for (const uri of ['file:///{+path}', 'repo://readme', 'db://{table}/rows/{id}', 'urn:x:{y}', 'file:///public/{name}.txt', 'mcp://s/a?x=..']) {
      expect(CompleteRequestSchema.safeParse(complete({ type: 'ref/resource', uri }).json).success).toBe(true);
      expect(classify(complete({ type: 'ref/resource', uri }), 'fs')).toEqual({ kind: 'resource', resource: `mcp:fs/resource/${uri}`, action: 'read', uri });
    }
  });

  it.each<[string, unknown]>([
    ['a parent segment', 'file:///public/../{path}'],
    ['a trailing parent segment', 'file:///{path}/..'],
    ['a current segment', 'file:///./{path}'],
    ['a leading parent segment', '../{path}'],
    ['a parent segment in the query', 'file:///{path}?/../x'],
    ['encoded dots', 'file:///public/%2e%2e/{path}'],
    ['upper-case encoded dots', 'file:///public/%2E%2E/{path}'],
    ['an encoded slash', 'file:///public/..%2f{path}'],
    ['an upper-case encoded slash', 'file:///public%2F{path}'],
    ['an encoded backslash', 'file:///public%5c{path}'],
    ['an upper-case encoded backslash', 'file:///public%5C{path}'],
    ['a backslash', 'file:///public\\..\\{path}'],
    ['an encoded letter', 'file:///p%75blic/{path}'],
    ['an encoded NUL', 'file:///{path}%00'],
    ['nothing', ''],
    ['a control character', 'file:///{path}\n'],
    ['an unpaired surrogate', 'file:///\ud800{path}'],
    ['2049 characters', `file:///${'x'.repeat(2041)}`],
    ['a number', 7],
    ['null', null],
    ['no uri', undefined],
  ])('refuses completion/complete on a resource template with %s', (_what, uri) => {
    const ref = uri === undefined ? { type: 'ref/resource' } : { type: 'ref/resource', uri };
    expect(classify(complete(ref), 'fs')).toMatchObject({ kind: 'invalid', resource: 'mcp:fs', reason: 'mcp_resource_uri_invalid', code: JSONRPC_INVALID_PARAMS });
  });

  it.each<[string, McpMessage, string]>([
    ['no params', request('completion/complete'), 'mcp_params_invalid'],
    ['params as an array', request('completion/complete', [{ type: 'ref/prompt', name: 'p' }]), 'mcp_params_invalid'],
    ['no ref', request('completion/complete', { argument: { name: 'a', value: '' } }), 'mcp_params_invalid'],
    ['a null ref', complete(null), 'mcp_params_invalid'],
    ['a ref that is a string', complete('ref/prompt'), 'mcp_params_invalid'],
    ['a ref that is an array', complete([{ type: 'ref/prompt', name: 'p' }]), 'mcp_params_invalid'],
    ['a ref without a type', complete({ name: 'p' }), 'mcp_params_invalid'],
    ['a ref to a tool', complete({ type: 'ref/tool', name: 'delete_all' }), 'mcp_params_invalid'],
    ['a ref type in another case', complete({ type: 'REF/PROMPT', name: 'p' }), 'mcp_params_invalid'],
    ['a ref type with a space', complete({ type: 'ref/prompt ', name: 'p' }), 'mcp_params_invalid'],
    ['a numeric ref type', complete({ type: 1, name: 'p' }), 'mcp_params_invalid'],
    ['a prompt ref without a name', complete({ type: 'ref/prompt' }), 'mcp_prompt_name_invalid'],
    ['a prompt ref with a uri instead', complete({ type: 'ref/prompt', uri: 'file:///x' }), 'mcp_prompt_name_invalid'],
    ['a prompt ref with a parent path', complete({ type: 'ref/prompt', name: '../p' }), 'mcp_prompt_name_invalid'],
    ['a prompt ref with a slash', complete({ type: 'ref/prompt', name: 'p/q' }), 'mcp_prompt_name_invalid'],
    ['a prompt ref with a look-alike', complete({ type: 'ref/prompt', name: 'ｐ' }), 'mcp_prompt_name_invalid'],
    ['a prompt ref with an empty name', complete({ type: 'ref/prompt', name: '' }), 'mcp_prompt_name_invalid'],
    ['a resource ref with a name instead', complete({ type: 'ref/resource', name: 'readme' }), 'mcp_resource_uri_invalid'],
  ])('refuses completion/complete with %s', (_what, message, reason) => {
    expect(classify(message, 'srv')).toMatchObject({ kind: 'invalid', resource: 'mcp:srv', reason, code: JSONRPC_INVALID_PARAMS });
  });

  it('keeps completion/complete a request: as a notification it is unknown', () => {
    const params = { ref: { type: 'ref/prompt', name: 'p' }, argument: { name: 'a', value: '' } };
    const notification: McpMessage = { kind: 'notification', method: 'completion/complete', params, json: note('completion/complete', params) };
    expect(classify(notification, 'srv')).toEqual({ kind: 'unknown', resource: 'mcp:srv', method: 'completion/complete' });
  });

  it('maps prompts/get to the prompt, with string arguments, under the tool name rules', () => {
    expect(classify(request('prompts/get', { name: 'summarise', arguments: { topic: 'x' } }), 'docs')).toEqual({
      kind: 'prompt',
      resource: 'mcp:docs/prompt/summarise',
      action: 'get',
      prompt: 'summarise',
      arguments: { topic: 'x' },
    });
    expect(classify(request('prompts/get', { name: 'p' }), 'docs')).toMatchObject({ kind: 'prompt', arguments: {} });
    expect(promptResource('docs', 'p')).toBe('mcp:docs/prompt/p');
    for (const name of ['../p', 'p/q', '\u0440', 'ｐ', 'p\u200d', 'p\u0000', 'p'.repeat(129)]) {
      expect(classify(request('prompts/get', { name }), 'docs')).toMatchObject({ kind: 'invalid', reason: 'mcp_prompt_name_invalid' });
    }
    expect(classify(request('prompts/get', { name: 'p', arguments: { n: 1 } }), 'docs')).toMatchObject({ kind: 'invalid', reason: 'mcp_arguments_invalid' });
    expect(classify(request('prompts/get', { name: 'p', arguments: ['x'] }), 'docs')).toMatchObject({ kind: 'invalid', reason: 'mcp_arguments_invalid' });
  });

  it('treats session plumbing as session, responses included', () => {
    for (const method of ['initialize', 'ping', 'tools/list', 'resources/list', 'resources/templates/list', 'prompts/list', 'logging/setLevel']) {
      expect(classify(request(method, {}), 'srv')).toEqual({ kind: 'session', resource: 'mcp:srv', action: 'session', method });
    }
    for (const method of ['notifications/initialized', 'notifications/cancelled', 'notifications/progress', 'notifications/roots/list_changed']) {
      expect(classify({ kind: 'notification', method, params: undefined, json: note(method) }, 'srv')).toEqual({ kind: 'session', resource: 'mcp:srv', action: 'session', method });
    }
    expect(classify({ kind: 'response', id: 1, result: {}, error: undefined, json: {} }, 'srv')).toEqual({ kind: 'session', resource: 'mcp:srv', action: 'session', method: null });
  });

  it('fails closed on everything else: unknown methods, and known ones sent as the wrong kind', () => {
    const unknown = (message: McpMessage): McpAction => classify(message, 'srv');
    for (const method of ['tools/delete', 'resources/subscribe', 'sampling/createMessage', 'tasks/get', 'Tools/Call', 'tools/call ', 'notifications/x']) {
      expect(unknown(request(method, {}))).toEqual({ kind: 'unknown', resource: 'mcp:srv', method });
    }
    for (const method of ['tools/call', 'initialize', 'notifications/', 'notificationsX']) {
      expect(unknown({ kind: 'notification', method, params: { name: 'x' }, json: note(method) })).toEqual({ kind: 'unknown', resource: 'mcp:srv', method });
    }
  });

  it('asserts the server name', () => {
    for (const server of ['a', 'x'.repeat(64), 'my-server_2', '0']) expect(classify(request('ping'), server).kind).toBe('session');
    for (const server of ['', 'Bad', '-x', '_x', 'a/b', 'a.b', 'x'.repeat(65), 'ａ', 'a\n']) {
      expect(() => classify(request('ping'), server)).toThrow(CaracalError);
      expect(() => toolResource(server, 't')).toThrow(/was not validated/);
    }
  });
});

describe('argumentDigest', () => {
  it('is the sha256 of the RFC 8785 form: member order and number spelling do not matter', () => {
    const expected = createHash('sha256').update('{"a":1,"b":[true,null,"é"],"c":{"x":1e+30,"y":0.5}}').digest('hex');
    expect(argumentDigest({ c: { y: 0.5, x: 1e30 }, b: [true, null, 'é'], a: 1 })).toBe(expected);
    expect(argumentDigest(JSON.parse('{"a":1.0,"b":[true,null,"\\u00e9"],"c":{"x":1000000000000000000000000000000,"y":5e-1}}'))).toBe(expected);
    expect(argumentDigest({})).toBe(createHash('sha256').update('{}').digest('hex'));
    expect(argumentDigest({ a: 1 })).not.toBe(argumentDigest({ a: 2 }));
  });

  it('refuses what has no canonical form with a CaracalError', () => {
    let deep: unknown = 1;
    for (let i = 0; i < 100_000; i++) deep = [deep];
    for (const value of [{ a: '\ud800' }, undefined, { a: NaN }, { a: new Date(0) }, deep]) {
      expect(() => argumentDigest(value)).toThrow(CaracalError);
    }
  });
});

describe('JSON-RPC errors', () => {
  it('builds error responses, with data only when given', () => {
    expect(jsonRpcError(1, -32600, 'bad')).toEqual({ jsonrpc: '2.0', id: 1, error: { code: -32600, message: 'bad' } });
    expect(jsonRpcError(null, -32700, 'not JSON', { x: 1 })).toEqual({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'not JSON', data: { x: 1 } } });
    expect(() => jsonRpcError(1, 1.5, 'x')).toThrow(CaracalError);
  });

  it('answers a denied message in a shape the SDK reads', () => {
    const denied = deniedResponse(12, { reasons: ['tool_not_allowed', 'outside_hours'], decisionId: 'dec-1', requestId: 'req-1' });
    expect(denied).toEqual({
      jsonrpc: '2.0',
      id: 12,
      error: {
        code: MCP_POLICY_DENIED,
        message: 'denied by policy: tool_not_allowed, outside_hours',
        data: { caracal: { error: 'CARACAL_POLICY_DENIED', reasons: ['tool_not_allowed', 'outside_hours'], decision_id: 'dec-1', request_id: 'req-1' } },
      },
    });
    expect(JSONRPCMessageSchema.safeParse(denied).success).toBe(true);
    expect(deniedResponse('a', { reasons: [], decisionId: null, requestId: 'r' }).error.message).toBe('denied by policy');
    expect(deniedResponse('a', { reasons: ['r'.repeat(1000)], decisionId: null, requestId: 'r' }).error.message.length).toBeLessThanOrEqual(300);
    expect(MCP_POLICY_DENIED).not.toBe(-32001); // the SDK's RequestTimeout
  });

  it('reaches an SDK client as a readable McpError', async () => {
    const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
    // A stand-in for the gateway: it answers initialize and denies every tool call.
    serverSide.onmessage = (raw) => {
      const parsed = parseMcpBody(Buffer.from(JSON.stringify(raw)), { maxBytes: 1 << 16, maxBatch: 1, protocolVersion: null });
      const entry = parsed.entries[0]!;
      if (!entry.ok || entry.message.kind !== 'request') return;
      const message = entry.message;
      const action = classify(message, 'fs');
      if (message.method === 'initialize') {
        void serverSide.send({ jsonrpc: '2.0', id: message.id, result: { protocolVersion: LATEST_PROTOCOL_VERSION, capabilities: { tools: {} }, serverInfo: { name: 'gw', version: '0' } } });
      } else if (action.kind === 'tool') {
        expect(argumentDigest(action.arguments)).toMatch(/^[0-9a-f]{64}$/);
        void serverSide.send(deniedResponse(message.id, { reasons: [`${action.resource} is not allowed`], decisionId: 'dec-9', requestId: 'req-9' }) as never);
      }
    };
    await serverSide.start();
    const client = new Client({ name: 'agent', version: '1' });
    await client.connect(clientSide);
    const error = await client.callTool({ name: 'delete_all', arguments: { really: true } }).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(McpError);
    expect((error as McpError).code).toBe(MCP_POLICY_DENIED);
    expect((error as McpError).message).toBe('MCP error -32003: denied by policy: mcp:fs/delete_all is not allowed');
    expect((error as McpError).data).toMatchObject({ caracal: { error: 'CARACAL_POLICY_DENIED', decision_id: 'dec-9', request_id: 'req-9' } });
    await client.close();
  });
});

describe('listing filters', () => {
  const allowOnly = (...names: string[]) => (name: string) => names.includes(name);

  it('removes what is not allowed from each listing and keeps pagination and other members', () => {
    const tools = { tools: [{ name: 'read', inputSchema: {} }, { name: 'write', inputSchema: {} }, { name: 'admin', inputSchema: {} }], nextCursor: 'c2', _meta: { x: 1 } };
    expect(filterListResult('tools/list', tools, allowOnly('read', 'admin'))).toEqual({ tools: [tools.tools[0], tools.tools[2]], nextCursor: 'c2', _meta: { x: 1 } });
    const prompts = { prompts: [{ name: 'a' }, { name: 'b' }], nextCursor: 'n' };
    expect(filterListResult('prompts/list', prompts, allowOnly('b'))).toEqual({ prompts: [{ name: 'b' }], nextCursor: 'n' });
    const resources = { resources: [{ uri: 'file:///a', name: 'a' }, { uri: 'file:///b', name: 'b' }] };
    expect(filterListResult('resources/list', resources, allowOnly('file:///b'))).toEqual({ resources: [{ uri: 'file:///b', name: 'b' }] });
    const templates = { resourceTemplates: [{ uriTemplate: 'file:///{path}', name: 'f' }, { uriTemplate: 'db://{table}', name: 'd' }], nextCursor: 'z' };
    expect(filterListResult('resources/templates/list', templates, allowOnly('db://{table}'))).toEqual({ resourceTemplates: [templates.resourceTemplates[1]], nextCursor: 'z' });
    // The input is not modified.
    expect(tools.tools).toHaveLength(3);
  });

  it('fails closed on shapes it does not know', () => {
    const all = () => true;
    expect(filterListResult('tools/list', null, all)).toEqual({ tools: [] });
    expect(filterListResult('tools/list', [{ name: 'a' }], all)).toEqual({ tools: [] });
    expect(filterListResult('tools/list', { nextCursor: 'c' }, all)).toEqual({ nextCursor: 'c', tools: [] });
    expect(filterListResult('tools/list', { tools: { name: 'a' } }, all)).toEqual({ tools: [] });
    expect(filterListResult('resources/list', { tools: [{ name: 'a' }] }, all)).toEqual({ tools: [{ name: 'a' }], resources: [] });
    expect(() => filterListResult('tools/call' as never, {}, all)).toThrow(CaracalError);
  });

  it('removes entries without a name classify would accept, without asking', () => {
    const allowed = vi.fn(() => true);
    const result = filterListResult('tools/list', { tools: [null, 'read', { title: 'x' }, { name: 7 }, { name: '../x' }, { name: '\u0430dmin' }, { name: 'ok' }] }, allowed);
    expect(result).toEqual({ tools: [{ name: 'ok' }] });
    expect(allowed.mock.calls).toEqual([['ok']]);
    expect(filterListResult('resources/list', { resources: [{ uri: 'a\u0000' }, { uri: '' }, { uri: 'file:///fine' }] }, allowed)).toEqual({ resources: [{ uri: 'file:///fine' }] });
  });

  it('removes listed resources whose URI could never be read (not in canonical form), but keeps templates', () => {
    const allowed = vi.fn(() => true);
    const resources = ['file:///public/a', 'file:///public/../secret', 'file:///public/%2e%2e/secret', 'file:///public/..%2fsecret', 'FILE:///x', 'file:///a\\b', 'fine', 'urn:x:y', 'mcp://S/a'];
    expect(filterListResult('resources/list', { resources: resources.map((uri) => ({ uri })) }, allowed)).toEqual({ resources: [{ uri: 'file:///public/a' }, { uri: 'urn:x:y' }] });
    expect(allowed.mock.calls).toEqual([['file:///public/a'], ['urn:x:y']]);
    // Templates are not URLs ("{" is percent-encoded by new URL), so they stay under isSafeUri.
    const templates = { resourceTemplates: [{ uriTemplate: 'file:///{+path}' }, { uriTemplate: 'db://{table}' }, { uriTemplate: 'a\u0000' }] };
    expect(filterListResult('resources/templates/list', templates, () => true)).toEqual({ resourceTemplates: [{ uriTemplate: 'file:///{+path}' }, { uriTemplate: 'db://{table}' }] });
  });

  it('lets an exception from allowed propagate', () => {
    expect(() =>
      filterListResult('tools/list', { tools: [{ name: 'a' }] }, () => {
        throw new Error('policy down');
      }),
    ).toThrow('policy down');
  });

  it('filters a response message: results filtered, errors kept, anything else dropped', () => {
    const message = { jsonrpc: '2.0', id: 4, result: { tools: [{ name: 'a' }, { name: 'b' }] } };
    expect(filterListResponse('tools/list', message, (n) => n === 'a')).toEqual({ jsonrpc: '2.0', id: 4, result: { tools: [{ name: 'a' }] } });
    const error = { jsonrpc: '2.0', id: 4, error: { code: 1, message: 'x' } };
    expect(filterListResponse('tools/list', error, () => true)).toBe(error);
    expect(filterListResponse('tools/list', { jsonrpc: '2.0', id: 4 }, () => true)).toBeNull();
  });
});

import { splitBytes } from '../helpers/chunks.js';
import { createParser } from 'eventsource-parser';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { inspectJson, MAX_JSON_DEPTH } from '../../src/mcp/json.js';
import { createMcpResponseRewriter, filterListResponse, isJsonObject, rewriteJsonBody, type JsonObject, type McpResponseRewriterOptions, type MessageRewrite } from '../../src/mcp/messages.js';

/** Feeds `chunks` through a rewriter; returns what came out, and how much had come out after each chunk. */
async function run(chunks: Buffer[], options: McpResponseRewriterOptions) {
  const rewriter = createMcpResponseRewriter(options);
  const out: Buffer[] = [];
  const seenAfter: string[] = [];
  rewriter.on('data', (chunk: Buffer) => out.push(Buffer.from(chunk)));
  for (const chunk of chunks) {
    await new Promise<void>((resolve) => rewriter.write(chunk, () => resolve()));
    await new Promise<void>((resolve) => setImmediate(resolve));
    seenAfter.push(Buffer.concat(out).toString('utf8'));
  }
  await new Promise<void>((resolve) => rewriter.end(resolve));
  return { output: Buffer.concat(out), text: Buffer.concat(out).toString('utf8'), seenAfter, result: rewriter.result() };
}

const split = splitBytes;

/** The events the official SDK's SSE parser dispatches from these bytes (decoded as its TextDecoderStream does). */
function clientEvents(bytes: Buffer): { id: string | undefined; event: string | undefined; data: string }[] {
  const events: { id: string | undefined; event: string | undefined; data: string }[] = [];
  const parser = createParser({ onEvent: (e) => events.push({ id: e.id, event: e.event, data: e.data }) });
  parser.feed(new TextDecoder().decode(bytes));
  return events;
}

const TOOLS = { jsonrpc: '2.0', id: 7, result: { tools: [{ name: 'read', inputSchema: { type: 'object' } }, { name: 'secret', inputSchema: { type: 'object' } }], nextCursor: 'c' } };
const FILTERED = { jsonrpc: '2.0', id: 7, result: { tools: [{ name: 'read', inputSchema: { type: 'object' } }], nextCursor: 'c' } };
const PROGRESS = { jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken: 1, progress: 1, message: 'héllo 😀' } };
const PONG = { jsonrpc: '2.0', id: 8, result: {} };

/** The gateway's use: filter the listing it asked for (id 7), pass everything else unchanged. */
const filterSecret: MessageRewrite = (message) => (message.id === 7 ? filterListResponse('tools/list', message, (name) => name !== 'secret') : message);
const identity: MessageRewrite = (message) => message;

const j = (value: unknown) => JSON.stringify(value);

// [input, expected output] per event.
const EVENTS: [string, string][] = [
  ['id: ev-0\ndata: \n\n', 'id: ev-0\ndata: \n\n'], // the priming event
  [': keep-alive\n\n', ': keep-alive\n\n'],
  [`event: message\nid: ev-1\ndata: ${j(PROGRESS)}\n\n`, `event: message\nid: ev-1\ndata: ${j(PROGRESS)}\n\n`],
  ['retry: 1000\n\n', 'retry: 1000\n\n'],
  [
    // CRLF lines, the message over two data lines, a comment after the data
    `event: message\r\nid: ev-2\r\ndata: {"jsonrpc":"2.0","id":7,\r\ndata: "result":${j(TOOLS.result)}}\r\n: trailing comment\r\n\r\n`,
    `event: message\r\nid: ev-2\r\ndata: ${j(FILTERED)}\r\n: trailing comment\r\n\r\n`,
  ],
  [`id: ev-3\rdata:${j(PONG)}\r\r`, `id: ev-3\rdata:${j(PONG)}\r\r`], // lone CR lines, no space after the colon
  // not JSON: dropped; after a lone CR an empty comment stands for it (so the client still reads that CR as a line end)
  [`data: {"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret"}]}\n\n`, ':\n'],
  ['data: 42\n\n', ''], // not a JSON-RPC object: dropped
  [`data\ndata: ${j(PROGRESS)}\n\n`, `data\ndata: ${j(PROGRESS)}\n\n`], // a bare "data" line is an empty data line
  [`data: ${j(TOOLS)}\n\n`, `data: ${j(FILTERED)}\n\n`],
  [`data: ${j({ jsonrpc: '2.0', id: 9, result: { content: [] } })}\n\n`, `data: ${j({ jsonrpc: '2.0', id: 9, result: { content: [] } })}\n\n`],
];
const STREAM = EVENTS.map(([input]) => input).join('');
const EXPECTED = EVENTS.map(([, output]) => output).join('');

describe('the MCP SSE rewriter', () => {
  it('rewrites the reference stream, whole', async () => {
    const { text, result } = await run([Buffer.from(STREAM)], { rewrite: filterSecret });
    expect(text).toBe(EXPECTED);
    expect(text).not.toContain('secret');
    expect(result).toMatchObject({ events: 8, rewritten: 4, dropped: 2, ended: true, bytesIn: Buffer.byteLength(STREAM), bytesOut: Buffer.byteLength(EXPECTED) });
    expect(result.errors).toEqual(['an event is not JSON', 'an event is not a JSON-RPC message']);
  });

  it('gives the same output split at every byte boundary, and byte by byte', async () => {
    const bytes = Buffer.from(STREAM);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const { text } = await run([bytes.subarray(0, cut), bytes.subarray(cut)].filter((b) => b.length > 0), { rewrite: filterSecret });
      expect(text, `split at ${cut}`).toBe(EXPECTED);
    }
    const single = Array.from({ length: bytes.length }, (_, i) => bytes.subarray(i, i + 1));
    expect((await run(single, { rewrite: filterSecret })).text).toBe(EXPECTED);
  });

  it('gives the same output however it is split (random cuts)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { maxLength: 16 }), async (cuts) => {
        expect((await run(split(STREAM, cuts), { rewrite: filterSecret })).text).toBe(EXPECTED);
      }),
      { numRuns: 200 },
    );
  });

  it('passes events on byte for byte when nothing is rewritten', async () => {
    const stream = EVENTS.filter(([input]) => !input.includes('"secret"}]}\n') && !input.startsWith('data: 42'))
      .map(([input]) => input)
      .join('');
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat(), { maxLength: 12 }), async (cuts) => {
        const { output, result } = await run(split(stream, cuts), { rewrite: identity });
        expect(output.equals(Buffer.from(stream))).toBe(true);
        expect(result.rewritten).toBe(0);
      }),
      { numRuns: 100 },
    );
  });

  it('passes each event on as soon as its blank line arrives, before the stream ends', async () => {
    const events = [`event: message\ndata: ${j(PROGRESS)}\n\n`, `data: ${j({ ...PROGRESS, params: { progressToken: 1, progress: 2 } })}\n\n`, `data: ${j(TOOLS)}\n\n`];
    const expected = [events[0], events[1], `data: ${j(FILTERED)}\n\n`];
    const rewriter = createMcpResponseRewriter({ rewrite: filterSecret });
    const out: string[] = [];
    rewriter.on('data', (chunk: Buffer) => out.push(chunk.toString('utf8')));
    const write = async (text: string) => {
      await new Promise<void>((resolve) => rewriter.write(Buffer.from(text), () => resolve()));
      await new Promise<void>((resolve) => setImmediate(resolve));
    };
    await write(events[0]!);
    expect(out.join('')).toBe(expected[0]); // the notification went on, the stream is still open
    await write(events[1]!.slice(0, 20));
    expect(out.join('')).toBe(expected[0]); // half an event is held…
    await write(events[1]!.slice(20, -1));
    expect(out.join('')).toBe(expected[0]); // …up to its blank line…
    await write(events[1]!.slice(-1));
    expect(out.join('')).toBe(expected[0]! + expected[1]); // …and goes on with it
    await write(events[2]!);
    expect(out.join('')).toBe(expected.join(''));
    expect(rewriter.result().ended).toBe(false);
    await new Promise<void>((resolve) => rewriter.end(resolve));
    expect(rewriter.result().ended).toBe(true);
  });

  it('holds an event ended by CR at the end of a chunk until the next character says CR or CRLF (as the client does)', async () => {
    const rewriter = createMcpResponseRewriter({ rewrite: identity });
    const out: string[] = [];
    rewriter.on('data', (chunk: Buffer) => out.push(chunk.toString('utf8')));
    await new Promise<void>((resolve) => rewriter.write(Buffer.from(`data: ${j(PONG)}\r\r`), () => resolve()));
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(out.join('')).toBe('');
    await new Promise<void>((resolve) => rewriter.write(Buffer.from(': next\n'), () => resolve()));
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(out.join('')).toBe(`data: ${j(PONG)}\r\r`);
    await new Promise<void>((resolve) => rewriter.end(resolve));
    expect(out.join('')).toBe(`data: ${j(PONG)}\r\r: next\n`);
  });

  it('shows the SDK’s SSE parser exactly the rewritten messages, for any stream and any split', async () => {
    const messages = fc.constantFrom<unknown>(TOOLS, FILTERED, PROGRESS, PONG, { jsonrpc: '2.0', id: 7, error: { code: -1, message: 'no' } }, '{"broken', '42', '', '[1]');
    const eol = fc.constantFrom('\n', '\r\n', '\r');
    const event = fc.record({
      message: messages,
      pretty: fc.boolean(),
      id: fc.option(fc.constantFrom('1', 'ev-2', '')),
      type: fc.option(fc.constantFrom('message', 'other')),
      comment: fc.boolean(),
      bare: fc.boolean(),
      eols: fc.array(eol, { minLength: 12, maxLength: 12 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(event, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 10 }), fc.boolean(), fc.constantFrom('\n\n', '', '\r', '\n', '\r\n'), async (events, cuts, bom, tail) => {
        let stream = bom ? '\ufeff' : '';
        for (const e of events) {
          const lines: string[] = [];
          if (e.comment) lines.push(': keep-alive');
          if (e.id !== null) lines.push(`id: ${e.id}`);
          if (e.type !== null) lines.push(`event: ${e.type}`);
          const data = typeof e.message === 'string' ? [e.message] : JSON.stringify(e.message, null, e.pretty ? 1 : undefined).split('\n');
          if (e.bare) lines.push('data'); // an empty data line: the JSON then starts with a newline
          for (const part of data) lines.push(`data:${e.pretty ? '' : ' '}${part}`);
          lines.push('');
          stream += lines.map((line, i) => line + e.eols[i % e.eols.length]).join('');
        }
        stream += tail;
        const input = Buffer.from(stream);
        // The listing (id 7) filtered, pongs (id 8) dropped, the rest unchanged.
        const rewrite: MessageRewrite = (message) => (message.id === 8 ? null : filterSecret(message));
        const { output } = await run(split(input, cuts), { rewrite });
        const expected = clientEvents(input).flatMap((e): { id: string | undefined; event: string | undefined; data: unknown }[] => {
          if (e.data === '') return [e];
          let value: unknown;
          try {
            value = JSON.parse(e.data);
          } catch {
            return [];
          }
          if (!isJsonObject(value)) return [];
          const rewritten = rewrite(value);
          return rewritten === null ? [] : [{ ...e, data: rewritten }];
        });
        const seen = clientEvents(output).map((e) => (e.data === '' ? e : { ...e, data: JSON.parse(e.data) as unknown }));
        expect(seen).toEqual(expected);
        expect(output.toString()).not.toContain('secret');
      }),
      { numRuns: 400 },
    );
  });

  it('does not let a dropped event turn a lone CR and the next LF into one CRLF', async () => {
    // The first event ends with a CR blank line; the next (dropped) event sits between it and a blank LF line: an empty
    // comment stands for it, so the client still reads CR, then LF, and dispatches the first event.
    const stream = `event: message\ndata: ${j(TOOLS)}\n\rdata: not json\n\n\n`;
    const { output } = await run([Buffer.from(stream)], { rewrite: filterSecret });
    expect(output.toString()).toBe(`event: message\ndata: ${j(FILTERED)}\n\r:\n\n`);
    expect(clientEvents(output).map((e) => JSON.parse(e.data) as unknown)).toEqual([FILTERED]);
    // Nothing dropped: the LF blank line goes on.
    expect((await run([Buffer.from(`data: ${j(PONG)}\n\r\n\n`)], { rewrite: identity })).text).toBe(`data: ${j(PONG)}\n\r\n\n`);
  });

  it('does not let a rewritten event join a lone CR and an LF into one CRLF', async () => {
    const stream = `data: {"jsonrpc":"2.0",\rid: 5\rdata: "id":7,"result":{"tools":[{"name":"secret"}]}}\n\n`;
    const { output } = await run([Buffer.from(stream)], { rewrite: filterSecret });
    expect(output.toString()).toBe(`data: ${j({ jsonrpc: '2.0', id: 7, result: { tools: [] } })}\r\nid: 5\r\n\n`);
    expect(clientEvents(output)).toEqual([{ id: '5', event: undefined, data: j({ jsonrpc: '2.0', id: 7, result: { tools: [] } }) }]);
  });

  it('drops an event larger than the cap, and goes on with the next', async () => {
    const big = `data: ${j({ jsonrpc: '2.0', id: 7, result: { tools: [{ name: 'secret', description: 'x'.repeat(500) }] } })}\n\n`;
    const comment = `: ${'y'.repeat(500)}\n\n`;
    const stream = `${big}data: ${j(PONG)}\n\n${comment}data: ${j(PROGRESS)}\n\n`;
    for (const cuts of [[], [3], [100, 200, 300, 400, 500], Array.from({ length: 600 }, (_, i) => i * 2)]) {
      const { text, result } = await run(split(stream, cuts), { rewrite: identity, maxEventBytes: 300 });
      expect(text).toBe(`data: ${j(PONG)}\n\ndata: ${j(PROGRESS)}\n\n`);
      expect(result.dropped).toBe(2);
      expect(result.errors).toEqual(['an event larger than 300 bytes was dropped', 'an event larger than 300 bytes was dropped']);
    }
  });

  it('drops events that are not JSON-RPC objects, or too deep, or whose rewrite throws', async () => {
    const deep = `${'['.repeat(200)}${']'.repeat(200)}`;
    const stream = `data: not json\n\ndata: "text"\n\ndata: null\n\ndata: []\n\ndata: [1]\n\ndata:  \n\ndata: ${deep}\n\ndata: ${j({ jsonrpc: '2.0', id: 'boom', result: {} })}\n\ndata: ${j(PONG)}\n\n`;
    const rewrite: MessageRewrite = (m) => {
      if (m.id === 'boom') throw new Error('bad rewrite');
      return m;
    };
    const { text, result } = await run([Buffer.from(stream)], { rewrite });
    expect(text).toBe(`data: ${j(PONG)}\n\n`);
    expect(result.dropped).toBe(8);
    expect(result.errors).toContain('rewriting an event failed: bad rewrite');
    expect(result.errors).toContain('an event nests deeper than 100 levels');
  });

  it('drops an event every message of which is rewritten to null, and rewrites batches member by member', async () => {
    const dropAll: MessageRewrite = () => null;
    expect((await run([Buffer.from(`id: 1\ndata: ${j(PONG)}\n\n`)], { rewrite: dropAll })).text).toBe('');
    const batch = `id: 4\ndata: ${j([TOOLS, PROGRESS])}\n\n`;
    expect((await run([Buffer.from(batch)], { rewrite: filterSecret })).text).toBe(`id: 4\ndata: ${j([FILTERED, PROGRESS])}\n\n`);
    const dropTools: MessageRewrite = (m) => (m.id === 7 ? null : m);
    expect((await run([Buffer.from(batch)], { rewrite: dropTools })).text).toBe(`id: 4\ndata: ${j([PROGRESS])}\n\n`);
  });

  it('re-serialises an event with a repeated member name, so the client reads what the gateway read', async () => {
    // JSON.parse keeps the last id (8: a ping); a first-wins client would have read id 7 and an unfiltered listing.
    const sneaky = `data: {"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret"}]},"id":8}\n\n`;
    const { text, result } = await run([Buffer.from(sneaky)], { rewrite: filterSecret });
    expect(text).toBe(`data: ${j({ jsonrpc: '2.0', id: 8, result: { tools: [{ name: 'secret' }] } })}\n\n`);
    expect(result.rewritten).toBe(1);
  });

  it('skips a leading byte-order mark as the client does (and keeps it), but not one further on', async () => {
    const { text } = await run(split(`\ufeffdata: ${j(TOOLS)}\n\n`, [1, 2]), { rewrite: filterSecret });
    expect(text).toBe(`\ufeffdata: ${j(FILTERED)}\n\n`);
    // Further on, a BOM makes the line an unknown field for the client too: nothing to read, passed on as it is.
    const later = `data: ${j(PONG)}\n\n\ufeffdata: ${j(TOOLS)}\n\n`;
    expect(clientEvents(Buffer.from(later))).toHaveLength(1);
    expect((await run([Buffer.from(later)], { rewrite: filterSecret })).text).toBe(later);
  });

  it('reads a last event without its blank line like any other', async () => {
    expect((await run([Buffer.from(`data: ${j(PONG)}\n\ndata: ${j(TOOLS)}`)], { rewrite: filterSecret })).text).toBe(`data: ${j(PONG)}\n\ndata: ${j(FILTERED)}`);
    expect((await run([Buffer.from(`id: 3\ndata: ${j(TOOLS)}\r`)], { rewrite: filterSecret })).text).toBe(`id: 3\ndata: ${j(FILTERED)}\r\n`);
    expect((await run([Buffer.from('data: {"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret"}')], { rewrite: filterSecret })).text).toBe('');
    expect((await run([Buffer.from(`data: ${j(PONG)}`)], { rewrite: identity })).text).toBe(`data: ${j(PONG)}`);
    expect((await run([Buffer.from(': just a comment')], { rewrite: identity })).text).toBe(': just a comment');
    expect((await run([], { rewrite: identity })).text).toBe('');
  });
});

describe('rewriteJsonBody', () => {
  it('returns the same bytes when nothing changes, new JSON when something does, null when nothing is left', () => {
    const one = Buffer.from(j(PONG));
    expect(rewriteJsonBody(one, filterSecret)).toBe(one);
    expect(rewriteJsonBody(Buffer.from(j(TOOLS)), filterSecret)!.toString()).toBe(j(FILTERED));
    expect(rewriteJsonBody(Buffer.from(j([TOOLS, PONG])), filterSecret)!.toString()).toBe(j([FILTERED, PONG]));
    expect(rewriteJsonBody(Buffer.from(j([TOOLS, PONG])), (m) => (m.id === 8 ? null : m))!.toString()).toBe(j([TOOLS]));
    expect(rewriteJsonBody(one, () => null)).toBeNull();
    expect(rewriteJsonBody(Buffer.from(j([PONG, TOOLS])), () => null)).toBeNull();
  });

  it('re-serialises a body with a repeated member name', () => {
    const sneaky = Buffer.from('{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret"}]},"id":8}');
    expect(rewriteJsonBody(sneaky, filterSecret)!.toString()).toBe(j({ jsonrpc: '2.0', id: 8, result: { tools: [{ name: 'secret' }] } }));
  });

  it.each<[string, Buffer]>([
    ['not JSON', Buffer.from('{"jsonrpc":"2.0","id":7,"result":{"tools":[{"name":"secret"}]}')],
    ['invalid UTF-8', Buffer.concat([Buffer.from('{"a":"'), Buffer.from([0xff]), Buffer.from('"}')])],
    ['a byte-order mark', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(j(PONG))])],
    ['an empty array', Buffer.from('[]')],
    ['a number', Buffer.from('42')],
    ['an array with a non-object', Buffer.from(`[${j(PONG)},1]`)],
    ['too deep', Buffer.from(`{"a":${'['.repeat(150)}${']'.repeat(150)}}`)],
    ['too large', Buffer.from(j({ ...TOOLS, pad: 'x'.repeat(2000) }))],
  ])('refuses an answer that is %s (fail closed: 502)', (_what, raw) => {
    let thrown: unknown;
    try {
      rewriteJsonBody(raw, filterSecret, { maxBytes: 1000 });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(CaracalError);
    expect(thrown).toMatchObject({ code: 'CARACAL_UPSTREAM_UNREACHABLE', statusCode: 502, reasons: ['mcp_upstream_answer_invalid'] });
  });

  it('lets an exception from rewrite propagate', () => {
    expect(() =>
      rewriteJsonBody(Buffer.from(j(PONG)), (): JsonObject => {
        throw new Error('policy down');
      }),
    ).toThrow('policy down');
  });
});

describe('inspectJson and rewriteJsonBody on a repeated name before deep nesting', () => {
  // A repeated member name early in the answer used to end the scan, so the depth was never measured and re-serialising
  // the nested value threw a RangeError: a 500. Both are now found, and the answer is refused as the server's fault.
  const hostile = `{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"result":{"tools":[],"x":${'['.repeat(200_000)}${']'.repeat(200_000)}}}`;

  it('reports the repeated name and the depth', () => {
    expect(inspectJson(hostile, MAX_JSON_DEPTH)).toEqual({ duplicateKey: 'jsonrpc', tooDeep: true });
    expect(inspectJson('{"a":1,"a":2,"b":[[1]]}', MAX_JSON_DEPTH)).toEqual({ duplicateKey: 'a', tooDeep: false });
  });

  it('refuses the answer with a CaracalError (502), never a RangeError', () => {
    let thrown: unknown;
    try {
      rewriteJsonBody(Buffer.from(hostile), (m) => m);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(CaracalError);
    expect((thrown as CaracalError).statusCode).toBe(502);
  });
});

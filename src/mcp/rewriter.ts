/**
 * Rewriting an MCP server's answers on their way to the agent: the answer to a POST is `application/json` (one
 * JSON-RPC message or an array) or `text/event-stream` whose events carry JSON-RPC messages. The gateway hands each
 * message to `rewrite` (to filter the result of a listing it asked about) and gets back the message to send, another
 * one, or null to drop it.
 *
 * The stream is not buffered: each event goes on as soon as its blank line arrives (a notification does not wait for
 * the response after it). Only the current event is held, capped. Events that carry nothing (comments, keep-alives,
 * the priming event with an id and empty data) and events whose messages `rewrite` returns unchanged go on byte for
 * byte; a rewritten event keeps its `id:`, `event:`, `retry:` and other lines in place, with one `data:` line for the
 * new JSON.
 *
 * Fails closed: an event the gateway cannot read — larger than the cap, not JSON, nested too deep, not JSON-RPC
 * objects — is dropped, because it could be the listing the gateway must filter and the agent's client might read it
 * more leniently. An event with a member name repeated in one object is re-serialised from what JSON.parse read, so
 * the agent gets exactly what `rewrite` saw. Lines are split as the SSE parser of the official SDK splits them
 * (LF, CRLF or a lone CR; a leading byte-order mark is skipped), so the gateway sees the events the client will see.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { CaracalError } from '../errors/catalog.js';
import { decodeUtf8, inspectJson, isJsonObject, MAX_JSON_DEPTH, type JsonObject } from './json.js';

/** The message to send instead (the same object: unchanged), or null to drop it. */
export type MessageRewrite = (message: JsonObject) => JsonObject | null;

/** The largest SSE event (its lines, in bytes) the rewriter holds; a larger one is dropped. */
export const MAX_MCP_EVENT_BYTES = 4 << 20;
/** The largest JSON answer rewriteJsonBody reads. */
export const MAX_MCP_JSON_BYTES = 16 << 20;

export interface McpResponseRewriterOptions {
  rewrite: MessageRewrite;
  /**
   * Whether an event's data could need rewriting (a cheap test on the text): when it says no, the event goes on byte
   * for byte without being parsed. Default: every event is parsed.
   */
  mayRewrite?: (data: string) => boolean;
  maxEventBytes?: number;
  maxDepth?: number;
}

export interface RewriterResult {
  /** Events that carried data. */
  events: number;
  /** Of those, events rewritten (some message changed or dropped, or re-serialised). */
  rewritten: number;
  /** Of those, events dropped: every message rewritten to null, or unreadable (see `errors`). */
  dropped: number;
  /** Why events were dropped (the first 16 reasons). */
  errors: string[];
  bytesIn: number;
  bytesOut: number;
  /** The stream reached its end. */
  ended: boolean;
}

export type McpResponseRewriter = Transform & { result(): RewriterResult };

interface Line {
  text: string;
  /** The line's terminator as it came: '\n', '\r\n', '\r', or '' for a last line without one. */
  eol: string;
}

/** An SSE `data` field: `data:value`, `data: value` or a bare `data` (an empty value), as the SSE spec reads them. */
const isDataLine = (text: string): boolean => text === 'data' || text.startsWith('data:');
const dataValue = (text: string): string => (text === 'data' ? '' : text.slice(text.charCodeAt(5) === 0x20 ? 6 : 5));

type Verdict = { kind: 'pass' } | { kind: 'drop'; error: string | null } | { kind: 'replace'; json: string };

/** The messages of one event's or body's JSON, rewritten; 'pass' when nothing changed. Never throws. */
function rewriteJson(text: string, rewrite: MessageRewrite, maxDepth: number): Verdict {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: 'drop', error: 'an event is not JSON' };
  }
  const shape = inspectJson(text, maxDepth);
  if (shape.tooDeep) return { kind: 'drop', error: `an event nests deeper than ${maxDepth} levels` };
  const batch = Array.isArray(value);
  const messages: unknown[] = batch ? (value as unknown[]) : [value];
  if (messages.length === 0 || !messages.every(isJsonObject)) return { kind: 'drop', error: 'an event is not a JSON-RPC message' };
  let changed = shape.duplicateKey !== null;
  const out: JsonObject[] = [];
  try {
    for (const message of messages as JsonObject[]) {
      const next = rewrite(message);
      if (next !== message) changed = true;
      if (next !== null) out.push(next);
    }
    if (!changed) return { kind: 'pass' };
    if (out.length === 0) return { kind: 'drop', error: null };
    return { kind: 'replace', json: JSON.stringify(batch ? out : out[0]) };
  } catch (err) {
    return { kind: 'drop', error: `rewriting an event failed: ${err instanceof Error ? err.message : String(err)}`.slice(0, 200) };
  }
}

/**
 * A Transform for a `text/event-stream` answer: each event passes on when complete, its JSON-RPC message(s)
 * replaced by `rewrite`'s answer. `result()` counts what happened.
 */
export function createMcpResponseRewriter(options: McpResponseRewriterOptions): McpResponseRewriter {
  const maxEventBytes = options.maxEventBytes ?? MAX_MCP_EVENT_BYTES;
  const maxDepth = options.maxDepth ?? MAX_JSON_DEPTH;
  const state: RewriterResult = { events: 0, rewritten: 0, dropped: 0, errors: [], bytesIn: 0, bytesOut: 0, ended: false };
  const decoder = new StringDecoder('utf8');
  let started = false; // the first character (a byte-order mark?) has been seen
  let fragments: string[] = []; // the current line so far (not joined until it ends: a long line in small chunks)
  let fragmentBytes = 0;
  let fragmentSeen = false; // the current line is not empty (also while overflowing, when fragments are not kept)
  let pendingCR = false; // the current line ended with CR at the end of a chunk: CR or CRLF, the next character says
  let lines: Line[] = []; // the current event's complete lines
  let eventBytes = 0;
  let overflow = false; // the current event is over the cap: discarded up to its blank line
  let pending = ''; // output not pushed yet
  let lastOutCR = false; // the last character that went out was CR

  const note = (error: string) => {
    if (state.errors.length < 16) state.errors.push(error);
  };

  const startOverflow = () => {
    overflow = true;
    lines = [];
    fragments = [];
    fragmentBytes = 0;
    eventBytes = 0;
  };

  const addFragment = (text: string) => {
    if (text.length === 0) return;
    fragmentSeen = true;
    if (overflow) return;
    fragments.push(text);
    fragmentBytes += Buffer.byteLength(text, 'utf8');
    if (eventBytes + fragmentBytes > maxEventBytes) startOverflow();
  };

  const emit = (text: string) => {
    if (text.length === 0) return;
    pending += text;
    lastOutCR = text.charCodeAt(text.length - 1) === 0x0d;
  };

  /**
   * What stands for a dropped event: nothing, unless what went out last ended with CR. The client then waits for the
   * next character to tell CR from CRLF; the dropped event's first character told it, and without it an LF that
   * follows would make one CRLF of them (losing the blank line that ended the event before), and the end of the
   * stream would leave that event undispatched. An empty comment line tells it instead and means nothing.
   */
  const dropped = (): string => (lastOutCR ? ':\n' : '');

  /** The end of an event (its blank line, with terminator `eol`): what goes out. */
  const endEvent = (eol: string): string => {
    const event = lines;
    const wasOverflow = overflow;
    lines = [];
    eventBytes = 0;
    overflow = false;
    if (wasOverflow) {
      state.events++;
      state.dropped++;
      note(`an event larger than ${maxEventBytes} bytes was dropped`);
      return dropped();
    }
    if (event.length === 0) return eol; // a blank line alone: dispatches nothing
    const raw = () => event.map((line) => line.text + line.eol).join('') + eol;
    const data = event.filter((line) => isDataLine(line.text)).map((line) => dataValue(line.text));
    // No data, or empty data (the priming event): nothing a client reads as a message.
    if (data.length === 0 || (data.length === 1 && data[0] === '')) return raw();
    state.events++;
    const text = data.join('\n');
    if (options.mayRewrite && !options.mayRewrite(text)) return raw();
    const verdict = rewriteJson(text, options.rewrite, maxDepth);
    if (verdict.kind === 'pass') return raw();
    state.rewritten++;
    if (verdict.kind === 'drop') {
      state.dropped++;
      if (verdict.error !== null) note(verdict.error);
      return dropped();
    }
    // The lines in place, the data lines replaced by one. A line that ended with a lone CR ends with CRLF instead: the
    // line after it may now be another one, and an LF there (the blank line's) would join a lone CR into one CRLF.
    let out = '';
    let written = false;
    for (const line of event) {
      const end = line.eol === '\r' ? '\r\n' : line.eol;
      if (!isDataLine(line.text)) out += line.text + end;
      else if (!written) {
        out += `data: ${verdict.json}${end}`;
        written = true;
      }
    }
    return out + eol;
  };

  /** The end of a line: what goes out (something only when it ended an event). */
  const endLine = (eol: string): string => {
    const seen = fragmentSeen;
    const text = overflow ? '' : fragments.join('');
    fragments = [];
    fragmentBytes = 0;
    fragmentSeen = false;
    if (!seen) return endEvent(eol);
    if (overflow) return '';
    lines.push({ text, eol });
    eventBytes += Buffer.byteLength(text, 'utf8') + eol.length;
    if (eventBytes > maxEventBytes) startOverflow();
    return '';
  };

  /** Reads decoded text; what it completes is emitted. */
  const consume = (input: string) => {
    let text = input;
    if (!started && text.length > 0) {
      started = true;
      if (text.charCodeAt(0) === 0xfeff) {
        // A client's TextDecoder drops it; here it goes on as it came and is not part of the first line.
        emit('\ufeff');
        text = text.slice(1);
      }
    }
    let start = 0;
    if (pendingCR && text.length > 0) {
      pendingCR = false;
      if (text.charCodeAt(0) === 0x0a) {
        emit(endLine('\r\n'));
        start = 1;
      } else emit(endLine('\r'));
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 0x0a) {
        addFragment(text.slice(start, i));
        emit(endLine('\n'));
        start = i + 1;
      } else if (c === 0x0d) {
        addFragment(text.slice(start, i));
        start = i + 1;
        if (i + 1 === text.length) pendingCR = true;
        else if (text.charCodeAt(i + 1) === 0x0a) {
          emit(endLine('\r\n'));
          i++;
          start = i + 1;
        } else emit(endLine('\r'));
      }
    }
    if (start < text.length) addFragment(text.slice(start));
  };

  const send = (stream: Transform) => {
    if (pending.length === 0) return;
    const bytes = Buffer.from(pending, 'utf8');
    pending = '';
    state.bytesOut += bytes.length;
    stream.push(bytes);
  };

  const rewriter = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      state.bytesIn += chunk.length;
      consume(decoder.write(chunk));
      send(this);
      callback();
    },
    flush(callback: TransformCallback) {
      state.ended = true;
      consume(decoder.end());
      if (pendingCR) {
        pendingCR = false;
        emit(endLine('\r'));
      }
      // A last event without its blank line: a client should not dispatch it, a lenient one might; it is read (and
      // filtered or dropped) like any other, and written back without the blank line the upstream did not send.
      if (fragmentSeen) emit(endLine(''));
      if (lines.length > 0 || overflow) emit(endEvent(''));
      send(this);
      callback();
    },
  });
  return Object.assign(rewriter, { result: (): RewriterResult => ({ ...state, errors: [...state.errors] }) });
}

const invalidAnswer = (message: string) => new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', message, { reasons: ['mcp_upstream_answer_invalid'] });

/**
 * An `application/json` answer (one message or an array), rewritten: the same Buffer when nothing changed, new JSON
 * when something did (or a member name was repeated in one object: re-serialised from what was read), null when every
 * message was dropped. Fails closed: an answer that is too large, not UTF-8 JSON, too deep, empty or not JSON-RPC
 * objects throws CaracalError CARACAL_UPSTREAM_UNREACHABLE (502, reason mcp_upstream_answer_invalid); an exception
 * from `rewrite` propagates.
 */
export function rewriteJsonBody(raw: Buffer, rewrite: MessageRewrite, options: { maxBytes?: number; maxDepth?: number } = {}): Buffer | null {
  const maxBytes = options.maxBytes ?? MAX_MCP_JSON_BYTES;
  const maxDepth = options.maxDepth ?? MAX_JSON_DEPTH;
  if (raw.length > maxBytes) throw invalidAnswer(`the MCP server's answer is larger than ${maxBytes} bytes`);
  const text = decodeUtf8(raw);
  if (text === null) throw invalidAnswer("the MCP server's answer is not valid UTF-8");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw invalidAnswer("the MCP server's answer is not JSON");
  }
  const shape = inspectJson(text, maxDepth);
  if (shape.tooDeep) throw invalidAnswer(`the MCP server's answer nests deeper than ${maxDepth} levels`);
  const batch = Array.isArray(value);
  const messages: unknown[] = batch ? (value as unknown[]) : [value];
  if (messages.length === 0 || !messages.every(isJsonObject)) throw invalidAnswer("the MCP server's answer is not JSON-RPC messages");
  let changed = shape.duplicateKey !== null;
  const out: JsonObject[] = [];
  for (const message of messages as JsonObject[]) {
    const next = rewrite(message);
    if (next !== message) changed = true;
    if (next !== null) out.push(next);
  }
  if (!changed) return raw;
  if (out.length === 0) return null;
  try {
    return Buffer.from(JSON.stringify(batch ? out : out[0]), 'utf8');
  } catch {
    // Only an answer nested too deep for the engine gets here (the depth check bounds what is read): refused like one.
    throw invalidAnswer("the MCP server's answer cannot be written back as JSON");
  }
}

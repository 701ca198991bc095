/**
 * Redaction of a recorded policy input (`policy.recordInput.redact`): the decision event keeps the input a decision was
 * made on, so it can be replayed through another bundle, but not the values an agent sent that may be secret (tool
 * arguments by default). Each configured dot path names a member; every leaf value under it (string, number, boolean)
 * becomes "[redacted]" and the structure stays (keys, array lengths, nulls), so a replay still sees which members were
 * there. Arrays met on the way down are crossed element by element: `mandate.chain.subject` names the subject of every
 * link.
 *
 * The input the engine evaluated is never changed: what is redacted is a copy of the members on the way to each path,
 * everything else is shared. Nothing is copied when no path is present (the /proxy input has no arguments), which is
 * the common case on the hot path. Keys are data, never looked up through the prototype (`__proto__`, `constructor`
 * as argument names find nothing and set no prototype), and a subtree nested deeper than the guard is replaced whole:
 * what cannot be walked is not recorded. So is an array or object once the redaction has kept the structure of
 * MAX_REDACTED_VALUES values: a "[redacted]" is longer than a `0`, and the body limit must bound the event, not the
 * number of zeros an agent can send. And the whole recorded input is held to MAX_RECORDED_INPUT_BYTES (boundInput):
 * its decision event must fit a ledger leaf whatever an agent sends.
 */

/** What a redacted leaf reads. */
export const REDACTED = '[redacted]';

/**
 * Levels below the top a path and its subtree are walked to. MCP messages are already refused beyond 100 levels
 * (src/mcp/json.ts); this bounds the walk whatever the input.
 */
export const MAX_REDACTION_DEPTH = 200;

/** Values under the redacted paths of one input whose structure is kept (about 50 KiB of "[redacted]"); beyond, whole containers collapse. */
export const MAX_REDACTED_VALUES = 4_096;

export interface RedactedInput<T> {
  /** The input itself when nothing was redacted; else a copy with the redacted members. */
  input: T;
  /** The configured paths that were present and had at least one leaf replaced, in configuration order. */
  redactions: string[];
}

const NONE: readonly string[] = Object.freeze([]);

/** Redacts `input` at each dot path (see the module comment). Never mutates `input`. */
export function redactInput<T extends object>(input: T, paths: readonly string[]): RedactedInput<T> {
  return redactSplit(input, paths.map(splitPath));
}

interface SplitPath {
  path: string;
  segments: readonly string[];
}

const splitPath = (path: string): SplitPath => ({ path, segments: path.split('.') });

function redactSplit<T extends object>(input: T, paths: readonly SplitPath[]): RedactedInput<T> {
  let current: unknown = input;
  let redactions: string[] | null = null;
  const budget = { left: MAX_REDACTED_VALUES };
  for (const { path, segments } of paths) {
    const next = redactAt(current, segments, 0, 0, budget);
    if (next !== current) {
      current = next;
      (redactions ??= []).push(path);
    }
  }
  return { input: current as T, redactions: redactions ?? (NONE as string[]) };
}

/** `value` with the member at `segments[at…]` redacted, or `value` itself when nothing under it changed. */
function redactAt(value: unknown, segments: readonly string[], at: number, depth: number, budget: Budget): unknown {
  if (at === segments.length) return redactAll(value, depth, budget);
  if (typeof value !== 'object' || value === null) return value;
  if (depth >= MAX_REDACTION_DEPTH) return REDACTED;
  if (Array.isArray(value)) {
    let copy: unknown[] | null = null;
    for (let i = 0; i < value.length; i++) {
      const element: unknown = value[i];
      const next = redactAt(element, segments, at, depth + 1, budget);
      if (next !== element) (copy ??= value.slice())[i] = next;
    }
    return copy ?? value;
  }
  const key = segments[at]!;
  if (!Object.hasOwn(value, key)) return value;
  const member: unknown = (value as Record<string, unknown>)[key];
  const next = redactAt(member, segments, at + 1, depth + 1, budget);
  return next === member ? value : withMember(value as Record<string, unknown>, key, next);
}

/** Values whose structure may still be kept (shared by every path of one input). */
interface Budget {
  left: number;
}

/** `value` with every leaf replaced, or `value` itself when it holds none (null, `{}`, `[]`, …). */
function redactAll(value: unknown, depth: number, budget: Budget): unknown {
  switch (typeof value) {
    case 'string':
    case 'number':
    case 'boolean':
      return REDACTED;
    case 'object':
      break;
    default:
      // undefined stays (an absent member); anything else (bigint, function) is not JSON data: not recorded as it is.
      return value === undefined ? value : REDACTED;
  }
  if (value === null) return value;
  if (depth >= MAX_REDACTION_DEPTH) return REDACTED;
  if (Array.isArray(value)) {
    if (value.length > budget.left) return REDACTED;
    budget.left -= value.length;
    let copy: unknown[] | null = null;
    for (let i = 0; i < value.length; i++) {
      const element: unknown = value[i];
      const next = redactAll(element, depth + 1, budget);
      if (next !== element) (copy ??= value.slice())[i] = next;
    }
    return copy ?? value;
  }
  let copy: Record<string, unknown> | null = null;
  const record = value as Record<string, unknown>;
  const keys = Object.keys(record);
  if (keys.length > budget.left) return REDACTED;
  budget.left -= keys.length;
  for (const key of keys) {
    const member = record[key];
    const next = redactAll(member, depth + 1, budget);
    if (next !== member) setMember((copy ??= shallowCopy(record)), key, next);
  }
  return copy ?? value;
}

/** A shallow copy of a plain object: own enumerable members as data properties (`__proto__` included, as data). */
function shallowCopy(record: Record<string, unknown>): Record<string, unknown> {
  // Spread defines members (CreateDataProperty): an own `__proto__` is copied as a member, not as the prototype.
  return { ...record };
}

function withMember(record: Record<string, unknown>, key: string, value: unknown): Record<string, unknown> {
  const copy = shallowCopy(record);
  setMember(copy, key, value);
  return copy;
}

/** Sets an own data member; `copy.__proto__ = …` would set the prototype instead. */
function setMember(copy: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(copy, key, { value, writable: true, enumerable: true, configurable: true });
  else copy[key] = value;
}

/** `policy.recordInput`: whether decision events carry their input, and what of it is redacted. */
export interface RecordInputConfig {
  enabled: boolean;
  redact: readonly string[];
}

/**
 * The largest recorded input, in bytes of its JSON text (the same length as its canonical form: RFC 8785 writes strings
 * and numbers as JSON.stringify does). A ledger leaf holds at most 65,535 bytes of canonical event
 * (src/ledger/store.ts MAX_LEAF_BYTES) and the writer dead-letters a longer event: an agent that could make the input
 * that large would keep its own allowed calls out of the signed ledger. The rest of an event is bounded apart from
 * the input: on an MCP decision `mcp.arguments` ≤ 16 KiB (mcp-route MAX_RECORDED_ARGUMENT_BYTES), `mcp.name` and the
 * resource ≤ 2 KiB each (MAX_URI_LENGTH), the bundle's reasons and policy ids and the envelope a few hundred bytes; on
 * /proxy `path` ≤ 2 KiB and `upstream_url` within the request line (gateway.maxHeaderBytes, 16 KiB by default). So
 * 24 KiB here leaves the other fields about 40 KiB.
 */
export const MAX_RECORDED_INPUT_BYTES = 24 * 1024;

/**
 * Above this many characters a `request.path` or `request.url` is collapsed when the input is over the budget (the
 * event's own `path` is cut at 2,048), and a path or URL this long is a reason to measure at all.
 */
export const MAX_RECORDED_PATH_CHARS = 2048;

/** Policies or mandate links beyond which an input may be large enough to measure (a few hundred bytes each). */
const MANY_POLICIES = 16;
const LONG_CHAIN = 4;

/** Why a decision event carries no input although recording is on. */
export type InputOmitted = 'too_large';

/**
 * The input as a decision event records it: `input_redactions` only when something was redacted; or, when even the
 * collapsed input is over MAX_RECORDED_INPUT_BYTES, no input and `input_omitted` (a replay counts it without input).
 */
export type RecordedInput = { input: Record<string, unknown>; input_redactions?: string[]; input_omitted?: never } | { input?: never; input_redactions?: never; input_omitted: InputOmitted };

/** The member an MCP upstream with `recordArguments: true` keeps (its events record the arguments anyway). */
export const ARGUMENTS_PATH = 'request.arguments';

/**
 * How one route records the inputs it decided on, or null when recording is off. `keepArguments` (an MCP upstream
 * that records its arguments) drops the redaction of `request.arguments` and of paths under it; a path above it (all
 * of `request`) is still applied: it was asked for by name. Every recorded input is within MAX_RECORDED_INPUT_BYTES
 * (see boundInput).
 */
export function inputRecorder(config: RecordInputConfig, options: { keepArguments?: boolean } = {}): ((input: object) => RecordedInput) | null {
  if (!config.enabled) return null;
  // Split once: this runs for every decision.
  const paths = (options.keepArguments ? config.redact.filter((path) => path !== ARGUMENTS_PATH && !path.startsWith(`${ARGUMENTS_PATH}.`)) : config.redact).map(splitPath);
  return (input) => {
    const { input: recorded, redactions } = redactSplit(input, paths);
    return boundInput(recorded as Record<string, unknown>, redactions);
  };
}

const jsonBytes = (value: unknown): number => Buffer.byteLength(JSON.stringify(value), 'utf8');

/**
 * Whether `input` may be over MAX_RECORDED_INPUT_BYTES, without serialising it: only its agent-sized members can make
 * it so (tool arguments — even redacted, their keys stay —, a long path or URL, a long mandate chain and the facts
 * that come with each link, many policies). A /proxy input with none of them is a few KiB at most, and is not
 * measured: this runs on every decision.
 */
function mightBeLarge(input: Record<string, unknown>): boolean {
  const request = input.request as Record<string, unknown> | null | undefined;
  if (typeof request === 'object' && request !== null) {
    if (request.arguments !== undefined && request.arguments !== REDACTED) return true;
    if (typeof request.path === 'string' && request.path.length > MAX_RECORDED_PATH_CHARS) return true;
    if (typeof request.url === 'string' && request.url.length > MAX_RECORDED_PATH_CHARS) return true;
  } else if (request !== undefined) {
    return true; // not the shape the gateway builds: measure
  }
  if (Array.isArray(input.policies) && input.policies.length > MANY_POLICIES) return true;
  const mandate = input.mandate as { chain?: unknown } | null | undefined;
  return typeof mandate === 'object' && mandate !== null && Array.isArray(mandate.chain) && mandate.chain.length > LONG_CHAIN;
}

/**
 * The recorded input within MAX_RECORDED_INPUT_BYTES. Over it, `request.arguments` collapses to one "[redacted]" (its
 * key names are data an agent chose and count as much as values) and a `request.path` or `request.url` longer than
 * MAX_RECORDED_PATH_CHARS does too, each listed in `input_redactions`; if that is still over, the input is omitted.
 * The collapse copies `input` and `request` only: the engine's input is never changed.
 */
export function boundInput(input: Record<string, unknown>, redactions: readonly string[]): RecordedInput {
  const kept = (value: Record<string, unknown>, paths: readonly string[]): RecordedInput => (paths.length > 0 ? { input: value, input_redactions: [...paths] } : { input: value });
  if (!mightBeLarge(input) || jsonBytes(input) <= MAX_RECORDED_INPUT_BYTES) return kept(input, redactions);
  const request = input.request;
  if (typeof request !== 'object' || request === null || Array.isArray(request)) return { input_omitted: 'too_large' };
  const collapsed = shallowCopy(request as Record<string, unknown>);
  const listed = [...redactions];
  const collapse = (key: string, path: string) => {
    collapsed[key] = REDACTED;
    if (!listed.includes(path)) listed.push(path);
  };
  if (collapsed.arguments !== undefined && collapsed.arguments !== REDACTED) collapse('arguments', ARGUMENTS_PATH);
  if (typeof collapsed.path === 'string' && collapsed.path.length > MAX_RECORDED_PATH_CHARS) collapse('path', 'request.path');
  if (typeof collapsed.url === 'string' && collapsed.url.length > MAX_RECORDED_PATH_CHARS) collapse('url', 'request.url');
  const smaller = withMember(input, 'request', collapsed);
  return jsonBytes(smaller) <= MAX_RECORDED_INPUT_BYTES ? kept(smaller, listed) : { input_omitted: 'too_large' };
}

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson } from '../../src/ledger/canonical.js';
import { inputRecorder, MAX_REDACTED_VALUES, MAX_REDACTION_DEPTH, REDACTED, redactInput } from '../../src/policy/input-redaction.js';

/** Freezes every object and array under `value`: a write anywhere in it throws (ESM is strict mode). */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const key of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[key]);
    Object.freeze(value);
  }
  return value;
}

const toolInput = () =>
  deepFreeze({
    principal: { id: 'agent-1', status: 'active', kind: 'agent' },
    policies: [{ id: 'p-1', resources: ['mcp:files/*'], actions: ['call'] }],
    request: { upstream: 'files', method: 'POST', resource: 'mcp:files/write', action: 'call', tool: 'write', arguments: { path: '/etc/passwd', mode: 420, force: true, tags: ['a', 'b'], owner: null, meta: {} } },
    now: 1_700_000_000,
  });

describe('redactInput', () => {
  it('replaces every leaf under the path, keeps the structure, and leaves the evaluated input as it was', () => {
    const input = toolInput();
    const before = JSON.stringify(input);
    const { input: out, redactions } = redactInput(input, ['request.arguments']);
    expect(redactions).toEqual(['request.arguments']);
    expect(out.request.arguments).toEqual({ path: REDACTED, mode: REDACTED, force: REDACTED, tags: [REDACTED, REDACTED], owner: null, meta: {} });
    // Everything else is the same (and shared, not copied).
    expect(out.request.tool).toBe('write');
    expect(out.principal).toBe(input.principal);
    expect(out.policies).toBe(input.policies);
    expect(out).not.toBe(input);
    expect(out.request).not.toBe(input.request);
    expect(JSON.stringify(input)).toBe(before);
  });

  it('returns the input itself, and no redactions, when no path is present (the /proxy case: nothing is copied)', () => {
    const input = deepFreeze({ request: { upstream: 'echo', method: 'GET' }, now: 1 });
    const result = redactInput(input, ['request.arguments', 'mandate.chain.subject', 'nothing']);
    expect(result.input).toBe(input);
    expect(result.redactions).toEqual([]);
  });

  it('lists a path only when a leaf under it changed (null, {} and [] hold none)', () => {
    const input = deepFreeze({ request: { arguments: { a: null, b: {}, c: [] } }, x: null });
    const result = redactInput(input, ['request.arguments', 'x']);
    expect(result.input).toBe(input);
    expect(result.redactions).toEqual([]);
  });

  it('crosses arrays met on the way down: every element is redacted at the rest of the path', () => {
    const input = deepFreeze({ mandate: { chain: [{ subject: 'a', id: 'm-1' }, { subject: 'b', id: 'm-2' }, 'not an object', null] } });
    const { input: out, redactions } = redactInput(input, ['mandate.chain.subject']);
    expect(redactions).toEqual(['mandate.chain.subject']);
    expect(out.mandate.chain).toEqual([{ subject: REDACTED, id: 'm-1' }, { subject: REDACTED, id: 'm-2' }, 'not an object', null]);
  });

  it('redacts a whole top-level member, and several paths in order', () => {
    const input = toolInput();
    const { input: out, redactions } = redactInput(input, ['principal', 'request.arguments', 'now']);
    expect(redactions).toEqual(['principal', 'request.arguments', 'now']);
    expect(out.principal).toEqual({ id: REDACTED, status: REDACTED, kind: REDACTED });
    expect(out.now).toBe(REDACTED);
  });

  it('treats __proto__ and constructor as data: redacted as members, never looked up through the prototype, nothing polluted', () => {
    const args = JSON.parse('{"__proto__":{"polluted":"yes","isAdmin":true},"constructor":{"prototype":{"polluted":"yes"}},"toString":"x"}') as object;
    const input = deepFreeze({ request: { arguments: args } });
    const { input: out, redactions } = redactInput(input, ['request.arguments']);
    expect(redactions).toEqual(['request.arguments']);
    const redacted = out.request.arguments as Record<string, unknown>;
    expect(Object.getPrototypeOf(redacted)).toBe(Object.prototype);
    expect(Object.keys(redacted)).toEqual(['__proto__', 'constructor', 'toString']);
    expect(Object.getOwnPropertyDescriptor(redacted, '__proto__')?.value).toEqual({ polluted: REDACTED, isAdmin: REDACTED });
    expect(JSON.parse(JSON.stringify(redacted))).toEqual(JSON.parse('{"__proto__":{"polluted":"[redacted]","isAdmin":"[redacted]"},"constructor":{"prototype":{"polluted":"[redacted]"}},"toString":"[redacted]"}'));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();

    // Paths naming prototype members find nothing in an input that does not own them.
    const plain = deepFreeze({ request: { method: 'GET' } });
    const none = redactInput(plain, ['request.__proto__', 'request.constructor', 'request.toString', '__proto__.polluted', 'constructor.prototype']);
    expect(none.input).toBe(plain);
    expect(none.redactions).toEqual([]);
    // And a path through an own __proto__ member is followed as data.
    const owned = redactInput(input, ['request.arguments.__proto__.isAdmin']);
    expect(owned.redactions).toEqual(['request.arguments.__proto__.isAdmin']);
    expect(Object.getOwnPropertyDescriptor(owned.input.request.arguments, '__proto__')?.value).toEqual({ polluted: 'yes', isAdmin: REDACTED });
    expect(Object.keys(Object.prototype)).toEqual([]);
  });

  it('keeps the structure of up to MAX_REDACTED_VALUES values; a container beyond that collapses whole (the event stays bounded)', () => {
    const list = (n: number) => Array.from({ length: n }, (_, i) => (i % 2 ? i : `v${i}`));
    const kept = redactInput(deepFreeze({ request: { arguments: { list: list(4_000) } } }), ['request.arguments']);
    const keptList = (kept.input.request.arguments as { list: unknown[] }).list;
    expect(keptList).toHaveLength(4_000);
    expect(keptList.every((value) => value === REDACTED)).toBe(true);

    // 10 000 zeros are 20 kB of body and would be 130 kB of "[redacted]": the array is one "[redacted]" instead.
    const big = redactInput(deepFreeze({ request: { arguments: { small: 'x', zeros: new Array(10_000).fill(0) } }, principal: { id: 'p' } }), ['request.arguments', 'principal.id']);
    expect(big.redactions).toEqual(['request.arguments', 'principal.id']);
    expect(big.input.request.arguments).toEqual({ small: REDACTED, zeros: REDACTED });
    // The budget is shared by the paths of one input: once spent, the next path's containers collapse too.
    const spent = redactInput(deepFreeze({ a: new Array(MAX_REDACTED_VALUES).fill(1), b: { c: 1 } }), ['a', 'b']);
    expect(spent.input).toEqual({ a: new Array(MAX_REDACTED_VALUES).fill(REDACTED), b: REDACTED });
    expect(JSON.stringify(spent.input).length).toBeLessThan(MAX_REDACTED_VALUES * 16);
  });

  it('bounds the walk: a subtree nested beyond the guard is replaced whole, without running out of stack', () => {
    let deep: unknown = 'secret';
    for (let i = 0; i < 50_000; i++) deep = i % 2 ? [deep] : { d: deep };
    const input = { request: { arguments: { deep } } };
    const { input: out, redactions } = redactInput(input, ['request.arguments']);
    expect(redactions).toEqual(['request.arguments']);
    // Walk down the copy: every level until the guard is kept, then one "[redacted]" where the rest was.
    let node: unknown = (out.request.arguments as { deep: unknown }).deep;
    let levels = 0;
    while (typeof node === 'object' && node !== null) {
      node = Array.isArray(node) ? node[0] : (node as { d: unknown }).d;
      levels++;
    }
    expect(node).toBe(REDACTED);
    expect(levels).toBeLessThanOrEqual(MAX_REDACTION_DEPTH);
    expect(levels).toBeGreaterThan(MAX_REDACTION_DEPTH - 5);
    expect(JSON.stringify(out).includes('secret')).toBe(false);
  });
});

describe('inputRecorder', () => {
  it('is null when recording is off', () => {
    expect(inputRecorder({ enabled: false, redact: ['request.arguments'] })).toBeNull();
  });

  it('records the input itself when nothing is redacted, with input_redactions only when something was', () => {
    const record = inputRecorder({ enabled: true, redact: ['request.arguments'] })!;
    const plain = deepFreeze({ request: { method: 'GET' } });
    const recorded = record(plain);
    expect(recorded.input).toBe(plain);
    expect('input_redactions' in recorded).toBe(false);
    expect(record(toolInput()).input_redactions).toEqual(['request.arguments']);
  });

  it('keepArguments (an MCP upstream with recordArguments) keeps request.arguments and what is under it, not paths above it', () => {
    const keep = inputRecorder({ enabled: true, redact: ['request.arguments', 'request.arguments.path', 'principal.id'] }, { keepArguments: true })!;
    const recorded = keep(toolInput());
    expect(recorded.input_redactions).toEqual(['principal.id']);
    expect((recorded.input!.request as { arguments: { path: string } }).arguments.path).toBe('/etc/passwd');
    const whole = inputRecorder({ enabled: true, redact: ['request'] }, { keepArguments: true })!;
    expect(whole(toolInput()).input_redactions).toEqual(['request']);
  });
});

describe('redactInput, properties', () => {
  const keys = fc.constantFrom('request', 'arguments', 'a', 'b', '__proto__', 'constructor', 'toString');
  const { object } = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: 'small' }, fc.string({ maxLength: 4 }), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean(), fc.constant(null), tie('array'), tie('object')),
    array: fc.array(tie('value'), { maxLength: 4 }),
    // Object.fromEntries defines members: a generated __proto__ is an own member, as JSON.parse makes it.
    object: fc.array(fc.tuple(keys, tie('value')), { maxLength: 4 }).map((entries) => Object.fromEntries(entries) as Record<string, unknown>),
  }));
  const paths = fc.array(
    fc.array(keys, { minLength: 1, maxLength: 3 }).map((segments) => segments.join('.')),
    { maxLength: 3 },
  );

  /** A straightforward reference: a deep copy with the leaves under each path replaced. */
  function reference(value: unknown, segments: string[], at = 0): unknown {
    const leafs = (v: unknown): unknown =>
      typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? REDACTED : Array.isArray(v) ? v.map(leafs) : v !== null && typeof v === 'object' ? mapObject(v, (_k, m) => leafs(m)) : v;
    if (at === segments.length) return leafs(value);
    if (Array.isArray(value)) return value.map((element) => reference(element, segments, at));
    if (value === null || typeof value !== 'object') return value;
    return mapObject(value, (key, member) => (key === segments[at] ? reference(member, segments, at + 1) : member));
  }
  function mapObject(value: object, f: (key: string, member: unknown) => unknown): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [key, member] of Object.entries(value)) Object.defineProperty(out, key, { value: f(key, member), enumerable: true, writable: true, configurable: true });
    return out;
  }
  /** The structure without its leaf values. */
  const shape = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(shape) : v !== null && typeof v === 'object' ? mapObject(v, (_k, m) => shape(m)) : v === null ? null : 'leaf';

  it('equals a deep-copying reference, keeps the shape, never changes the input, and stays canonical JSON', () => {
    fc.assert(
      fc.property(object, paths, (input, redact) => {
        const snapshot = canonicalJson(input);
        deepFreeze(input);
        const { input: out, redactions } = redactInput(input, redact);
        expect(canonicalJson(input)).toBe(snapshot);
        let expected: unknown = input;
        for (const path of redact) expected = reference(expected, path.split('.'));
        expect(canonicalJson(out)).toBe(canonicalJson(expected));
        expect(canonicalJson(shape(out))).toBe(canonicalJson(shape(input)));
        if (redactions.length === 0) expect(out).toBe(input);
        else expect(canonicalJson(out)).not.toBe(snapshot);
        for (const path of redactions) expect(redact).toContain(path);
        expect(Object.keys(Object.prototype)).toEqual([]);
      }),
      { numRuns: 500, seed: 20261203 },
    );
  });
});

/**
 * The recorded policy input is bounded (MAX_RECORDED_INPUT_BYTES), so a decision event always fits a ledger leaf
 * (MAX_LEAF_BYTES): an agent must not be able to keep its own calls out of the signed ledger by sending arguments (or a
 * path) that make the event too large. Checked with the ledger's own leaf builder, which refuses a longer event.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv2020, type AnySchemaObject } from 'ajv/dist/2020.js';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { buildDecisionEvent, DecisionDataSchema, parseEvent, type DecisionData } from '../../src/events/cloudevents.js';
import { ledgerEntryOf, MAX_LEAF_BYTES } from '../../src/ledger/store.js';
import { MAX_ARGUMENT_BYTES, MAX_URI_LENGTH } from '../../src/mcp/messages.js';
import { ARGUMENTS_PATH, inputRecorder, MAX_RECORDED_INPUT_BYTES, MAX_RECORDED_PATH_CHARS, REDACTED } from '../../src/policy/input-redaction.js';

const recorder = inputRecorder({ enabled: true, redact: [ARGUMENTS_PATH] })!;
const keeping = inputRecorder({ enabled: true, redact: [ARGUMENTS_PATH] }, { keepArguments: true })!;
const bytes = (value: unknown) => Buffer.byteLength(JSON.stringify(value), 'utf8');

/** An MCP tools/call input as the gateway builds it (decision-input.ts, mcp-route.ts). */
function mcpInput(args: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    principal: { id: 'agent-1', status: 'active', attributes: {} },
    policies: [{ id: 'p1', resources: ['mcp:tools/*'], actions: ['call'] }],
    mandate: null,
    request: { upstream: 'tools', method: 'POST', path: '/mcp/tools', resource: 'mcp:tools/deploy', action: 'call', mcp_method: 'tools/call', tool: 'deploy', arguments: args },
    allowlist: { checked: true, matched: true },
    emergency: { active: false },
    auth: { method: 'caracal-token' },
    spend: { budgets: [] },
    limits: { max_concurrent: 64 },
    now: 1_780_000_000,
    ...extra,
  };
}

function proxyInput(path: string): Record<string, unknown> {
  return {
    principal: { id: 'agent-1', status: 'active', attributes: {} },
    policies: [{ id: 'p1', resources: ['api:external/echo'], actions: ['read'] }],
    mandate: null,
    request: { upstream: 'echo', method: 'GET', path, url: `http://127.0.0.1:1${path}`, resource: 'api:external/echo', action: 'read' },
    allowlist: { checked: true, matched: true },
    auth: { method: 'caracal-token' },
    now: 1_780_000_000,
  };
}

/**
 * The largest event around `recorded` the MCP route can build: every other field at its own cap (16 KiB of recorded
 * arguments, a name and resource of MAX_URI_LENGTH), then through the ledger's own leaf check (throws over the limit).
 */
function ledgerLeafOf(recorded: ReturnType<typeof recorder>): number {
  const name = 'n'.repeat(MAX_URI_LENGTH);
  const data: DecisionData = {
    decision_id: '01J0000000000000000000000A',
    request_id: 'req-1',
    principal_id: 'agent-1',
    token_id: 'tok-1',
    upstream: 'tools',
    method: 'POST',
    path: '/mcp/tools',
    upstream_url: 'http://127.0.0.1:1/mcp',
    resource: `mcp:tools/${name}`,
    action: 'call',
    allow: true,
    reasons: [],
    policy_ids: ['p1'],
    bundle_revision: 'rev-1',
    status: 200,
    mcp: { method: 'tools/call', name, argument_digest: '0'.repeat(64), arguments: { blob: 'x'.repeat(16 * 1024 - 12) } },
    ...recorded,
  };
  const event = buildDecisionEvent('caracal-gateway', data);
  // As the ledger reads it: the published JSON, parsed.
  return ledgerEntryOf(JSON.parse(JSON.stringify(event))).canonical.length;
}

afterEach(() => vi.restoreAllMocks());

describe('the recorded input is bounded so its decision event fits a ledger leaf', () => {
  it('4,000 small arguments (the reviewer repro): collapsed to one "[redacted]", listed, and the leaf builds', () => {
    const args = Object.fromEntries(Array.from({ length: 4_000 }, (_, i) => [`arg${i}`, 0]));
    const input = mcpInput(args);
    const recorded = recorder(input);
    expect(recorded.input_omitted).toBeUndefined();
    expect((recorded.input!.request as Record<string, unknown>).arguments).toBe(REDACTED);
    expect(recorded.input_redactions).toEqual([ARGUMENTS_PATH]);
    expect(bytes(recorded.input)).toBeLessThanOrEqual(MAX_RECORDED_INPUT_BYTES);
    expect(ledgerLeafOf(recorded)).toBeLessThanOrEqual(MAX_LEAF_BYTES);
    // The engine's input is untouched.
    expect(Object.keys((input.request as { arguments: object }).arguments)).toHaveLength(4_000);
  });

  it('one 70 KB argument key: collapsed (key names count), and the leaf builds', () => {
    const recorded = recorder(mcpInput({ ['k'.repeat(70_000)]: 1 }));
    expect((recorded.input!.request as Record<string, unknown>).arguments).toBe(REDACTED);
    expect(JSON.stringify(recorded)).not.toContain('k'.repeat(100));
    expect(ledgerLeafOf(recorded)).toBeLessThanOrEqual(MAX_LEAF_BYTES);
  });

  it('kept arguments (recordArguments) over the budget collapse too; within it they stay', () => {
    const small = keeping(mcpInput({ target: 'staging' }));
    expect((small.input!.request as Record<string, unknown>).arguments).toEqual({ target: 'staging' });
    expect(small.input_redactions).toBeUndefined();
    const large = keeping(mcpInput({ blob: 'x'.repeat(30_000) }));
    expect((large.input!.request as Record<string, unknown>).arguments).toBe(REDACTED);
    expect(large.input_redactions).toEqual([ARGUMENTS_PATH]);
  });

  it('/proxy: a long path and url collapse only when over the budget; a short one is kept as it is', () => {
    const long = `/${'p'.repeat(15_000)}`;
    const recorded = recorder(proxyInput(long));
    expect(recorded.input!.request).toMatchObject({ path: REDACTED, url: REDACTED, upstream: 'echo', action: 'read' });
    expect(recorded.input_redactions).toEqual(['request.path', 'request.url']);
    expect(bytes(recorded.input)).toBeLessThanOrEqual(MAX_RECORDED_INPUT_BYTES);
    // Over MAX_RECORDED_PATH_CHARS but the whole input within the budget: nothing is collapsed.
    const medium = `/${'p'.repeat(MAX_RECORDED_PATH_CHARS + 100)}`;
    const kept = recorder(proxyInput(medium));
    expect((kept.input!.request as Record<string, unknown>).path).toBe(medium);
    expect(kept.input_redactions).toBeUndefined();
  });

  it('the common /proxy input is not serialised to be measured (the hot path)', () => {
    const input = proxyInput('/reports/daily?format=csv');
    const stringify = vi.spyOn(JSON, 'stringify');
    const recorded = recorder(input);
    expect(stringify).not.toHaveBeenCalled();
    expect(recorded).toEqual({ input });
  });

  it('still over the budget once collapsed (a huge principal fact, many policies): input omitted, input_omitted set, valid for zod and the JSON Schema', () => {
    const policies = Array.from({ length: 200 }, (_, i) => ({ id: `policy-${i}`, resources: [`api:external/${'r'.repeat(200)}`], actions: ['read'] }));
    const recorded = recorder(mcpInput({ a: 1 }, { policies }));
    expect(recorded).toEqual({ input_omitted: 'too_large' });
    const leafBytes = ledgerLeafOf(recorded);
    expect(leafBytes).toBeLessThanOrEqual(MAX_LEAF_BYTES);

    const event = buildDecisionEvent('caracal-gateway', { decision_id: 'd', request_id: 'r', principal_id: null, token_id: null, upstream: 'tools', method: 'POST', path: '/mcp/tools', resource: null, action: null, allow: true, reasons: [], policy_ids: [], bundle_revision: null, status: 200, ...recorded });
    expect(event.data.input_omitted).toBe('too_large');
    expect(event.data.input).toBeUndefined();
    expect(parseEvent(JSON.stringify(event)).data).toMatchObject({ input_omitted: 'too_large' });
    const ajv = new Ajv2020({ strict: true });
    const dir = fileURLToPath(new URL('../../schemas/events/', import.meta.url));
    ajv.addSchema(JSON.parse(readFileSync(`${dir}cloudevent.v1.json`, 'utf8')) as AnySchemaObject);
    const validate = ajv.compile(JSON.parse(readFileSync(`${dir}policy.decision.v1.json`, 'utf8')) as AnySchemaObject);
    expect(validate(JSON.parse(JSON.stringify(event))), ajv.errorsText(validate.errors)).toBe(true);
    expect(validate(JSON.parse(JSON.stringify({ ...event, data: { ...event.data, input_omitted: 'other' } })))).toBe(false);
    // The hand check refuses what the schema refuses.
    expect(() => buildDecisionEvent('caracal-gateway', { ...event.data, input_omitted: 'other' as 'too_large' })).toThrow();
    expect(DecisionDataSchema.safeParse({ ...event.data, input_omitted: 'other' }).success).toBe(false);
  });

  it('property: random argument shapes up to the MCP argument limit never make an event over the ledger limit', () => {
    // Leaves: small numbers (cheap to send, 12 bytes once redacted), strings, booleans, nulls; keys up to 70 KB.
    const leaf = fc.oneof(fc.integer({ min: 0, max: 9 }), fc.string({ maxLength: 8 }), fc.boolean(), fc.constant(null));
    const shape = fc.letrec((tie) => ({
      node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, tie('array'), tie('object')),
      array: fc.array(tie('node'), { maxLength: 8 }),
      object: fc.dictionary(fc.string({ maxLength: 6 }), tie('node'), { maxKeys: 8 }),
    }));
    // Wide shapes are what cost an event: `width` copies of one random shape, under keys of `keyLength` characters.
    const args = fc.tuple(shape.object, fc.integer({ min: 1, max: 20_000 }), fc.integer({ min: 1, max: 70_000 })).map(([member, width, keyLength]) => {
      const out: Record<string, unknown> = {};
      const key = 'k'.repeat(Math.max(1, Math.floor(keyLength / Math.max(1, width))));
      for (let i = 0; i < width; i++) out[`${key}${i}`] = i % 2 === 0 ? member : i;
      return out;
    });
    fc.assert(
      fc.property(args, fc.boolean(), (value, keep) => {
        fc.pre(bytes(value) <= MAX_ARGUMENT_BYTES);
        const recorded = (keep ? keeping : recorder)(mcpInput(value));
        if (recorded.input) expect(bytes(recorded.input)).toBeLessThanOrEqual(MAX_RECORDED_INPUT_BYTES);
        expect(ledgerLeafOf(recorded)).toBeLessThanOrEqual(MAX_LEAF_BYTES);
      }),
      { numRuns: 60, seed: 20_260_601 },
    );
  }, 60_000);
});

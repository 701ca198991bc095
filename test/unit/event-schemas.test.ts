import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Ajv2020, type AnySchemaObject, type ValidateFunction } from 'ajv/dist/2020.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import {
  buildDecisionEvent,
  buildEvent,
  buildMeteringEvent,
  DecisionDataSchema,
  DlqDataSchema,
  EVENT_TYPES,
  EventSchemaError,
  LifecycleDataSchema,
  MeteringDataSchema,
  parseEvent,
  type DecisionData,
  type LifecycleData,
  type MeteringData,
} from '../../src/events/cloudevents.js';

/**
 * The JSON Schemas in schemas/events against the zod schemas the producer (`buildEvent`) and the
 * consumer (`parseEvent`) use: both must describe the same events, so that a consumer outside this
 * repository that validates with the JSON Schemas accepts exactly what Caracal accepts.
 */

const SCHEMA_DIR = fileURLToPath(new URL('../../schemas/events/', import.meta.url));
const SCHEMA_FILES = readdirSync(SCHEMA_DIR).filter((name) => name.endsWith('.json')).sort();
const SCHEMAS = SCHEMA_FILES.map((file) => ({ file, schema: JSON.parse(readFileSync(SCHEMA_DIR + file, 'utf8')) as AnySchemaObject }));

const urn = (name: string, version: number) => `urn:caracal:schema:${name}:v${version}`;
const ENVELOPE = urn('cloudevent', 1);
const DECISION = urn('policy.decision', 1);
const LIFECYCLE = urn('agent.lifecycle', 1);
const ADMIN = urn('admin.action', 1);
const METERING = urn('metering.event', 1);
const DLQ = urn('dlq.entry', 1);

/** The data schema `parseEvent` applies to each type it knows; a type added to EVENT_TYPES fails the test until it is listed here and has a JSON Schema. */
const ZOD_DATA: Record<string, unknown> = {
  [EVENT_TYPES.decision]: DecisionDataSchema,
  [EVENT_TYPES.lifecycle]: LifecycleDataSchema,
  [EVENT_TYPES.dlq]: DlqDataSchema,
  [EVENT_TYPES.metering]: MeteringDataSchema,
};

/** `dev.caracal.<name>.v<N>` → `urn:caracal:schema:<name>:v<N>`. */
function schemaIdOf(type: string): string {
  const match = /^dev\.caracal\.(.+)\.v(\d+)$/.exec(type);
  if (!match) throw new Error(`type ${type} does not end in its version`);
  return urn(match[1]!, Number(match[2]));
}

/** Any of the types parseEvent knows: what the agreement corpus is checked against. */
const KNOWN_TO_ZOD = 'urn:caracal:test:known-to-zod';

function newAjv(): Ajv2020 {
  // strict: unknown keywords, ignored formats and ambiguous types are compile errors, so a typo in
  // a schema cannot silently turn a constraint off. allErrors mirrors what a consumer would log.
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  for (const { schema } of SCHEMAS) ajv.addSchema(schema);
  ajv.addSchema({ $id: KNOWN_TO_ZOD, anyOf: Object.values(EVENT_TYPES).map((type) => ({ $ref: schemaIdOf(type) })) });
  return ajv;
}

const ajv = newAjv();
function validator(id: string): ValidateFunction {
  const validate = ajv.getSchema(id);
  if (!validate) throw new Error(`no schema ${id}`);
  return validate;
}

/** What a JSON Schema consumer does with a message value: parse, then validate. */
function schemaAccepts(id: string, text: string): boolean {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return false;
  }
  return validator(id)(json) === true;
}

function zodAccepts(text: string): boolean {
  try {
    parseEvent(text);
    return true;
  } catch {
    return false;
  }
}

function describeErrors(id: string): string {
  return ajv.errorsText(validator(id).errors);
}

// ---------------------------------------------------------------------------------------------
// Arbitraries derived from the zod schemas: a field added to a zod schema is generated at once,
// and the closed JSON Schema then rejects it until the JSON Schema learns it too.

interface ZodInternals {
  _zod: { def: Record<string, unknown> & { type: string }; optin?: string };
  /** ZodString / ZodNumber getters (null or undefined when unconstrained). */
  minLength?: number | null;
  maxLength?: number | null;
  minValue?: number | null;
  maxValue?: number | null;
  isInt?: boolean;
}

/** Fields that may be absent: `.optional()` and `.default()`. */
const isOptional = (schema: unknown) => internals(schema).optin !== undefined;

/** The pattern a string must match: `.regex()`, or the one zod's `.datetime()` checks. */
function regexOf(schema: unknown): RegExp | undefined {
  const checks = (internals(schema).def.checks ?? []) as { _zod: { def: { format?: string; pattern?: RegExp } } }[];
  return checks.map((check) => check._zod.def).find((def) => def.format === 'regex' || def.format === 'datetime')?.pattern;
}

const internals = (schema: unknown) => (schema as ZodInternals)._zod;

function arbitraryFor(schema: unknown): fc.Arbitrary<unknown> {
  const { def } = internals(schema);
  const checks = schema as ZodInternals;
  switch (def.type) {
    case 'object': {
      const shape = def.shape as Record<string, unknown>;
      const fields = Object.fromEntries(Object.entries(shape).map(([key, value]) => [key, arbitraryFor(value)]));
      const requiredKeys = Object.keys(shape).filter((key) => !isOptional(shape[key]));
      return fc.record(fields, { requiredKeys });
    }
    case 'string': {
      const pattern = regexOf(schema);
      if (pattern) return fc.stringMatching(pattern);
      return fc.string({ unit: 'binary', minLength: checks.minLength ?? 0, maxLength: checks.maxLength ?? 24 });
    }
    case 'number': {
      // zod numbers are finite (JSON has no Infinity): clamp to the finite doubles, as `noDefaultInfinity` alone does not once a bound is given.
      if (!checks.isInt) {
        const min = Math.max(checks.minValue ?? -Number.MAX_VALUE, -Number.MAX_VALUE);
        const max = Math.min(checks.maxValue ?? Number.MAX_VALUE, Number.MAX_VALUE);
        return fc.double({ noNaN: true, min, max });
      }
      const min = Math.max(checks.minValue ?? Number.MIN_SAFE_INTEGER, Number.MIN_SAFE_INTEGER);
      const max = Math.min(checks.maxValue ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      return fc.oneof(fc.integer({ min, max }), fc.constantFrom(min, max));
    }
    case 'boolean':
      return fc.boolean();
    case 'nullable':
      return fc.option(arbitraryFor(def.innerType), { nil: null });
    case 'optional':
    case 'default':
      return arbitraryFor(def.innerType);
    case 'array':
      return fc.array(arbitraryFor(def.element), { maxLength: 4 });
    case 'enum':
      return fc.constantFrom(...Object.values(def.entries as Record<string, string>));
    case 'record':
      return fc.dictionary(arbitraryFor(def.keyType) as fc.Arbitrary<string>, arbitraryFor(def.valueType), { maxKeys: 4 });
    case 'unknown':
      return fc.jsonValue({ maxDepth: 2 });
    case 'literal':
      return fc.constantFrom(...(def.values as unknown[]));
    default:
      throw new Error(`no arbitrary for zod type "${def.type}": extend arbitraryFor`);
  }
}

const envelopeArbitrary = fc.record({
  source: fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }),
  subject: fc.option(fc.string({ unit: 'binary', maxLength: 40 }), { nil: undefined }),
  // Years 0000–9999: Date#toISOString writes other years with a sign and six digits, which is
  // not the RFC 3339 time either schema accepts.
  now: fc.date({ min: new Date('0000-01-01T00:00:00.000Z'), max: new Date('9999-12-31T23:59:59.999Z'), noInvalidDate: true }),
});

// ---------------------------------------------------------------------------------------------
// Fixtures

const decisionData = (overrides: Partial<DecisionData> = {}): DecisionData => ({
  decision_id: '0193a5c0-0000-7000-8000-000000000001',
  request_id: 'req-1',
  principal_id: 'agent-1',
  token_id: 'tok-1',
  upstream: 'openai',
  method: 'POST',
  path: '/openai/v1/chat/completions',
  upstream_url: 'https://api.openai.com/v1/chat/completions',
  resource: 'chat',
  action: 'invoke',
  allow: true,
  reasons: [],
  policy_ids: ['pol-1'],
  bundle_revision: 'rev-1',
  status: 200,
  ...overrides,
});

const lifecycleData = (overrides: Partial<LifecycleData> = {}): LifecycleData => ({
  entity: 'mandate',
  action: 'revoked',
  principal_id: 'agent-1',
  entity_id: 'm-1',
  attributes: { ids: ['m-1', 'm-2'] },
  ...overrides,
});

const validDlq = () =>
  buildEvent(EVENT_TYPES.dlq, 'caracal/ledger-writer/i-1', undefined, {
    consumer_group: 'caracal-ledger-writer',
    original: { topic: 'caracal.policy.decisions', partition: 3, offset: '9007199254740993', key: 'agent-1', value: '{"not":"an event"}', headers: { 'content-type': 'text/plain' }, event_id: null },
    error: 'invalid CloudEvent: id Required',
    attempts: 5,
  });
const meteringData = (overrides: Partial<MeteringData> = {}): MeteringData => ({
  decision_id: '0193a5c0-0000-7000-8000-000000000001',
  request_id: 'req-1',
  principal_id: 'agent-1',
  token_id: 'tok-1',
  chain: ['orchestrator-1', 'team-1'],
  mandate_ids: ['m-2', 'm-1'],
  upstream: 'anthropic',
  resource: 'messages',
  model: 'claude-x',
  input_tokens: 1200,
  output_tokens: 300,
  cached_input_tokens: 0,
  cost_micros: 5_400,
  currency: 'USD',
  exact: true,
  estimate_reason: null,
  outcome: 'completed',
  upstream_status: 200,
  request_bytes: 2048,
  response_bytes: 4096,
  duration_ms: 812.37,
  started_at: '2026-12-02T09:59:59.188Z',
  ...overrides,
});

const validDecision = () => buildEvent(EVENT_TYPES.decision, 'caracal/gateway/i-1', 'agent-1', decisionData(), new Date('2026-12-02T10:00:00.000Z'));
const validLifecycle = () => buildEvent(EVENT_TYPES.lifecycle, 'caracal/i-1', 'agent-1', lifecycleData(), new Date('2026-12-02T10:00:00.000Z'));
const validMetering = () => buildMeteringEvent('caracal/gateway/i-1', meteringData(), new Date('2026-12-02T10:00:00.000Z'));

function envelopeFor(type: string, data: unknown): Record<string, unknown> {
  return {
    specversion: '1.0',
    id: '0193a5c0-0000-7000-8000-00000000000a',
    type,
    source: 'caracal/gateway/i-1',
    time: '2026-12-02T10:00:00.123Z',
    subject: 'agent-1',
    datacontenttype: 'application/json',
    data,
  };
}

const json = (value: unknown) => JSON.stringify(value);
/** A valid event's JSON text with `key` replaced (or added) as raw JSON text, so that keys such as `__proto__` stay own properties. */
function withRaw(event: object, key: string, rawValue: string, inData = false): string {
  const copy: Record<string, unknown> = JSON.parse(json(event));
  const target = (inData ? copy.data : copy) as Record<string, unknown>;
  delete target[key];
  const marker = '"__marker__":0';
  target.__marker__ = 0;
  return json(copy).replace(marker, `${JSON.stringify(key)}:${rawValue}`);
}
function without(event: object, key: string, inData = false): string {
  const copy: Record<string, unknown> = JSON.parse(json(event));
  delete ((inData ? copy.data : copy) as Record<string, unknown>)[key];
  return json(copy);
}

const MEGABYTE = 'a'.repeat(1024 * 1024);

/** Events both parsers must reject. */
const HOSTILE: Record<string, string> = {
  'not JSON': '{"specversion":',
  'empty text': '',
  'JSON null': 'null',
  'an array': json([validDecision()]),
  'a string': json(json(validDecision())),
  'missing id': without(validDecision(), 'id'),
  'empty id': withRaw(validDecision(), 'id', '""'),
  'numeric id': withRaw(validDecision(), 'id', '42'),
  'id of 129 characters': withRaw(validDecision(), 'id', json('x'.repeat(129))),
  'id of 1 MiB': withRaw(validDecision(), 'id', json(MEGABYTE)),
  'missing specversion': without(validDecision(), 'specversion'),
  'specversion 0.3': withRaw(validDecision(), 'specversion', '"0.3"'),
  'specversion as a number': withRaw(validDecision(), 'specversion', '1.0'),
  'unknown envelope attribute': withRaw(validDecision(), 'extension1', '"x"'),
  'dataschema (not written by Caracal)': withRaw(validDecision(), 'dataschema', json(DECISION)),
  data_base64: withRaw(validDecision(), 'data_base64', '"e30="'),
  'missing source': without(validDecision(), 'source'),
  'empty source': withRaw(validDecision(), 'source', '""'),
  'time with an offset': withRaw(validDecision(), 'time', '"2026-12-02T10:00:00+01:00"'),
  'time on 29 February of a common year': withRaw(validDecision(), 'time', '"2026-02-29T10:00:00Z"'),
  'time with a lowercase t': withRaw(validDecision(), 'time', '"2026-12-02t10:00:00Z"'),
  'time as epoch milliseconds': withRaw(validDecision(), 'time', '1764669600000'),
  'time with an expanded year': withRaw(validDecision(), 'time', json(new Date(Date.UTC(10_000, 0, 1)).toISOString())),
  'null subject': withRaw(validDecision(), 'subject', 'null'),
  'numeric subject': withRaw(validDecision(), 'subject', '5'),
  'datacontenttype text/plain': withRaw(validDecision(), 'datacontenttype', '"text/plain"'),
  'missing datacontenttype': without(validDecision(), 'datacontenttype'),
  'unknown type': withRaw(validDecision(), 'type', '"dev.caracal.nothing.v1"'),
  'decision type v2': withRaw(validDecision(), 'type', '"dev.caracal.policy.decision.v2"'),
  'decision data under the lifecycle type': withRaw(validDecision(), 'type', json(EVENT_TYPES.lifecycle)),
  'missing data': without(validDecision(), 'data'),
  'null data': withRaw(validDecision(), 'data', 'null'),
  'array data': withRaw(validDecision(), 'data', '[]'),
  'top-level __proto__': withRaw(validDecision(), '__proto__', '{"polluted":true}'),
  'top-level constructor': withRaw(validDecision(), 'constructor', '{"prototype":{"polluted":true}}'),
  'decision: __proto__ in data': withRaw(validDecision(), '__proto__', '{"allow":false}', true),
  'decision: prototype in data': withRaw(validDecision(), 'prototype', '{}', true),
  'decision: unknown field': withRaw(validDecision(), 'cost', '1', true),
  'decision: missing decision_id': without(validDecision(), 'decision_id', true),
  'decision: empty request_id': withRaw(validDecision(), 'request_id', '""', true),
  'decision: allow as a string': withRaw(validDecision(), 'allow', '"true"', true),
  'decision: status as a string': withRaw(validDecision(), 'status', '"200"', true),
  'decision: fractional status': withRaw(validDecision(), 'status', '200.5', true),
  'decision: status beyond 2^53': withRaw(validDecision(), 'status', '9007199254740993', true),
  'decision: status 1e400': withRaw(validDecision(), 'status', '1e400', true),
  'decision: numeric principal_id': withRaw(validDecision(), 'principal_id', '5', true),
  'decision: numeric upstream_url': withRaw(validDecision(), 'upstream_url', '5', true),
  'decision: reasons with a number': withRaw(validDecision(), 'reasons', '["ok",1]', true),
  'decision: policy_ids as an object': withRaw(validDecision(), 'policy_ids', '{"0":"p"}', true),
  'decision: missing principal_id (null is required, not absent)': without(validDecision(), 'principal_id', true),
  'lifecycle: unknown entity': withRaw(validLifecycle(), 'entity', '"user"', true),
  'lifecycle: empty action': withRaw(validLifecycle(), 'action', '""', true),
  'lifecycle: attributes as an array': withRaw(validLifecycle(), 'attributes', '[]', true),
  'lifecycle: null attributes': withRaw(validLifecycle(), 'attributes', 'null', true),
  'lifecycle: unknown field': withRaw(validLifecycle(), 'extra', '1', true),
  'lifecycle: __proto__ in data': withRaw(validLifecycle(), '__proto__', '{"entity":"token"}', true),
  'dlq: offset that is not a decimal string': withRaw(validDlq(), 'original', json({ ...validDlq().data.original, offset: '-1' }), true),
  'dlq: numeric offset': withRaw(validDlq(), 'original', json({ ...validDlq().data.original, offset: 12 }), true),
  'dlq: negative partition': withRaw(validDlq(), 'original', json({ ...validDlq().data.original, partition: -1 }), true),
  'dlq: a header that is not a string': withRaw(validDlq(), 'original', json({ ...validDlq().data.original, headers: { a: 1 } }), true),
  'dlq: zero attempts': withRaw(validDlq(), 'attempts', '0', true),
  'dlq: unknown field in original': withRaw(validDlq(), 'original', json({ ...validDlq().data.original, extra: 1 }), true),
  'metering: unknown field': withRaw(validMetering(), 'tokens', '{}', true),
  'metering: __proto__ in data': withRaw(validMetering(), '__proto__', '{"exact":true}', true),
  'metering: missing started_at': without(validMetering(), 'started_at', true),
  'metering: missing model (null is required, not absent)': without(validMetering(), 'model', true),
  'metering: fractional cost_micros': withRaw(validMetering(), 'cost_micros', '0.5', true),
  'metering: cost_micros 2^53': withRaw(validMetering(), 'cost_micros', '9007199254740992', true),
  'metering: cost_micros 1e400': withRaw(validMetering(), 'cost_micros', '1e400', true),
  'metering: lowercase currency': withRaw(validMetering(), 'currency', '"usd"', true),
  'metering: input_tokens above 100,000,000': withRaw(validMetering(), 'input_tokens', '100000001', true),
  'metering: negative cached_input_tokens': withRaw(validMetering(), 'cached_input_tokens', '-1', true),
  'metering: an empty principal in the chain': withRaw(validMetering(), 'chain', '["team-1",""]', true),
  'metering: a chain of 65': withRaw(validMetering(), 'chain', json(Array.from({ length: 65 }, (_, i) => `p-${i}`)), true),
  'metering: a model of 257 characters': withRaw(validMetering(), 'model', json('m'.repeat(257)), true),
  'metering: an estimate_reason of 257 astral characters': withRaw(validMetering(), 'estimate_reason', json('\u{1F600}'.repeat(257)), true),
  'metering: null resource': withRaw(validMetering(), 'resource', 'null', true),
  'metering: empty upstream': withRaw(validMetering(), 'upstream', '""', true),
  'metering: unknown outcome': withRaw(validMetering(), 'outcome', '"cancelled"', true),
  'metering: fractional upstream_status': withRaw(validMetering(), 'upstream_status', '200.5', true),
  'metering: negative duration_ms': withRaw(validMetering(), 'duration_ms', '-0.01', true),
  'metering: duration_ms 1e400': withRaw(validMetering(), 'duration_ms', '1e400', true),
  'metering: fractional request_bytes': withRaw(validMetering(), 'request_bytes', '1.5', true),
  'metering: started_at with an offset': withRaw(validMetering(), 'started_at', '"2026-12-02T10:00:00+00:00"', true),
  'metering: started_at without seconds': withRaw(validMetering(), 'started_at', '"2026-12-02T10:00Z"', true),
  'metering: started_at on 30 February': withRaw(validMetering(), 'started_at', '"2024-02-30T10:00:00Z"', true),
  'metering: started_at at hour 24': withRaw(validMetering(), 'started_at', '"2026-12-02T24:00:00Z"', true),
  'metering: started_at as epoch milliseconds': withRaw(validMetering(), 'started_at', '1764669600000', true),
};

/** Events both parsers must accept, chosen at the edges of each constraint. */
const EDGES: Record<string, string> = {
  decision: json(validDecision()),
  lifecycle: json(validLifecycle()),
  dlq: json(validDlq()),
  'dlq entry whose original headers hold __proto__': withRaw(validDlq(), 'original', json(validDlq().data.original).replace('"headers":{', '"headers":{"__proto__":"x",'), true),
  'decision without upstream_url (written before it existed)': without(validDecision(), 'upstream_url', true),
  'decision with a null upstream_url': withRaw(validDecision(), 'upstream_url', 'null', true),
  'decision refused before authentication': json(
    buildEvent(EVENT_TYPES.decision, 's', undefined, decisionData({ principal_id: null, token_id: null, upstream: null, resource: null, action: null, allow: false, status: 401 })),
  ),
  'decision with a 1 MiB path (no maxLength applies)': withRaw(validDecision(), 'path', json(MEGABYTE), true),
  'decision with status 2^53 - 1': withRaw(validDecision(), 'status', String(Number.MAX_SAFE_INTEGER), true),
  'decision with status written as 200.0': withRaw(validDecision(), 'status', '200.0', true),
  'id of 128 characters': withRaw(validDecision(), 'id', json('x'.repeat(128))),
  'empty subject': withRaw(validDecision(), 'subject', '""'),
  'no subject': without(validDecision(), 'subject'),
  'time without fraction': withRaw(validDecision(), 'time', '"2026-12-02T10:00:00Z"'),
  'time with nanoseconds': withRaw(validDecision(), 'time', '"2026-12-02T10:00:00.123456789Z"'),
  'time on a leap day': withRaw(validDecision(), 'time', '"2024-02-29T23:59:59Z"'),
  'lifecycle without attributes': without(validLifecycle(), 'attributes', true),
  'lifecycle with __proto__ inside the open attributes': withRaw(validLifecycle(), 'attributes', '{"__proto__":{"polluted":true},"ids":[]}', true),
  'lone surrogate and astral characters in strings': withRaw(validDecision(), 'path', '"/\\ud800/\u{1F600}"', true),
  metering: json(validMetering()),
  'metering of a plain HTTP call': json(
    buildMeteringEvent('s', meteringData({ chain: [], token_id: null, model: null, input_tokens: null, output_tokens: null, cached_input_tokens: null, resource: '' })),
  ),
  'metering at the bounds': json(
    buildMeteringEvent(
      's',
      meteringData({
        chain: Array.from({ length: 64 }, (_, i) => `p-${i}`),
        model: '\u{1F600}'.repeat(256),
        estimate_reason: 'r'.repeat(256),
        input_tokens: 100_000_000,
        output_tokens: 0,
        cost_micros: Number.MAX_SAFE_INTEGER,
        request_bytes: Number.MAX_SAFE_INTEGER,
        upstream_status: -Number.MAX_SAFE_INTEGER,
        duration_ms: 0,
        started_at: '0000-02-29T00:00:00Z',
      }),
    ),
  ),
  'metering with cost_micros written as 5400.0': withRaw(validMetering(), 'cost_micros', '5400.0', true),
  'metering with a 1e300 duration_ms': withRaw(validMetering(), 'duration_ms', '1e300', true),
  'metering with upstream_status 999 (no range applies)': withRaw(validMetering(), 'upstream_status', '999', true),
  'metering with started_at in nanoseconds': withRaw(validMetering(), 'started_at', '"2026-12-02T10:00:00.123456789Z"', true),
};

// ---------------------------------------------------------------------------------------------

describe('event JSON Schemas (schemas/events)', () => {
  it('every schema is a draft 2020-12 schema that compiles in strict mode, named <name>.v<N>.json with $id urn:caracal:schema:<name>:v<N>', () => {
    expect(SCHEMA_FILES).toEqual([
      'admin.action.v1.json',
      'agent.lifecycle.v1.json',
      'cloudevent.v1.json',
      'dlq.entry.v1.json',
      'metering.event.v1.json',
      'policy.decision.v1.json',
    ]);
    for (const { file, schema } of SCHEMAS) {
      const match = /^(.+)\.v(\d+)\.json$/.exec(file);
      expect(match, file).not.toBeNull();
      expect(schema.$schema, file).toBe('https://json-schema.org/draft/2020-12/schema');
      expect(schema.$id, file).toBe(urn(match![1]!, Number(match![2])));
      // A fresh instance per file: compiling must not depend on anything but the files themselves.
      const fresh = new Ajv2020({ strict: true });
      for (const other of SCHEMAS) fresh.addSchema(other.schema);
      expect(fresh.getSchema(schema.$id as string), file).toBeTypeOf('function');
    }
  });

  it('ajv strict mode is on: a schema with an unknown keyword does not compile', () => {
    expect(() => new Ajv2020({ strict: true }).compile({ type: 'string', maxLenght: 3 })).toThrow(/unknown keyword/);
  });

  it('each per-type schema pins its CloudEvents type, which ends in the schema version', () => {
    for (const { file, schema } of SCHEMAS.filter((s) => s.file !== 'cloudevent.v1.json')) {
      const [, name, version] = /^(.+)\.v(\d+)\.json$/.exec(file)!;
      const type = (schema.properties as Record<string, { const?: string }>).type?.const;
      expect(type, file).toBe(`dev.caracal.${name}.v${version}`);
      expect(schema.$ref, file).toBe(ENVELOPE);
    }
  });

  it('every type parseEvent knows has a JSON Schema and a zod data schema in this test', () => {
    for (const type of Object.values(EVENT_TYPES)) {
      expect(ajv.getSchema(schemaIdOf(type)), type).toBeTypeOf('function');
      expect(ZOD_DATA[type], `${type}: add its zod data schema to ZOD_DATA`).toBeDefined();
    }
  });

  it('the data schemas list the same fields as the zod schemas, with the same required ones', () => {
    for (const [type, zodSchema] of Object.entries(ZOD_DATA)) {
      const id = schemaIdOf(type);
      const data = (ajv.getSchema(`${id}#/$defs/data`)?.schema ?? {}) as { properties: object; required: string[] };
      const shape = (zodSchema as z.ZodObject).shape as Record<string, unknown>;
      expect(Object.keys(data.properties).sort(), id).toEqual(Object.keys(shape).sort());
      expect([...data.required].sort(), id).toEqual(Object.keys(shape).filter((key) => !isOptional(shape[key])).sort());
    }
  });

  describe('events built by buildEvent validate', () => {
    it('fixed decision, lifecycle, DLQ and metering events', () => {
      for (const [id, event] of [
        [DECISION, validDecision()],
        [LIFECYCLE, validLifecycle()],
        [DLQ, validDlq()],
        [METERING, validMetering()],
      ] as const) {
        expect(validator(id)(JSON.parse(json(event))), describeErrors(id)).toBe(true);
        expect(validator(ENVELOPE)(JSON.parse(json(event))), describeErrors(ENVELOPE)).toBe(true);
      }
    });

    it('a decision event does not validate as a lifecycle event, nor the reverse', () => {
      expect(validator(LIFECYCLE)(JSON.parse(json(validDecision())))).toBe(false);
      expect(validator(DECISION)(JSON.parse(json(validLifecycle())))).toBe(false);
    });

    for (const [type, dataSchema] of Object.entries(ZOD_DATA)) {
      const id = schemaIdOf(type);
      it(`random ${type} data generated from the zod schema validates, and parseEvent reads it back`, () => {
        fc.assert(
          fc.property(envelopeArbitrary, arbitraryFor(dataSchema), ({ source, subject, now }, data) => {
            const event = buildEvent(type as (typeof EVENT_TYPES)[keyof typeof EVENT_TYPES], source, subject, data as never, now);
            const text = json(event);
            const valid = validator(id)(JSON.parse(text));
            if (!valid) throw new Error(`${describeErrors(id)}\n${text}`);
            expect(parseEvent(text)).toEqual(JSON.parse(text));
          }),
          { numRuns: 300 },
        );
      });
    }
  });

  describe('the JSON Schemas and parseEvent agree', () => {
    it.each(Object.entries(HOSTILE))('both reject: %s', (_name, text) => {
      expect(schemaAccepts(KNOWN_TO_ZOD, text)).toBe(false);
      expect(zodAccepts(text)).toBe(false);
    });

    it.each(Object.entries(EDGES))('both accept: %s', (_name, text) => {
      expect(schemaAccepts(KNOWN_TO_ZOD, text), describeErrors(KNOWN_TO_ZOD)).toBe(true);
      expect(zodAccepts(text)).toBe(true);
    });

    it('accepting __proto__ inside attributes pollutes nothing: parseEvent drops the key', () => {
      const event = parseEvent(EDGES['lifecycle with __proto__ inside the open attributes']!);
      const attributes = (event.data as LifecycleData).attributes;
      expect(Object.keys(attributes)).toEqual(['ids']);
      expect(Object.getPrototypeOf(attributes)).toBe(Object.prototype);
      expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    });

    it('never disagree on random mutations of valid events', () => {
      const base = [validDecision(), validLifecycle(), validDlq(), buildEvent(EVENT_TYPES.decision, 's', undefined, decisionData({ upstream_url: undefined })), validMetering()];
      const keys = [...new Set(base.flatMap((event) => [...Object.keys(event), ...Object.keys(event.data)]))];
      const value = fc.oneof(
        fc.jsonValue({ maxDepth: 1 }),
        fc.constantFrom('', '1.0', 'dev.caracal.policy.decision.v1', 'dev.caracal.agent.lifecycle.v1', EVENT_TYPES.metering, 'principal', 'aborted', 'EUR', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00.5Z'),
        fc.constantFrom(-1, 0.5, 100_000_000, 100_000_001, Number.MAX_SAFE_INTEGER, 2 ** 53),
      );
      const mutation = fc.record({
        event: fc.constantFrom(...base),
        inData: fc.boolean(),
        key: fc.oneof(fc.constantFrom(...keys, '__proto__', 'constructor', 'dataschema'), fc.string({ maxLength: 8 })),
        remove: fc.boolean(),
        value,
      });
      fc.assert(
        fc.property(mutation, ({ event, inData, key, remove, value }) => {
          const text = remove ? without(event, key, inData) : withRaw(event, key, json(value), inData);
          expect(zodAccepts(text), text).toBe(schemaAccepts(KNOWN_TO_ZOD, text));
        }),
        { numRuns: 2_000 },
      );
    });

    it('both count string lengths in code points: an id of 128 astral characters fits, 129 do not', () => {
      const fits = withRaw(validDecision(), 'id', json('\u{1F600}'.repeat(128)));
      const tooLong = withRaw(validDecision(), 'id', json('\u{1F600}'.repeat(129)));
      expect([schemaAccepts(KNOWN_TO_ZOD, fits), zodAccepts(fits)]).toEqual([true, true]);
      expect([schemaAccepts(KNOWN_TO_ZOD, tooLong), zodAccepts(tooLong)]).toEqual([false, false]);
    });

    // Inherited names of a plain object (`constructor`, `__proto__`, …) are not event types: a lookup
    // that forgot `Object.hasOwn` answered them with a TypeError instead of EventSchemaError.
    it.each(['__proto__', 'constructor', 'toString', 'hasOwnProperty'])('parseEvent rejects the type %s with EventSchemaError', (type) => {
      const text = withRaw(validDecision(), 'type', json(type));
      expect(schemaAccepts(KNOWN_TO_ZOD, text)).toBe(false);
      expect(() => parseEvent(text)).toThrow(EventSchemaError);
    });
  });

  describe('admin.action v1 (no zod parser yet: the JSON Schema alone)', () => {
    const adminData = (overrides: Record<string, unknown> = {}) => ({
      operation: 'agent.suspend',
      transport: 'admin_api',
      actor: { kind: 'admin_token', id: 'sha256:0123456789abcdef' },
      origin: { address: '::ffff:127.0.0.1', host: null, request_id: 'req-9' },
      arguments_digest: `sha256:${'ab'.repeat(32)}`,
      outcome: 'ok',
      error_code: null,
      duration_ms: 12,
      ...overrides,
    });
    const accepts = (data: unknown, type = 'dev.caracal.admin.action.v1') => validator(ADMIN)(JSON.parse(json(envelopeFor(type, data))));

    it('accepts an admin API call, a failed one, and a CLI run', () => {
      expect(accepts(adminData()), describeErrors(ADMIN)).toBe(true);
      expect(accepts(adminData({ operation: 'no-such-op', outcome: 'error', error_code: 'CARACAL_NOT_FOUND', arguments_digest: null })), describeErrors(ADMIN)).toBe(true);
      expect(
        accepts(adminData({ transport: 'cli', actor: { kind: 'os_user', id: 'ops' }, origin: { address: null, host: 'bastion-1', request_id: null } })),
        describeErrors(ADMIN),
      ).toBe(true);
    });

    it.each([
      ['another type', adminData(), 'dev.caracal.policy.decision.v1'],
      ['ok with an error code', adminData({ error_code: 'CARACAL_INTERNAL' }), undefined],
      ['error without an error code', adminData({ outcome: 'error' }), undefined],
      ['an error code outside the catalog shape', adminData({ outcome: 'error', error_code: 'boom' }), undefined],
      ['a raw credential as the actor', adminData({ actor: { kind: 'admin_token', id: 'the-admin-token' } }), undefined],
      ['a digest that is not sha256 hex', adminData({ arguments_digest: 'md5:abc' }), undefined],
      ['the arguments themselves', adminData({ arguments: { name: 'x' } }), undefined],
      ['an operation name with a slash', adminData({ operation: '../etc' }), undefined],
      ['a 1 MiB origin address', adminData({ origin: { address: MEGABYTE, host: null, request_id: null } }), undefined],
      ['a 1 MiB request id', adminData({ origin: { address: '127.0.0.1', host: null, request_id: MEGABYTE } }), undefined],
      ['a negative duration', adminData({ duration_ms: -1 }), undefined],
      ['an unknown transport', adminData({ transport: 'grpc' }), undefined],
    ])('rejects %s', (_name, data, type) => {
      expect(accepts(data, type)).toBe(false);
    });

    it('rejects __proto__ in data (closed object)', () => {
      expect(schemaAccepts(ADMIN, withRaw(envelopeFor('dev.caracal.admin.action.v1', adminData()), '__proto__', '{}', true))).toBe(false);
    });
  });

  describe('metering.event v1 (the gateway’s metering events)', () => {
    const text = (data: unknown) => json(envelopeFor(EVENT_TYPES.metering, data));
    /** [JSON Schema, parseEvent]: the two must always agree. */
    const verdicts = (data: unknown) => [schemaAccepts(METERING, text(data)), zodAccepts(text(data))];

    it('started_at is checked with zod’s own datetime pattern, the one the envelope’s time uses', () => {
      const properties = (ajv.getSchema(`${METERING}#/$defs/data`)!.schema as { properties: Record<string, { pattern?: string }> }).properties;
      const envelope = SCHEMAS.find((s) => s.file === 'cloudevent.v1.json')!.schema as { properties: { time: { pattern: string } } };
      expect(properties.started_at!.pattern).toBe(regexOf(MeteringDataSchema.shape.started_at)!.source);
      expect(properties.started_at!.pattern).toBe(envelope.properties.time.pattern);
    });

    it('accepts an exact LLM call, a plain HTTP call, and an aborted call whose cost is estimated', () => {
      const plainHttp = meteringData({ chain: [], token_id: null, resource: 'files', model: null, input_tokens: null, output_tokens: null, cached_input_tokens: null, cost_micros: 100 });
      const aborted = meteringData({
        exact: false,
        estimate_reason: 'the client aborted',
        outcome: 'aborted',
        output_tokens: null,
        cost_micros: 50_000,
        response_bytes: 0,
        duration_ms: 0.42,
        started_at: '2026-12-02T10:00:00Z',
      });
      for (const data of [meteringData(), plainHttp, aborted]) {
        expect(verdicts(data), describeErrors(METERING)).toEqual([true, true]);
        expect(validator(METERING)(JSON.parse(json(buildMeteringEvent('s', data)))), describeErrors(METERING)).toBe(true);
      }
      expect(verdicts(meteringData({ outcome: 'failed', upstream_status: null, model: 'gpt-x', input_tokens: null, output_tokens: null }))).toEqual([true, true]);
    });

    it('does not validate as another type, nor another type as it', () => {
      expect(validator(METERING)(JSON.parse(json(validDecision())))).toBe(false);
      expect(validator(DECISION)(JSON.parse(json(validMetering())))).toBe(false);
      expect(schemaAccepts(KNOWN_TO_ZOD, json(envelopeFor(EVENT_TYPES.decision, meteringData())))).toBe(false);
    });

    it.each([
      ['fractional micro-units', meteringData({ cost_micros: 0.5 })],
      ['a cost beyond 2^53 - 1', meteringData({ cost_micros: 2 ** 53 })],
      ['a negative cost', meteringData({ cost_micros: -1 })],
      ['a lowercase currency', meteringData({ currency: 'usd' })],
      ['a currency symbol', meteringData({ currency: '$' })],
      ['negative tokens', meteringData({ input_tokens: -1 })],
      ['fractional tokens', meteringData({ output_tokens: 1.5 })],
      ['more than 100,000,000 tokens', meteringData({ cached_input_tokens: 100_000_001 })],
      ['tokens as a string', meteringData({ input_tokens: '12' as never })],
      ['an unknown field', { ...meteringData(), tokens: { input: 1 } }],
      ['a missing field', { ...meteringData(), cached_input_tokens: undefined }],
      ['a missing principal', { ...meteringData(), principal_id: undefined }],
      ['an empty principal', meteringData({ principal_id: '' })],
      ['a started_at with an offset', meteringData({ started_at: '2026-12-02T11:00:00+01:00' })],
      ['a started_at without a zone', meteringData({ started_at: '2026-12-02T10:00:00' })],
      ['a started_at that is a date', meteringData({ started_at: '2026-12-02' })],
      ['a started_at on 29 February of a common year', meteringData({ started_at: '2026-02-29T10:00:00Z' })],
      ['an unknown outcome', meteringData({ outcome: 'cancelled' as never })],
      ['exact as a string', meteringData({ exact: 'true' as never })],
      ['a fractional upstream status', meteringData({ upstream_status: 200.5 })],
      ['a negative duration', meteringData({ duration_ms: -1 })],
      ['a chain of 65', meteringData({ chain: Array.from({ length: 65 }, (_, i) => `p-${i}`) })],
      ['an empty principal in the chain', meteringData({ chain: [''] })],
      ['an empty mandate id', meteringData({ mandate_ids: [''] })],
      ['a model of 257 characters', meteringData({ model: 'm'.repeat(257) })],
      ['an estimate reason of 257 characters', meteringData({ estimate_reason: 'r'.repeat(257) })],
    ])('both reject %s', (_name, data) => {
      expect(verdicts(data)).toEqual([false, false]);
    });
  });
});

describe('buildDecisionEvent (the gateway’s hand-checked builder) agrees with DecisionDataSchema', () => {
  const text = fc.oneof(fc.string(), fc.constant(''));
  const anyValue = fc.oneof(fc.string(), fc.constant(null), fc.constant(undefined), fc.integer(), fc.double(), fc.boolean(), fc.array(fc.oneof(fc.string(), fc.integer())), fc.object());
  /** Each field mostly well-typed, sometimes anything: both acceptances and refusals are exercised. */
  const field = <T>(good: fc.Arbitrary<T>) => fc.oneof({ arbitrary: good, weight: 6 }, { arbitrary: anyValue, weight: 1 });
  const textOrNull = fc.oneof(text, fc.constant(null));
  const data = fc.record({
    decision_id: field(text),
    request_id: field(text),
    principal_id: field(textOrNull),
    token_id: field(textOrNull),
    upstream: field(textOrNull),
    method: field(text),
    path: field(text),
    upstream_url: field(fc.oneof(textOrNull, fc.constant(undefined))),
    resource: field(textOrNull),
    action: field(textOrNull),
    allow: field(fc.boolean()),
    reasons: field(fc.array(fc.string())),
    policy_ids: field(fc.array(fc.string())),
    bundle_revision: field(textOrNull),
    status: field(fc.integer({ min: 100, max: 599 })),
  });
  /**
   * The optional fields (policy.recordInput, the shadow bundle): absent now and then, else mostly well-formed. Values are
   * JSON data (what the gateway records; `fc.object()` would put undefined in arrays, which no JSON round trip keeps).
   */
  const optional = <T>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<unknown>) =>
    fc.oneof({ arbitrary: fc.constant(undefined), weight: 3 }, { arbitrary: good, weight: 6 }, { arbitrary: bad, weight: 1 }, { arbitrary: fc.jsonValue({ maxDepth: 2 }), weight: 1 });
  const input = optional(
    fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
    fc.oneof(
      fc.constant([]),
      fc.constant(new Date(0)),
      fc.constant(new Map()),
      fc.constant(JSON.parse('{"__proto__":{"allow":true}}') as unknown),
      fc.constant({ constructor: class NotPlain {} }),
      fc.constant(Object.assign(Object.create(null) as object, { a: 1 })),
    ),
  );
  const redactions = optional(
    fc.array(fc.string({ minLength: 1, maxLength: 256 }), { maxLength: 64 }),
    fc.oneof(fc.constant(['']), fc.constant(['x'.repeat(257)]), fc.constant(Array.from({ length: 65 }, () => 'p')), fc.constant([1])),
  );
  const shadow = optional(
    fc.record({ revision: fc.string({ minLength: 1 }), allow: fc.boolean(), reasons: fc.array(fc.string()), agrees: fc.boolean() }),
    fc.oneof(
      fc.constant({ revision: '', allow: true, reasons: [], agrees: true }),
      fc.constant({ revision: 'r', allow: true, reasons: [], agrees: true, extra: 1 }),
      fc.constant({ revision: 'r', allow: true, reasons: [], extra: true }),
      fc.constant({ revision: 'r', allow: 'true', reasons: [], agrees: true }),
      fc.constant({ revision: 'r', allow: true, reasons: [1], agrees: true }),
    ),
  );
  const withOptional = fc.tuple(data, input, redactions, shadow).map(([raw, inputValue, redactionsValue, shadowValue]) => ({
    ...raw,
    ...(inputValue !== undefined ? { input: inputValue } : {}),
    ...(redactionsValue !== undefined ? { input_redactions: redactionsValue } : {}),
    ...(shadowValue !== undefined ? { shadow: shadowValue } : {}),
  }));

  it('throws exactly when the schema refuses, and what it builds parses back to the same data', () => {
    fc.assert(
      fc.property(withOptional, (raw) => {
        const expected = DecisionDataSchema.safeParse(raw);
        let built: ReturnType<typeof buildDecisionEvent> | undefined;
        try {
          built = buildDecisionEvent('test', raw as DecisionData);
        } catch {
          built = undefined;
        }
        expect(built !== undefined).toBe(expected.success);
        if (built && expected.success) {
          const parsed = parseEvent(JSON.stringify(built));
          expect(parsed.data).toEqual(expected.data);
          expect(Object.keys(parsed.data as object)).toEqual(Object.keys(built.data));
        }
      }),
      { numRuns: 2_000, seed: 20261202 },
    );
  });
});

describe('buildMeteringEvent (the gateway’s hand-checked builder) agrees with MeteringDataSchema', () => {
  const anyValue = fc.oneof(fc.string(), fc.constant(null), fc.constant(undefined), fc.integer(), fc.double(), fc.boolean(), fc.array(fc.oneof(fc.string(), fc.integer())), fc.object());
  /**
   * Each field mostly a value the schema accepts (its bounds included), sometimes one just outside them, now and then
   * anything: with 21 fields, about a quarter of the records are accepted and the rest are refused for one or two reasons.
   */
  const field = <T>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<unknown>) =>
    fc.oneof({ arbitrary: good, weight: 30 }, { arbitrary: bad, weight: 1 }, { arbitrary: anyValue, weight: 1 });
  const text = fc.string({ minLength: 1 });
  const anyText = fc.oneof(fc.string(), fc.constant(''));
  /** Up to 256 code points, in ASCII and in astral characters (two UTF-16 units each), or null. */
  const upTo256 = fc.oneof(
    fc.string({ maxLength: 8 }),
    fc.string({ minLength: 250, maxLength: 256 }),
    fc.string({ unit: fc.constantFrom('\u{1F600}', 'a'), minLength: 250, maxLength: 256 }),
    fc.constant(null),
  );
  const over256 = fc.oneof(fc.string({ minLength: 257, maxLength: 260 }), fc.string({ unit: fc.constantFrom('\u{1F600}', 'a'), minLength: 257, maxLength: 260 }));
  const count = fc.oneof(fc.nat(), fc.constantFrom(0, -0, Number.MAX_SAFE_INTEGER));
  const badCount = fc.constantFrom(-1, 0.5, 2 ** 53, 1e300);
  const tokens = fc.oneof(fc.integer({ min: 0, max: 100_000_000 }), fc.constantFrom(0, -0, 100_000_000), fc.constant(null));
  const isoTime = fc.date({ min: new Date('0000-01-01T00:00:00.000Z'), max: new Date('9999-12-31T23:59:59.999Z'), noInvalidDate: true }).map((date) => date.toISOString());
  const data = fc.record({
    decision_id: field(text, fc.constant('')),
    request_id: field(text, fc.constant('')),
    principal_id: field(text, fc.constant('')),
    token_id: field(fc.oneof(anyText, fc.constant(null)), fc.constant(1)),
    chain: field(fc.oneof(fc.array(text, { maxLength: 4 }), fc.array(text, { minLength: 60, maxLength: 64 })), fc.oneof(fc.array(text, { minLength: 65, maxLength: 66 }), fc.constant(['ok', '']))),
    mandate_ids: field(fc.oneof(fc.array(text, { maxLength: 4 }), fc.array(text, { minLength: 60, maxLength: 64 })), fc.oneof(fc.array(text, { minLength: 65, maxLength: 66 }), fc.constant(['ok', '']))),
    upstream: field(text, fc.constant('')),
    resource: field(anyText, fc.constant(null)),
    model: field(upTo256, over256),
    input_tokens: field(tokens, fc.constantFrom(-1, 1.5, 100_000_001)),
    output_tokens: field(tokens, fc.constantFrom(-1, 1.5, 100_000_001)),
    cached_input_tokens: field(tokens, fc.constantFrom(-1, 1.5, 100_000_001)),
    cost_micros: field(count, badCount),
    currency: field(fc.stringMatching(/^[A-Z]{3}$/), fc.constantFrom('usd', 'US', 'EURO', ' USD')),
    exact: field(fc.boolean(), fc.constant('true')),
    estimate_reason: field(upTo256, over256),
    outcome: field(fc.constantFrom('completed', 'failed', 'aborted'), fc.constant('cancelled')),
    upstream_status: field(fc.oneof(fc.integer({ min: 100, max: 599 }), fc.constantFrom(null, -Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER)), fc.constantFrom(200.5, '200', 2 ** 53)),
    request_bytes: field(count, badCount),
    response_bytes: field(count, badCount),
    duration_ms: field(fc.oneof(fc.double({ min: 0, max: Number.MAX_VALUE, noNaN: true }), fc.constantFrom(0, -0, 0.01)), fc.constantFrom(-1, -Number.MIN_VALUE, Number.NaN, Infinity)),
    started_at: field(
      fc.oneof(isoTime, fc.constantFrom('2026-12-02T10:00:00Z', '2026-12-02T10:00:00.123456789Z', '2024-02-29T23:59:59Z')),
      fc.constantFrom('2026-12-02T10:00:00+00:00', '2026-12-02', '2026-12-02T10:00Z', '+010000-01-01T00:00:00.000Z', '2026-02-29T10:00:00Z', '2026-12-02T24:00:00Z'),
    ),
  });
  /** Now and then a key removed or one added: the builder must see when the object is not exactly the schema's keys. */
  const maybe = <T>(arbitrary: fc.Arbitrary<T>) => fc.oneof({ arbitrary: fc.constant(undefined), weight: 20 }, { arbitrary, weight: 1 });
  const mangled = fc
    .tuple(data, maybe(fc.constantFrom(...Object.keys(MeteringDataSchema.shape))), maybe(fc.constantFrom('extra', 'toString', 'hasOwnProperty')))
    .map(([raw, drop, extra]) => {
      const copy: Record<string, unknown> = { ...raw };
      if (drop !== undefined) delete copy[drop];
      if (extra !== undefined) copy[extra] = 1;
      return copy;
    });

  it('throws exactly when the schema refuses, and what it builds parses back to the schema’s output', () => {
    fc.assert(
      fc.property(mangled, (raw) => {
        const expected = MeteringDataSchema.safeParse(raw);
        let built: ReturnType<typeof buildMeteringEvent> | undefined;
        try {
          built = buildMeteringEvent('test', raw as MeteringData);
        } catch {
          built = undefined;
        }
        expect(built !== undefined).toBe(expected.success);
        if (built && expected.success) {
          expect(built.subject).toBe(expected.data.principal_id);
          const parsed = parseEvent(JSON.stringify(built));
          // The schema's output as the event carries it: JSON writes -0 as 0.
          expect(parsed.data).toEqual(JSON.parse(JSON.stringify(expected.data)));
          expect(Object.keys(parsed.data as object)).toEqual(Object.keys(built.data));
        }
      }),
      { numRuns: 2_000, seed: 20261203 },
    );
  });

  // Values a shape-only check would let through although the schema refuses them.
  const NEAR_MISSES = [
    ['an upstream_status beyond 2^53 - 1', { upstream_status: 2 ** 53 }],
    ['an infinite duration_ms (written as null)', { duration_ms: Infinity }],
    ['a started_at on 30 February', { started_at: '2026-02-30T10:00:00Z' }],
    ['a started_at at hour 24', { started_at: '2026-12-02T24:00:00Z' }],
  ] as const;

  it.each(NEAR_MISSES)('the schema and the builder both refuse %s', (_name, overrides) => {
    const raw = meteringData(overrides as Partial<MeteringData>);
    expect(MeteringDataSchema.safeParse(raw).success).toBe(false);
    expect(() => buildMeteringEvent('test', raw)).toThrow();
  });
});

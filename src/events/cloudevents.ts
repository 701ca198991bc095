import { z } from 'zod';
import { newId } from '../util/ids.js';

/**
 * CloudEvents 1.0 envelopes (structured JSON mode). Each event type has a versioned data schema,
 * checked when an event is built and again when a consumer reads it.
 */
export const EVENT_TYPES = {
  decision: 'dev.caracal.policy.decision.v1',
  lifecycle: 'dev.caracal.agent.lifecycle.v1',
  dlq: 'dev.caracal.dlq.entry.v1',
  metering: 'dev.caracal.metering.event.v1',
} as const;

export const DecisionDataSchema = z
  .object({
    decision_id: z.string().min(1),
    request_id: z.string().min(1),
    principal_id: z.string().nullable(),
    token_id: z.string().nullable(),
    upstream: z.string().nullable(),
    method: z.string(),
    path: z.string(),
    /** The one upstream URL that was judged and (on an allow) sent; null when refused before it was built. */
    upstream_url: z.string().nullable().optional(),
    /** On decisions of MCP messages: the JSON-RPC method, the tool/prompt/resource named, a digest of the arguments. */
    mcp: z
      .object({
        method: z.string().min(1).max(256),
        name: z.string().max(2048).optional(),
        argument_digest: z.string().regex(/^[0-9a-f]{64}$/).optional(),
        /** The argument values themselves, only where the upstream is configured to record them (recordArguments). */
        arguments: z.record(z.string(), z.unknown()).optional(),
      })
      .strict()
      .optional(),
    resource: z.string().nullable(),
    action: z.string().nullable(),
    allow: z.boolean(),
    reasons: z.array(z.string()),
    policy_ids: z.array(z.string()),
    bundle_revision: z.string().nullable(),
    status: z.number().int(),
    /**
     * The policy input the decision was made on (policy.recordInput), so it can be replayed through another bundle
     * (`caracal bundle diff`). Absent when recording is off or the request was refused before an input was built.
     */
    input: z.record(z.string(), z.unknown()).optional(),
    /** Dot paths of `input` whose leaf values were replaced by "[redacted]": a replay may decide differently there. */
    input_redactions: z.array(z.string().min(1).max(256)).max(64).optional(),
    /** Set instead of `input` when the input was recorded but too large for the event (a replay counts it without input). */
    input_omitted: z.enum(['too_large']).optional(),
    /** The shadow bundle's decision on the same input (evaluated, never enforced), while a shadow revision is set. */
    shadow: z
      .object({
        revision: z.string().min(1),
        allow: z.boolean(),
        reasons: z.array(z.string()),
        /** Both the allow and the (sorted) reasons are the same as the enforced decision's. */
        agrees: z.boolean(),
      })
      .strict()
      .optional(),
  })
  .strict();

export const LifecycleDataSchema = z
  .object({
    entity: z.enum(['principal', 'policy', 'token', 'emergency', 'allowlist', 'budget', 'mandate']),
    action: z.string().min(1),
    principal_id: z.string().nullable(),
    entity_id: z.string().nullable(),
    attributes: z.record(z.string(), z.unknown()).default({}),
  })
  .strict();

/** A message a consumer could not process, with where it came from and why (the DLQ topic). */
export const DlqDataSchema = z
  .object({
    consumer_group: z.string().min(1),
    original: z
      .object({
        topic: z.string().min(1),
        partition: z.number().int().min(0),
        offset: z.string().regex(/^\d+$/),
        key: z.string().nullable(),
        value: z.string(),
        headers: z.record(z.string(), z.string()),
        /** The failed event's own id, when it could be read. */
        event_id: z.string().nullable(),
      })
      .strict(),
    error: z.string(),
    attempts: z.number().int().min(1),
  })
  .strict();

const tokenCount = z.number().int().min(0).max(100_000_000).nullable();

/**
 * What one allowed call cost (the `metering.events` topic): one event per call that was proxied, whether it completed,
 * failed or was aborted. The cost is the gateway's own, from its price table and its own reading of the usage.
 * `chain` lists the principals above the caller along its mandate chain (nearest first): every budget the call was
 * charged to belongs to `principal_id` or one of them. `started_at` dates the budget periods the call counted in.
 */
export const MeteringDataSchema = z
  .object({
    decision_id: z.string().min(1),
    request_id: z.string().min(1),
    principal_id: z.string().min(1),
    token_id: z.string().nullable(),
    chain: z.array(z.string().min(1)).max(64),
    /** The mandate the call was made under and its ancestors, nearest first (empty: no mandate): their own budgets were charged too. */
    mandate_ids: z.array(z.string().min(1)).max(64),
    upstream: z.string().min(1),
    resource: z.string(),
    /** The model the upstream reported (else the one requested); null for plain HTTP calls. */
    model: z.string().max(256).nullable(),
    input_tokens: tokenCount,
    output_tokens: tokenCount,
    cached_input_tokens: tokenCount,
    cost_micros: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    currency: z.string().regex(/^[A-Z]{3}$/),
    /** False when the cost is the reservation or a count of what was delivered, not the upstream's usage. */
    exact: z.boolean(),
    /** Why the cost is estimated (no usage in the stream, a usage block refused, the client aborted, …). */
    estimate_reason: z.string().max(256).nullable(),
    outcome: z.enum(['completed', 'failed', 'aborted']),
    upstream_status: z.number().int().nullable(),
    request_bytes: z.number().int().min(0),
    response_bytes: z.number().int().min(0),
    duration_ms: z.number().min(0),
    started_at: z.string().datetime({ offset: false }),
  })
  .strict();

export type MeteringData = z.infer<typeof MeteringDataSchema>;
export type DecisionData = z.infer<typeof DecisionDataSchema>;
export type DlqData = z.infer<typeof DlqDataSchema>;
export type LifecycleData = z.infer<typeof LifecycleDataSchema>;

const DATA_SCHEMAS = {
  [EVENT_TYPES.decision]: DecisionDataSchema,
  [EVENT_TYPES.lifecycle]: LifecycleDataSchema,
  [EVENT_TYPES.dlq]: DlqDataSchema,
  [EVENT_TYPES.metering]: MeteringDataSchema,
} as const;

type EventType = (typeof EVENT_TYPES)[keyof typeof EVENT_TYPES];

export const CloudEventSchema = z
  .object({
    specversion: z.literal('1.0'),
    id: z.string().min(1).max(128),
    type: z.string().min(1),
    source: z.string().min(1),
    time: z.string().datetime({ offset: false }),
    subject: z.string().optional(),
    datacontenttype: z.literal('application/json'),
    data: z.unknown(),
  })
  .strict();

export interface CloudEvent<Data = unknown> {
  specversion: '1.0';
  id: string;
  type: string;
  source: string;
  time: string;
  subject?: string;
  datacontenttype: 'application/json';
  data: Data;
}

export function buildEvent<T extends EventType>(
  type: T,
  source: string,
  subject: string | undefined,
  data: z.input<(typeof DATA_SCHEMAS)[T]>,
  now: Date = new Date(),
): CloudEvent<z.infer<(typeof DATA_SCHEMAS)[T]>> {
  const parsed = DATA_SCHEMAS[type].parse(data) as z.infer<(typeof DATA_SCHEMAS)[T]>;
  return {
    specversion: '1.0',
    id: newId(),
    type,
    source,
    time: now.toISOString(),
    ...(subject !== undefined ? { subject } : {}),
    datacontenttype: 'application/json',
    data: parsed,
  };
}

/**
 * `buildEvent` for the gateway's decision events, one per request: the data object is written
 * field by field (so it has the schema's keys, in the schema's order, and nothing else) and each
 * field is checked against `DecisionDataSchema` by hand, which is what a generic schema pass costs
 * most of its time finding out. A value the schema refuses throws, as `buildEvent` does.
 */
export function buildDecisionEvent(source: string, data: DecisionData, now: Date = new Date()): CloudEvent<DecisionData> {
  const checked: DecisionData = {
    decision_id: data.decision_id,
    request_id: data.request_id,
    principal_id: data.principal_id,
    token_id: data.token_id,
    upstream: data.upstream,
    method: data.method,
    path: data.path,
    upstream_url: data.upstream_url,
    resource: data.resource,
    action: data.action,
    allow: data.allow,
    reasons: data.reasons,
    policy_ids: data.policy_ids,
    bundle_revision: data.bundle_revision,
    status: data.status,
  };
  // Optional in the schema: absent, not undefined, as the schema's own output has it (never on the
  // gateway's path, which always knows the URL or that there is none).
  if (checked.upstream_url === undefined) delete checked.upstream_url;
  if (data.mcp !== undefined) checked.mcp = data.mcp;
  // In the schema's key order, after status; each only when present.
  if (data.input !== undefined) checked.input = data.input;
  if (data.input_redactions !== undefined) checked.input_redactions = data.input_redactions;
  if (data.input_omitted !== undefined) checked.input_omitted = data.input_omitted;
  if (data.shadow !== undefined) checked.shadow = data.shadow;
  // What the hand check doubts goes through the schema: it throws with its own message (so a refusal reads the same
  // whichever builder found it), or passes and its output (in the schema's key order) is the data.
  const result = decisionDataProblem(checked) === null ? checked : DecisionDataSchema.parse(checked);
  return {
    specversion: '1.0',
    id: newId(),
    type: EVENT_TYPES.decision,
    source,
    time: now.toISOString(),
    ...(result.principal_id !== null ? { subject: result.principal_id } : {}),
    datacontenttype: 'application/json',
    data: result,
  };
}

const isText = (value: unknown): value is string => typeof value === 'string';
const isTextOrNull = (value: unknown) => value === null || typeof value === 'string';
function isTextList(value: unknown): boolean {
  if (!Array.isArray(value)) return false;
  for (let i = 0; i < value.length; i++) if (typeof value[i] !== 'string') return false;
  return true;
}

/** The first field `DecisionDataSchema` would refuse, or null. */
function decisionDataProblem(data: DecisionData): string | null {
  if (!isText(data.decision_id) || data.decision_id.length === 0) return 'decision_id';
  if (!isText(data.request_id) || data.request_id.length === 0) return 'request_id';
  for (const key of ['principal_id', 'token_id', 'upstream', 'resource', 'action', 'bundle_revision'] as const) if (!isTextOrNull(data[key])) return key;
  if (!isText(data.method)) return 'method';
  if (!isText(data.path)) return 'path';
  if (data.upstream_url !== undefined && !isTextOrNull(data.upstream_url)) return 'upstream_url';
  // Rare (MCP decisions only): the schema checks it.
  if (data.mcp !== undefined) return 'mcp';
  if (typeof data.allow !== 'boolean') return 'allow';
  if (!isTextList(data.reasons)) return 'reasons';
  if (!isTextList(data.policy_ids)) return 'policy_ids';
  if (!Number.isSafeInteger(data.status)) return 'status';
  if (data.input !== undefined && !isPlainRecord(data.input)) return 'input';
  if (data.input_redactions !== undefined && !isRedactionList(data.input_redactions)) return 'input_redactions';
  if (data.input_omitted !== undefined && data.input_omitted !== 'too_large') return 'input_omitted';
  if (data.shadow !== undefined && !isShadow(data.shadow)) return 'shadow';
  return null;
}

/**
 * The policy input is a plain object the gateway built itself: its members are not walked (the schema does not walk
 * them either, they are `unknown`). What zod's record would refuse or change goes to the schema: a class instance, an
 * array, an own `constructor` (zod judges plainness by it) or an own `__proto__` (zod drops it).
 */
function isPlainRecord(value: unknown): boolean {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const prototype: unknown = Object.getPrototypeOf(value);
  return (prototype === Object.prototype || prototype === null) && !Object.hasOwn(value, 'constructor') && !Object.hasOwn(value, '__proto__');
}

function isRedactionList(value: unknown): boolean {
  if (!isTextList(value) || (value as string[]).length > 64) return false;
  for (const path of value as string[]) if (path.length === 0 || path.length > 256) return false;
  return true;
}

const SHADOW_KEYS = 4;
function isShadow(value: unknown): boolean {
  if (!isPlainRecord(value)) return false;
  const shadow = value as Record<string, unknown>;
  // Exactly the schema's keys (it is strict): four own keys, each of them one of the four.
  if (Object.keys(shadow).length !== SHADOW_KEYS) return false;
  if (!isText(shadow.revision) || shadow.revision.length === 0 || !Object.hasOwn(shadow, 'revision')) return false;
  if (typeof shadow.allow !== 'boolean' || !Object.hasOwn(shadow, 'allow')) return false;
  if (typeof shadow.agrees !== 'boolean' || !Object.hasOwn(shadow, 'agrees')) return false;
  return isTextList(shadow.reasons) && Object.hasOwn(shadow, 'reasons');
}

/**
 * A metering event, subject = the principal who made the call. One per priced call, so like `buildDecisionEvent` the
 * fields are checked by hand (the schema's own pass costs more than the rest of the event); a value the hand check
 * doubts goes through the schema, which throws with its own message — or passes, and then the schema's output is used.
 */
export function buildMeteringEvent(source: string, data: MeteringData, now: Date = new Date()): CloudEvent<MeteringData> {
  // A copy in the schema's key order, as the schema's own output would be (and safe from later changes by the caller).
  const checked: MeteringData = meteringDataLooksRight(data)
    ? {
        decision_id: data.decision_id,
        request_id: data.request_id,
        principal_id: data.principal_id,
        token_id: data.token_id,
        chain: [...data.chain],
        mandate_ids: [...data.mandate_ids],
        upstream: data.upstream,
        resource: data.resource,
        model: data.model,
        input_tokens: data.input_tokens,
        output_tokens: data.output_tokens,
        cached_input_tokens: data.cached_input_tokens,
        cost_micros: data.cost_micros,
        currency: data.currency,
        exact: data.exact,
        estimate_reason: data.estimate_reason,
        outcome: data.outcome,
        upstream_status: data.upstream_status,
        request_bytes: data.request_bytes,
        response_bytes: data.response_bytes,
        duration_ms: data.duration_ms,
        started_at: data.started_at,
      }
    : MeteringDataSchema.parse(data);
  return {
    specversion: '1.0',
    id: newId(),
    type: EVENT_TYPES.metering,
    source,
    time: now.toISOString(),
    subject: checked.principal_id,
    datacontenttype: 'application/json',
    data: checked,
  };
}

const METERING_KEYS = Object.keys(MeteringDataSchema.shape);
const isTokenCount = (value: unknown) => value === null || (Number.isInteger(value) && (value as number) >= 0 && (value as number) <= 100_000_000);
const isCount = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0;
/** `Date#toISOString`'s own form, and a real instant (no 30 February, no hour 24); any other form goes to the schema. */
const isUtcTime = (value: unknown) => typeof value === 'string' && value.length === 24 && value.endsWith('Z') && Number.isFinite(Date.parse(value)) && new Date(value).toISOString() === value;

/** True when `MeteringDataSchema` would accept `data` unchanged (false: let the schema decide). */
function meteringDataLooksRight(data: MeteringData): boolean {
  const keys = Object.keys(data);
  if (keys.length !== METERING_KEYS.length || !METERING_KEYS.every((key) => Object.hasOwn(data, key))) return false;
  for (const key of ['decision_id', 'request_id', 'principal_id', 'upstream'] as const) if (!isText(data[key]) || data[key].length === 0) return false;
  if (!isTextOrNull(data.token_id) || !isText(data.resource)) return false;
  if (data.model !== null && (!isText(data.model) || data.model.length > 256)) return false;
  if (!isTextList(data.chain) || data.chain.length > 64 || data.chain.some((id) => id.length === 0)) return false;
  if (!isTextList(data.mandate_ids) || data.mandate_ids.length > 64 || data.mandate_ids.some((id) => id.length === 0)) return false;
  if (!isTokenCount(data.input_tokens) || !isTokenCount(data.output_tokens) || !isTokenCount(data.cached_input_tokens)) return false;
  if (!isCount(data.cost_micros) || !isCount(data.request_bytes) || !isCount(data.response_bytes)) return false;
  if (!isText(data.currency) || !/^[A-Z]{3}$/.test(data.currency) || typeof data.exact !== 'boolean') return false;
  if (data.estimate_reason !== null && (!isText(data.estimate_reason) || data.estimate_reason.length > 256)) return false;
  if (data.outcome !== 'completed' && data.outcome !== 'failed' && data.outcome !== 'aborted') return false;
  if (data.upstream_status !== null && !Number.isSafeInteger(data.upstream_status)) return false;
  if (typeof data.duration_ms !== 'number' || !Number.isFinite(data.duration_ms) || !(data.duration_ms >= 0)) return false;
  return isUtcTime(data.started_at);
}

export class EventSchemaError extends Error {
  override name = 'EventSchemaError';
}

/** Parses and validates an event read from a topic; throws EventSchemaError (not retriable). */
export function parseEvent(raw: string): CloudEvent {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new EventSchemaError('event is not valid JSON');
  }
  const envelope = CloudEventSchema.safeParse(json);
  if (!envelope.success) throw new EventSchemaError(`invalid CloudEvent: ${envelope.error.issues[0]?.path.join('.')} ${envelope.error.issues[0]?.message}`);
  // Own keys only: `constructor` or `__proto__` as a type must not find Object.prototype's members.
  const schema = Object.hasOwn(DATA_SCHEMAS, envelope.data.type) ? DATA_SCHEMAS[envelope.data.type as EventType] : undefined;
  if (!schema) throw new EventSchemaError(`unknown event type ${envelope.data.type}`);
  const data = schema.safeParse(envelope.data.data);
  if (!data.success) throw new EventSchemaError(`invalid ${envelope.data.type} data: ${data.error.issues[0]?.path.join('.')} ${data.error.issues[0]?.message}`);
  return { ...(envelope.data as CloudEvent), data: data.data };
}

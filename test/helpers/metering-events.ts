import { buildMeteringEvent, type CloudEvent, type MeteringData } from '../../src/events/cloudevents.js';
import { newId } from '../../src/util/ids.js';

/**
 * A metering event as the gateway writes one, for tests of what reads them (reconcile, the metrics aggregator, spend
 * queries): a completed plain call of `principalId` costing `costMicros`, with fresh ids; `overrides` set any field.
 */
export function meteringEvent(principalId: string, costMicros: number, overrides: Partial<MeteringData> = {}, time?: Date): CloudEvent<MeteringData> {
  const upstream = overrides.upstream ?? 'paid';
  return buildMeteringEvent(
    'caracal/test',
    {
      decision_id: newId(),
      request_id: newId(),
      principal_id: principalId,
      token_id: null,
      chain: [],
      mandate_ids: [],
      upstream,
      resource: `api:external/${upstream}`,
      model: null,
      input_tokens: null,
      output_tokens: null,
      cached_input_tokens: null,
      cost_micros: costMicros,
      currency: 'USD',
      exact: true,
      estimate_reason: null,
      outcome: 'completed',
      upstream_status: 200,
      request_bytes: 0,
      response_bytes: 12,
      duration_ms: 3,
      started_at: (time ?? new Date()).toISOString(),
      ...overrides,
    },
    time,
  );
}

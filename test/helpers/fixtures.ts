import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { buildEvent, EVENT_TYPES, type CloudEvent, type DecisionData } from '../../src/events/cloudevents.js';
import { POLICIES_DIR } from '../../src/paths.js';
import type { DecisionInput } from '../../src/policy/engine.js';

/** policies/fixtures/decisions.yaml: input → expected decision, shared by the WASM and opa eval tests (and `caracal policy test`). */
export interface Fixture {
  name: string;
  input: unknown;
  expected: { allow: boolean; reasons: string[]; policy_ids?: string[] };
}

export async function loadFixtures(): Promise<Fixture[]> {
  // YAML 1.1, as `opa test` reads it when it loads the file as data.fixtures.
  return parseYaml(await readFile(path.join(POLICIES_DIR, 'fixtures', 'decisions.yaml'), 'utf8'), { version: '1.1' }) as Fixture[];
}

/** A well-formed input the policy allows. */
export const validInput: DecisionInput = {
  principal: { id: 'agent-1', status: 'active', kind: 'agent' },
  policies: [{ id: 'p-ext', resources: ['api:external/*'], actions: ['read'] }],
  request: { upstream: 'echo', method: 'GET', path: '/v1', resource: 'api:external/echo', action: 'read' },
  mandate: null,
  allowlist: { checked: true, matched: true, entry_id: 'al-1' },
  emergency: { global: false, principal: false },
  now: 1767225600,
};

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` every 20 ms until it holds, or fails naming `what` after `timeoutMs`. */
export async function waitUntil(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** A well-formed decision event (a denial) with ids `<key>-<suffix>`, for consumer tests that publish events directly. */
export function decisionEvent(key: string, suffix: string): CloudEvent<DecisionData> {
  return buildEvent(EVENT_TYPES.decision, 'test', key, {
    decision_id: `${key}-${suffix}`,
    request_id: `${key}-${suffix}`,
    principal_id: key,
    token_id: null,
    upstream: null,
    method: 'GET',
    path: '/',
    resource: null,
    action: null,
    allow: false,
    reasons: ['test'],
    policy_ids: [],
    bundle_revision: null,
    status: 403,
  }) as CloudEvent<DecisionData>;
}

/**
 * MCP decisions through the compiled WASM: the core policy (policies/caracal) with the
 * code-hosting example (policies/examples/code-hosting) contributing to its extension point
 * `extra_deny_reasons`, built the way a team would bundle its own rules (one folder, see
 * policies/examples/code-hosting/README.md).
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { DEFAULT_BUNDLE, POLICIES_DIR } from '../../src/paths.js';
import { buildBundle, readBundle } from '../../src/policy/bundle.js';
import { type Decision, type DecisionInput, PolicyEngine } from '../../src/policy/engine.js';
import { loadFixtures } from '../helpers/fixtures.js';
import { requireServices } from '../helpers/services.js';

const fixtures = await loadFixtures();

const NOW = 1767225600;

const active = { id: 'agent-1', status: 'active', kind: 'agent' };

/** A grant on every tool of the `code` server (the mandate's root policy too). */
const codeAll = { id: 'p-code', resources: ['mcp:code/*'], actions: ['call'], max_validity_seconds: 3600, delegation_depth: 1 };

const mandate = {
  id: 'm-1',
  subject: 'agent-1',
  depth: 0,
  resources: ['mcp:code/*'],
  actions: ['call'],
  not_before: NOW - 600,
  expires_at: NOW + 3600,
  revoked: false,
  root_policy_id: 'p-code',
  chain: [],
};

function input(request: Record<string, unknown>, over: Record<string, unknown> = {}): DecisionInput {
  return {
    principal: active,
    policies: [codeAll],
    request,
    mandate: null,
    emergency: { global: false, principal: false },
    allowlist: { checked: true, matched: true, entry_id: 'al-1' },
    now: NOW,
    ...over,
  } as unknown as DecisionInput;
}

function call(tool: string, args: unknown, server = 'code'): Record<string, unknown> {
  return { upstream: server, resource: `mcp:${server}/${tool}`, action: 'call', tool, arguments: args, mcp_method: 'tools/call' };
}

/** tools/list filtering: one decision per listed tool, `listing: true` and no `arguments`. */
function listing(tool: string): Record<string, unknown> {
  return { upstream: 'code', resource: `mcp:code/${tool}`, action: 'call', tool, listing: true };
}

function session(server = 'code', method = 'initialize'): Record<string, unknown> {
  return { upstream: server, resource: `mcp:${server}`, action: 'session', mcp_method: method };
}

function plain(d: Decision): { allow: boolean; reasons: string[]; policy_ids: string[] } {
  return { allow: d.allow, reasons: d.reasons, policy_ids: d.policyIds };
}

const allowed = { allow: true, reasons: [], policy_ids: ['p-code'] };
const denied = (...reasons: string[]) => ({ allow: false, reasons, policy_ids: [] });

/** A fixture that is not about MCP: an `api:` resource and not a session. */
function nonMcp(f: { input: unknown }): boolean {
  const request = (f.input as { request?: { resource?: unknown; action?: unknown } } | null)?.request;
  const resource = request?.resource;
  return !(typeof resource === 'string' && resource.startsWith('mcp:')) && request?.action !== 'session';
}

describe('MCP decisions: core policy + code-hosting example, compiled to WASM', () => {
  let tmp: string;
  let withExample: PolicyEngine;
  let coreOnly: PolicyEngine;
  let bundleFiles: string[];

  beforeAll(async () => {
    const { opaBin } = requireServices();
    tmp = await mkdtemp(path.join(os.tmpdir(), 'caracal-policy-mcp-'));

    // A team's policies folder: the core policy plus its own rule sets, one subfolder each.
    const team = path.join(tmp, 'team-policies');
    await cp(path.join(POLICIES_DIR, 'caracal'), path.join(team, 'caracal'), { recursive: true });
    await cp(path.join(POLICIES_DIR, 'examples', 'code-hosting'), path.join(team, 'code-hosting'), { recursive: true });
    const built = await buildBundle({ opaBin, policiesDir: team, outFile: path.join(tmp, 'team.tar.gz'), revision: 'test-mcp' });
    bundleFiles = [...(await readBundle(built.outFile)).files.keys()].sort();
    withExample = await PolicyEngine.fromBundleFile(built.outFile);

    // The core policy alone: nothing contributes to the extension point.
    const core = path.join(tmp, 'core-policies');
    await cp(path.join(POLICIES_DIR, 'caracal'), path.join(core, 'caracal'), { recursive: true });
    const builtCore = await buildBundle({ opaBin, policiesDir: core, outFile: path.join(tmp, 'core.tar.gz'), revision: 'test-core' });
    coreOnly = await PolicyEngine.fromBundleFile(builtCore.outFile);
  });

  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  const decide = (inp: DecisionInput) => {
    const d = withExample.evaluate(inp);
    expect(d.outcome).toBe('result');
    return plain(d);
  };

  it('bundles the example module next to the core policy, without its tests or README', () => {
    expect(bundleFiles).toEqual(['.manifest', 'caracal/authz.rego', 'code-hosting/code_hosting.rego', 'data.json', 'policy.wasm']);
  });

  it('read_file: allowed under /public/, denied elsewhere with the reason', () => {
    expect(decide(input(call('read_file', { path: '/public/x' })))).toEqual(allowed);
    expect(decide(input(call('read_file', { path: '/public/docs/a.md' })))).toEqual(allowed);
    expect(decide(input(call('read_file', { path: '/private/x' })))).toEqual(denied('mcp_argument_not_allowed'));
  });

  it('read_file stays listed in tools/list (no arguments)', () => {
    expect(decide(input(listing('read_file')))).toEqual(allowed);
    // a listing flag with arguments is judged as a call
    expect(decide(input({ ...call('read_file', { path: '/private/x' }), listing: true }))).toEqual(denied('mcp_argument_not_allowed'));
  });

  it('read_file: traversal, encoded separators and odd arguments deny rather than err', () => {
    const odd: unknown[] = [
      { path: '/public/../private/x' },
      { path: '/public/a/../../etc/passwd' },
      { path: '/public/..%2fprivate' },
      { path: '/public/..%2Fprivate' },
      { path: '/public/%2e%2e/x' },
      { path: '/public/a\\..\\b' },
      { path: 7 },
      { path: null },
      { path: ['/public/x'] },
      {},
      null,
      '/public/x',
      ['/public/x'],
    ];
    for (const args of odd) {
      expect(decide(input(call('read_file', args))), JSON.stringify(args)).toEqual(denied('mcp_argument_not_allowed'));
    }
    const { arguments: _omitted, ...noArguments } = call('read_file', {});
    expect(decide(input(noArguments))).toEqual(denied('mcp_argument_not_allowed'));
  });

  it('delete_repo is always denied, listing and mandate included; unknown tools too', () => {
    expect(decide(input(call('delete_repo', { repo: 'x' })))).toEqual(denied('mcp_tool_forbidden'));
    expect(decide(input(call('delete_repo', { repo: 'x' }), { mandate }))).toEqual(denied('mcp_tool_forbidden'));
    expect(decide(input(listing('delete_repo')))).toEqual(denied('mcp_tool_forbidden'));
    expect(decide(input(call('exec', {})))).toEqual(denied('mcp_tool_unknown'));
  });

  it('write_file: denied without a mandate, allowed with a valid one', () => {
    const write = call('write_file', { path: '/public/x', content: 'hi' });
    expect(decide(input(write))).toEqual(denied('mcp_write_requires_mandate'));
    expect(decide(input(listing('write_file')))).toEqual(denied('mcp_write_requires_mandate'));
    expect(decide(input(write, { mandate }))).toEqual(allowed);
    expect(decide(input(call('create_branch', { name: 'b' }), { mandate }))).toEqual(allowed);
    // valid is the core policy's job
    expect(decide(input(write, { mandate: { ...mandate, expires_at: NOW } }))).toEqual(denied('mandate_expired'));
  });

  it('search_code and list_files follow the grants', () => {
    expect(decide(input(call('search_code', { query: 'TODO' })))).toEqual(allowed);
    expect(decide(input(call('list_files', { path: '/' })))).toEqual(allowed);
    expect(decide(input(call('read_file', { path: '/public/x' }), { policies: [{ id: 'p-gh', resources: ['mcp:github/*'], actions: ['call'] }] }))).toEqual(
      denied('scope_resource'),
    );
  });

  it('a session on mcp:code needs a grant on that server', () => {
    expect(decide(input(session()))).toEqual(allowed);
    expect(decide(input(session('code', 'ping'), { policies: [{ id: 'p-one', resources: ['mcp:code/read_file'], actions: ['call'] }] }))).toEqual({
      allow: true,
      reasons: [],
      policy_ids: ['p-one'],
    });
    for (const resources of [['mcp:codex/*'], ['api:external/*'], ['mcp:codex/**', 'api:external/**']]) {
      expect(decide(input(session(), { policies: [{ id: 'p-other', resources, actions: ['*'] }] })), resources.join(',')).toEqual(
        denied('scope_resource'),
      );
    }
    expect(decide(input(session(), { mandate }))).toEqual(allowed);
    expect(decide(input(session(), { mandate: { ...mandate, resources: ['mcp:codex/*'] } }))).toEqual(denied('scope_resource'));
  });

  it('the core policy alone decides MCP the same way, minus the example rules', () => {
    const core = (inp: DecisionInput) => plain(coreOnly.evaluate(inp));
    expect(core(input(call('read_file', { path: '/private/x' })))).toEqual(allowed);
    expect(core(input(call('delete_repo', {})))).toEqual(allowed);
    expect(core(input(session()))).toEqual(allowed);
    expect(core(input(session(), { policies: [{ id: 'p-x', resources: ['mcp:codex/*'], actions: ['call'] }] }))).toEqual(denied('scope_resource'));
  });

  it('every fixture decides as expected with and without the example (it only touches mcp:code)', () => {
    for (const f of fixtures) {
      const inp = f.input as DecisionInput;
      for (const [which, engine] of [
        ['with example', withExample],
        ['core only', coreOnly],
      ] as const) {
        const d = engine.evaluate(inp);
        expect({ allow: d.allow, reasons: d.reasons }, `${which}: ${f.name}`).toEqual({ allow: f.expected.allow, reasons: f.expected.reasons });
        if (f.expected.policy_ids !== undefined) expect(d.policyIds, `${which}: ${f.name}`).toEqual(f.expected.policy_ids);
      }
    }
  });

  it('non-MCP requests decide exactly as with the committed default bundle', async () => {
    const committed = await PolicyEngine.fromBundleFile(DEFAULT_BUNDLE);
    const plainFixtures = fixtures.filter(nonMcp);
    expect(plainFixtures.length).toBeGreaterThanOrEqual(60);
    for (const f of plainFixtures) {
      const inp = f.input as DecisionInput;
      const expected = plain(committed.evaluate(inp));
      expect(plain(withExample.evaluate(inp)), f.name).toEqual(expected);
      expect(plain(coreOnly.evaluate(inp)), f.name).toEqual(expected);
    }
  });
});

import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CaracalError } from '../../src/errors/catalog.js';
import { parseTar, readBundle } from '../../src/policy/bundle.js';
import {
  type DecisionInput,
  decisionFromResultSet,
  ENGINE_REASONS,
  PolicyEngine,
  type WasmPolicy,
} from '../../src/policy/engine.js';
import { DEFAULT_BUNDLE } from '../../src/paths.js';
import { loadFixtures, validInput } from '../helpers/fixtures.js';

const fixtures = await loadFixtures();

// --- a minimal ustar writer, to build hostile archives --------------------------------------------

function tarHeader(name: string, size: number, type = '0'): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, 'utf8');
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h.write(type, 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

function tar(entries: { name: string; body?: Buffer | string; type?: string }[], end = true): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    parts.push(tarHeader(e.name, body.length, e.type));
    parts.push(body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  if (end) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

// --- the committed default bundle through the real WASM ------------------------------------------

describe('PolicyEngine with the committed default bundle', () => {
  let engine: PolicyEngine;
  beforeAll(async () => {
    engine = await PolicyEngine.fromBundleFile(DEFAULT_BUNDLE);
  });

  it('carries the git commit it was built from as its revision', () => {
    expect(engine.revision).toMatch(/^[0-9a-f]{40}$/);
  });

  it('has at least 20 fixtures covering every reason code', () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(20);
    const reasons = new Set(fixtures.flatMap((f) => f.expected.reasons));
    for (const code of [
      'principal_unknown',
      'principal_suspended',
      'no_policy',
      'scope_resource',
      'scope_action',
      'input_invalid',
    ]) {
      expect(reasons).toContain(code);
    }
    expect(fixtures.some((f) => f.expected.allow)).toBe(true);
  });

  it.each(fixtures.map((f) => [f.name, f] as const))('fixture: %s', (_name, fixture) => {
    const d = engine.evaluate(fixture.input as DecisionInput);
    expect(d.outcome).toBe('result');
    expect(d.allow).toBe(fixture.expected.allow);
    expect(d.reasons).toEqual(fixture.expected.reasons);
    if (fixture.expected.policy_ids !== undefined) expect(d.policyIds).toEqual(fixture.expected.policy_ids);
    if (!d.allow) {
      expect(d.reasons.length).toBeGreaterThan(0);
      expect(d.policyIds).toEqual([]);
    }
  });

  it('never throws on inputs opa-wasm cannot serialise', () => {
    const cyclic: Record<string, unknown> = { ...validInput };
    cyclic.self = cyclic;
    for (const bad of [cyclic, { ...validInput, big: 10n }]) {
      const d = engine.evaluate(bad as unknown as DecisionInput);
      expect(d).toMatchObject({ allow: false, reasons: [ENGINE_REASONS.error], outcome: 'error' });
      expect(d.error).toBeInstanceOf(Error);
    }
    expect(engine.evaluate(null as unknown as DecisionInput)).toMatchObject({ allow: false, outcome: 'result' });
    expect(engine.evaluate(validInput)).toMatchObject({ allow: true, policyIds: ['p-ext'] });
  });

  it('denies when the capped WASM memory is exhausted, then keeps working', async () => {
    const small = await PolicyEngine.fromBundle(await readBundle(DEFAULT_BUNDLE), {
      initialMemoryPages: 16,
      maximumMemoryPages: 32, // 2 MiB
    });
    const huge = { ...validInput, padding: 'x'.repeat(4 * 1024 * 1024) };
    const d = small.evaluate(huge);
    expect(d).toMatchObject({ allow: false, reasons: [ENGINE_REASONS.error], policyIds: [], outcome: 'error' });
    expect(small.wasmMemoryBytes).toBeLessThanOrEqual(32 * 65536);
    expect(small.evaluate(validInput)).toMatchObject({ allow: true, reasons: [], outcome: 'result' });
  });

  it('rejects invalid memory settings', async () => {
    const bundle = await readBundle(DEFAULT_BUNDLE);
    await expect(PolicyEngine.fromBundle(bundle, { initialMemoryPages: 8, maximumMemoryPages: 4 })).rejects.toThrow(
      /memory pages/,
    );
  });
});

// --- outcome mapping with stand-in policies -----------------------------------------------------

function standIn(evaluate: (input: unknown) => unknown): WasmPolicy {
  return { entrypoints: { 'caracal/authz/decision': 0 }, evaluate };
}

function engineReturning(value: unknown): PolicyEngine {
  return PolicyEngine.fromLoadedPolicy(standIn(() => value), { revision: 'test' });
}

describe('PolicyEngine outcome mapping', () => {
  it('allows only a well-formed explicit allow: true', () => {
    const d = engineReturning([{ result: { allow: true, reasons: [], policy_ids: ['p1'] } }]).evaluate(validInput);
    expect(d).toEqual({ allow: true, reasons: [], policyIds: ['p1'], outcome: 'result' });
  });

  it('passes a well-formed deny through with the policy reasons and no policy ids', () => {
    const d = engineReturning([{ result: { allow: false, reasons: ['scope_action'], policy_ids: ['leaked'] } }]).evaluate(
      validInput,
    );
    expect(d).toEqual({ allow: false, reasons: ['scope_action'], policyIds: [], outcome: 'result' });
  });

  it('maps a thrown string to engine_error and wraps it in an Error', () => {
    const engine = PolicyEngine.fromLoadedPolicy(
      standIn(() => {
        throw 'opa_abort: var assignment conflict';
      }),
    );
    const d = engine.evaluate(validInput);
    expect(d).toMatchObject({ allow: false, reasons: ['engine_error'], policyIds: [], outcome: 'error' });
    expect(d.error).toBeInstanceOf(Error);
    expect(d.error?.message).toBe('opa_abort: var assignment conflict');
  });

  it('maps thrown errors and unserialisable thrown values to engine_error', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    for (const thrown of [new RangeError('WebAssembly.Memory.grow(): Maximum memory size exceeded'), cyclic, 1n, undefined]) {
      const engine = PolicyEngine.fromLoadedPolicy(
        standIn(() => {
          throw thrown;
        }),
      );
      expect(engine.evaluate(validInput)).toMatchObject({ allow: false, reasons: ['engine_error'], outcome: 'error' });
    }
  });

  it.each([
    ['null', null],
    ['undefined', undefined],
    ['an empty result set', []],
    ['an entry without result', [{}]],
  ])('maps %s to engine_undefined', (_label, value) => {
    expect(engineReturning(value).evaluate(validInput)).toEqual({
      allow: false,
      reasons: ['engine_undefined'],
      policyIds: [],
      outcome: 'undefined',
    });
  });

  it.each([
    ['allow as the string "true"', [{ result: { allow: 'true', reasons: [], policy_ids: [] } }]],
    ['allow as 1', [{ result: { allow: 1, reasons: [], policy_ids: [] } }]],
    ['allow missing', [{ result: { reasons: [], policy_ids: [] } }]],
    ['reasons not an array', [{ result: { allow: true, reasons: 'none', policy_ids: [] } }]],
    ['reasons with a number', [{ result: { allow: false, reasons: ['a', 1], policy_ids: [] } }]],
    ['policy_ids missing', [{ result: { allow: true, reasons: [] } }]],
    ['policy_ids with null', [{ result: { allow: true, reasons: [], policy_ids: [null] } }]],
    ['a bare boolean result', [{ result: true }]],
    ['an array result', [{ result: [true] }]],
    ['two results', [{ result: { allow: true, reasons: [], policy_ids: [] } }, { result: { allow: true, reasons: [], policy_ids: [] } }]],
    ['a non-array result set', { result: { allow: true, reasons: [], policy_ids: [] } }],
    ['a string result set', 'allow'],
    ['a null entry', [null]],
  ])('maps %s to engine_malformed_result', (_label, value) => {
    expect(engineReturning(value).evaluate(validInput)).toEqual({
      allow: false,
      reasons: ['engine_malformed_result'],
      policyIds: [],
      outcome: 'malformed',
    });
  });

  it('treats a result whose inspection throws as an engine error', () => {
    const hostile = [
      {
        get result(): never {
          throw new Error('getter');
        },
      },
    ];
    expect(engineReturning(hostile).evaluate(validInput)).toMatchObject({ allow: false, reasons: ['engine_error'] });
  });

  it('returns fresh deny objects, so a caller mutating one cannot affect the next', () => {
    const engine = engineReturning([]);
    const first = engine.evaluate(validInput);
    first.reasons.push('mutated');
    expect(engine.evaluate(validInput).reasons).toEqual(['engine_undefined']);
  });

  it('passes the input object and the resolved entrypoint id to opa-wasm untouched', () => {
    const calls: unknown[][] = [];
    const policy: WasmPolicy = {
      entrypoints: { other: 0, 'caracal/authz/decision': 3 },
      evaluate: (...args: unknown[]) => {
        calls.push(args);
        return [{ result: { allow: true, reasons: [], policy_ids: [] } }];
      },
    };
    PolicyEngine.fromLoadedPolicy(policy).evaluate(validInput);
    expect(calls).toHaveLength(1);
    expect(calls[0]![0]).toBe(validInput);
    expect(calls[0]![1]).toBe(3);
  });

  it('refuses a policy without the decision entrypoint at load time', () => {
    expect(() => PolicyEngine.fromLoadedPolicy({ entrypoints: { 'x/y': 0 }, evaluate: () => [] })).toThrow(CaracalError);
    expect(() => PolicyEngine.fromLoadedPolicy({ entrypoints: { 'x/y': 0 }, evaluate: () => [] })).toThrow(
      /no entrypoint caracal\/authz\/decision/,
    );
  });

  it('decisionFromResultSet is pure and total', () => {
    expect(decisionFromResultSet([{ result: { allow: true, reasons: [], policy_ids: [] } }]).allow).toBe(true);
    expect(decisionFromResultSet(42).outcome).toBe('malformed');
  });
});

// --- hostile bundle files ------------------------------------------------------------------------

describe('readBundle on hostile files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function write(name: string, bytes: Buffer): Promise<string> {
    const file = path.join(dir, name);
    await writeFile(file, bytes);
    return file;
  }

  it('reads the committed bundle: wasm, data, manifest with revision and entrypoint', async () => {
    const b = await readBundle(DEFAULT_BUNDLE);
    expect(b.wasm.subarray(0, 4)).toEqual(Buffer.from([0x00, 0x61, 0x73, 0x6d]));
    expect(b.data).toEqual({});
    expect(b.manifest.revision).toMatch(/^[0-9a-f]{40}$/);
    expect(b.manifest.wasm).toEqual([{ entrypoint: 'caracal/authz/decision', module: '/policy.wasm' }]);
    // Only Rego is bundled: no tests, fixtures or docs.
    const names = [...b.files.keys()].sort();
    expect(names).toEqual(['.manifest', 'caracal/authz.rego', 'data.json', 'policy.wasm']);
  });

  it('rejects a file that is not gzip', async () => {
    const file = await write('garbage.tar.gz', Buffer.from('this is not a bundle at all, just some text'));
    await expect(readBundle(file)).rejects.toThrow(/not a gzip file/);
  });

  it('rejects an empty file and a missing file', async () => {
    await expect(readBundle(await write('empty.tar.gz', Buffer.alloc(0)))).rejects.toThrow(/not a gzip file/);
    await expect(readBundle(path.join(dir, 'nope.tar.gz'))).rejects.toThrow(/cannot read/);
  });

  it('rejects a truncated gzip stream', async () => {
    const real = await readFile(DEFAULT_BUNDLE);
    const file = await write('truncated.tar.gz', real.subarray(0, Math.floor(real.length / 2)));
    await expect(readBundle(file)).rejects.toThrow(/truncated gzip/);
  });

  it('rejects a corrupt gzip stream', async () => {
    const real = Buffer.from(await readFile(DEFAULT_BUNDLE));
    real.fill(0x55, 20, 200);
    await expect(readBundle(await write('corrupt.tar.gz', real))).rejects.toThrow(/gzip/);
  });

  it('rejects a gzip that is not a tar', async () => {
    await expect(readBundle(await write('notatar.tar.gz', gzipSync(Buffer.alloc(2048, 0x41))))).rejects.toThrow(
      /not a tar archive/,
    );
    const zeros = Buffer.alloc(1024);
    const badSum = tar([{ name: 'policy.wasm', body: 'x' }]);
    badSum[0] = 0x71; // change the name after the checksum was computed
    await expect(readBundle(await write('badsum.tar.gz', gzipSync(Buffer.concat([badSum, zeros]))))).rejects.toThrow(
      /checksum mismatch/,
    );
  });

  it.each([
    ['../evil', '../evil'],
    ['a/../../evil', 'a/../../evil'],
    ['/../policy.wasm', '/../policy.wasm'],
    ['//etc/passwd', '//etc/passwd'],
    ['C:/evil', 'C:/evil'],
    ['a\\..\\evil', 'a\\..\\evil'],
  ])('rejects a member path %s', async (_label, name) => {
    const file = await write('escape.tar.gz', gzipSync(tar([{ name, body: 'x' }])));
    await expect(readBundle(file)).rejects.toThrow(/unsafe member path/);
  });

  it('rejects links and other non-regular entries', async () => {
    for (const type of ['1', '2', '3', '4', '6']) {
      const file = await write(`link-${type}.tar.gz`, gzipSync(tar([{ name: 'policy.wasm', type }])));
      await expect(readBundle(file)).rejects.toThrow(/unsupported type/);
    }
  });

  it('rejects duplicate members', async () => {
    const t = tar([
      { name: '/policy.wasm', body: 'a' },
      { name: 'policy.wasm', body: 'b' },
    ]);
    await expect(readBundle(await write('dup.tar.gz', gzipSync(t)))).rejects.toThrow(/duplicate/);
  });

  it('rejects a tar truncated inside an entry or without its end marker', async () => {
    const whole = tar([{ name: 'policy.wasm', body: Buffer.alloc(2000, 1) }]);
    await expect(readBundle(await write('cut.tar.gz', gzipSync(whole.subarray(0, 1024))))).rejects.toThrow(/truncated/);
    const noEnd = tar([{ name: 'policy.wasm', body: 'x' }], false);
    await expect(readBundle(await write('noend.tar.gz', gzipSync(noEnd)))).rejects.toThrow(/end-of-archive/);
  });

  it('rejects a bundle without a WASM module', async () => {
    const t = tar([
      { name: '/data.json', body: '{}' },
      { name: '/.manifest', body: '{"revision":"r1"}' },
    ]);
    await expect(readBundle(await write('nowasm.tar.gz', gzipSync(t)))).rejects.toThrow(/no WASM module/);
  });

  it('rejects bad JSON in the manifest or data', async () => {
    const badManifest = tar([
      { name: '/policy.wasm', body: 'x' },
      { name: '/.manifest', body: '{' },
    ]);
    await expect(readBundle(await write('badman.tar.gz', gzipSync(badManifest)))).rejects.toThrow(/\.manifest/);
    const badData = tar([
      { name: '/policy.wasm', body: 'x' },
      { name: '/data.json', body: '[1]' },
    ]);
    await expect(readBundle(await write('baddata.tar.gz', gzipSync(badData)))).rejects.toThrow(/data\.json/);
  });

  it('caps the uncompressed size (a gzip bomb)', async () => {
    const bomb = gzipSync(Buffer.alloc(65 * 1024 * 1024), { level: 9 });
    expect(bomb.length).toBeLessThan(1024 * 1024);
    await expect(readBundle(await write('bomb.tar.gz', bomb))).rejects.toThrow(/uncompressed size exceeds/);
  });

  it('reads PAX long names and nested data.json like OPA', async () => {
    const long = `${'d'.repeat(120)}/data.json`;
    const pax = `path=${long}\n`;
    let record = `${pax.length + 3} ${pax}`;
    record = `${pax.length + String(record.length).length + 1} ${pax}`;
    const t = tar([
      { name: 'PaxHeader', type: 'x', body: record },
      { name: 'ignored-short-name', body: '{"k":1}' },
      { name: '/policy.wasm', body: 'x' },
      { name: '/data.json', body: '{"top":true}' },
      { name: 'dir/', type: '5' },
    ]);
    const files = parseTar(t);
    expect([...files.keys()]).toEqual([long, 'policy.wasm', 'data.json']);
    const b = await readBundle(await write('pax.tar.gz', gzipSync(t)));
    expect(b.data).toEqual({ top: true, ['d'.repeat(120)]: { k: 1 } });
    expect(b.manifest).toEqual({});
  });

  it('refuses to load a bundle whose WASM is garbage', async () => {
    const t = tar([{ name: '/policy.wasm', body: 'not wasm' }]);
    const file = await write('badwasm.tar.gz', gzipSync(t));
    await expect(PolicyEngine.fromBundleFile(file)).rejects.toThrow(/cannot load the policy WASM/);
  });
});

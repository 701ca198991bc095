/**
 * The policy adapter: one WASM instance per bundle, evaluated synchronously
 * on the gateway's hot path, failing closed.
 *
 * opa-wasm has three outcomes the caller must map itself — a thrown value (often a bare string,
 * e.g. an `opa_abort` on out-of-memory), `[]` for an undefined entry point, `[{result}]` — and
 * it trusts the policy to return whatever shape it likes. `evaluate` maps each explicitly and
 * never throws; only a well-formed result with `allow === true` allows.
 */
import { loadPolicy } from '@open-policy-agent/opa-wasm';

import { CaracalError, toError } from '../errors/catalog.js';
import { type Bundle, type BundleManifest, DECISION_ENTRYPOINT, parseBundle, readBundle } from './bundle.js';
import { type BundleSigningConfig, type BundleVerification, loadBundleVerification } from './signing.js';

export { DECISION_ENTRYPOINT };

/** Facts about the caller, from the principal registry (docs/architecture.md, "The authority model"). */
export interface PrincipalFact {
  id: string;
  status: 'active' | 'suspended' | (string & {});
  kind: string;
  [key: string]: unknown;
}

/** One authority policy of the principal. */
export interface AuthorityPolicyFact {
  id: string;
  /** Globs with "/" as delimiter: `*` within a segment, `**` across segments. */
  resources: string[];
  /** `*` grants every action. */
  actions: string[];
  max_validity_seconds?: number;
  delegation_depth?: number;
  [key: string]: unknown;
}

export interface RequestFact {
  upstream: string;
  method: string;
  path: string;
  /** `api:external/<upstream>`, from config — never from the agent. */
  resource: string;
  action: string;
  [key: string]: unknown;
}

/** Input contract v1 of `caracal/authz/decision`; later facts (mandate, spend, …) are additive. */
export interface DecisionInput {
  principal: PrincipalFact | null;
  policies: AuthorityPolicyFact[];
  request: RequestFact;
  /** Epoch seconds. */
  now: number;
  [key: string]: unknown;
}

export type DecisionOutcome = 'result' | 'undefined' | 'error' | 'malformed';

export interface Decision {
  allow: boolean;
  /** Machine-readable codes, empty on allow. */
  reasons: string[];
  /** Ids of the authority policies that allowed the request, empty on deny. */
  policyIds: string[];
  outcome: DecisionOutcome;
  /** Only for outcome `error`: what the engine threw, normalised to an Error (for logs). */
  error?: Error;
}

/** Reasons the adapter itself adds when the policy could not decide. */
export const ENGINE_REASONS = {
  error: 'engine_error',
  undefined: 'engine_undefined',
  malformed: 'engine_malformed_result',
} as const;

/** WASM memory in 64 KiB pages. The cap bounds what one hostile input can make the policy use. */
export interface EngineOptions {
  initialMemoryPages?: number;
  maximumMemoryPages?: number;
}

export const DEFAULT_INITIAL_MEMORY_PAGES = 16; // 1 MiB
export const DEFAULT_MAXIMUM_MEMORY_PAGES = 256; // 16 MiB

/**
 * The part of opa-wasm's LoadedPolicy the engine uses. Tests inject stand-ins through
 * {@link PolicyEngine.fromLoadedPolicy} to exercise every outcome.
 */
export interface WasmPolicy {
  readonly entrypoints: Record<string, number>;
  /** opa-wasm's instance memory (absent in stand-ins). */
  readonly mem?: WebAssembly.Memory;
  evaluate(input: unknown, entrypoint?: number | string): unknown;
}

function isStringArray(value: unknown): value is string[] {
  if (!Array.isArray(value)) return false;
  for (let i = 0; i < value.length; i++) if (typeof value[i] !== 'string') return false;
  return true;
}

/** toError, but total: a thrown value that cannot be serialised must not escape `evaluate`. */
function thrownToError(thrown: unknown): Error {
  try {
    return toError(thrown);
  } catch {
    return new Error(`non-serialisable value thrown by the policy engine (${typeof thrown})`);
  }
}

function denied(reason: string, outcome: DecisionOutcome, error?: Error): Decision {
  const d: Decision = { allow: false, reasons: [reason], policyIds: [], outcome };
  if (error !== undefined) d.error = error;
  return d;
}

/** Map an opa-wasm result set to a decision. Exported for tests; pure. */
export function decisionFromResultSet(resultSet: unknown): Decision {
  if (resultSet === null || resultSet === undefined) return denied(ENGINE_REASONS.undefined, 'undefined');
  if (!Array.isArray(resultSet)) return denied(ENGINE_REASONS.malformed, 'malformed');
  if (resultSet.length === 0) return denied(ENGINE_REASONS.undefined, 'undefined');
  if (resultSet.length !== 1) return denied(ENGINE_REASONS.malformed, 'malformed');
  const entry: unknown = resultSet[0];
  if (typeof entry !== 'object' || entry === null) return denied(ENGINE_REASONS.malformed, 'malformed');
  const result = (entry as { result?: unknown }).result;
  if (result === undefined) return denied(ENGINE_REASONS.undefined, 'undefined');
  if (typeof result !== 'object' || result === null || Array.isArray(result)) {
    return denied(ENGINE_REASONS.malformed, 'malformed');
  }
  const { allow, reasons, policy_ids: policyIds } = result as Record<string, unknown>;
  if (typeof allow !== 'boolean' || !isStringArray(reasons) || !isStringArray(policyIds)) {
    return denied(ENGINE_REASONS.malformed, 'malformed');
  }
  if (allow === true) return { allow: true, reasons, policyIds, outcome: 'result' };
  return { allow: false, reasons, policyIds: policyIds.length === 0 ? policyIds : [], outcome: 'result' };
}

export class PolicyEngine {
  /** The bundle's revision (git commit it was built from), or "unknown". */
  readonly revision: string;
  readonly #policy: WasmPolicy;
  readonly #entrypointId: number;

  private constructor(policy: WasmPolicy, entrypointId: number, revision: string) {
    this.#policy = policy;
    this.#entrypointId = entrypointId;
    this.revision = revision;
  }

  /**
   * Loads a bundle file. With `signing` (the `policy.signing` config) holding public keys, the
   * bundle must carry a valid signature by one of them before any of it is loaded (signing.ts).
   */
  static async fromBundleFile(file: string, options: EngineOptions & { signing?: BundleSigningConfig } = {}): Promise<PolicyEngine> {
    const verification = options.signing ? await loadBundleVerification(options.signing) : undefined;
    return PolicyEngine.fromBundle(await readBundle(file, { verification }), options);
  }

  /**
   * Loads a bundle already read into memory (the hot-swap path: the bytes that were hashed are
   * the bytes that are loaded). With `verification` holding keys, the signature is checked first.
   */
  static async fromBundleBytes(
    gzipped: Buffer,
    source: string,
    options: EngineOptions & { verification?: BundleVerification } = {},
  ): Promise<PolicyEngine> {
    return PolicyEngine.fromBundle(await parseBundle(gzipped, source, { verification: options.verification }), options);
  }

  static async fromBundle(
    bundle: Pick<Bundle, 'wasm' | 'data'> & { manifest: BundleManifest },
    options: EngineOptions = {},
  ): Promise<PolicyEngine> {
    const initial = options.initialMemoryPages ?? DEFAULT_INITIAL_MEMORY_PAGES;
    const maximum = options.maximumMemoryPages ?? DEFAULT_MAXIMUM_MEMORY_PAGES;
    if (!Number.isInteger(initial) || !Number.isInteger(maximum) || initial < 1 || maximum < initial) {
      throw new CaracalError('CARACAL_VALIDATION', `invalid WASM memory pages: initial ${initial}, maximum ${maximum}`);
    }
    let policy: WasmPolicy;
    try {
      // loadPolicy builds the WebAssembly.Memory from this descriptor; `maximum` makes growth
      // beyond the cap fail (an abort inside WASM, a RangeError in the SDK), which we map to deny.
      policy = await loadPolicy(bundle.wasm, { initial, maximum });
    } catch (thrown) {
      throw new CaracalError('CARACAL_VALIDATION', `cannot load the policy WASM: ${toError(thrown).message}`, {
        cause: toError(thrown),
      });
    }
    const data = bundle.data;
    if (data !== undefined && data !== null) {
      if (typeof data !== 'object' || Array.isArray(data)) {
        throw new CaracalError('CARACAL_VALIDATION', 'bundle data must be a JSON object');
      }
      if (Object.keys(data).length > 0) {
        try {
          (policy as WasmPolicy & { setData(d: object): void }).setData(data);
        } catch (thrown) {
          throw new CaracalError('CARACAL_VALIDATION', `cannot load the bundle data: ${toError(thrown).message}`, {
            cause: toError(thrown),
          });
        }
      }
    }
    const revision = typeof bundle.manifest.revision === 'string' && bundle.manifest.revision !== '' ? bundle.manifest.revision : 'unknown';
    return PolicyEngine.fromLoadedPolicy(policy, { revision });
  }

  /** Wrap an already loaded policy (opa-wasm's LoadedPolicy, or a stand-in in tests). */
  static fromLoadedPolicy(policy: WasmPolicy, options: { revision?: string; entrypoint?: string } = {}): PolicyEngine {
    const entrypoint = options.entrypoint ?? DECISION_ENTRYPOINT;
    const entrypoints: unknown = policy.entrypoints;
    const id =
      typeof entrypoints === 'object' && entrypoints !== null && Object.prototype.hasOwnProperty.call(entrypoints, entrypoint)
        ? (entrypoints as Record<string, unknown>)[entrypoint]
        : undefined;
    if (typeof id !== 'number') {
      throw new CaracalError('CARACAL_VALIDATION', `the policy WASM has no entrypoint ${entrypoint} (built without -e ${entrypoint}?)`);
    }
    return new PolicyEngine(policy, id, options.revision ?? 'unknown');
  }

  /** Current size of the WASM linear memory in bytes (it grows up to the cap, never shrinks). */
  get wasmMemoryBytes(): number | undefined {
    return this.#policy.mem?.buffer.byteLength;
  }

  /**
   * One evaluation. Synchronous and total: never throws, denies unless the policy explicitly
   * allowed. The input goes to opa-wasm as is (it serialises it into WASM memory once).
   */
  evaluate(input: DecisionInput): Decision {
    let resultSet: unknown;
    try {
      resultSet = this.#policy.evaluate(input, this.#entrypointId);
    } catch (thrown) {
      return denied(ENGINE_REASONS.error, 'error', thrownToError(thrown));
    }
    try {
      return decisionFromResultSet(resultSet);
    } catch (thrown) {
      // Only reachable with a hostile stand-in (e.g. a throwing getter); still a deny.
      return denied(ENGINE_REASONS.error, 'error', thrownToError(thrown));
    }
  }
}

/** What a smoke evaluation needs of an engine (PolicyEngine, or a stand-in). */
export interface SmokeEvaluable {
  evaluate(input: DecisionInput): Decision;
}

/**
 * The smoke evaluation: an anonymous request to a made-up upstream. A loaded bundle must decide
 * it (outcome `result`) and deny it. Used by /ready's policy check and before a hot swap.
 */
export const SMOKE_INPUT: Readonly<DecisionInput> = {
  principal: null,
  policies: [],
  mandate: null,
  request: { upstream: 'ready-check', method: 'GET', path: '/', resource: 'api:external/ready-check', action: 'read' },
  allowlist: { checked: true, matched: false, entry_id: null },
  emergency: { global: false, principal: false },
  auth: { method: 'caracal-token' },
  now: 0,
};

/** Throws (with a one-line message) unless the engine decides the smoke input and denies it. */
export function smokeEvaluate(engine: SmokeEvaluable, now = Math.floor(Date.now() / 1000)): void {
  const probe = engine.evaluate({ ...SMOKE_INPUT, now });
  if (probe.outcome !== 'result') throw new Error(`the policy bundle did not decide (outcome ${probe.outcome})`);
  if (probe.allow) throw new Error('the policy bundle allowed an anonymous request');
}

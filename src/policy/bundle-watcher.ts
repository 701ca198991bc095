/**
 * Hot swap of the policy bundle: polls a bundle source (bundle-sources.ts: the bundle file, a bundle store, a bundle
 * server) and, when a slot's content changed, loads the new bundle off the request path — signature check, WASM
 * load, smoke evaluation — and only then swaps the engine holder's `current` (the active slot) or `shadow` (the
 * shadow slot) in one assignment. Requests read the holder once per decision, so each request decides with one
 * engine and reports that engine's revision.
 *
 * A refused bundle (unreadable, corrupt, truncated, badly signed, not WASM, failing the smoke evaluation, a bundle
 * server answering neither 200 nor 304) changes nothing that serves: the last good engine stays (for the shadow:
 * the previous shadow, or none); the refusal is logged, counted and kept as `lastLoadError` (`shadowLoadError`)
 * for /ready.
 */
import { readFile, stat } from 'node:fs/promises';
import type { Counter, Gauge } from 'prom-client';

import { toError } from '../errors/catalog.js';
import type { Logger } from '../logging/logger.js';
import { MAX_BUNDLE_FILE_BYTES, sha256Hex } from './bundle.js';
import { type BundleSource, FileBundleSource, type SlotReading, type SourcePoll } from './bundle-sources.js';
import { type Decision, type DecisionInput, type EngineOptions, PolicyEngine, smokeEvaluate } from './engine.js';
import { type BundleSigningConfig, type BundleVerification, loadBundleVerification } from './signing.js';

/** What the gateway evaluates with (same shape as the gateway's PolicyEvaluator). */
export interface Evaluator {
  readonly revision: string;
  evaluate(input: DecisionInput): Decision;
}

export interface BundleLoadError {
  message: string;
  /** ISO time of the refusal. */
  at: string;
  /** SHA-256 of the refused content, when it could be read. */
  sha256: string | null;
}

export interface BundleWatcherStatus {
  revision: string;
  sha256: string;
  lastLoadError: BundleLoadError | null;
  /** The revision evaluated alongside the active one and never enforced; null: no shadow. */
  shadowRevision: string | null;
  shadowSha256: string | null;
  /** The last shadow bundle refused (the previous shadow, or none, stays); cleared by a good one or by unshadow. */
  shadowLoadError: BundleLoadError | null;
  /** What is polled: the bundle file, the store (`db`, `dir:/…`), the bundle server's URL. */
  source: string;
  /**
   * True while the gateway serves its fallback bundle (`policy.bundlePath` or the default) although the store names an
   * active revision (or could not be read): it does not enforce what was activated, so /ready fails until it does.
   * False with a file source, once a store revision has loaded, and while the store has nothing active.
   */
  awaitingStore: boolean;
}

export interface BundleWatcherOptions {
  /** Where bundles come from; without it, `file` (a FileBundleSource). */
  source?: BundleSource;
  file?: string;
  /**
   * With a store or a bundle server: the bundle served until the source has a loadable active revision (start-up
   * then does not depend on the store). Without it the first active bundle must load, or start-up fails.
   */
  fallbackFile?: string;
  /** Poll period; > 0. */
  intervalMs: number;
  signing?: BundleSigningConfig;
  engineOptions?: EngineOptions;
  logger: Logger;
  metrics: { bundleInfo: Gauge<'revision'>; bundleLoadErrors: Counter<string>; shadowBundleInfo?: Gauge<'revision'> };
  /** Default RETRY_REFUSED_MS; tests shorten it. */
  retryRefusedMs?: number;
}

type Outcome = 'unchanged' | 'swapped' | 'refused';
type SlotName = 'active' | 'shadow';

/**
 * A refused bundle is tried again after this long (the same bytes: a load can fail for a passing reason, such as
 * memory): without it, a revision refused once would stay refused until its pointer moved. A refusal that repeats is
 * counted and logged once.
 */
export const RETRY_REFUSED_MS = 60_000;

interface SlotState {
  /** Content last examined (loaded or refused): the same bytes are not tried twice. */
  examinedSha: string | null;
  /** Content of the engine in the holder for this slot. */
  servingSha: string | null;
  lastLoadError: BundleLoadError | null;
  /** When the content in `examinedSha` was refused (ms); null: not refused. */
  refusedAt: number | null;
}

const sha256 = sha256Hex;

export class BundleWatcher {
  /** The holder the gateway reads; `current` and `shadow` are each replaced in one assignment. */
  readonly holder: { current: Evaluator; shadow: Evaluator | null };
  readonly #options: BundleWatcherOptions;
  readonly #source: BundleSource;
  readonly #verification: BundleVerification | undefined;
  readonly #log: Logger;
  readonly #slots: Record<SlotName, SlotState>;
  /** "No active revision" is logged once per stretch without one. */
  #noActiveLogged = false;
  /** Serving the fallback bundle, not a revision from the store (see BundleWatcherStatus.awaitingStore). */
  #onFallback: boolean;
  /** The store's last answer for the active slot named a revision (or failed): not "nothing active". */
  #storeNamesActive = false;
  #timer: NodeJS.Timeout | null = null;
  #polling: Promise<void> | null = null;
  /** Checks run one at a time (the poller's and a caller's): each sees the state the last one left. */
  #queue: Promise<unknown> = Promise.resolve();
  #stopped = false;

  private constructor(options: BundleWatcherOptions, source: BundleSource, verification: BundleVerification | undefined, engine: PolicyEngine, sha: string, examined: boolean) {
    this.#options = options;
    this.#source = source;
    this.#verification = verification;
    this.#log = options.logger.child({ component: 'bundle-watcher' });
    this.holder = { current: engine, shadow: null };
    this.#onFallback = !examined;
    this.#slots = {
      active: { examinedSha: examined ? sha : null, servingSha: sha, lastLoadError: null, refusedAt: null },
      shadow: { examinedSha: null, servingSha: null, lastLoadError: null, refusedAt: null },
    };
  }

  /**
   * Loads the bundle the gateway starts with and remembers the hash of exactly the bytes it loaded. From the bundle
   * file (or any source without `fallbackFile`) a failure fails start-up, as without hot swap. From a store with a
   * fallback, the gateway starts on the fallback and takes the store's active revision as soon as one loads.
   * Polling starts with {@link start}.
   */
  static async open(options: BundleWatcherOptions): Promise<BundleWatcher> {
    if (!(options.intervalMs > 0)) throw new Error('BundleWatcher needs intervalMs > 0');
    const source: BundleSource | undefined = options.source ?? (options.file !== undefined ? new FileBundleSource(options.file) : undefined);
    if (!source) throw new Error('BundleWatcher needs a source or a file');
    try {
      return await BundleWatcher.#open(options, source);
    } catch (err) {
      await source.close?.().catch(() => {});
      throw err;
    }
  }

  static async #open(options: BundleWatcherOptions, source: BundleSource): Promise<BundleWatcher> {
    const verification = options.signing ? await loadBundleVerification(options.signing) : undefined;
    const engineOptions = { ...options.engineOptions, verification };
    const first = await source.poll();
    const { metrics } = options;
    metrics.shadowBundleInfo?.reset();
    let watcher: BundleWatcher;
    let rest: SourcePoll;
    if (options.fallbackFile === undefined || source.kind === 'file') {
      const active = first.active;
      if (active.kind === 'error') throw new Error(active.message, { cause: active.cause });
      if (active.kind !== 'bytes') throw new Error(`the bundle source ${source.description} has no active revision`);
      const engine = await PolicyEngine.fromBundleBytes(active.bytes, active.label, engineOptions);
      // A store's revision is refusable (it was never checked by this gateway); a file is as before hot swap.
      if (source.kind !== 'file') smokeEvaluate(engine);
      watcher = new BundleWatcher(options, source, verification, engine, sha256(active.bytes), true);
      rest = { active: { kind: 'unchanged' }, shadow: first.shadow };
    } else {
      const file = options.fallbackFile;
      const size = (await stat(file)).size;
      if (size > MAX_BUNDLE_FILE_BYTES) throw new Error(`bundle ${file}: file is ${size} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
      const bytes = await readFile(file);
      const engine = await PolicyEngine.fromBundleBytes(bytes, file, engineOptions);
      watcher = new BundleWatcher(options, source, verification, engine, sha256(bytes), false);
      rest = first;
    }
    metrics.bundleInfo.reset();
    metrics.bundleInfo.set({ revision: watcher.holder.current.revision }, 1);
    await watcher.#apply(rest);
    return watcher;
  }

  status(): BundleWatcherStatus {
    const { active, shadow } = this.#slots;
    return {
      revision: this.holder.current.revision,
      sha256: active.servingSha!,
      lastLoadError: active.lastLoadError,
      shadowRevision: this.holder.shadow?.revision ?? null,
      shadowSha256: shadow.servingSha,
      shadowLoadError: shadow.lastLoadError,
      source: this.#source.description,
      awaitingStore: this.#onFallback && this.#storeNamesActive,
    };
  }

  start(): void {
    if (this.#stopped || this.#timer) return;
    this.#schedule();
  }

  /** Stops polling, waits for a load under way (its result is dropped) and closes the source. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#polling?.catch(() => {});
    await this.#queue.catch(() => {});
    await this.#source.close?.().catch((err) => this.#log.warn({ err }, 'closing the bundle source failed'));
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#polling = this.check().then(
        () => undefined,
        (err) => this.#log.error({ err }, 'policy bundle poll failed'),
      );
      void this.#polling.finally(() => {
        this.#polling = null;
        this.#schedule();
      });
    }, this.#options.intervalMs);
    this.#timer.unref();
  }

  /**
   * One poll of the source; a slot whose content is new is loaded and swapped. Exposed for tests (it waits for a
   * check under way). Returns the active slot's outcome, or the shadow's when the active one is unchanged. Never
   * throws for a bad bundle (it is refused and reported).
   */
  check(): Promise<Outcome> {
    const run = this.#queue.then(async () => {
      if (this.#stopped) return 'unchanged' as const;
      this.#retryRefused();
      return this.#apply(await this.#source.poll());
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  /** A slot whose content was refused long enough ago is read and loaded again (see RETRY_REFUSED_MS). */
  #retryRefused(now = Date.now()): void {
    for (const slot of ['active', 'shadow'] as const) {
      const state = this.#slots[slot];
      if (state.refusedAt === null || now - state.refusedAt < (this.#options.retryRefusedMs ?? RETRY_REFUSED_MS)) continue;
      state.refusedAt = null;
      state.examinedSha = null;
      this.#source.forget(slot);
    }
  }

  async #apply(poll: SourcePoll): Promise<Outcome> {
    const active = await this.#consider('active', poll.active);
    const shadow = await this.#consider('shadow', poll.shadow);
    return active !== 'unchanged' ? active : shadow;
  }

  async #consider(slot: SlotName, reading: SlotReading): Promise<Outcome> {
    const state = this.#slots[slot];
    if (slot === 'active' && reading.kind !== 'unchanged') this.#storeNamesActive = reading.kind !== 'none';
    switch (reading.kind) {
      case 'unchanged':
        return 'unchanged';
      case 'none':
        return slot === 'active' ? this.#noActive() : this.#clearShadow();
      case 'error':
        // Whatever comes next is examined afresh (even the content refused before the error).
        state.examinedSha = null;
        return this.#refuse(slot, null, reading.message, reading.cause);
      case 'bytes':
        break;
    }
    if (slot === 'active') this.#noActiveLogged = false;
    const sha = sha256(reading.bytes);
    if (sha === state.examinedSha) return 'unchanged';
    state.examinedSha = sha;
    if (sha === state.servingSha) {
      // Back to the content being served (e.g. a bad bundle replaced by the good one again).
      state.lastLoadError = null;
      return 'unchanged';
    }
    let engine: PolicyEngine;
    try {
      engine = await PolicyEngine.fromBundleBytes(reading.bytes, reading.label, { ...this.#options.engineOptions, verification: this.#verification });
      smokeEvaluate(engine);
    } catch (err) {
      return this.#refuse(slot, sha, toError(err).message.split('\n')[0]!, err);
    }
    if (this.#stopped) return 'unchanged';
    state.servingSha = sha;
    state.lastLoadError = null;
    state.refusedAt = null;
    if (slot === 'active') {
      const previous = this.holder.current.revision;
      this.holder.current = engine;
      this.#onFallback = false;
      const { bundleInfo } = this.#options.metrics;
      bundleInfo.reset();
      bundleInfo.set({ revision: engine.revision }, 1);
      this.#log.info({ revision: engine.revision, previous_revision: previous, sha256: sha, source: this.#source.description }, 'policy bundle swapped');
    } else {
      const previous = this.holder.shadow?.revision ?? null;
      this.holder.shadow = engine;
      const gauge = this.#options.metrics.shadowBundleInfo;
      gauge?.reset();
      gauge?.set({ revision: engine.revision }, 1);
      this.#log.info({ revision: engine.revision, previous_revision: previous, sha256: sha, source: this.#source.description }, 'shadow policy bundle loaded (evaluated alongside, not enforced)');
    }
    return 'swapped';
  }

  /** A store with nothing active: the bundle being served (the fallback, or the last good one) stays. */
  #noActive(): Outcome {
    const state = this.#slots.active;
    state.examinedSha = null;
    if (!this.#noActiveLogged) {
      this.#noActiveLogged = true;
      this.#log.info({ source: this.#source.description, revision: this.holder.current.revision }, 'the bundle store has no active revision; serving the current bundle until one is activated');
    }
    return 'unchanged';
  }

  #clearShadow(): Outcome {
    const state = this.#slots.shadow;
    state.examinedSha = null;
    state.lastLoadError = null;
    if (this.holder.shadow === null) return 'unchanged';
    const previous = this.holder.shadow.revision;
    this.holder.shadow = null;
    state.servingSha = null;
    this.#options.metrics.shadowBundleInfo?.reset();
    this.#log.info({ previous_revision: previous, source: this.#source.description }, 'shadow policy bundle cleared');
    return 'swapped';
  }

  #refuse(slot: SlotName, sha: string | null, message: string, err: unknown): 'refused' {
    const state = this.#slots[slot];
    const already = state.lastLoadError !== null && state.lastLoadError.message === message && state.lastLoadError.sha256 === sha;
    state.lastLoadError = { message, at: new Date().toISOString(), sha256: sha };
    // Content that failed to load is tried again later; a source that could not be read is tried every poll anyway.
    state.refusedAt = sha === null ? null : Date.now();
    if (!already) {
      this.#options.metrics.bundleLoadErrors.inc();
      const fields = { err, source: this.#source.description, sha256: sha, revision: this.holder.current.revision, shadow_revision: this.holder.shadow?.revision ?? null };
      if (slot === 'active') this.#log.error(fields, 'policy bundle refused; the last good bundle keeps serving');
      else this.#log.error(fields, 'shadow policy bundle refused; the previous shadow (or none) stays');
    }
    return 'refused';
  }
}

/**
 * Hot swap of the policy bundle: polls the bundle file and, when its content changed, loads the
 * new bundle off the request path — read, signature check, WASM load, smoke evaluation — and only
 * then swaps the engine holder's `current` in one assignment. Requests read `current` once per
 * decision, so each request decides with one engine and reports that engine's revision.
 *
 * A refused bundle (unreadable, corrupt, truncated, badly signed, not WASM, failing the smoke
 * evaluation) changes nothing that serves: the last good engine stays; the refusal is logged,
 * counted and kept as `lastLoadError` for /ready.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import type { Counter, Gauge } from 'prom-client';

import { toError } from '../errors/catalog.js';
import type { Logger } from '../logging/logger.js';
import { MAX_BUNDLE_FILE_BYTES } from './bundle.js';
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
}

export interface BundleWatcherOptions {
  file: string;
  /** Poll period; > 0. */
  intervalMs: number;
  signing?: BundleSigningConfig;
  engineOptions?: EngineOptions;
  logger: Logger;
  metrics: { bundleInfo: Gauge<'revision'>; bundleLoadErrors: Counter<string> };
}

/** The file's identity as stat sees it: a change of any of these means "hash it again". */
interface FileStamp {
  mtimeMs: number;
  size: number;
  ino: number;
}

function sameStamp(a: FileStamp | null, b: FileStamp): boolean {
  return a !== null && a.mtimeMs === b.mtimeMs && a.size === b.size && a.ino === b.ino;
}

function stampOf(s: { mtimeMs: number; size: number; ino: number }): FileStamp {
  return { mtimeMs: s.mtimeMs, size: s.size, ino: s.ino };
}

async function readStamped(file: string): Promise<{ stamp: FileStamp; bytes: Buffer }> {
  const before = await stat(file);
  if (before.size > MAX_BUNDLE_FILE_BYTES) throw new Error(`bundle ${file}: file is ${before.size} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
  const bytes = await readFile(file);
  return { stamp: stampOf(before), bytes };
}

export class BundleWatcher {
  /** The holder the gateway reads; `current` is replaced in one assignment on a swap. */
  readonly holder: { current: Evaluator };
  readonly #options: BundleWatcherOptions;
  readonly #verification: BundleVerification | undefined;
  readonly #log: Logger;
  /** Stamp of the file as last examined (loaded or refused). */
  #stamp: FileStamp | null;
  /** Content last examined (loaded or refused): the same bytes are not tried twice. */
  #examinedSha: string;
  #activeSha: string;
  #lastLoadError: BundleLoadError | null = null;
  #timer: NodeJS.Timeout | null = null;
  #polling: Promise<void> | null = null;
  /** Checks run one at a time (the poller's and a caller's): each sees the state the last one left. */
  #queue: Promise<unknown> = Promise.resolve();
  #stopped = false;

  private constructor(options: BundleWatcherOptions, verification: BundleVerification | undefined, engine: PolicyEngine, stamp: FileStamp, sha: string) {
    this.#options = options;
    this.#verification = verification;
    this.#log = options.logger.child({ component: 'bundle-watcher' });
    this.holder = { current: engine };
    this.#stamp = stamp;
    this.#examinedSha = sha;
    this.#activeSha = sha;
  }

  /**
   * Loads the bundle the gateway starts with (a failure fails start-up, as without hot swap) and
   * remembers the hash of exactly the bytes it loaded. Polling starts with {@link start}.
   */
  static async open(options: BundleWatcherOptions): Promise<BundleWatcher> {
    if (!(options.intervalMs > 0)) throw new Error('BundleWatcher needs intervalMs > 0');
    const verification = options.signing ? await loadBundleVerification(options.signing) : undefined;
    const { stamp, bytes } = await readStamped(options.file);
    const engine = await PolicyEngine.fromBundleBytes(bytes, options.file, { ...options.engineOptions, verification });
    const sha = createHash('sha256').update(bytes).digest('hex');
    const watcher = new BundleWatcher(options, verification, engine, stamp, sha);
    options.metrics.bundleInfo.reset();
    options.metrics.bundleInfo.set({ revision: engine.revision }, 1);
    return watcher;
  }

  status(): BundleWatcherStatus {
    return { revision: this.holder.current.revision, sha256: this.#activeSha, lastLoadError: this.#lastLoadError };
  }

  start(): void {
    if (this.#stopped || this.#timer) return;
    this.#schedule();
  }

  /** Stops polling and waits for a load under way (its result is dropped). */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#polling?.catch(() => {});
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
   * One poll: stat; when the stamp changed, read and hash; when the content is new, load it and
   * swap. Exposed for tests (it waits for a check under way). Never throws for a bad bundle (it is
   * refused and reported).
   */
  check(): Promise<'unchanged' | 'swapped' | 'refused'> {
    const run = this.#queue.then(() => this.#check());
    this.#queue = run.catch(() => {});
    return run;
  }

  async #check(): Promise<'unchanged' | 'swapped' | 'refused'> {
    const file = this.#options.file;
    let read: { stamp: FileStamp; bytes: Buffer };
    try {
      const s = await stat(file);
      if (sameStamp(this.#stamp, stampOf(s))) return 'unchanged';
      read = await readStamped(file);
    } catch (err) {
      // Missing for a moment (a non-atomic replace) or unreadable: refused, retried next poll.
      return this.#refuse(null, null, `cannot read ${file}: ${toError(err).message}`, err);
    }
    const sha = createHash('sha256').update(read.bytes).digest('hex');
    this.#stamp = read.stamp;
    if (sha === this.#examinedSha) return 'unchanged';
    this.#examinedSha = sha;
    if (sha === this.#activeSha) {
      // Back to the content being served (e.g. a bad bundle replaced by the good one again).
      this.#lastLoadError = null;
      return 'unchanged';
    }
    let engine: PolicyEngine;
    try {
      engine = await PolicyEngine.fromBundleBytes(read.bytes, file, { ...this.#options.engineOptions, verification: this.#verification });
      smokeEvaluate(engine);
    } catch (err) {
      return this.#refuse(read.stamp, sha, toError(err).message.split('\n')[0]!, err);
    }
    if (this.#stopped) return 'unchanged';
    const previous = this.holder.current.revision;
    this.holder.current = engine;
    this.#activeSha = sha;
    this.#lastLoadError = null;
    const { bundleInfo } = this.#options.metrics;
    bundleInfo.reset();
    bundleInfo.set({ revision: engine.revision }, 1);
    this.#log.info({ revision: engine.revision, previous_revision: previous, sha256: sha }, 'policy bundle swapped');
    return 'swapped';
  }

  #refuse(stamp: FileStamp | null, sha: string | null, message: string, err: unknown): 'refused' {
    // Unreadable: forget the stamp so the next poll looks again.
    if (stamp === null) this.#stamp = null;
    const already = this.#lastLoadError !== null && this.#lastLoadError.message === message && this.#lastLoadError.sha256 === sha;
    this.#lastLoadError = { message, at: new Date().toISOString(), sha256: sha };
    if (!already) {
      this.#options.metrics.bundleLoadErrors.inc();
      this.#log.error({ err, file: this.#options.file, sha256: sha, revision: this.holder.current.revision }, 'policy bundle refused; the last good bundle keeps serving');
    }
    return 'refused';
  }
}

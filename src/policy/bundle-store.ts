/**
 * The bundle store: where published bundles are kept and which revision is *active* (the one gateways enforce) and
 * which is the *shadow* (evaluated alongside the active one on live traffic, never enforced).
 *
 * Two implementations keep the same semantics and pass the same contract suite
 * (`test/integration/bundle-store.contract.ts`): a directory (`dir:<path>`, for a CI artefact folder or a shared
 * volume) and the database (`db`: the configured PostgreSQL, or the embedded PGlite). A third way in is HTTP: a
 * gateway's admin listener serves its store as a bundle server (OPA's bundle service API, ETag / If-None-Match),
 * and the CLI publishes to it through the admin API.
 *
 * Rules every store keeps:
 * - A revision is published once. Publishing the same bytes again is a no-op (`created: false`); other bytes under a
 *   revision already stored are refused (CARACAL_CONFLICT): a revision names one bundle forever.
 * - What is published is a readable bundle (gzip tar, `/policy.wasm`, a `.manifest` with a revision); the revision
 *   is the manifest's. Signatures are checked by the gateways that load it (their keys), not by the store.
 * - `activate(R)` needs R stored. Activations form a stack: `rollback()` pops the active revision and re-activates
 *   the one that was active before it (an error when there is none). Each change is kept in `history`.
 * - The shadow revision is independent of the stack; `setShadow(null)` clears it.
 */
import type { CaracalError } from '../errors/catalog.js';

export interface StoredBundleInfo {
  revision: string;
  /** SHA-256 (hex) of the bundle file's bytes; the HTTP bundle server's ETag is `"<sha256>"`. */
  sha256: string;
  size: number;
  /** ISO-8601 UTC. */
  publishedAt: string;
  /** `metadata.caracal` of the manifest (build_time, opa_version) when present. */
  buildTime: string | null;
  opaVersion: string | null;
  /** True when the bundle carries `/.signatures.json` (not verified by the store). */
  signed: boolean;
}

export interface BundlePointer {
  revision: string;
  sha256: string;
}

/** What a gateway polls: cheap, one read. */
export interface BundleStorePointers {
  active: BundlePointer | null;
  shadow: BundlePointer | null;
}

export interface BundleHistoryEntry {
  /** 1, 2, … in order of the changes. */
  seq: number;
  action: 'activate' | 'rollback' | 'shadow' | 'unshadow';
  /** The revision active (activate, rollback) or shadowed (shadow) after the change; null for unshadow. */
  revision: string | null;
  /** The revision active (or shadowed) before it. */
  previous: string | null;
  at: string;
  /** Who did it (the admin action's actor), when known. */
  actor: string | null;
}

export interface BundleStoreListing extends BundleStorePointers {
  /** Newest first. */
  bundles: StoredBundleInfo[];
  /** Newest first, at most 100. */
  history: BundleHistoryEntry[];
}

export interface PublishResult {
  revision: string;
  sha256: string;
  size: number;
  /** False when exactly these bytes were already stored under this revision. */
  created: boolean;
}

export interface ActivationResult {
  active: string;
  previous: string | null;
}

export interface BundleStore {
  /** For messages: `db`, `dir:/abs/path`. */
  readonly description: string;
  publish(bytes: Buffer, options?: { actor?: string | null }): Promise<PublishResult>;
  list(): Promise<BundleStoreListing>;
  pointers(): Promise<BundleStorePointers>;
  /** The stored bytes of a revision; CARACAL_NOT_FOUND when it is not stored. */
  fetch(revision: string): Promise<Buffer>;
  activate(revision: string, options?: { actor?: string | null }): Promise<ActivationResult>;
  rollback(options?: { actor?: string | null }): Promise<ActivationResult>;
  setShadow(revision: string | null, options?: { actor?: string | null }): Promise<{ shadow: string | null; previous: string | null }>;
  close?(): Promise<void>;
}

/** A store named on the command line or in `policy.store`. */
export type BundleStoreSpec = { kind: 'db' } | { kind: 'dir'; path: string } | { kind: 'http'; url: string };

export type StoreError = CaracalError;

/**
 * A revision a store accepts: it names files in a directory store and appears in URLs, so it is a plain token (a git
 * commit, `<commit>-dirty`, a release tag such as `v1.4.0`).
 */
export const REVISION_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

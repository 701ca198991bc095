/**
 * Naming and opening a bundle store (`--to`, `--store`, `policy.store`), and the one check every store runs on what
 * it is asked to publish. The stores themselves live in bundle-store-dir.ts and bundle-store-db.ts.
 */
import path from 'node:path';

import { CaracalError } from '../errors/catalog.js';
import type { Db } from '../store/db.js';
import { MAX_BUNDLE_FILE_BYTES, parseBundle, sha256Hex } from './bundle.js';
import { DatabaseBundleStore } from './bundle-store-db.js';
import { DirectoryBundleStore } from './bundle-store-dir.js';
import { type BundleStore, type BundleStoreSpec, REVISION_PATTERN } from './bundle-store.js';
import { SIGNATURES_FILE } from './signing.js';

const ACCEPTED_FORMS = 'db, dir:<path> (or a path containing "/" or starting with "."), or an http(s):// URL';

/**
 * `db`; `dir:<path>`, or a plain path that looks like one (contains "/" or starts with "."), resolved to an absolute
 * path; `http://…` / `https://…`. Anything else is refused rather than guessed: `ftp://x` or a bare word is more
 * likely a typo than a folder in the working directory.
 */
export function parseBundleStoreSpec(text: string): BundleStoreSpec {
  const spec = text.trim();
  if (spec === 'db') return { kind: 'db' };
  if (/^https?:\/\//i.test(spec)) {
    let url: URL;
    try {
      url = new URL(spec);
    } catch {
      throw new CaracalError('CARACAL_USAGE', `bundle store ${JSON.stringify(text)} is not a valid URL`);
    }
    if (url.username !== '' || url.password !== '') {
      throw new CaracalError('CARACAL_USAGE', 'a bundle store URL must not carry credentials (use CARACAL_ADMIN_TOKEN / policy.storeToken)');
    }
    // Without a trailing slash: callers append their own paths.
    return { kind: 'http', url: url.href.replace(/\/+$/, '') };
  }
  let dir: string | undefined;
  if (spec.startsWith('dir:')) dir = spec.slice(4);
  else if (!/^[A-Za-z][A-Za-z0-9+.-]*:/.test(spec) && (spec.includes('/') || spec.startsWith('.'))) dir = spec;
  if (dir === undefined || dir === '' || dir.includes('\0')) {
    throw new CaracalError('CARACAL_USAGE', `unknown bundle store ${JSON.stringify(text)}: use ${ACCEPTED_FORMS}`);
  }
  return { kind: 'dir', path: path.resolve(dir) };
}

/** `db`, `dir:/abs/path` or the URL, for messages. */
export function describeBundleStoreSpec(spec: BundleStoreSpec): string {
  return spec.kind === 'db' ? 'db' : spec.kind === 'dir' ? `dir:${spec.path}` : spec.url;
}

/** What a store records about a bundle it is asked to publish. */
export interface InspectedBundle {
  revision: string;
  sha256: string;
  size: number;
  buildTime: string | null;
  opaVersion: string | null;
  signed: boolean;
}

function refused(source: string, why: string): CaracalError {
  return new CaracalError('CARACAL_VALIDATION', `bundle ${source}: ${why}`);
}

/**
 * Reads `bytes` as a gateway would (gzip tar, `/policy.wasm`, `.manifest`, data) and returns what the store keeps about
 * it; refused (CARACAL_VALIDATION, one line) when it is not a loadable bundle or its revision cannot name a stored
 * bundle. Signatures are not verified here: the store holds no keys, the gateways that load the bundle do.
 */
export async function inspectBundleForStore(bytes: Buffer, source = '<upload>'): Promise<InspectedBundle> {
  if (bytes.length > MAX_BUNDLE_FILE_BYTES) throw refused(source, `${bytes.length} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
  const bundle = await parseBundle(bytes, source);
  const revision = bundle.manifest.revision;
  if (revision === undefined || revision === '') throw refused(source, '.manifest has no revision (build it with `caracal bundle build`)');
  if (!REVISION_PATTERN.test(revision)) {
    throw refused(source, `revision ${JSON.stringify(revision.slice(0, 140))} is not a plain token (letters, digits, ".", "_", "-"; at most 128)`);
  }
  const metadata = bundle.manifest.metadata;
  const caracal = isRecord(metadata) && isRecord(metadata.caracal) ? metadata.caracal : {};
  return {
    revision,
    sha256: sha256Hex(bytes),
    size: bytes.length,
    buildTime: shortString(caracal.build_time),
    opaVersion: shortString(caracal.opa_version),
    signed: bundle.files.has(SIGNATURES_FILE),
  };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Manifest metadata is free text written by whoever built the bundle: kept only when it is a short string. */
function shortString(v: unknown): string | null {
  return typeof v === 'string' && v.length > 0 && v.length <= 128 ? v : null;
}

export interface OpenBundleStoreOptions {
  /** Needed for `db`. */
  db?: Db;
}

/**
 * A store to read and write directly. `http(s)` stores are other gateways: the CLI talks to them through their admin
 * API and a gateway polls them as a bundle server, so there is no BundleStore for them here.
 */
export function openBundleStore(spec: BundleStoreSpec, options: OpenBundleStoreOptions = {}): BundleStore {
  switch (spec.kind) {
    case 'db':
      if (options.db === undefined) throw new CaracalError('CARACAL_USAGE', 'the db bundle store needs a database');
      return new DatabaseBundleStore(options.db);
    case 'dir':
      return new DirectoryBundleStore(spec.path);
    case 'http':
      throw new CaracalError('CARACAL_USAGE', `${spec.url} is a remote bundle store: reach it through its admin API, not as a local store`);
  }
}

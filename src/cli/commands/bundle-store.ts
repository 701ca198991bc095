import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { CaracalError, toError } from '../../errors/catalog.js';
import { MAX_BUNDLE_FILE_BYTES, sha256Hex } from '../../policy/bundle.js';
import type { ActivationResult, BundleStoreListing, BundleStoreSpec, PublishResult } from '../../policy/bundle-store.js';
import { DirectoryBundleStore } from '../../policy/bundle-store-dir.js';
import { describeBundleStoreSpec, inspectBundleForStore, parseBundleStoreSpec } from '../../policy/bundle-store-open.js';
import { checkRevision } from '../../policy/bundle-store-state.js';
import { checkStoredRevisionLoadable } from '../../policy/replay.js';
import type { OperationName } from '../../operations/index.js';
import { cliCaller } from '../../audit/admin-actions.js';
import { callAdminApi, type CliRuntime } from '../runtime.js';

/**
 * `bundle publish | list | activate | rollback | shadow | fetch`: the bundle store from the command line.
 *
 * Which store: `--to` / `--store`; else `policy.store` from the config; else `db`. A config whose store is an http(s)
 * URL names where this gateway *pulls* from, not a place to publish to, so it resolves to `db` (whose operations then
 * say where to publish). Then:
 * - `db` runs the bundle.* operations (directly on the database, or through a running embedded gateway's admin API,
 *   or CARACAL_ADMIN_URL's): they act on the store the gateway's config names;
 * - `dir:<path>` (or a path) opens the folder directly;
 * - `http(s)://host:port` is another gateway: its admin API, with the credential from CARACAL_ADMIN_TOKEN.
 * Files and revisions are checked here first, so a bad bundle or revision fails before anything is sent.
 */
export function registerBundleStoreCommands(bundle: Command, rt: () => CliRuntime): void {
  bundle
    .command('publish <file>')
    .description('publish a bundle to a bundle store (a revision is published once; the same bytes again are a no-op)')
    .option('--to <store>', 'db, dir:<path> or a gateway\'s admin URL (default: policy.store, else db)')
    .option('--activate', 'also make it the active revision')
    .option('--json', 'print JSON')
    .action(async (file: string, options: { to?: string; activate?: boolean; json?: boolean }) => {
      const runtime = rt();
      const bytes = await readBundleArgument(file);
      const info = await inspectBundleForStore(bytes, path.resolve(file));
      const target = resolveStore(runtime, options.to);
      let published: PublishResult & { store: string };
      let activation: ActivationResult | null = null;
      if (target.kind === 'dir') {
        const store = new DirectoryBundleStore(target.path);
        published = { store: store.description, ...(await store.publish(bytes, byThisUser())) };
        if (options.activate) activation = await activateChecked(runtime, store, info.revision);
      } else {
        const result = await remote<PublishResult & { store?: string; activation: ActivationResult | null }>(runtime, target, 'bundle.publish', {
          bundle: bytes.toString('base64'),
          activate: options.activate === true,
        });
        published = { ...result, store: target.kind === 'http' ? target.url : (result.store ?? 'db') };
        activation = result.activation;
      }
      if (options.json) {
        runtime.out.json({ ...published, activation });
        return;
      }
      runtime.out.line(`published ${published.revision} sha256=${published.sha256} to ${published.store} (${published.created ? 'new' : 'already published'})`);
      if (activation) runtime.out.line(activatedLine(activation));
    });

  bundle
    .command('list')
    .description('the bundles of a store, newest first, with the ACTIVE and SHADOW revisions')
    .option('--store <store>', 'db, dir:<path> or a gateway\'s admin URL (default: policy.store, else db)')
    .option('--json', 'print JSON')
    .action(async (options: { store?: string; json?: boolean }) => {
      const runtime = rt();
      const target = resolveStore(runtime, options.store);
      const listing =
        target.kind === 'dir'
          ? { store: describeBundleStoreSpec(target), ...(await new DirectoryBundleStore(target.path).list()) }
          : await remote<BundleStoreListing & { store?: string }>(runtime, target, 'bundle.list', {});
      if (options.json) {
        runtime.out.json(listing);
        return;
      }
      runtime.out.table(
        listing.bundles.map((b) => ({
          revision: b.revision,
          published: b.publishedAt,
          size: b.size,
          signed: b.signed ? 'yes' : 'no',
          mark: [b.revision === listing.active?.revision ? 'ACTIVE' : '', b.revision === listing.shadow?.revision ? 'SHADOW' : ''].filter(Boolean).join(','),
        })),
        [
          { key: 'revision', header: 'REVISION' },
          { key: 'published', header: 'PUBLISHED' },
          { key: 'size', header: 'SIZE' },
          { key: 'signed', header: 'SIGNED' },
          { key: 'mark', header: '' },
        ],
      );
    });

  bundle
    .command('activate')
    .description('make a published revision the active one (gateways on the store enforce it)')
    .requiredOption('--revision <rev>', 'a published revision')
    .option('--store <store>', 'db, dir:<path> or a gateway\'s admin URL (default: policy.store, else db)')
    .option('--json', 'print JSON')
    .action(async (options: { revision: string; store?: string; json?: boolean }) => {
      const runtime = rt();
      checkRevision(options.revision);
      const target = resolveStore(runtime, options.store);
      const result =
        target.kind === 'dir'
          ? await activateChecked(runtime, new DirectoryBundleStore(target.path), options.revision)
          : await remote<ActivationResult>(runtime, target, 'bundle.activate', { revision: options.revision });
      if (options.json) runtime.out.json(result);
      else runtime.out.line(activatedLine(result));
    });

  bundle
    .command('rollback')
    .description('re-activate the revision that was active before the current one')
    .option('--store <store>', 'db, dir:<path> or a gateway\'s admin URL (default: policy.store, else db)')
    .option('--json', 'print JSON')
    .action(async (options: { store?: string; json?: boolean }) => {
      const runtime = rt();
      const target = resolveStore(runtime, options.store);
      const result = target.kind === 'dir' ? await new DirectoryBundleStore(target.path).rollback(byThisUser()) : await remote<ActivationResult>(runtime, target, 'bundle.rollback', {});
      if (options.json) runtime.out.json(result);
      else runtime.out.line(`rolled back to ${result.active} (was ${result.previous ?? 'none'})`);
    });

  bundle
    .command('shadow')
    .description('set the shadow revision (evaluated alongside the active one on live traffic, never enforced), or clear it')
    .option('--revision <rev>', 'a published revision')
    .option('--off', 'clear the shadow revision')
    .option('--store <store>', 'db, dir:<path> or a gateway\'s admin URL (default: policy.store, else db)')
    .option('--json', 'print JSON')
    .action(async (options: { revision?: string; off?: boolean; store?: string; json?: boolean }) => {
      const runtime = rt();
      if ((options.revision === undefined) === (options.off !== true)) {
        throw new CaracalError('CARACAL_USAGE', 'bundle shadow needs exactly one of --revision <rev> and --off');
      }
      const revision = options.revision ?? null;
      if (revision !== null) checkRevision(revision);
      const target = resolveStore(runtime, options.store);
      const result =
        target.kind === 'dir'
          ? await shadowChecked(runtime, new DirectoryBundleStore(target.path), revision)
          : await remote<{ shadow: string | null; previous: string | null }>(runtime, target, 'bundle.shadow', { revision });
      if (options.json) runtime.out.json(result);
      else runtime.out.line(result.shadow === null ? `shadow off (was ${result.previous ?? 'none'})` : `shadow ${result.shadow} (was ${result.previous ?? 'none'})`);
    });

  bundle
    .command('fetch')
    .description('write the bytes of a published revision to a file')
    .requiredOption('--revision <rev>', 'a published revision')
    .requiredOption('--out <file>', 'file to write (replaced atomically)')
    .option('--store <store>', 'db, dir:<path> or a gateway\'s admin URL (default: policy.store, else db)')
    .option('--json', 'print JSON')
    .action(async (options: { revision: string; out: string; store?: string; json?: boolean }) => {
      const runtime = rt();
      checkRevision(options.revision);
      const out = path.resolve(options.out);
      if (await stat(out).then((s) => s.isDirectory(), () => false)) throw new CaracalError('CARACAL_USAGE', `--out ${out} is a directory; name a file`);
      const { bytes } = await fetchStoredBundle(runtime, options.revision, options.store);
      await writeAtomically(out, bytes);
      const result = { revision: options.revision, sha256: sha256Hex(bytes), size: bytes.length, out };
      if (options.json) runtime.out.json(result);
      else runtime.out.line(`fetched ${result.revision} sha256=${result.sha256} to ${out} (${result.size} bytes)`);
    });
}

/**
 * A published revision's bytes from the store `--store` names (else `policy.store`, else `db`: see resolveStore), checked
 * against the sha256 the store sent with them. Used by `bundle fetch` and by `bundle diff --revision`.
 */
export async function fetchStoredBundle(runtime: CliRuntime, revision: string, storeFlag: string | undefined): Promise<{ bytes: Buffer; store: string }> {
  checkRevision(revision);
  const target = resolveStore(runtime, storeFlag);
  const store = target.kind === 'http' ? target.url : describeBundleStoreSpec(target);
  if (target.kind === 'dir') return { bytes: await new DirectoryBundleStore(target.path).fetch(revision), store };
  const result = await remote<{ sha256?: unknown; bundle?: unknown }>(runtime, target, 'bundle.fetch', { revision });
  if (typeof result?.bundle !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(result.bundle)) throw new CaracalError('CARACAL_DEPENDENCY', `${store} did not answer bundle.fetch ${revision} with a base64 bundle`);
  const bytes = Buffer.from(result.bundle, 'base64');
  if (sha256Hex(bytes) !== result.sha256) throw new CaracalError('CARACAL_DEPENDENCY', `the bytes of ${revision} do not match the sha256 ${store} sent (corrupted on the way?)`);
  return { bytes, store };
}

/**
 * On a directory store the CLI moves the pointer itself, so it checks what the operations check on the others: that a
 * gateway with this configuration's `policy.signing` would load the revision (signature, WASM, smoke evaluation).
 */
function checkLoadable(runtime: CliRuntime, store: DirectoryBundleStore, revision: string): Promise<void> {
  return checkStoredRevisionLoadable(store, revision, runtime.config().policy.signing);
}

async function activateChecked(runtime: CliRuntime, store: DirectoryBundleStore, revision: string): Promise<ActivationResult> {
  await checkLoadable(runtime, store, revision);
  return store.activate(revision, byThisUser());
}

async function shadowChecked(runtime: CliRuntime, store: DirectoryBundleStore, revision: string | null): Promise<{ shadow: string | null; previous: string | null }> {
  if (revision !== null) await checkLoadable(runtime, store, revision);
  return store.setShadow(revision, byThisUser());
}

/** A directory store's history names the operating-system user, as the audit log does for the CLI. */
function byThisUser(): { actor: string } {
  const { actor } = cliCaller();
  return { actor: `${actor.kind}:${actor.id}` };
}

function activatedLine(result: ActivationResult): string {
  return result.active === result.previous ? `${result.active} is already active` : `activated ${result.active} (was ${result.previous ?? 'none'})`;
}


/** The flag; else `policy.store` unless it is a URL to pull from; else `db`. */
export function resolveStore(runtime: CliRuntime, flag: string | undefined): BundleStoreSpec {
  if (flag !== undefined) {
    const spec = parseBundleStoreSpec(flag);
    if (spec.kind === 'db') {
      // `db` runs the operations, which act on the store the config names: make sure that is the database.
      const configured = runtime.config().policy.store;
      if (configured !== undefined && parseBundleStoreSpec(configured).kind === 'dir') {
        throw new CaracalError('CARACAL_USAGE', `db was asked for, but policy.store is ${configured} (the gateway's operations act on that store): pass --store/--to ${configured}, or change policy.store`);
      }
    }
    return spec;
  }
  const configured = runtime.config().policy.store;
  if (configured === undefined) return { kind: 'db' };
  const spec = parseBundleStoreSpec(configured);
  return spec.kind === 'http' ? { kind: 'db' } : spec;
}

/** `db` through the runtime (database, running gateway or CARACAL_ADMIN_URL); `http` through that gateway's admin API. */
async function remote<T>(runtime: CliRuntime, target: BundleStoreSpec, name: OperationName, args: Record<string, unknown>): Promise<T> {
  if (target.kind === 'db') return runtime.operation<T>(name, args);
  if (target.kind !== 'http') throw new CaracalError('CARACAL_INTERNAL', `no remote store for ${describeBundleStoreSpec(target)}`);
  // The credential comes from the environment, as CARACAL_ADMIN_URL's does.
  const token = runtime.env.CARACAL_ADMIN_TOKEN?.trim();
  if (!token) throw new CaracalError('CARACAL_USAGE', `${target.url} is a gateway's admin API: set CARACAL_ADMIN_TOKEN to its admin credential`);
  return callAdminApi<T>({ url: target.url, token, source: 'flag' }, name, args);
}

/** The bundle file named on the command line: a regular file within the size limit. */
async function readBundleArgument(file: string): Promise<Buffer> {
  const resolved = path.resolve(file);
  let size: number;
  try {
    const info = await stat(resolved);
    if (info.isDirectory()) throw new CaracalError('CARACAL_USAGE', `${resolved} is a directory; name a bundle file (.tar.gz)`);
    if (!info.isFile()) throw new CaracalError('CARACAL_USAGE', `${resolved} is not a regular file`);
    size = info.size;
  } catch (err) {
    if (err instanceof CaracalError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new CaracalError('CARACAL_USAGE', `cannot read ${resolved}: ${code === 'ENOENT' ? 'no such file' : toError(err).message}`, { cause: err });
  }
  if (size > MAX_BUNDLE_FILE_BYTES) throw new CaracalError('CARACAL_VALIDATION', `bundle ${resolved}: ${size} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
  try {
    return await readFile(resolved);
  } catch (err) {
    throw new CaracalError('CARACAL_USAGE', `cannot read ${resolved}: ${toError(err).message}`, { cause: err });
  }
}

async function writeAtomically(file: string, bytes: Buffer): Promise<void> {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, bytes, { flag: 'wx' });
    await rename(tmp, file);
  } catch (err) {
    throw new CaracalError('CARACAL_USAGE', `cannot write ${file}: ${toError(err).message}`, { cause: err });
  } finally {
    await rm(tmp, { force: true });
  }
}

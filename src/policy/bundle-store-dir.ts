/**
 * A bundle store in a directory (`dir:<path>`): a CI artefact folder or a volume shared by gateways.
 *
 *   <dir>/revisions/<revision>.tar.gz   the published bytes, never rewritten once referenced by state.json
 *   <dir>/state.json                    pointers, activation stack, history and what is known about each bundle
 *   <dir>/.lock                         present while one writer changes the store
 *
 * Every file is written to a temporary name and renamed, so a reader (a gateway polling `pointers()`) sees the old
 * state or the new one, never half of one, and needs no lock. Writers serialise on `.lock`, created exclusively
 * (`open(…, 'wx')`); a lock older than `staleLockMs` is a writer that died and is taken over. Bundle bytes are renamed
 * into place before state.json names them, so the state never points at a missing file.
 *
 * A state.json that cannot be read is an error naming the file, never a reason to start over: starting over would
 * silently forget which revision is active.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readFile, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';

import { z } from 'zod';

import { CaracalError, isCaracalError, toError } from '../errors/catalog.js';
import { retry } from '../util/retry.js';
import { sha256Hex } from './bundle.js';
import { inspectBundleForStore } from './bundle-store-open.js';
import {
  activateChange,
  type Change,
  checkRevision,
  conflictingBytes,
  HISTORY_LISTED,
  notStored,
  type PointerState,
  rollbackChange,
  shadowChange,
} from './bundle-store-state.js';
import type {
  ActivationResult,
  BundleStore,
  BundleStoreListing,
  BundleStorePointers,
  PublishResult,
  StoredBundleInfo,
} from './bundle-store.js';

/** History entries kept in state.json (the newest); the database keeps all of them. */
const HISTORY_KEPT = 1000;

const Revision = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/);

const StateFile = z.object({
  format: z.literal(1),
  active: Revision.nullable(),
  shadow: Revision.nullable(),
  stack: z.array(Revision),
  nextSeq: z.number().int().min(1),
  /** Oldest first. */
  history: z.array(
    z.object({
      seq: z.number().int().min(1),
      action: z.enum(['activate', 'rollback', 'shadow', 'unshadow']),
      revision: Revision.nullable(),
      previous: Revision.nullable(),
      at: z.string(),
      actor: z.string().nullable(),
    }),
  ),
  /** In the order they were published. */
  bundles: z.array(
    z.object({
      revision: Revision,
      sha256: z.string().regex(/^[0-9a-f]{64}$/),
      size: z.number().int().min(0),
      publishedAt: z.string(),
      buildTime: z.string().nullable(),
      opaVersion: z.string().nullable(),
      signed: z.boolean(),
    }),
  ),
});
type State = z.infer<typeof StateFile>;

function emptyState(): State {
  return { format: 1, active: null, shadow: null, stack: [], nextSeq: 1, history: [], bundles: [] };
}

export interface DirectoryBundleStoreOptions {
  /** A lock file older than this belongs to a writer that died (default 30 s). */
  staleLockMs?: number;
  /** How long a writer waits for the lock before giving up (default: staleLockMs + 5 s, so a stale lock is always taken over first). */
  lockWaitMs?: number;
}

class LockBusy extends Error {}

export class DirectoryBundleStore implements BundleStore {
  readonly description: string;
  private readonly stateFile: string;
  private readonly revisionsDir: string;
  private readonly lockFile: string;
  private readonly staleLockMs: number;
  private readonly lockWaitMs: number;

  constructor(
    readonly dir: string,
    options: DirectoryBundleStoreOptions = {},
  ) {
    this.dir = path.resolve(dir);
    this.description = `dir:${this.dir}`;
    this.stateFile = path.join(this.dir, 'state.json');
    this.revisionsDir = path.join(this.dir, 'revisions');
    this.lockFile = path.join(this.dir, '.lock');
    this.staleLockMs = options.staleLockMs ?? 30_000;
    this.lockWaitMs = options.lockWaitMs ?? this.staleLockMs + 5_000;
  }

  async publish(bytes: Buffer, options: { actor?: string | null } = {}): Promise<PublishResult> {
    void options; // a directory records no publisher: whoever can write the folder can publish
    const info = await inspectBundleForStore(bytes);
    await this.fs(() => mkdir(this.revisionsDir, { recursive: true }), 'create');
    return this.locked(async () => {
      const state = await this.readState();
      const existing = state.bundles.find((b) => b.revision === info.revision);
      if (existing) {
        if (existing.sha256 !== info.sha256) throw conflictingBytes(info.revision, existing.sha256, info.sha256, this.description);
        return { revision: info.revision, sha256: info.sha256, size: info.size, created: false };
      }
      await this.writeAtomically(this.bundleFile(info.revision), bytes);
      state.bundles.push({ ...info, publishedAt: new Date().toISOString() });
      await this.writeState(state);
      return { revision: info.revision, sha256: info.sha256, size: info.size, created: true };
    });
  }

  async list(): Promise<BundleStoreListing> {
    const state = await this.readState();
    return {
      ...pointersOf(state),
      bundles: [...state.bundles].reverse().map((b) => ({ ...b }) satisfies StoredBundleInfo),
      history: state.history.slice(-HISTORY_LISTED).reverse(),
    };
  }

  async pointers(): Promise<BundleStorePointers> {
    // What gateways poll: a store folder that is not there (a typo, a volume that did not mount) is an unreadable
    // store, not an empty one — the gateway must not quietly serve its fallback bundle as if nothing were active.
    const exists = await stat(this.dir).then((s) => s.isDirectory(), (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? false : Promise.reject(this.fsError(err, 'read'))));
    if (!exists) throw new CaracalError('CARACAL_DEPENDENCY', `bundle store ${this.dir} does not exist (or is not a directory): not mounted, or never published to`, { retriable: true });
    return pointersOf(await this.readState());
  }

  async fetch(revision: string): Promise<Buffer> {
    checkRevision(revision);
    const info = (await this.readState()).bundles.find((b) => b.revision === revision);
    if (!info) throw notStored(revision, this.description);
    const file = this.bundleFile(revision);
    // A file replaced by hand with something huge is refused by its size before it is read into memory.
    const size = (await this.fs(() => stat(file), 'read')).size;
    if (size !== info.size) throw new CaracalError('CARACAL_VALIDATION', `${file} is ${size} bytes, not the ${info.size} recorded in ${this.stateFile} (changed outside the store?)`);
    const bytes = await this.fs(() => readFile(file), 'read');
    // The folder is shared and writable by hand: the bytes served must be the bytes published.
    if (sha256Hex(bytes) !== info.sha256) {
      throw new CaracalError('CARACAL_VALIDATION', `${file} does not match the sha256 recorded in ${this.stateFile} (changed outside the store?)`);
    }
    return bytes;
  }

  async activate(revision: string, options: { actor?: string | null } = {}): Promise<ActivationResult> {
    checkRevision(revision);
    return this.change((state) => {
      if (!state.bundles.some((b) => b.revision === revision)) throw notStored(revision, this.description);
      return activateChange(state, revision, options.actor ?? null);
    });
  }

  async rollback(options: { actor?: string | null } = {}): Promise<ActivationResult> {
    return this.change((state) => rollbackChange(state, options.actor ?? null, this.description));
  }

  async setShadow(revision: string | null, options: { actor?: string | null } = {}): Promise<{ shadow: string | null; previous: string | null }> {
    if (revision !== null) checkRevision(revision);
    return this.change((state) => {
      if (revision !== null && !state.bundles.some((b) => b.revision === revision)) throw notStored(revision, this.description);
      return shadowChange(state, revision, options.actor ?? null);
    });
  }

  /** One pointer change under the lock: read, apply, record, write. */
  private async change<R>(apply: (state: PointerState & { bundles: State['bundles'] }) => Change<R>): Promise<R> {
    // Nothing to change in a store never published to; `apply` says why (not published, nothing to roll back).
    if (!(await this.exists())) return apply(emptyState()).result;
    return this.locked(async () => {
      const state = await this.readState();
      const { state: next, entry, result } = apply(state);
      if (entry === null) return result;
      const seq = state.nextSeq;
      const history = [...state.history, { seq, at: new Date().toISOString(), ...entry }].slice(-HISTORY_KEPT);
      await this.writeState({ ...state, active: next.active, shadow: next.shadow, stack: next.stack, nextSeq: seq + 1, history });
      return result;
    });
  }

  private bundleFile(revision: string): string {
    return path.join(this.revisionsDir, `${revision}.tar.gz`);
  }

  private async exists(): Promise<boolean> {
    try {
      return (await stat(this.dir)).isDirectory();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw this.fsError(err, 'read');
    }
  }

  private async readState(): Promise<State> {
    let text: string;
    try {
      text = await readFile(this.stateFile, 'utf8');
    } catch (err) {
      // No state yet (a new or empty folder): nothing published.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyState();
      throw this.fsError(err, 'read');
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new CaracalError('CARACAL_VALIDATION', `bundle store state ${this.stateFile} is not valid JSON (${toError(err).message}); fix or restore it by hand`, { cause: err });
    }
    const parsed = StateFile.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new CaracalError('CARACAL_VALIDATION', `bundle store state ${this.stateFile} is malformed at ${issue.path.join('.') || '(root)'}: ${issue.message}; fix or restore it by hand`);
    }
    return parsed.data;
  }

  private writeState(state: State): Promise<void> {
    return this.writeAtomically(this.stateFile, Buffer.from(`${JSON.stringify(state, null, 2)}\n`, 'utf8'));
  }

  private async writeAtomically(file: string, bytes: Buffer): Promise<void> {
    const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await this.fs(async () => {
        const handle = await open(tmp, 'wx', 0o644);
        try {
          await handle.writeFile(bytes);
          // On disk before the rename makes it visible: a crash leaves the old file, not an empty new one.
          await handle.sync();
        } finally {
          await handle.close();
        }
        await rename(tmp, file);
      }, 'write');
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** Runs `fn` holding `<dir>/.lock`; waits (bounded) while another writer holds it. */
  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    const token = `${hostname()} ${process.pid} ${randomBytes(8).toString('hex')}`;
    try {
      await retry(
        async () => {
          try {
            const handle = await open(this.lockFile, 'wx', 0o644);
            try {
              await handle.writeFile(token);
            } finally {
              await handle.close();
            }
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw this.fsError(err, 'lock');
            await this.takeOverIfStale();
            throw new LockBusy();
          }
        },
        { baseDelayMs: 5, maxDelayMs: 100, jitter: 'full', maxElapsedMs: this.lockWaitMs, isRetriable: (err) => err instanceof LockBusy },
      );
    } catch (err) {
      if (!(err instanceof LockBusy)) throw err;
      const holder = await readFile(this.lockFile, 'utf8').catch(() => 'unknown');
      throw new CaracalError('CARACAL_CONFLICT', `bundle store ${this.dir} is locked by another writer (${holder.trim().slice(0, 200) || 'unknown'}); try again`, { retriable: true });
    }
    // A live writer keeps its lock fresh, so a long write (a large bundle on a slow shared volume) is never taken for
    // a dead writer's: only a lock nobody touched for staleLockMs is taken over.
    const heartbeat = setInterval(() => {
      void readFile(this.lockFile, 'utf8')
        .then((current) => (current === token ? utimes(this.lockFile, new Date(), new Date()) : undefined))
        .catch(() => undefined);
    }, Math.max(10, Math.floor(this.staleLockMs / 3)));
    heartbeat.unref();
    try {
      return await fn();
    } finally {
      clearInterval(heartbeat);
      // Only our own lock: if we were so slow that another writer took it over as stale, it is theirs now.
      const current = await readFile(this.lockFile, 'utf8').catch(() => null);
      if (current === token) await unlink(this.lockFile).catch(() => undefined);
    }
  }

  /**
   * A lock left by a writer that died is moved aside and removed. Moving (rename) rather than deleting means two
   * writers that both saw it stale cannot both remove it: the second rename finds nothing, or finds the first one's
   * fresh lock, which it puts back.
   */
  private async takeOverIfStale(): Promise<void> {
    let observed: string;
    try {
      const info = await stat(this.lockFile);
      if (Date.now() - info.mtimeMs < this.staleLockMs) return;
      observed = await readFile(this.lockFile, 'utf8');
    } catch {
      return; // gone meanwhile: the next attempt may get it
    }
    const aside = `${this.lockFile}.stale.${randomBytes(6).toString('hex')}`;
    try {
      await rename(this.lockFile, aside);
    } catch {
      return;
    }
    const moved = await readFile(aside, 'utf8').catch(() => observed);
    if (moved !== observed) await link(aside, this.lockFile).catch(() => undefined); // not the stale one: restore it
    await unlink(aside).catch(() => undefined);
  }

  private async fs<T>(fn: () => Promise<T>, what: string): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw isCaracalError(err) ? err : this.fsError(err, what);
    }
  }

  private fsError(err: unknown, what: string): CaracalError {
    const e = err as NodeJS.ErrnoException;
    const where = e.path ?? this.dir;
    if (e.code === 'ENOTDIR' || e.code === 'EEXIST') return new CaracalError('CARACAL_VALIDATION', `bundle store ${this.dir}: cannot ${what} ${where}: not a directory`, { cause: err });
    if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS') {
      return new CaracalError('CARACAL_VALIDATION', `bundle store ${this.dir}: cannot ${what} ${where}: permission denied`, { cause: err });
    }
    if (e.code === 'ENOENT') return new CaracalError('CARACAL_NOT_FOUND', `bundle store ${this.dir}: ${where} is missing`, { cause: err });
    return new CaracalError('CARACAL_DEPENDENCY', `bundle store ${this.dir}: cannot ${what}: ${toError(err).message}`, { cause: err, retriable: true });
  }
}

function pointersOf(state: State): BundleStorePointers {
  const pointer = (revision: string | null) => {
    if (revision === null) return null;
    const info = state.bundles.find((b) => b.revision === revision);
    return info ? { revision, sha256: info.sha256 } : null;
  };
  return { active: pointer(state.active), shadow: pointer(state.shadow) };
}

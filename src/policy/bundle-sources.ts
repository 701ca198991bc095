/**
 * Where the bundle watcher (bundle-watcher.ts) takes bundles from. A source answers one question per poll, for the
 * active slot and the shadow slot: unchanged since the last poll, nothing there, new bytes, or an error. It keeps
 * only the cheap identity of what it last handed over (a file's stat stamp, a store pointer's SHA-256, an HTTP
 * ETag), so an unchanged bundle is neither read nor downloaded again; deciding whether bytes are worth loading
 * (content hash, signature, WASM, smoke evaluation) is the watcher's job.
 *
 * - `file`: the bundle file of `policy.bundlePath` (no shadow).
 * - `store`: a BundleStore (bundle-store.ts); polls `pointers()` and fetches a revision only when the pointer's
 *   SHA-256 changed.
 * - `http`: a bundle server speaking OPA's bundle service API (another gateway's admin listener): GET with
 *   `If-None-Match`, 304 = unchanged. The shadow is the same URL with its last segment `active` → `shadow`.
 */
import { stat, readFile } from 'node:fs/promises';

import { toError } from '../errors/catalog.js';
import { MAX_BUNDLE_FILE_BYTES } from './bundle.js';
import type { BundlePointer, BundleStore } from './bundle-store.js';

/** What one poll saw in one slot (active or shadow). */
export type SlotReading =
  | { kind: 'unchanged' }
  /** No revision in this slot (a store with nothing active yet; no shadow). */
  | { kind: 'none' }
  /** `label` names the bundle in messages and load errors (a path, `db revision R`, a URL). */
  | { kind: 'bytes'; bytes: Buffer; label: string }
  /** The slot could not be read (unreachable, refused by the server, too large); tried again next poll. */
  | { kind: 'error'; message: string; cause?: unknown };

export interface SourcePoll {
  active: SlotReading;
  shadow: SlotReading;
}

export interface BundleSource {
  readonly kind: 'file' | 'store' | 'http';
  /** For logs and messages; never holds a credential. */
  readonly description: string;
  poll(): Promise<SourcePoll>;
  /** Forget what was handed over for `slot`, so the next poll hands the same bytes over again (a retry). */
  forget(slot: 'active' | 'shadow'): void;
  close?(): Promise<void>;
}

const UNCHANGED: SlotReading = { kind: 'unchanged' };
const NONE: SlotReading = { kind: 'none' };

/** The file's identity as stat sees it: a change of any of these means "read it again". */
interface FileStamp {
  mtimeMs: number;
  size: number;
  ino: number;
}

/** The bundle file of `policy.bundlePath`: stat every poll, read only when the stamp changed. */
export class FileBundleSource implements BundleSource {
  readonly kind = 'file';
  readonly description: string;
  readonly #file: string;
  #stamp: FileStamp | null = null;

  constructor(file: string) {
    this.#file = file;
    this.description = file;
  }

  forget(): void {
    this.#stamp = null;
  }

  async poll(): Promise<SourcePoll> {
    const file = this.#file;
    try {
      const before = await stat(file);
      const stamp = { mtimeMs: before.mtimeMs, size: before.size, ino: before.ino };
      const last = this.#stamp;
      if (last && last.mtimeMs === stamp.mtimeMs && last.size === stamp.size && last.ino === stamp.ino) return { active: UNCHANGED, shadow: NONE };
      if (before.size > MAX_BUNDLE_FILE_BYTES) throw new Error(`bundle ${file}: file is ${before.size} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
      const bytes = await readFile(file);
      this.#stamp = stamp;
      return { active: { kind: 'bytes', bytes, label: file }, shadow: NONE };
    } catch (err) {
      // Missing for a moment (a non-atomic replace) or unreadable: forget the stamp, look again next poll.
      this.#stamp = null;
      return { active: { kind: 'error', message: `cannot read ${file}: ${toError(err).message}`, cause: err }, shadow: NONE };
    }
  }
}

/** A bundle store: one `pointers()` read per poll; a revision's bytes are fetched only when its pointer moved. */
export class StoreBundleSource implements BundleSource {
  readonly kind = 'store';
  readonly description: string;
  readonly #store: BundleStore;
  /** SHA-256 of the pointer last handed over per slot; null: nothing handed over (or it failed). */
  readonly #seen: { active: string | null; shadow: string | null } = { active: null, shadow: null };

  constructor(store: BundleStore) {
    this.#store = store;
    this.description = store.description;
  }

  forget(slot: 'active' | 'shadow'): void {
    this.#seen[slot] = null;
  }

  async poll(): Promise<SourcePoll> {
    let pointers;
    try {
      pointers = await this.#store.pointers();
    } catch (err) {
      return { active: { kind: 'error', message: `cannot read the bundle store ${this.description}: ${toError(err).message.split('\n')[0]}`, cause: err }, shadow: UNCHANGED };
    }
    return { active: await this.#slot('active', pointers.active), shadow: await this.#slot('shadow', pointers.shadow) };
  }

  async #slot(slot: 'active' | 'shadow', pointer: BundlePointer | null): Promise<SlotReading> {
    if (pointer === null) {
      this.#seen[slot] = null;
      return NONE;
    }
    if (pointer.sha256 === this.#seen[slot]) return UNCHANGED;
    try {
      const bytes = await this.#store.fetch(pointer.revision);
      this.#seen[slot] = pointer.sha256;
      return { kind: 'bytes', bytes, label: `${this.description} revision ${pointer.revision}` };
    } catch (err) {
      this.#seen[slot] = null;
      return { kind: 'error', message: `cannot fetch revision ${pointer.revision} from the bundle store ${this.description}: ${toError(err).message.split('\n')[0]}`, cause: err };
    }
  }

  close(): Promise<void> {
    return this.#store.close?.() ?? Promise.resolve();
  }
}

export interface HttpBundleSourceOptions {
  /** The active bundle's URL, e.g. `http://gw-1:8081/admin/v1/bundles/active`. */
  url: string;
  /** Sent as `Authorization: Bearer <token>`. */
  token?: string;
  /** Per request (headers and body); default 10 s. */
  timeoutMs?: number;
  /** Default MAX_BUNDLE_FILE_BYTES. */
  maxBytes?: number;
}

/** Longest error text kept from a bundle server's error body. */
const MAX_ERROR_BODY = 4096;

/**
 * A bundle server (OPA's bundle service API): `GET <url>` with the last `ETag` in `If-None-Match`; 304 = unchanged,
 * 200 = a bundle. Anything else is an error (reported by the watcher as a refusal), except 404 on the shadow URL,
 * which means "no shadow". Redirects are not followed: the bearer credential goes to the configured URL only.
 */
export class HttpBundleSource implements BundleSource {
  readonly kind = 'http';
  readonly description: string;
  readonly #active: URL;
  /** Null when the URL does not end in `/active` (then there is no shadow to follow). */
  readonly #shadow: URL | null;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #maxBytes: number;
  readonly #etags: { active: string | null; shadow: string | null } = { active: null, shadow: null };

  constructor(options: HttpBundleSourceOptions) {
    const url = new URL(options.url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`bundle server URL must be http(s): ${safeUrl(url)}`);
    this.#active = url;
    this.#shadow = shadowUrlOf(url);
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#maxBytes = options.maxBytes ?? MAX_BUNDLE_FILE_BYTES;
    this.description = safeUrl(url);
  }

  forget(slot: 'active' | 'shadow'): void {
    this.#etags[slot] = null;
  }

  async poll(): Promise<SourcePoll> {
    const active = await this.#get('active', this.#active);
    const shadow = this.#shadow ? await this.#get('shadow', this.#shadow) : NONE;
    return { active, shadow };
  }

  async #get(slot: 'active' | 'shadow', url: URL): Promise<SlotReading> {
    const shown = safeUrl(url);
    const headers: Record<string, string> = { accept: 'application/gzip, application/octet-stream' };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    const etag = this.#etags[slot];
    if (etag) headers['if-none-match'] = etag;
    const signal = AbortSignal.timeout(this.#timeoutMs);
    try {
      const response = await fetch(url, { method: 'GET', headers, redirect: 'manual', signal });
      if (response.status === 304 && etag) {
        await response.body?.cancel();
        return UNCHANGED;
      }
      if (response.status === 404 && slot === 'shadow') {
        await response.body?.cancel();
        this.#etags.shadow = null;
        return NONE;
      }
      if (response.status !== 200) {
        const detail = await errorDetail(response);
        this.#etags[slot] = null;
        return { kind: 'error', message: `GET ${shown}: HTTP ${response.status}${detail ? ` (${detail})` : ''}` };
      }
      const bytes = await readCapped(response, this.#maxBytes);
      // Remembered only once the bytes are in: a failed download is fetched whole again.
      this.#etags[slot] = response.headers.get('etag');
      return { kind: 'bytes', bytes, label: shown };
    } catch (err) {
      this.#etags[slot] = null;
      const reason = signal.aborted ? `no complete answer within ${this.#timeoutMs} ms` : toError(err).message.split('\n')[0];
      return { kind: 'error', message: `GET ${shown}: ${reason}`, cause: err };
    }
  }
}

/** `…/active` → `…/shadow`; null when the last path segment is not `active`. */
export function shadowUrlOf(active: URL): URL | null {
  const segments = active.pathname.split('/');
  if (segments[segments.length - 1] !== 'active') return null;
  segments[segments.length - 1] = 'shadow';
  const shadow = new URL(active.href);
  shadow.pathname = segments.join('/');
  return shadow;
}

/** The URL without user info or query (either may carry a secret) for logs and messages. */
function safeUrl(url: URL): string {
  return `${url.protocol}//${url.host}${url.pathname}`;
}

async function readCapped(response: Response, maxBytes: number): Promise<Buffer> {
  const declared = Number(response.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > maxBytes) {
    await response.body?.cancel();
    throw new Error(`the bundle is ${declared} bytes, more than the ${maxBytes} allowed`);
  }
  if (!response.body) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let total = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel();
      throw new Error(`the bundle is more than the ${maxBytes} bytes allowed`);
    }
    chunks.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
  }
  return Buffer.concat(chunks, total);
}

/** One line from an error answer: the `message` of a Caracal error body, else the start of the text. */
async function errorDetail(response: Response): Promise<string> {
  try {
    const body = response.body;
    if (!body) return '';
    const reader = body.getReader();
    const chunks: Buffer[] = [];
    let total = 0;
    while (total < MAX_ERROR_BODY) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(Buffer.from(value));
      total += value.byteLength;
    }
    await reader.cancel().catch(() => {});
    const text = Buffer.concat(chunks).subarray(0, MAX_ERROR_BODY).toString('utf8');
    try {
      const parsed = JSON.parse(text) as { message?: unknown };
      if (typeof parsed.message === 'string') return oneLine(parsed.message);
    } catch {
      // not JSON: the text itself
    }
    return oneLine(text);
  } catch {
    return '';
  }
}

function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim().slice(0, 200);
}

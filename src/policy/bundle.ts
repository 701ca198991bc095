/**
 * Policy bundles: building them with the `opa` binary (a build-time tool only) and reading them
 * back without it (the gateway's runtime path).
 *
 * A bundle is an OPA bundle (gzipped tar) built with `opa build -t wasm`: `/policy.wasm`,
 * `/data.json`, `/.manifest` (revision, wasm entrypoints) and the Rego sources for reference.
 * Member names start with "/" by OPA convention; they are bundle-root relative and never used
 * as file-system paths here, so one leading "/" is accepted and stripped. Everything else that
 * could escape a root (`..`, a second leading "/", backslashes, drive letters) is rejected.
 */
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { gunzip, gzipSync } from 'node:zlib';

import { CaracalError, toError } from '../errors/catalog.js';
import { type BundleKey, type BundleVerification, createSignaturesFile, SIGNATURES_FILE, type VerificationOutcome, verifyBundleFiles } from './signing.js';

/** The one document the gateway queries (`data.caracal.authz.decision`). */
export const DECISION_ENTRYPOINT = 'caracal/authz/decision';

/**
 * Names `opa build` skips while loading the policies folder (matched against base names):
 * tests, decision fixtures, docs, and data/hidden files, so that only Rego is bundled.
 */
export const BUILD_IGNORE: readonly string[] = ['*_test.rego', 'fixtures', 'examples', '*.md', '*.json', '*.yaml', '*.yml', '.*'];

/** Caps for reading a bundle: compressed file, uncompressed tar, number of members. */
/** SHA-256 of a bundle file's bytes, hex: its identity in stores, ETags and the hot-swap watcher. */
export function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export const MAX_BUNDLE_FILE_BYTES = 64 * 1024 * 1024;
export const MAX_BUNDLE_UNCOMPRESSED_BYTES = 64 * 1024 * 1024;
export const MAX_BUNDLE_ENTRIES = 10_000;

export interface BundleManifest {
  revision?: string;
  roots?: string[];
  wasm?: { entrypoint: string; module: string }[];
  rego_version?: number;
  [key: string]: unknown;
}

export interface Bundle {
  wasm: Buffer;
  data: unknown;
  manifest: BundleManifest;
  /** Every regular file in the bundle by its root-relative path (no leading "/"). */
  files: ReadonlyMap<string, Buffer>;
  /** What the signature check found; `{ signed: false }` when no keys were configured. */
  signature: VerificationOutcome;
}

export interface ReadBundleOptions {
  /** Signature policy (policy.signing); absent or without keys = signatures are not checked. */
  verification?: BundleVerification;
}

export interface BuildBundleOptions {
  opaBin: string;
  policiesDir: string;
  outFile: string;
  revision: string;
  /** Defaults to `caracal/authz/decision`. */
  entrypoint?: string;
  /** Kill `opa` after this long (default 120 s). */
  timeoutMs?: number;
  /**
   * The build time recorded in the manifest. Default: `SOURCE_DATE_EPOCH` (seconds) when set — a
   * reproducible build gives the same bytes for the same sources — else now.
   */
  buildTime?: Date;
}

/** What Caracal adds to the manifest, under `metadata.caracal` (OPA keeps `metadata` as it is). */
export interface BuildMetadata {
  build_time: string;
  opa_version: string;
}

export interface BuiltBundle {
  outFile: string;
  revision: string;
  metadata: BuildMetadata;
  /** Hex SHA-256 of the bundle file as written. */
  sha256: string;
}

// ------------------------------------------------------------------------------------------------
// Building

interface ExecResult {
  stdout: string;
  stderr: string;
}

class ExecFailure extends Error {
  constructor(
    message: string,
    readonly stdout: string,
    readonly stderr: string,
    readonly errno: string | undefined,
  ) {
    super(message);
  }
}

function run(file: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 32 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) {
          const code = (err as NodeJS.ErrnoException).code;
          reject(new ExecFailure(err.message, stdout, stderr, typeof code === 'string' ? code : undefined));
        } else {
          resolve({ stdout, stderr });
        }
      },
    );
  });
}

function opaFailure(opaBin: string, err: unknown, what: string): CaracalError {
  if (err instanceof ExecFailure && err.errno === 'ENOENT') {
    return new CaracalError('CARACAL_DEPENDENCY', `opa binary not found at ${opaBin}`, { cause: err });
  }
  const detail = err instanceof ExecFailure ? (err.stderr.trim() || err.stdout.trim() || err.message) : toError(err).message;
  return new CaracalError('CARACAL_VALIDATION', `${what}: ${detail}`, { cause: err });
}

/** The folder of the installed @open-policy-agent/opa-wasm package (its `exports` hide files). */
function opaWasmPackageDir(): string {
  const require = createRequire(import.meta.url);
  let dir = path.dirname(require.resolve('@open-policy-agent/opa-wasm'));
  for (;;) {
    if (existsSync(path.join(dir, 'capabilities.json')) && existsSync(path.join(dir, 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new CaracalError('CARACAL_INTERNAL', 'cannot find @open-policy-agent/opa-wasm/capabilities.json');
    dir = parent;
  }
}

interface Capabilities {
  builtins: { name: string }[];
  wasm_abi_versions?: unknown;
  [key: string]: unknown;
}

/**
 * The capabilities the gateway can actually execute: this `opa`'s language features, restricted
 * to the builtins the opa-wasm SDK lists as implemented (natively in WASM or in the SDK's JS).
 * Building against it turns "not implemented: http.send" at request time into a build error.
 */
export async function wasmCapabilities(opaBin: string): Promise<Capabilities> {
  let current: Capabilities;
  try {
    const { stdout } = await run(opaBin, ['capabilities', '--current'], { timeoutMs: 30_000 });
    current = JSON.parse(stdout) as Capabilities;
  } catch (err) {
    throw opaFailure(opaBin, err, 'opa capabilities failed');
  }
  const sdk = JSON.parse(await readFile(path.join(opaWasmPackageDir(), 'capabilities.json'), 'utf8')) as Capabilities;
  const supported = new Set(sdk.builtins.map((b) => b.name));
  return {
    ...current,
    builtins: current.builtins.filter((b) => supported.has(b.name)),
    wasm_abi_versions: sdk.wasm_abi_versions,
  };
}

function buildTimeOf(given: Date | undefined): Date {
  if (given) return given;
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined && /^\d{1,12}$/.test(epoch)) return new Date(Number(epoch) * 1000);
  return new Date();
}

/** `opa version`'s first line, `Version: 1.22.2` → `1.22.2`. */
async function opaVersion(opaBin: string): Promise<string> {
  try {
    const { stdout } = await run(opaBin, ['version'], { timeoutMs: 30_000 });
    const version = /^Version:\s*(\S+)/m.exec(stdout)?.[1];
    if (version) return version;
  } catch (err) {
    throw opaFailure(opaBin, err, 'opa version failed');
  }
  throw new CaracalError('CARACAL_VALIDATION', `${opaBin} version printed no "Version:" line`);
}

/**
 * `opa build -t wasm -e caracal/authz/decision --revision <rev>` over `policiesDir`, checked
 * against {@link wasmCapabilities}. Writes to a temporary name and renames, so a failed build
 * never replaces a good bundle.
 */
export async function buildBundle(options: BuildBundleOptions): Promise<BuiltBundle> {
  const policiesDir = path.resolve(options.policiesDir);
  const outFile = path.resolve(options.outFile);
  const entrypoint = options.entrypoint ?? DECISION_ENTRYPOINT;
  if (!existsSync(policiesDir)) {
    throw new CaracalError('CARACAL_VALIDATION', `policies folder not found: ${policiesDir}`);
  }
  if (options.revision.length === 0 || /[\s\0]/.test(options.revision)) {
    throw new CaracalError('CARACAL_VALIDATION', `invalid bundle revision: ${JSON.stringify(options.revision)}`);
  }

  const workDir = await mkdtemp(path.join(os.tmpdir(), 'caracal-bundle-'));
  await mkdir(path.dirname(outFile), { recursive: true });
  const tmpOut = `${outFile}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    const capsFile = path.join(workDir, 'capabilities.json');
    await writeFile(capsFile, JSON.stringify(await wasmCapabilities(options.opaBin)));

    const args = ['build', '-t', 'wasm', '-e', entrypoint, '--revision', options.revision, '--capabilities', capsFile];
    for (const pattern of BUILD_IGNORE) args.push('--ignore', pattern);
    // Run inside the folder so member names are "/caracal/authz.rego", independent of where the
    // checkout lives (and the build is byte-for-byte reproducible).
    args.push('-o', tmpOut, '.');
    try {
      await run(options.opaBin, args, { cwd: policiesDir, timeoutMs: options.timeoutMs });
    } catch (err) {
      const failure = opaFailure(options.opaBin, err, 'opa build failed');
      if (/undefined function/.test(failure.message)) {
        failure.message +=
          ' (the WASM target and the opa-wasm SDK do not implement this builtin; see wasmCapabilities in src/policy/bundle.ts)';
      }
      throw failure;
    }

    // The manifest also records when and with which opa the bundle was built.
    const metadata: BuildMetadata = { build_time: buildTimeOf(options.buildTime).toISOString(), opa_version: await opaVersion(options.opaBin) };
    const members = await readBundleFiles(await readFile(tmpOut), tmpOut);
    const manifest = JSON.parse(members.get('.manifest')?.toString('utf8') ?? '{}') as BundleManifest;
    const existing = typeof manifest.metadata === 'object' && manifest.metadata !== null ? (manifest.metadata as Record<string, unknown>) : {};
    members.set('.manifest', Buffer.from(JSON.stringify({ ...manifest, metadata: { ...existing, caracal: metadata } }), 'utf8'));
    await writeFile(tmpOut, writeBundleTarball(members));

    // Read it back with the runtime reader: what we write must be what the gateway can load.
    const bundle = await readBundle(tmpOut);
    if (bundle.manifest.revision !== options.revision) {
      throw new CaracalError('CARACAL_VALIDATION', `built bundle has revision ${String(bundle.manifest.revision)}, expected ${options.revision}`);
    }
    await rename(tmpOut, outFile);
    const sha256 = createHash('sha256').update(await readFile(outFile)).digest('hex');
    return { outFile, revision: options.revision, metadata, sha256 };
  } finally {
    await rm(workDir, { recursive: true, force: true });
    await rm(tmpOut, { force: true });
  }
}

/**
 * The commit the policies were built from: `git rev-parse HEAD` in `cwd`, suffixed `-dirty` when
 * `git status --porcelain <pathspec>` reports changes; `"uncommitted"` outside a repository or
 * before the first commit.
 */
export async function gitRevision(cwd: string, pathspec = 'policies'): Promise<string> {
  let sha: string;
  try {
    sha = (await run('git', ['rev-parse', '--verify', '--quiet', 'HEAD'], { cwd, timeoutMs: 30_000 })).stdout.trim();
  } catch {
    return 'uncommitted';
  }
  if (!/^[0-9a-f]{40,64}$/.test(sha)) return 'uncommitted';
  try {
    const { stdout } = await run('git', ['status', '--porcelain', '--', pathspec], { cwd, timeoutMs: 30_000 });
    return stdout.trim().length > 0 ? `${sha}-dirty` : sha;
  } catch {
    return `${sha}-dirty`;
  }
}

// ------------------------------------------------------------------------------------------------
// Reading

function bundleError(source: string, message: string, cause?: unknown): CaracalError {
  return new CaracalError('CARACAL_VALIDATION', `bundle ${source}: ${message}`, cause !== undefined ? { cause } : {});
}

/** Read and validate a bundle file (see {@link parseBundle}). */
export async function readBundle(file: string, options: ReadBundleOptions = {}): Promise<Bundle> {
  return parseBundle(await readBundleBytes(file), file, options);
}

/** A bundle file's bytes, refused before reading when larger than MAX_BUNDLE_FILE_BYTES. */
async function readBundleBytes(file: string): Promise<Buffer> {
  let size: number;
  try {
    size = (await stat(file)).size;
  } catch (err) {
    throw bundleError(file, `cannot read: ${toError(err).message}`, err);
  }
  if (size > MAX_BUNDLE_FILE_BYTES) throw bundleError(file, `file is ${size} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
  return readFile(file);
}

function gunzipCapped(buf: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    gunzip(buf, { maxOutputLength: MAX_BUNDLE_UNCOMPRESSED_BYTES }, (err, out) => (err ? reject(err) : resolve(out)));
  });
}

/** Parse a gzipped OPA bundle held in memory. `source` names it in error messages. */
export async function parseBundle(gzipped: Buffer, source = '<buffer>', options: ReadBundleOptions = {}): Promise<Bundle> {
  const files = await readBundleFiles(gzipped, source);
  // Before anything in the bundle is interpreted: a refused bundle is never parsed further.
  const signature = await verifyBundleFiles(files, options.verification ?? { keys: [], allowUnsigned: true }, source);

  let manifest: BundleManifest = {};
  const manifestBytes = files.get('.manifest');
  if (manifestBytes !== undefined) {
    const parsed = parseJson(manifestBytes, source, '.manifest');
    if (!isPlainObject(parsed)) throw bundleError(source, '.manifest is not a JSON object');
    manifest = parsed as BundleManifest;
    if (manifest.revision !== undefined && typeof manifest.revision !== 'string') {
      throw bundleError(source, '.manifest revision is not a string');
    }
  }

  let modulePath = 'policy.wasm';
  if (Array.isArray(manifest.wasm)) {
    const entry = manifest.wasm.find((w) => isPlainObject(w) && w.entrypoint === DECISION_ENTRYPOINT) ?? manifest.wasm[0];
    if (isPlainObject(entry) && typeof entry.module === 'string') modulePath = normaliseMemberPath(entry.module, source);
  }
  const wasm = files.get(modulePath);
  if (wasm === undefined) throw bundleError(source, `no WASM module at /${modulePath} (was it built with -t wasm?)`);

  return { wasm, data: assembleData(files, source), manifest, files, signature };
}

/** The files of a gzipped tarball (any OPA bundle, WASM or not), without interpreting them. */
export async function readBundleFiles(gzipped: Buffer, source = '<buffer>'): Promise<Map<string, Buffer>> {
  if (gzipped.length < 18 || gzipped[0] !== 0x1f || gzipped[1] !== 0x8b) {
    throw bundleError(source, 'not a gzip file (a bundle is a .tar.gz built by `opa build -t wasm`)');
  }
  let tar: Buffer;
  try {
    tar = await gunzipCapped(gzipped);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ERR_BUFFER_TOO_LARGE' || e instanceof RangeError) {
      throw bundleError(source, `uncompressed size exceeds ${MAX_BUNDLE_UNCOMPRESSED_BYTES} bytes`, err);
    }
    if (e.code === 'Z_BUF_ERROR') throw bundleError(source, 'truncated gzip stream (unexpected end of file)', err);
    throw bundleError(source, `corrupt gzip stream: ${e.message}`, err);
  }
  return parseTar(tar, source);
}

/** Read a bundle file's members (size-capped like {@link readBundle}) without interpreting them. */
export async function readBundleFileMembers(file: string): Promise<Map<string, Buffer>> {
  return readBundleFiles(await readBundleBytes(file), file);
}

function parseJson(bytes: Buffer, source: string, name: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw bundleError(source, `${name} is not valid JSON: ${toError(err).message}`, err);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Merge every `<dir>/data.json` into one document at `<dir>`, as OPA does. */
function assembleData(files: ReadonlyMap<string, Buffer>, source: string): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  for (const [name, bytes] of files) {
    if (name !== 'data.json' && !name.endsWith('/data.json')) continue;
    const value = parseJson(bytes, source, name);
    const segments = name.split('/').slice(0, -1);
    if (segments.length === 0 && !isPlainObject(value)) throw bundleError(source, 'data.json at the root is not a JSON object');
    let node = root;
    for (const [i, seg] of segments.entries()) {
      if (i === segments.length - 1) break;
      const next = node[seg] ?? {};
      if (!isPlainObject(next)) throw bundleError(source, `data conflict at ${segments.slice(0, i + 1).join('/')}`);
      node[seg] = next;
      node = next;
    }
    const last = segments[segments.length - 1];
    if (last === undefined) {
      mergeInto(root, value as Record<string, unknown>, source, '');
    } else if (node[last] === undefined) {
      node[last] = value;
    } else if (isPlainObject(node[last]) && isPlainObject(value)) {
      mergeInto(node[last], value, source, segments.join('/'));
    } else {
      throw bundleError(source, `data conflict at ${segments.join('/')}`);
    }
  }
  return root;
}

function mergeInto(target: Record<string, unknown>, value: Record<string, unknown>, source: string, at: string): void {
  for (const [k, v] of Object.entries(value)) {
    const existing = target[k];
    if (existing === undefined) target[k] = v;
    else if (isPlainObject(existing) && isPlainObject(v)) mergeInto(existing, v, source, `${at}/${k}`);
    else throw bundleError(source, `data conflict at ${at}/${k}`);
  }
}

/** Bundle-root-relative member path without a leading "/", or an error if it could escape. */
function normaliseMemberPath(raw: string, source: string): string {
  const bad = (why: string): CaracalError => bundleError(source, `unsafe member path ${JSON.stringify(raw)}: ${why}`);
  if (raw.length === 0) throw bad('empty');
  if (raw.includes('\0')) throw bad('contains NUL');
  if (raw.includes('\\')) throw bad('contains a backslash');
  if (/^[A-Za-z]:/.test(raw)) throw bad('absolute (drive letter)');
  // OPA writes "/policy.wasm": one leading slash means "bundle root"; two mean an absolute path.
  const rel = raw.startsWith('/') ? raw.slice(1) : raw;
  if (rel.startsWith('/')) throw bad('absolute');
  const segments: string[] = [];
  for (const seg of rel.split('/')) {
    if (seg === '..') throw bad('contains ".."');
    if (seg === '' || seg === '.') continue;
    segments.push(seg);
  }
  return segments.join('/');
}

function cString(block: Buffer, start: number, length: number): string {
  const field = block.subarray(start, start + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? field.length : end).toString('utf8');
}

function octal(block: Buffer, start: number, length: number, source: string, what: string): number {
  const field = block.subarray(start, start + length);
  if (((field[0] ?? 0) & 0x80) !== 0) throw bundleError(source, `tar header ${what} uses base-256 encoding (too large)`);
  const text = cString(block, start, length).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw bundleError(source, `tar header ${what} is not octal: ${JSON.stringify(text)} (not a tar archive, or corrupt)`);
  return parseInt(text, 8);
}

function isZeroBlock(block: Buffer): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

/** PAX extended header records: "<len> <key>=<value>\n". */
function parsePax(data: Buffer, source: string): Map<string, string> {
  const records = new Map<string, string>();
  let off = 0;
  while (off < data.length) {
    const space = data.indexOf(0x20, off);
    if (space === -1) throw bundleError(source, 'malformed PAX header');
    const len = Number(data.subarray(off, space).toString('ascii'));
    if (!Number.isInteger(len) || len <= space - off || off + len > data.length) throw bundleError(source, 'malformed PAX header');
    const record = data.subarray(space + 1, off + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq === -1) throw bundleError(source, 'malformed PAX header');
    records.set(record.slice(0, eq), record.slice(eq + 1));
    off += len;
  }
  return records;
}

/**
 * A small ustar reader (with the PAX and GNU long-name extensions `opa`/Go and GNU tar emit).
 * Only regular files and directories are accepted; links, devices and FIFOs are rejected.
 */
export function parseTar(tar: Buffer, source = '<buffer>'): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let off = 0;
  let entries = 0;
  let pendingName: string | undefined;
  let ended = false;
  while (off + 512 <= tar.length) {
    const header = tar.subarray(off, off + 512);
    if (isZeroBlock(header)) {
      ended = true;
      break;
    }
    if (++entries > MAX_BUNDLE_ENTRIES) throw bundleError(source, `more than ${MAX_BUNDLE_ENTRIES} tar entries`);

    const expected = octal(header, 148, 8, source, 'checksum');
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
    if (sum !== expected) throw bundleError(source, `tar header checksum mismatch at offset ${off} (not a tar archive, or corrupt)`);

    const size = octal(header, 124, 12, source, 'size');
    const type = String.fromCharCode(header[156]!);
    const magic = cString(header, 257, 6);
    const prefix = magic === 'ustar' ? cString(header, 345, 155) : '';
    const rawName = pendingName ?? (prefix ? `${prefix}/${cString(header, 0, 100)}` : cString(header, 0, 100));
    const dataStart = off + 512;
    if (dataStart + size > tar.length) throw bundleError(source, `tar entry ${JSON.stringify(rawName)} is truncated`);
    const data = tar.subarray(dataStart, dataStart + size);
    off = dataStart + Math.ceil(size / 512) * 512;

    switch (type) {
      case 'x': {
        const pax = parsePax(data, source);
        if (pax.has('size')) throw bundleError(source, 'PAX size records are not supported');
        pendingName = pax.get('path') ?? pendingName;
        continue;
      }
      case 'L':
        pendingName = cString(data, 0, data.length);
        continue;
      case 'g':
        continue;
      case '5':
        normaliseMemberPath(rawName, source);
        pendingName = undefined;
        continue;
      case '0':
      case '\0':
      case '7': {
        const name = normaliseMemberPath(rawName, source);
        if (name === '') throw bundleError(source, 'tar entry with an empty name');
        if (files.has(name)) throw bundleError(source, `duplicate tar entry ${JSON.stringify(name)}`);
        files.set(name, data);
        pendingName = undefined;
        continue;
      }
      default:
        throw bundleError(source, `tar entry ${JSON.stringify(rawName)} has unsupported type ${JSON.stringify(type)} (only files and directories)`);
    }
  }
  if (!ended) throw bundleError(source, 'truncated tar archive (no end-of-archive marker)');
  return files;
}

// ------------------------------------------------------------------------------------------------
// Writing (for `bundle sign`)

function tarHeader(name: string, size: number, type: '0' | 'x'): Buffer {
  const header = Buffer.alloc(512);
  header.write(name, 0, 100, 'utf8');
  header.write('0000644\0', 100, 'ascii'); // mode
  header.write('0000000\0', 108, 'ascii'); // uid
  header.write('0000000\0', 116, 'ascii'); // gid
  header.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
  // mtime 0: signing the same bundle with the same key twice gives the same tarball (ECDSA aside).
  header.write('00000000000\0', 136, 'ascii');
  header.write('        ', 148, 'ascii'); // checksum placeholder: eight spaces
  header.write(type, 156, 'ascii');
  header.write('ustar\0', 257, 'ascii');
  header.write('00', 263, 'ascii');
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += header[i]!;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return header;
}

function padded(data: Buffer): Buffer[] {
  const rest = data.length % 512;
  return rest === 0 ? [data] : [data, Buffer.alloc(512 - rest)];
}

/** One PAX record "<len> path=<value>\n", where <len> counts itself. */
function paxPathRecord(value: string): Buffer {
  const body = ` path=${value}\n`;
  const bodyLength = Buffer.byteLength(body);
  let length = bodyLength + 1;
  while (String(length).length + bodyLength !== length) length++;
  return Buffer.from(`${length}${body}`, 'utf8');
}

/**
 * A gzipped ustar archive of `files`, each named "/<name>" as `opa build` names them. Names longer
 * than the 100-byte header field get a PAX `path` record (which parseTar and Go's reader read).
 */
export function writeBundleTarball(files: Iterable<[string, Buffer]>): Buffer {
  const blocks: Buffer[] = [];
  for (const [name, data] of files) {
    const member = `/${name}`;
    if (Buffer.byteLength(member) > 100) {
      const pax = paxPathRecord(member);
      blocks.push(tarHeader('PaxHeader', pax.length, 'x'), ...padded(pax));
    }
    blocks.push(tarHeader(member, data.length, '0'), ...padded(data));
  }
  blocks.push(Buffer.alloc(1024)); // end-of-archive: two zero blocks
  return gzipSync(Buffer.concat(blocks));
}

export interface SignBundleOptions {
  inFile: string;
  /** Defaults to `inFile` (replaced atomically). */
  outFile?: string;
  key: BundleKey;
}

export interface SignedBundle {
  outFile: string;
  keyId: string;
  algorithm: string;
  /** Files listed in the signature. */
  files: number;
  /** True when the input carried a signature, which this one replaces. */
  replaced: boolean;
  sha256: string;
}

/**
 * Writes `inFile` with a new `/.signatures.json` (any previous one dropped) signing every other
 * member. The result is read back and verified with the key before it replaces anything.
 */
export async function signBundle(options: SignBundleOptions): Promise<SignedBundle> {
  const inFile = path.resolve(options.inFile);
  const outFile = path.resolve(options.outFile ?? options.inFile);
  const members = await readBundleFileMembers(inFile);
  const replaced = members.delete(SIGNATURES_FILE);
  if (members.size === 0) throw bundleError(inFile, 'has no files to sign');
  const signatures = await createSignaturesFile(members, options.key);
  // The signatures first, so that a streaming reader meets them before the files they cover.
  const tarball = writeBundleTarball([[SIGNATURES_FILE, signatures], ...members]);

  const publicKey = { ...options.key, key: createPublicKey(options.key.key) };
  const check = await verifyBundleFiles(await readBundleFiles(tarball, outFile), { keys: [publicKey], allowUnsigned: false }, outFile);
  if (!check.signed) throw new CaracalError('CARACAL_INTERNAL', `signed bundle ${outFile} did not verify`);

  await mkdir(path.dirname(outFile), { recursive: true });
  const tmpOut = `${outFile}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmpOut, tarball);
    await rename(tmpOut, outFile);
  } finally {
    await rm(tmpOut, { force: true });
  }
  return {
    outFile,
    keyId: options.key.keyId,
    algorithm: options.key.algorithm,
    files: check.files,
    replaced,
    sha256: createHash('sha256').update(tarball).digest('hex'),
  };
}

/** Checks the signature of a bundle file (any OPA bundle, WASM or not) for `bundle verify`. */
export async function verifyBundleFile(file: string, verification: BundleVerification): Promise<VerificationOutcome> {
  return verifyBundleFiles(await readBundleFileMembers(file), verification, file);
}

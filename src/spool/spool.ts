import { constants } from 'node:fs';
import { open, readdir, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { CaracalError } from '../errors/catalog.js';
import type { EventLog, OutgoingMessage } from '../events/event-log.js';
import { backoffDelay, sleep, type BackoffOptions } from '../util/retry.js';
import { crc32, decodeFrame, encodeRecord, type SpoolRecord, type StoredRecord } from './frame.js';
import { SpoolLock } from './lock.js';

export type { SpoolRecord, StoredRecord } from './frame.js';

/** `append` refused because `maxBytes` of records wait to be shipped; nothing of the call was written. */
export class SpoolFull extends CaracalError {
  constructor(unshippedBytes: number, maxBytes: number) {
    super('CARACAL_EVENTS_UNAVAILABLE', `the event spool is full (${unshippedBytes} of ${maxBytes} bytes wait to be shipped)`, { retriable: true });
    this.name = 'SpoolFull';
  }
}

export interface SpoolOptions {
  dir: string;
  /** Most bytes (framing included) that may wait to be shipped; appends beyond it reject with `SpoolFull`. */
  maxBytes: number;
  /** A segment file is closed and a new one started once a write would take it past this. Default 64 MiB. */
  segmentBytes?: number;
  /** Clock for record timestamps and ages (tests). */
  now?: () => number;
  logger?: Logger;
  /** Told after each durable flush: its duration (write + fdatasync) in seconds and its record count. */
  onFlush?: (seconds: number, records: number) => void;
}

export interface ShippingOptions {
  /** Most records per batch; each batch is one or more `publish` calls (one per run of a topic) and one checkpoint. */
  batchSize: number;
  /** Told about every failed publish (then retried after a backoff) and every failed read or checkpoint. */
  onError?: (err: unknown, attempt: number) => void;
  /** Waits between failed attempts. Default: 100 ms doubling to 10 s, equal jitter. */
  backoff?: BackoffOptions;
}

export interface SpoolStats {
  /** Durable bytes (framing included) not yet acknowledged by the event log. */
  unshippedBytes: number;
  unshippedRecords: number;
  /**
   * Age of the oldest unshipped record, 0 when there is none. Tracked per flush, so while a flush's
   * records are shipped part by part this is the age of the flush's first record (an upper bound).
   */
  oldestUnshippedAgeMs: number;
  /** Records acknowledged by the event log since `open`. */
  shippedRecords: number;
  /** Records made durable since `open`. */
  appendedRecords: number;
  /** Write + fdatasync pairs since `open`. */
  flushes: number;
  /** `appendedRecords / flushes`: how many records one fsync carried on average. */
  recordsPerFlush: number;
  maxRecordsPerFlush: number;
  /** Torn or corrupt tails cut off at `open` (each cut counts once: garbage holds no countable records). */
  tornRecords: number;
  tornBytes: number;
  segments: number;
  /** Failed publish / read / checkpoint attempts of the shipper since `open`. */
  shipErrors: number;
}

interface Segment {
  /** Global byte offset of the segment's first byte; also its file name. */
  base: number;
  /** Durable bytes in it. */
  size: number;
}

interface Pending {
  frames: Buffer[];
  bytes: number;
  count: number;
  appendedAt: number;
  resolve: () => void;
  reject: (err: unknown) => void;
}

const SEGMENT_SUFFIX = '.seg';
const CHECKPOINT = 'checkpoint';
const CHECKPOINT_MAGIC = 0x53504c31; // "SPL1"
/** Created if missing, never truncated, and (unlike 'a+') positioned writes land where they are aimed. */
const READ_WRITE_CREATE = constants.O_RDWR | constants.O_CREAT;
const READ_CHUNK = 4 * 1024 * 1024;
const DEFAULT_BACKOFF: BackoffOptions = { baseDelayMs: 100, maxDelayMs: 10_000, jitter: 'equal' };

const segmentName = (base: number) => `${String(base).padStart(20, '0')}${SEGMENT_SUFFIX}`;

/**
 * Records from the durable bytes of a segment, starting at `from` (a frame boundary, relative to the
 * segment) and ending at `end`; at most `maxRecords`. Stops at the first frame that does not hold and
 * says so in `bad`; `next` is then the last good boundary.
 */
async function readFrames(fh: FileHandle, from: number, end: number, maxRecords: number): Promise<{ records: StoredRecord[]; next: number; bad?: string }> {
  const records: StoredRecord[] = [];
  let pos = from;
  while (pos < end && records.length < maxRecords) {
    let want = Math.min(READ_CHUNK, end - pos);
    let buf = Buffer.allocUnsafe(want);
    let { bytesRead } = await fh.read(buf, 0, want, pos);
    buf = buf.subarray(0, bytesRead);
    let offset = 0;
    let progressed = false;
    while (records.length < maxRecords) {
      const frame = decodeFrame(buf, offset);
      if (frame.kind === 'record') {
        records.push(frame.record);
        offset += frame.bytes;
        progressed = true;
        continue;
      }
      if (frame.kind === 'bad') return { records, next: pos + offset, bad: frame.reason };
      // short: the frame runs past this chunk, or past the durable end (torn)
      if (pos + offset + frame.need > end) return pos + offset === end ? { records, next: end } : { records, next: pos + offset, bad: 'frame runs past the end of the file' };
      if (progressed) break;
      // a single frame larger than a chunk: read exactly it
      want = frame.need;
      buf = Buffer.allocUnsafe(want);
      ({ bytesRead } = await fh.read(buf, 0, want, pos));
      buf = buf.subarray(0, bytesRead);
      if (bytesRead < want) return { records, next: pos, bad: 'file shorter than it was' };
    }
    pos += offset;
  }
  return { records, next: pos };
}

/**
 * A durable local spool of event-log records: `append` resolves once its records are on disk (group
 * commit: one write + one fdatasync for everything that arrived while the previous flush ran), and a
 * shipper drains them in order to an `EventLog`, moving a durable checkpoint only after the log
 * acknowledged them. Delivery to the log is at-least-once: a crash between a publish and its
 * checkpoint publishes that batch again, so consumers dedupe on the CloudEvent id.
 */
export class Spool {
  private pending: Pending[] = [];
  private pendingBytes = 0;
  private flushing: Promise<void> | null = null;
  private failed: unknown = null;
  private closed = false;
  /** Global offset of the end of the durable data. */
  private end: number;
  /** Global offset up to which the event log acknowledged (and the checkpoint says so). */
  private shipped: number;
  /** Flush ends with the time of their first record, oldest first, for the age of the oldest unshipped record. */
  private ages: { end: number; at: number }[];
  private unshippedRecords: number;
  private readonly counters = { shippedRecords: 0, appendedRecords: 0, flushes: 0, maxRecordsPerFlush: 0, shipErrors: 0 };
  private dataWaiters: (() => void)[] = [];
  private shipper: { abort: AbortController; done: Promise<void> } | null = null;
  private readHandle: { base: number; fh: FileHandle } | null = null;
  private readonly now: () => number;
  private readonly onFlush: SpoolOptions['onFlush'];
  private readonly segmentBytes: number;

  private constructor(
    private readonly dir: string,
    private readonly maxBytes: number,
    options: SpoolOptions,
    private readonly lock: SpoolLock,
    private readonly segments: Segment[],
    private active: FileHandle,
    private readonly checkpointFh: FileHandle,
    state: { shipped: number; unshippedRecords: number; ages: { end: number; at: number }[]; torn: { records: number; bytes: number } },
  ) {
    this.now = options.now ?? Date.now;
    this.onFlush = options.onFlush;
    this.segmentBytes = options.segmentBytes ?? 64 * 1024 * 1024;
    this.logger = options.logger;
    const last = segments[segments.length - 1]!;
    this.end = last.base + last.size;
    this.shipped = state.shipped;
    this.unshippedRecords = state.unshippedRecords;
    this.ages = state.ages;
    this.torn = state.torn;
  }

  private readonly logger: Logger | undefined;
  private readonly torn: { records: number; bytes: number };

  /**
   * Locks `dir` (a second open, in this or another live process, fails with CARACAL_CONFLICT),
   * cuts a torn tail off, and counts what is left to ship.
   */
  static async open(options: SpoolOptions): Promise<Spool> {
    if (!(Number.isFinite(options.maxBytes) && options.maxBytes > 0)) throw new RangeError(`maxBytes must be a positive number, got ${options.maxBytes}`);
    if (options.segmentBytes !== undefined && !(Number.isFinite(options.segmentBytes) && options.segmentBytes > 0)) {
      throw new RangeError(`segmentBytes must be a positive number, got ${options.segmentBytes}`);
    }
    const dir = path.resolve(options.dir);
    const lock = SpoolLock.acquire(dir);
    const handles: FileHandle[] = [];
    try {
      const checkpointFh = await open(path.join(dir, CHECKPOINT), READ_WRITE_CREATE);
      handles.push(checkpointFh);
      const stored = await readCheckpoint(checkpointFh);
      const bases = (await readdir(dir))
        .filter((name) => /^\d{20}\.seg$/.test(name))
        .map((name) => Number(name.slice(0, 20)))
        .sort((a, b) => a - b);
      const segments: Segment[] = [];
      for (const base of bases) {
        const fh = await open(path.join(dir, segmentName(base)), 'r');
        try {
          segments.push({ base, size: (await fh.stat()).size });
        } finally {
          await fh.close();
        }
      }
      // Without a (readable) checkpoint everything still on disk is shipped again: at-least-once.
      let shipped = stored ?? segments[0]?.base ?? 0;
      if (segments.length > 0 && shipped < segments[0]!.base) shipped = segments[0]!.base;
      // Segments wholly shipped whose deletion a crash interrupted.
      while (segments.length > 1 && segments[0]!.base + segments[0]!.size <= shipped) {
        await unlink(path.join(dir, segmentName(segments[0]!.base)));
        segments.shift();
      }
      if (segments.length === 1 && segments[0]!.base + segments[0]!.size < shipped) {
        // The checkpoint is past the only segment's end (its tail was lost with a disk that lied): start afresh there.
        shipped = segments[0]!.base + segments[0]!.size;
      }
      const torn = { records: 0, bytes: 0 };
      const ages: { end: number; at: number }[] = [];
      let unshippedRecords = 0;
      for (let i = 0; i < segments.length; i++) {
        const segment = segments[i]!;
        const from = Math.max(0, shipped - segment.base);
        if (from >= segment.size) continue;
        const fh = await open(path.join(dir, segmentName(segment.base)), 'r+');
        try {
          let pos = from;
          let first: number | undefined;
          while (pos < segment.size) {
            const { records, next, bad } = await readFrames(fh, pos, segment.size, 100_000);
            if (first === undefined && records.length > 0) first = records[0]!.appendedAt;
            unshippedRecords += records.length;
            pos = next;
            if (bad !== undefined) {
              options.logger?.warn({ segment: segmentName(segment.base), at: pos, cut: segment.size - pos, reason: bad }, 'spool: cutting off a torn or corrupt tail');
              torn.records += 1;
              torn.bytes += segment.size - pos;
              await fh.truncate(pos);
              await fh.datasync();
              segment.size = pos;
              break;
            }
            if (records.length === 0) break;
          }
          if (first !== undefined) ages.push({ end: segment.base + segment.size, at: first });
        } finally {
          await fh.close();
        }
        if (segment.base + segment.size < (segments[i + 1]?.base ?? 0)) {
          // Only the last segment can be torn by a crash; a cut before it is corruption, and the later segments still ship.
          options.logger?.error({ segment: segmentName(segment.base) }, 'spool: corrupt records cut before the last segment');
        }
      }
      if (segments.length === 0) {
        segments.push({ base: shipped, size: 0 });
      }
      const last = segments[segments.length - 1]!;
      const active = await open(path.join(dir, segmentName(last.base)), READ_WRITE_CREATE);
      handles.push(active);
      await syncDir(dir);
      return new Spool(dir, options.maxBytes, options, lock, segments, active, checkpointFh, { shipped, unshippedRecords, ages, torn });
    } catch (err) {
      for (const fh of handles) await fh.close().catch(() => {});
      lock.release();
      throw err;
    }
  }

  /**
   * Resolves once every record is durable on local disk. Rejects at once with `SpoolFull` when the
   * unshipped bytes would pass `maxBytes` (then nothing of the call is written), and with the
   * original error after a failed write or fdatasync: the spool then refuses every later append,
   * because after a failed fsync the kernel may have dropped the dirty pages and nothing is known.
   */
  append(records: readonly SpoolRecord[]): Promise<void> {
    if (this.closed) return Promise.reject(new CaracalError('CARACAL_SHUTTING_DOWN', 'the spool is closed'));
    if (this.failed !== null) return Promise.reject(this.failed);
    if (records.length === 0) return Promise.resolve();
    const appendedAt = this.now();
    let frames: Buffer[];
    try {
      frames = records.map((record) => encodeRecord(record, appendedAt));
    } catch (err) {
      return Promise.reject(err);
    }
    let bytes = 0;
    for (const frame of frames) bytes += frame.length;
    const waiting = this.end - this.shipped + this.pendingBytes;
    if (waiting + bytes > this.maxBytes) return Promise.reject(new SpoolFull(waiting, this.maxBytes));
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ frames, bytes, count: records.length, appendedAt, resolve, reject });
      this.pendingBytes += bytes;
      // No timer: an idle spool writes a lone append at once; under load the next flush takes everything that queued meanwhile.
      this.flushing ??= this.flushLoop();
    });
  }

  private async flushLoop(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        const batch = this.pending;
        this.pending = [];
        let bytes = 0;
        let count = 0;
        const frames: Buffer[] = [];
        for (const item of batch) {
          bytes += item.bytes;
          count += item.count;
          for (const frame of item.frames) frames.push(frame);
        }
        try {
          await this.writeDurably(Buffer.concat(frames, bytes), count, batch[0]!.appendedAt);
        } catch (err) {
          this.failed = err;
          this.logger?.error({ err }, 'spool: write or fdatasync failed; the spool refuses further appends');
          for (const item of [...batch, ...this.pending]) item.reject(err);
          this.pending = [];
          this.pendingBytes = 0;
          return;
        }
        this.pendingBytes -= bytes;
        for (const item of batch) item.resolve();
      }
    } finally {
      this.flushing = null;
    }
  }

  private async writeDurably(buf: Buffer, count: number, firstAt: number): Promise<void> {
    let segment = this.segments[this.segments.length - 1]!;
    if (segment.size > 0 && segment.size + buf.length > this.segmentBytes) {
      const next = await open(path.join(this.dir, segmentName(this.end)), 'wx+');
      // The new file's directory entry must be durable before any record in it is acknowledged.
      await syncDir(this.dir);
      const previous = this.active;
      this.active = next;
      segment = { base: this.end, size: 0 };
      this.segments.push(segment);
      await previous.close();
    }
    const started = process.hrtime.bigint();
    let written = 0;
    for (let guard = 0; written < buf.length; guard++) {
      if (guard > 1_000) throw new Error('spool: the segment file accepts no more bytes');
      const { bytesWritten } = await this.active.write(buf, written, buf.length - written, segment.size + written);
      written += bytesWritten;
    }
    await this.active.datasync();
    this.onFlush?.(Number(process.hrtime.bigint() - started) / 1e9, count);
    segment.size += buf.length;
    this.end += buf.length;
    this.unshippedRecords += count;
    this.counters.appendedRecords += count;
    this.counters.flushes += 1;
    if (count > this.counters.maxRecordsPerFlush) this.counters.maxRecordsPerFlush = count;
    this.ages.push({ end: this.end, at: firstAt });
    const waiters = this.dataWaiters;
    this.dataWaiters = [];
    for (const wake of waiters) wake();
  }

  stats(): SpoolStats {
    const oldest = this.ages.find((entry) => entry.end > this.shipped);
    return {
      unshippedBytes: this.end - this.shipped,
      unshippedRecords: this.unshippedRecords,
      oldestUnshippedAgeMs: oldest ? Math.max(0, this.now() - oldest.at) : 0,
      shippedRecords: this.counters.shippedRecords,
      appendedRecords: this.counters.appendedRecords,
      flushes: this.counters.flushes,
      recordsPerFlush: this.counters.flushes === 0 ? 0 : this.counters.appendedRecords / this.counters.flushes,
      maxRecordsPerFlush: this.counters.maxRecordsPerFlush,
      tornRecords: this.torn.records,
      tornBytes: this.torn.bytes,
      segments: this.segments.length,
      shipErrors: this.counters.shipErrors,
    };
  }

  /**
   * Ships what is on disk (what a previous process left first), then every new flush, until
   * `stopShipping` or `close`. A failed publish is retried after a backoff for as long as it takes;
   * meanwhile the spool grows up to `maxBytes`.
   */
  startShipping(log: EventLog, options: ShippingOptions): void {
    if (this.closed) throw new CaracalError('CARACAL_SHUTTING_DOWN', 'the spool is closed');
    if (this.shipper) throw new CaracalError('CARACAL_CONFLICT', 'the spool is already shipping');
    if (!(Number.isInteger(options.batchSize) && options.batchSize > 0)) throw new RangeError(`batchSize must be a positive integer, got ${options.batchSize}`);
    const abort = new AbortController();
    const done = this.shipLoop(log, options, abort.signal).catch((err: unknown) => {
      if (!abort.signal.aborted) this.logger?.error({ err }, 'spool: shipper stopped unexpectedly');
    });
    this.shipper = { abort, done };
  }

  /** Lets an in-flight publish finish (and checkpoints it if its whole batch went out), then stops. */
  async stopShipping(): Promise<void> {
    const shipper = this.shipper;
    if (!shipper) return;
    shipper.abort.abort(new CaracalError('CARACAL_SHUTTING_DOWN', 'the spool stopped shipping'));
    const waiters = this.dataWaiters;
    this.dataWaiters = [];
    for (const wake of waiters) wake();
    await shipper.done;
    this.shipper = null;
  }

  private async shipLoop(log: EventLog, options: ShippingOptions, signal: AbortSignal): Promise<void> {
    const backoff = options.backoff ?? DEFAULT_BACKOFF;
    let attempt = 0;
    const failed = async (err: unknown) => {
      attempt += 1;
      this.counters.shipErrors += 1;
      options.onError?.(err, attempt);
      this.logger?.warn({ err, attempt }, 'spool: shipping failed; retrying');
      await sleep(backoffDelay(attempt, backoff), signal);
    };
    while (!signal.aborted) {
      if (this.shipped >= this.end) {
        await new Promise<void>((resolve) => this.dataWaiters.push(resolve));
        continue;
      }
      let batch: { records: StoredRecord[]; end: number };
      try {
        batch = await this.readBatch(options.batchSize);
      } catch (err) {
        await failed(err);
        continue;
      }
      const runs = groupByTopic(batch.records);
      let sent = 0;
      while (sent < runs.length) {
        if (signal.aborted) return;
        try {
          await log.publish(runs[sent]!.topic, runs[sent]!.messages);
          sent += 1;
          attempt = 0;
        } catch (err) {
          await failed(err);
        }
      }
      for (let committed = false; !committed; ) {
        try {
          await this.commit(batch.end, batch.records.length);
          committed = true;
          attempt = 0;
        } catch (err) {
          if (signal.aborted) return;
          await failed(err);
        }
      }
    }
  }

  /** The next records after the checkpoint, from one segment. */
  private async readBatch(batchSize: number): Promise<{ records: StoredRecord[]; end: number }> {
    const index = this.segments.findIndex((segment) => this.shipped < segment.base + segment.size);
    if (index < 0) return { records: [], end: this.shipped };
    const segment = this.segments[index]!;
    if (this.readHandle?.base !== segment.base) {
      await this.readHandle?.fh.close();
      this.readHandle = null;
      this.readHandle = { base: segment.base, fh: await open(path.join(this.dir, segmentName(segment.base)), 'r') };
    }
    const from = Math.max(0, this.shipped - segment.base);
    const { records, next, bad } = await readFrames(this.readHandle.fh, from, segment.size, batchSize);
    if (bad !== undefined && records.length === 0) throw new Error(`spool: unreadable record in ${segmentName(segment.base)} at ${next}: ${bad}`);
    return { records, end: segment.base + next };
  }

  private async commit(shipped: number, count: number): Promise<void> {
    const buf = Buffer.alloc(16);
    buf.writeUInt32BE(CHECKPOINT_MAGIC, 0);
    // Offsets stay far below 2^53; the high word is written for a format that does not care.
    buf.writeUInt32BE(Math.floor(shipped / 2 ** 32), 4);
    buf.writeUInt32BE(shipped >>> 0, 8);
    buf.writeUInt32BE(crc32(buf.subarray(0, 12)), 12);
    // 16 bytes at offset 0 sit in one sector, so the overwrite is not torn; a checkpoint that still
    // fails its checksum only makes the next open ship everything again.
    await this.checkpointFh.write(buf, 0, 16, 0);
    await this.checkpointFh.datasync();
    this.shipped = shipped;
    this.unshippedRecords -= count;
    this.counters.shippedRecords += count;
    while (this.ages.length > 0 && this.ages[0]!.end <= shipped) this.ages.shift();
    while (this.segments.length > 1 && this.segments[0]!.base + this.segments[0]!.size <= shipped) {
      const gone = this.segments.shift()!;
      if (this.readHandle?.base === gone.base) {
        await this.readHandle.fh.close();
        this.readHandle = null;
      }
      await unlink(path.join(this.dir, segmentName(gone.base)));
    }
  }

  /**
   * Stops shipping, waits for the flush in progress (appends already accepted still become
   * durable), closes the files and unlocks the directory. Unshipped records stay for the next open.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stopShipping();
    for (let guard = 0; this.flushing && guard < 1_000_000; guard++) await this.flushing;
    await this.readHandle?.fh.close();
    this.readHandle = null;
    await this.active.close();
    await this.checkpointFh.close();
    this.lock.release();
  }
}

async function readCheckpoint(fh: FileHandle): Promise<number | null> {
  const buf = Buffer.alloc(16);
  const { bytesRead } = await fh.read(buf, 0, 16, 0);
  if (bytesRead < 16) return null;
  if (buf.readUInt32BE(0) !== CHECKPOINT_MAGIC || crc32(buf.subarray(0, 12)) !== buf.readUInt32BE(12)) return null;
  return buf.readUInt32BE(4) * 2 ** 32 + buf.readUInt32BE(8);
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Consecutive records of one topic become one publish; order across and within runs is the spool's. */
function groupByTopic(records: StoredRecord[]): { topic: string; messages: OutgoingMessage[] }[] {
  const runs: { topic: string; messages: OutgoingMessage[] }[] = [];
  for (const record of records) {
    const message: OutgoingMessage = { key: record.key, value: record.value, ...(record.headers ? { headers: record.headers } : {}) };
    const last = runs[runs.length - 1];
    if (last && last.topic === record.topic) last.messages.push(message);
    else runs.push({ topic: record.topic, messages: [message] });
  }
  return runs;
}

import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { crc32, decodeFrame, encodeRecord } from '../../src/spool/frame.js';
import { Spool, SpoolFull, type SpoolRecord } from '../../src/spool/spool.js';
import { waitUntil } from '../helpers/fixtures.js';
import { MemoryEventLog } from '../helpers/spool-logs.js';

const FAST_BACKOFF = { baseDelayMs: 5, maxDelayMs: 50, jitter: 'none' as const };

let dir: string;
const open: Spool[] = [];

async function openSpool(options: Partial<Parameters<typeof Spool.open>[0]> = {}): Promise<Spool> {
  const spool = await Spool.open({ dir, maxBytes: 64 * 1024 * 1024, ...options });
  open.push(spool);
  return spool;
}

function record(i: number, topic = 'decisions', key = `k${i % 5}`): SpoolRecord {
  return { topic, key, value: JSON.stringify({ id: `id-${i}`, seq: i }), headers: { 'ce-id': `id-${i}` } };
}

const idOf = (value: string) => (JSON.parse(value) as { id: string }).id;

function segmentFiles(): string[] {
  return readdirSync(dir).filter((name) => name.endsWith('.seg')).sort();
}

/** Ships everything the spool holds to a fresh in-memory log and stops. */
async function drain(spool: Spool, log = new MemoryEventLog(), batchSize = 50): Promise<MemoryEventLog> {
  spool.startShipping(log, { batchSize, backoff: FAST_BACKOFF });
  await waitUntil(() => spool.stats().unshippedRecords === 0, 'the spool to drain', 10_000);
  await spool.stopShipping();
  return log;
}

beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'caracal-spool-'));
});

afterEach(async () => {
  for (const spool of open.splice(0)) await spool.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('framing', () => {
  it('computes the standard CRC32 and round-trips a record', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    const frame = encodeRecord(record(7), 1234);
    const decoded = decodeFrame(frame, 0);
    expect(decoded).toEqual({ kind: 'record', bytes: frame.length, record: { ...record(7), appendedAt: 1234 } });
  });

  it('rejects a zero length, a flipped payload byte and a short frame', () => {
    expect(decodeFrame(Buffer.alloc(64), 0).kind).toBe('bad');
    const frame = encodeRecord(record(1), 1);
    const flipped = Buffer.from(frame);
    flipped.writeUInt8(flipped.readUInt8(frame.length - 2) ^ 0xff, frame.length - 2);
    expect(decodeFrame(flipped, 0)).toMatchObject({ kind: 'bad', reason: 'checksum mismatch' });
    expect(decodeFrame(frame.subarray(0, frame.length - 1), 0)).toEqual({ kind: 'short', need: frame.length });
  });
});

describe('Spool append', () => {
  it('flushes a lone append at once, then group-commits 100 concurrent appends into far fewer fsyncs', async () => {
    const spool = await openSpool();
    const started = Date.now();
    await spool.append([record(-1)]);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(spool.stats()).toMatchObject({ flushes: 1, appendedRecords: 1, unshippedRecords: 1 });

    await Promise.all(Array.from({ length: 100 }, (_, i) => spool.append([record(i)])));
    const stats = spool.stats();
    expect(stats.appendedRecords).toBe(101);
    expect(stats.flushes - 1).toBeLessThanOrEqual(10);
    expect(stats.maxRecordsPerFlush).toBeGreaterThanOrEqual(10);
    expect(stats.recordsPerFlush).toBeGreaterThan(5);

    // Everything acknowledged is in the file: a fresh open (after close) counts and ships all of it.
    await spool.close();
    const reopened = await openSpool();
    expect(reopened.stats().unshippedRecords).toBe(101);
    const log = await drain(reopened);
    expect(log.published.map((p) => idOf(p.message.value)).sort()).toEqual(['id--1', ...Array.from({ length: 100 }, (_, i) => `id-${i}`)].sort());
  });

  it('keeps the order of every key through shipping, grouping consecutive records of a topic into one publish', async () => {
    const spool = await openSpool();
    const topics = ['decisions', 'decisions', 'audit'];
    // Sequential appends: the spool order is the append order, which shipping must keep per key.
    for (let i = 0; i < 300; i++) await spool.append([record(i, topics[Math.floor(i / 10) % 3]!)]);
    const log = await drain(spool, new MemoryEventLog(), 1_000);
    expect(log.published).toHaveLength(300);
    const seqByKey = new Map<string, number[]>();
    for (const { message } of log.published) {
      const list = seqByKey.get(message.key) ?? [];
      list.push((JSON.parse(message.value) as { seq: number }).seq);
      seqByKey.set(message.key, list);
    }
    for (const list of seqByKey.values()) expect(list).toEqual([...list].sort((a, b) => a - b));
    expect(log.published.map((p) => p.message.headers?.['ce-id'])).toEqual(Array.from({ length: 300 }, (_, i) => `id-${i}`));
    // 30 runs of 10 alternating between topic runs of 20 and 10: one publish per run of a topic.
    expect(log.publishCalls).toBe(20);
  });

  it('rolls segments at segmentBytes and deletes the ones fully shipped; the checkpoint survives a reopen', async () => {
    const spool = await openSpool({ segmentBytes: 2_000 });
    for (let i = 0; i < 100; i++) await spool.append([record(i)]);
    expect(segmentFiles().length).toBeGreaterThan(3);
    expect(segmentFiles()[0]).toBe('00000000000000000000.seg');
    const log = await drain(spool, new MemoryEventLog(), 7);
    expect(log.published).toHaveLength(100);
    expect(segmentFiles()).toHaveLength(1);
    expect(spool.stats()).toMatchObject({ unshippedBytes: 0, unshippedRecords: 0, shippedRecords: 100, segments: 1 });
    await spool.close();

    const reopened = await openSpool({ segmentBytes: 2_000 });
    expect(reopened.stats().unshippedRecords).toBe(0);
    await reopened.append([record(100)]);
    const again = await drain(reopened);
    expect(again.published.map((p) => idOf(p.message.value))).toEqual(['id-100']);
  });

  it('ships what a closed-without-shipping spool left, exactly once', async () => {
    const first = await openSpool({ segmentBytes: 4_000 });
    await Promise.all(Array.from({ length: 200 }, (_, i) => first.append([record(i)])));
    await first.close();
    const second = await openSpool({ segmentBytes: 4_000 });
    expect(second.stats().unshippedRecords).toBe(200);
    const log = await drain(second, new MemoryEventLog(), 64);
    const ids = log.published.map((p) => idOf(p.message.value));
    expect(ids).toHaveLength(200);
    expect(new Set(ids).size).toBe(200);
  });
});

describe('Spool torn tails', () => {
  async function writeTen(): Promise<{ goodSize: number; segment: string }> {
    const spool = await openSpool();
    for (let i = 0; i < 10; i++) await spool.append([record(i)]);
    await spool.close();
    open.length = 0;
    const segment = path.join(dir, segmentFiles()[0]!);
    return { goodSize: statSync(segment).size, segment };
  }

  it('cuts a record cut short mid-write, counts it, and ships only the good records', async () => {
    const { goodSize, segment } = await writeTen();
    appendFileSync(segment, encodeRecord(record(10), 1).subarray(0, 20));
    const spool = await openSpool();
    expect(spool.stats()).toMatchObject({ tornRecords: 1, tornBytes: 20, unshippedRecords: 10 });
    expect(statSync(segment).size).toBe(goodSize);
    const log = await drain(spool);
    expect(log.published.map((p) => idOf(p.message.value))).toEqual(Array.from({ length: 10 }, (_, i) => `id-${i}`));
  });

  it('cuts garbage and a zero-filled tail', async () => {
    const { goodSize, segment } = await writeTen();
    appendFileSync(segment, Buffer.concat([Buffer.alloc(4096), Buffer.from('garbage after zeros')]));
    const spool = await openSpool();
    expect(spool.stats()).toMatchObject({ tornRecords: 1, unshippedRecords: 10 });
    expect(statSync(segment).size).toBe(goodSize);
  });

  it('cuts a last record whose checksum does not hold', async () => {
    const { goodSize, segment } = await writeTen();
    const bytes = readFileSync(segment);
    let lastStart = 0;
    for (let pos = 0, guard = 0; pos < bytes.length && guard < 100; guard++) {
      const frame = decodeFrame(bytes, pos);
      if (frame.kind !== 'record') throw new Error(`unexpected ${frame.kind} frame at ${pos}`);
      lastStart = pos;
      pos += frame.bytes;
    }
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 3) ^ 0x55, bytes.length - 3);
    writeFileSync(segment, bytes);
    const spool = await openSpool();
    expect(spool.stats()).toMatchObject({ tornRecords: 1, tornBytes: goodSize - lastStart, unshippedRecords: 9 });
    expect(statSync(segment).size).toBe(lastStart);
    const log = await drain(spool);
    expect(log.published.map((p) => idOf(p.message.value))).toEqual(Array.from({ length: 9 }, (_, i) => `id-${i}`));
  });
});

describe('Spool full', () => {
  it('rejects at once with SpoolFull once maxBytes wait, and accepts again after shipping', async () => {
    const frame = encodeRecord(record(0), Date.now()).length;
    const spool = await openSpool({ maxBytes: frame * 10 + frame / 2 });
    for (let i = 0; i < 10; i++) await spool.append([record(i)]);
    const started = Date.now();
    const err = await spool.append([record(10)]).catch((e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(err).toBeInstanceOf(SpoolFull);
    expect(err).toBeInstanceOf(CaracalError);
    expect((err as CaracalError).statusCode).toBe(503);
    expect(spool.stats().unshippedRecords).toBe(10);
    // Appends still queued count too: a burst past the limit is refused before it reaches the disk.
    await drain(spool);
    const burst = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => spool.append([record(20 + i)])));
    expect(burst.filter((r) => r.status === 'fulfilled')).toHaveLength(10);
    expect(burst.filter((r) => r.status === 'rejected' && r.reason instanceof SpoolFull)).toHaveLength(2);
  });
});

describe('Spool shipper', () => {
  it('retries with backoff while publish fails, lets the spool grow, then drains in order', async () => {
    const spool = await openSpool();
    for (let i = 0; i < 30; i++) await spool.append([record(i)]);
    const log = new MemoryEventLog();
    log.failNext = 1_000_000; // the log is down until the test says otherwise
    const errors: number[] = [];
    spool.startShipping(log, { batchSize: 10, backoff: { baseDelayMs: 5, maxDelayMs: 40, jitter: 'none' }, onError: (_err, attempt) => errors.push(attempt) });
    await waitUntil(() => errors.length >= 4, 'four failed publishes', 10_000);
    for (let i = 30; i < 40; i++) await spool.append([record(i)]);
    expect(spool.stats()).toMatchObject({ unshippedRecords: 40, shippedRecords: 0 });
    expect(log.published).toHaveLength(0);
    log.failNext = 0;
    await waitUntil(() => spool.stats().unshippedRecords === 0, 'the spool to drain', 10_000);
    expect(errors.slice(0, 4)).toEqual([1, 2, 3, 4]);
    expect(spool.stats()).toMatchObject({ shipErrors: log.failures, shippedRecords: 40, unshippedBytes: 0 });
    expect(log.published.map((p) => idOf(p.message.value))).toEqual(Array.from({ length: 40 }, (_, i) => `id-${i}`));
  });

  it('ships records appended while it runs, and reports the age of the oldest unshipped record', async () => {
    let clock = 1_000_000;
    const spool = await openSpool({ now: () => clock });
    await spool.append([record(0)]);
    clock += 5_000;
    await spool.append([record(1)]);
    clock += 1_000;
    expect(spool.stats().oldestUnshippedAgeMs).toBe(6_000);
    const log = new MemoryEventLog();
    spool.startShipping(log, { batchSize: 100, backoff: FAST_BACKOFF });
    await waitUntil(() => log.published.length === 2, 'the first records to ship', 10_000);
    await waitUntil(() => spool.stats().unshippedRecords === 0, 'the checkpoint', 10_000);
    expect(spool.stats().oldestUnshippedAgeMs).toBe(0);
    await spool.append([record(2)]);
    await waitUntil(() => log.published.length === 3, 'a later record to ship', 10_000);
    expect(() => spool.startShipping(log, { batchSize: 1 })).toThrow(/already shipping/);
  });
});

describe('Spool directory lock', () => {
  it('refuses a second spool on the same directory until the first closes', async () => {
    const first = await openSpool();
    await expect(Spool.open({ dir, maxBytes: 1024 })).rejects.toThrow(/already open in this process/);
    await first.close();
    const second = await openSpool();
    await second.append([record(1)]);
  });

  it('refuses a directory locked by another live process, and takes over from a dead one', async () => {
    writeFileSync(path.join(dir, 'lock'), String(process.ppid));
    await expect(Spool.open({ dir, maxBytes: 1024 })).rejects.toMatchObject({ code: 'CARACAL_CONFLICT', message: expect.stringContaining(`pid ${process.ppid}`) });
    // 2^22 + 1 is above Linux's default pid_max, so no process has it.
    writeFileSync(path.join(dir, 'lock'), String(4_194_305));
    const spool = await openSpool();
    expect(readFileSync(path.join(dir, 'lock'), 'utf8')).toBe(String(process.pid));
    await spool.close();
    expect(readdirSync(dir)).not.toContain('lock');
  });
});

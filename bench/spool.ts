/**
 * What a durable append costs: appends/s, records per fsync and per-append latency of the spool
 * (src/spool) with 1, 16 and 64 concurrent appenders, each awaiting one record at a time — the
 * shape the gateway has, one decision per request. Optionally the same workload on lmdb with
 * durable batched commits, from a copy installed outside the repository:
 *
 *   npm run build && node dist/bench/spool.js [seconds-per-run] [lmdb package directory]
 *
 * Files go to a temporary directory under os.tmpdir() (it must be a real disk: fsync on tmpfs is free).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Spool } from '../src/spool/spool.js';
import { DiscardingEventLog } from './null-event-log.js';

const seconds = Number(process.argv[2] ?? 3);
const lmdbDir = process.argv[3];
const CONCURRENCY = [1, 16, 64];
// A decision CloudEvent is about this size.
const value = JSON.stringify({ specversion: '1.0', id: '00000000-0000-0000-0000-000000000000', type: 'caracal.decision', data: { pad: 'x'.repeat(600) } });

interface Result {
  store: string;
  appenders: number;
  appends: number;
  perSecond: number;
  recordsPerFsync: number | null;
  p50: number;
  p99: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? 0;
}

/** `appenders` loops, each awaiting `append()` until the time is up; latencies in ms. */
async function drive(appenders: number, append: (i: number) => Promise<void>): Promise<{ appends: number; elapsed: number; latencies: Float64Array }> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  const deadline = started + seconds * 1_000;
  await Promise.all(
    Array.from({ length: appenders }, async () => {
      while (performance.now() < deadline) {
        const t0 = performance.now();
        await append(next++);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1_000;
  return { appends: latencies.length, elapsed, latencies: Float64Array.from(latencies).sort() };
}

async function benchSpool(appenders: number, shipping: boolean): Promise<Result> {
  const dir = mkdtempSync(path.join(tmpdir(), 'caracal-bench-spool-'));
  const spool = await Spool.open({ dir, maxBytes: 8 * 1024 * 1024 * 1024, segmentBytes: 64 * 1024 * 1024 });
  try {
    if (shipping) spool.startShipping(new DiscardingEventLog(), { batchSize: 1_000 });
    for (let i = 0; i < 100; i++) await spool.append([{ topic: 'decisions', key: `k${i}`, value }]); // warm-up
    const before = spool.stats();
    const run = await drive(appenders, (i) => spool.append([{ topic: 'decisions', key: `k${i % 1000}`, value }]));
    const after = spool.stats();
    return {
      store: shipping ? 'spool + shipper' : 'spool',
      appenders,
      appends: run.appends,
      perSecond: run.appends / run.elapsed,
      recordsPerFsync: (after.appendedRecords - before.appendedRecords) / (after.flushes - before.flushes),
      p50: percentile(run.latencies, 50),
      p99: percentile(run.latencies, 99),
    };
  } finally {
    await spool.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

interface LmdbStore {
  put(key: number, value: string): Promise<boolean>;
  close(): Promise<void>;
}

async function benchLmdb(packageDir: string, appenders: number): Promise<Result> {
  const entry = createRequire(path.join(path.resolve(packageDir), 'package.json')).resolve('lmdb');
  const lmdb = (await import(pathToFileURL(entry).href)) as { open(options: Record<string, unknown>): LmdbStore };
  const dir = mkdtempSync(path.join(tmpdir(), 'caracal-bench-lmdb-'));
  // lmdb-js batches the writes of one turn into one transaction; without overlappingSync a put
  // resolves only after that transaction's commit has been synced, which is the spool's promise.
  const db = lmdb.open({ path: dir, overlappingSync: false, noSync: false, compression: false, encoding: 'string' });
  try {
    let key = 0;
    for (let i = 0; i < 100; i++) await db.put(key++, value);
    const run = await drive(appenders, () => db.put(key++, value).then(() => undefined));
    return { store: 'lmdb', appenders, appends: run.appends, perSecond: run.appends / run.elapsed, recordsPerFsync: null, p50: percentile(run.latencies, 50), p99: percentile(run.latencies, 99) };
  } finally {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

const results: Result[] = [];
for (const appenders of CONCURRENCY) {
  results.push(await benchSpool(appenders, false));
  if (lmdbDir) results.push(await benchLmdb(lmdbDir, appenders));
}
results.push(await benchSpool(64, true));

console.log(`${seconds} s per run, one ${Buffer.byteLength(value)}-byte record per append, Node ${process.version}\n`);
console.log('| store | appenders | appends | appends/s | records/fsync | p50 ms | p99 ms |');
console.log('|---|---:|---:|---:|---:|---:|---:|');
for (const r of results) {
  console.log(
    `| ${r.store} | ${r.appenders} | ${r.appends} | ${Math.round(r.perSecond)} | ${r.recordsPerFsync === null ? 'n/a' : r.recordsPerFsync.toFixed(1)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} |`,
  );
}

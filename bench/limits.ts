/**
 * Cost of the per-request limit check: `PrincipalLimiter.acquire` + `release` over many principals
 * with the real monotonic clock. The first case has a rate too high to refuse anything, so it times
 * the path every admitted request takes; the others time the default limits (refusals, if the loop
 * outruns 200/s per principal, show in the `ok` count), an LRU bound below the working set (every
 * acquire evicts), the refusal path (one principal out of tokens) and `SourceLimiter.take`.
 *
 * Build with the rest of bench/ (`npm run build`), then `node dist/bench/limits.js`.
 * Env: BENCH_OPS (default 1 000 000), BENCH_PRINCIPALS (10 000), BENCH_ROUNDS (5; the median is reported).
 */
import { PrincipalLimiter, SourceLimiter } from '../src/gateway/limits.js';

const ops = Number(process.env.BENCH_OPS ?? 1_000_000);
const principalCount = Number(process.env.BENCH_PRINCIPALS ?? 10_000);
const rounds = Number(process.env.BENCH_ROUNDS ?? 5);

// UUID-shaped ids: hashing cost depends on key length, and principal ids are UUIDs.
const principals = Array.from({ length: principalCount }, (_, i) => `0190a1b2-c3d4-7e5f-8a9b-${i.toString(16).padStart(12, '0')}`);
const addresses = Array.from({ length: principalCount }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** ns per operation of `body(i)` over `ops` iterations, median of `rounds` after one warm-up round. */
function time(name: string, body: (i: number) => boolean): void {
  const perOp: number[] = [];
  let sink = 0;
  for (let round = 0; round <= rounds; round++) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < ops; i++) if (body(i)) sink++;
    const ns = Number(process.hrtime.bigint() - started) / ops;
    if (round > 0) perOp.push(ns);
  }
  // `sink` keeps the results observable so the loop cannot be optimised away.
  console.log(`${name.padEnd(58)} ${median(perOp).toFixed(1).padStart(7)} ns/op  (min ${Math.min(...perOp).toFixed(1)}, max ${Math.max(...perOp).toFixed(1)}; ${sink} ok)`);
}

const limits = { maxConcurrent: 64, rate: { ratePerSecond: 200, burst: 400 } };

// Rate high enough that no round is refused: this measures admission, not the bucket running dry.
const admitting = new PrincipalLimiter({ ...limits, rate: { ratePerSecond: 1_000_000, burst: 1_000_000 } });
time(`acquire + release, ${principalCount} principals`, (i) => {
  const result = admitting.acquire(principals[i % principalCount]!);
  if (!result.ok) return false;
  result.release();
  return true;
});

const defaults = new PrincipalLimiter(limits);
time(`acquire + release, ${principalCount} principals, default limits`, (i) => {
  const result = defaults.acquire(principals[i % principalCount]!);
  if (!result.ok) return false;
  result.release();
  return true;
});

const churning = new PrincipalLimiter({ ...limits, rate: { ratePerSecond: 1_000_000, burst: 1_000_000 } }, { maxEntries: Math.max(1, principalCount >> 1) });
time(`acquire + release, ${principalCount} principals, LRU bound ${Math.max(1, principalCount >> 1)}`, (i) => {
  const result = churning.acquire(principals[i % principalCount]!);
  if (!result.ok) return false;
  result.release();
  return true;
});

const exhausted = new PrincipalLimiter({ maxConcurrent: 64, rate: { ratePerSecond: 1, burst: 1 } });
time('acquire refused (rate), one principal', () => exhausted.acquire('flooding-agent').ok);

const sources = new SourceLimiter({ ratePerSecond: 1_000_000, burst: 1_000_000 });
time(`SourceLimiter.take, ${principalCount} addresses`, (i) => sources.take(addresses[i % principalCount]!).ok);

/**
 * The ledger's four figures, each printed with a peer measured in the same run (machines here are noisy):
 *
 *   seal     events/s sealed into the Merkle tree by the real ledger-writer consumer, from the event log
 *            (Kafka with KAFKA_BROKERS, else the embedded table log) into the database, checkpoints signed
 *            every `ledger.batchMaxEvents`; peer: the audit-logger draining the same kind of events.
 *   latency  event → checkpoint: events published at a steady rate while the writer runs with its default
 *            batching (1,000 events or 1 s); for each event, the time from its publish call to the first poll
 *            (every 10 ms) that sees a checkpoint covering its leaf. p50 / p99 / max; peer: event → leaf (the
 *            consumer's own lag, same polls).
 *   proof    inclusion proofs (SqlHashReader: one SELECT) at a tree of BENCH_LEDGER_LEAVES leaves (default
 *            1,000,000, built first by appending synthetic decision events straight into the store with a
 *            checkpoint every 1,000 leaves, which is timed too); p50 / p99 of proof + verification; peer: a primary-key SELECT of one leaf row.
 *   verify   `merkle verify-range` over the whole tree (every leaf re-canonicalised and re-hashed, every stored
 *            subtree hash compared, every checkpoint signature and consistency proof checked), leaves/s; peer:
 *            reading the same leaves page by page without checking them.
 *
 *   npm run build && source <statedir>/env && node dist/bench/ledger.js [seal,latency,proof,verify]
 *
 * With DATABASE_URL set it runs on PostgreSQL (fresh schema, dropped at the end), else on PGlite in a temp
 * directory. Env: BENCH_LEDGER_SEAL_EVENTS (50000), BENCH_LEDGER_RATE (events/s, 2000), BENCH_LEDGER_SECONDS (20),
 * BENCH_LEDGER_LEAVES (1000000), BENCH_LEDGER_PROOFS (2000), BENCH_LEDGER_KEEP=1 (keep the schema, for EXPLAIN).
 */
import { randomBytes, randomInt } from 'node:crypto';
import { rmSync } from 'node:fs';
import { loadConfig } from '../src/config/load.js';
import { startConsumers } from '../src/consumers/index.js';
import { AppContext } from '../src/context.js';
import { topicSpecs } from '../src/events/topics.js';
import { createEcdsaNoteSigner, generateEcdsaKeyPairPem, parseVerifierKey, verifyInclusion } from '../src/ledger/index.js';
import { appendEvents, ledgerEntryOf, proveInclusion, readCheckpoint, readEntries, sealCheckpoint } from '../src/ledger/store.js';
import { verifyRange } from '../src/ledger/verify.js';
import { createLogger } from '../src/logging/logger.js';
import { migrateUp } from '../src/store/migrate.js';
import { decisionMessage, measureConsumer } from './consumer-throughput.js';

const sections = new Set((process.argv[2] ?? 'seal,latency,proof,verify').split(','));
const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const SEAL_EVENTS = env('BENCH_LEDGER_SEAL_EVENTS', 50_000);
const RATE = env('BENCH_LEDGER_RATE', 2_000);
const SECONDS = env('BENCH_LEDGER_SECONDS', 20);
const LEAVES = env('BENCH_LEDGER_LEAVES', 1_000_000);
const PROOFS = env('BENCH_LEDGER_PROOFS', 2_000);
const postgres = Boolean(process.env.DATABASE_URL);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const quantile = (sorted: readonly number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
const ms = (value: number) => `${value.toFixed(value < 10 ? 3 : 0)} ms`;
const rate = (value: number) => Math.round(value).toLocaleString('en-US');

/** A context on a fresh schema (PostgreSQL) or a fresh PGlite directory, with fresh topics and groups. */
async function freshContext(overrides: Record<string, unknown> = {}) {
  const id = randomBytes(4).toString('hex');
  const home = `${process.env.TMPDIR ?? '/tmp'}/caracal-bench-ledger-${id}`;
  const config = loadConfig({
    overrides: {
      logLevel: 'warn',
      home,
      database: postgres ? { schema: `bench_${id}` } : {},
      kafka: { topicPrefix: `bench-${id}.`, groupPrefix: `bench-${id}.` },
      ...overrides,
    },
  });
  const ctx = await AppContext.fromConfig(config, { logger: createLogger('warn') });
  await migrateUp(ctx.db);
  return {
    ctx,
    close: async () => {
      if (process.env.BENCH_LEDGER_KEEP) console.log(`kept schema bench_${id}`);
      else if (postgres) await ctx.db.query(`DROP SCHEMA IF EXISTS "bench_${id}" CASCADE`).catch(() => {});
      await ctx.close();
      rmSync(home, { recursive: true, force: true });
    },
  };
}

async function seal(): Promise<void> {
  const ledger = await measureConsumer('ledger-writer', SEAL_EVENTS, 500);
  const audit = await measureConsumer('audit-logger', SEAL_EVENTS, 500);
  console.log(`seal     ${ledger.backend}, ${rate(SEAL_EVENTS)} decision events, checkpoints every 1,000 leaves`);
  console.log(`         ledger-writer ${rate(ledger.perSecond)} events/s from the consumer's start, ${rate(ledger.steady)} from the first leaf (target >= 10,000)`);
  console.log(`         audit-logger  ${rate(audit.perSecond)} events/s from the consumer's start, ${rate(audit.steady)} from the first row`);
  console.log(`         ratio ledger / audit: ${(ledger.perSecond / audit.perSecond).toFixed(2)} (start), ${(ledger.steady / audit.steady).toFixed(2)} (first row)`);
}

async function latency(): Promise<void> {
  const { ctx, close } = await freshContext();
  try {
    const events = await ctx.events();
    await events.createTopics(topicSpecs(ctx.config));
    const consumers = await startConsumers(ctx, ['ledger-writer'], { prepare: false });
    const origin = ctx.config.ledger.origin;
    const sequencer = async () => {
      const { rows } = await ctx.db.query<{ tree_size: string; checkpoint_size: string }>('SELECT tree_size, checkpoint_size FROM ledger_sequencer WHERE origin = $1', [origin]);
      return rows[0] ? { tree: Number(rows[0].tree_size), sealed: Number(rows[0].checkpoint_size) } : { tree: 0, sealed: 0 };
    };
    let polling = true;
    try {
      // Warm-up: the group has joined and the first checkpoint exists before the clock starts.
      await events.publish(ctx.topics.decisions, [decisionMessage(-1)]);
      for (let waited = 0; (await sequencer()).sealed < 1; waited += 50) {
        if (waited > 60_000) throw new Error('the ledger writer did not seal the warm-up event in 60 s');
        await sleep(50);
      }
      const sentAt = new Map<string, number>();
      const treeAt: { size: number; at: number }[] = [];
      const sealedAt: { size: number; at: number }[] = [];
      const poller = (async () => {
        let last = { tree: -1, sealed: -1 };
        while (polling) {
          const now = await sequencer();
          const at = performance.now();
          if (now.tree !== last.tree) treeAt.push({ size: now.tree, at });
          if (now.sealed !== last.sealed) sealedAt.push({ size: now.sealed, at });
          last = now;
          await sleep(10);
        }
      })();
      const total = RATE * SECONDS;
      const tickMs = 20;
      const perTick = Math.max(1, Math.round((RATE * tickMs) / 1000));
      const started = performance.now();
      for (let sent = 0; sent < total; ) {
        const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * RATE) + perTick);
        if (due > sent) {
          const batch = Array.from({ length: due - sent }, (_, k) => decisionMessage(sent + k));
          const at = performance.now();
          for (const message of batch) sentAt.set((JSON.parse(message.value) as { id: string }).id, at);
          await events.publish(ctx.topics.decisions, batch);
          sent = due;
        }
        await sleep(tickMs);
      }
      const publishSeconds = (performance.now() - started) / 1000;
      for (let waited = 0; (await sequencer()).sealed < total + 1; waited += 50) {
        if (waited > 120_000) throw new Error('not every event was sealed within 120 s of the last publish');
        await sleep(50);
      }
      await sleep(30);
      polling = false;
      await poller;
      await consumers.stop();
      const { rows } = await ctx.db.query<{ event_id: string; leaf_index: string }>('SELECT event_id, leaf_index FROM ledger_entries WHERE origin = $1', [origin]);
      const firstAtOrAbove = (series: { size: number; at: number }[], index: number) => series.find((point) => point.size > index)?.at;
      const toCheckpoint: number[] = [];
      const toLeaf: number[] = [];
      for (const row of rows) {
        const sent = sentAt.get(row.event_id);
        if (sent === undefined) continue; // the warm-up event
        const index = Number(row.leaf_index);
        toCheckpoint.push(firstAtOrAbove(sealedAt, index)! - sent);
        toLeaf.push(firstAtOrAbove(treeAt, index)! - sent);
      }
      if (toCheckpoint.length !== total || toCheckpoint.some((v) => !Number.isFinite(v))) throw new Error(`measured ${toCheckpoint.length} of ${total} events`);
      toCheckpoint.sort((a, b) => a - b);
      toLeaf.sort((a, b) => a - b);
      console.log(`latency  ${rate(total)} events at ${rate(RATE)}/s (published in ${publishSeconds.toFixed(1)} s), batchMaxEvents ${ctx.config.ledger.batchMaxEvents}, batchMaxMs ${ctx.config.ledger.batchMaxMs}`);
      console.log(`         event -> checkpoint  p50 ${ms(quantile(toCheckpoint, 0.5))}  p99 ${ms(quantile(toCheckpoint, 0.99))}  max ${ms(toCheckpoint.at(-1)!)}  (target p99 <= 1,500 ms)`);
      console.log(`         event -> leaf        p50 ${ms(quantile(toLeaf, 0.5))}  p99 ${ms(quantile(toLeaf, 0.99))}  max ${ms(toLeaf.at(-1)!)}`);
    } finally {
      polling = false;
      await consumers.stop().catch(() => {});
    }
  } finally {
    await close();
  }
}

/** Builds a tree of LEAVES synthetic decision events straight through the store (10,000 per transaction, sealed every 1,000). */
async function buildTree(ctx: AppContext, origin: string, signer: ReturnType<typeof createEcdsaNoteSigner>): Promise<number> {
  const chunk = 10_000;
  const started = performance.now();
  let lastReport = started;
  for (let start = 0; start < LEAVES; start += chunk) {
    const entries = Array.from({ length: Math.min(chunk, LEAVES - start) }, (_, k) => ledgerEntryOf(JSON.parse(decisionMessage(start + k).value)));
    await ctx.db.transaction(async (tx) => {
      // A checkpoint every 1,000 leaves, as the writer seals by default (ledger.batchMaxEvents).
      for (let at = 0; at < entries.length; at += 1_000) {
        await appendEvents(tx, origin, entries.slice(at, at + 1_000));
        await sealCheckpoint(tx, origin, signer);
      }
    });
    if (performance.now() - lastReport > 10_000) {
      lastReport = performance.now();
      process.stderr.write(`  built ${rate(start + entries.length)} of ${rate(LEAVES)} leaves\n`);
    }
  }
  return LEAVES / ((performance.now() - started) / 1000);
}

async function proofAndVerify(): Promise<void> {
  const { ctx, close } = await freshContext();
  try {
    const origin = 'bench.caracal.example/ledger';
    const { privateKeyPem } = generateEcdsaKeyPairPem();
    const signer = createEcdsaNoteSigner(origin, privateKeyPem);
    const verifier = parseVerifierKey(signer.verifierKey);
    const built = await buildTree(ctx, origin, signer);
    const backend = postgres ? 'PostgreSQL' : 'PGlite';
    console.log(`build    ${rate(LEAVES)} leaves appended and sealed straight through the store on ${backend} (10,000 per transaction, a checkpoint every 1,000, no event log): ${rate(built)} events/s`);
    if (sections.has('proof')) {
      const checkpoint = (await readCheckpoint(ctx.db, origin, LEAVES))!;
      const proofTimes: number[] = [];
      const selectTimes: number[] = [];
      for (let n = 0; n < PROOFS; n++) {
        const index = randomInt(LEAVES);
        let t = performance.now();
        await ctx.db.query('SELECT leaf_hash FROM ledger_entries WHERE origin = $1 AND leaf_index = $2', [origin, index]);
        selectTimes.push(performance.now() - t);
        t = performance.now();
        const [entry] = await readEntries(ctx.db, origin, { fromIndex: index, limit: 1 });
        const proof = await proveInclusion(ctx.db, origin, index, LEAVES);
        verifyInclusion(entry!.leafHash, index, LEAVES, proof, checkpoint.root);
        proofTimes.push(performance.now() - t);
      }
      // The leaf read is part of what a receipt costs, but the target is the proof: time it alone too.
      const proofOnly: number[] = [];
      for (let n = 0; n < PROOFS; n++) {
        const index = randomInt(LEAVES);
        const t = performance.now();
        await proveInclusion(ctx.db, origin, index, LEAVES);
        proofOnly.push(performance.now() - t);
      }
      for (const list of [proofTimes, selectTimes, proofOnly]) list.sort((a, b) => a - b);
      console.log(`proof    ${rate(PROOFS)} random leaves of a ${rate(LEAVES)}-leaf tree on ${backend}`);
      console.log(`         inclusion proof (one SELECT)            p50 ${ms(quantile(proofOnly, 0.5))}  p99 ${ms(quantile(proofOnly, 0.99))}  (target p50 <= 1 ms)`);
      console.log(`         leaf row + proof + verification         p50 ${ms(quantile(proofTimes, 0.5))}  p99 ${ms(quantile(proofTimes, 0.99))}`);
      console.log(`         peer: primary-key SELECT of one leaf    p50 ${ms(quantile(selectTimes, 0.5))}  p99 ${ms(quantile(selectTimes, 0.99))}  (proof / peer p50: ${(quantile(proofOnly, 0.5) / quantile(selectTimes, 0.5)).toFixed(2)})`);
    }
    if (sections.has('verify')) {
      let t = performance.now();
      let read = 0;
      for (let from = 0; from < LEAVES; ) {
        const page = await readEntries(ctx.db, origin, { fromIndex: from, limit: 2_000 });
        read += page.length;
        from += page.length;
        if (page.length === 0) break;
      }
      const readRate = read / ((performance.now() - t) / 1000);
      t = performance.now();
      const result = await verifyRange({ db: ctx.db, origin, verifier }, new Date(0), new Date(Date.now() + 60_000));
      const verifyRate = result.leaves / ((performance.now() - t) / 1000);
      if (result.leaves !== LEAVES) throw new Error(`verified ${result.leaves} of ${LEAVES} leaves`);
      console.log(`verify   verify-range over ${rate(result.leaves)} leaves, ${rate(result.checkpoints.length)} checkpoints on ${backend}: ${rate(verifyRate)} leaves/s (target >= 200,000)`);
      console.log(`         peer: reading the same leaves without checking: ${rate(readRate)} leaves/s (ratio ${(verifyRate / readRate).toFixed(2)})`);
    }
  } finally {
    await close();
  }
}

console.log(`bench/ledger.ts  ${new Date().toISOString()}  ${postgres ? 'PostgreSQL' : 'PGlite'}${process.env.KAFKA_BROKERS ? ' + Kafka' : ' + table log'}`);
if (sections.has('seal')) await seal();
if (sections.has('latency')) await latency();
if (sections.has('proof') || sections.has('verify')) await proofAndVerify();

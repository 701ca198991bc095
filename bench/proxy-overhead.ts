/**
 * `npm run bench`: the same local upstream behind (a) bare @fastify/http-proxy and (b) the Caracal
 * gateway as configured by default (auth: ES256 JWT through the verified-token cache; one WASM
 * policy evaluation; a policy.decisions event made durable per request before the call goes on —
 * in the local spool, shipped to the embedded PGlite log in the background). Rounds alternate the
 * peers in one run so machine noise hits all; medians are reported with the ratio to a. With
 * KAFKA_BROKERS/DATABASE_URL/REDIS_URL set, b' and w' run on Kafka + PostgreSQL + Redis.
 *
 * Peer w turns the spool off (each request waits for its event in PGlite; w' for Kafka's acks).
 * Peer m is b with a priced upstream: every call is metered (its cost worked out when it ends, and a metering
 * event made durable besides its decision event). Peer g is m with budgets: the agent has a budget that never runs
 * out, so every call is also reserved before it is sent and settled after (in-process; g' on Redis). g's ratio to m
 * is what budgets cost; m's to b is what metering costs. Both ratios are printed under the table.
 * Peer e spreads the load over BENCH_PRINCIPALS (default 10000) principals with one token each,
 * to show what the verified-token cache does. All connections draw their next token from one
 * shared cursor, so consecutive requests name consecutive principals whatever connection sends
 * them; the warm-up sends exactly one request per principal. The "principals" column is counted by
 * the gateway's process (distinct principal ids in the decision events that reached its event log),
 * per measured round, minimum over rounds; the line under the table gives the distinct count over
 * all measured rounds together.
 * Peers s, c and d break the cost down (BENCH_BREAKDOWN=0 skips them): s ships the spool to a
 * bench-only EventLog that discards (the spool's own cost, without PGlite), c makes no durable
 * record at all, d also replaces the WASM engine by an allow-all stub.
 *
 * Besides req/s, each peer's CPU time per request is read from /proc (Linux): on a shared, noisy
 * machine it moves much less than throughput, and its ratio to a's is the throughput ratio the peer
 * would reach if CPU were all that limited both.
 *
 * After the rounds, each peer runs once more at a fixed offered load of half a's req/s and the
 * added p50/p99 against a at that rate are printed (BENCH_HALF_LOAD=0 skips it).
 *
 * Env: BENCH_SECONDS (default 8), BENCH_ROUNDS (3), BENCH_CONNECTIONS (50), BENCH_PEERS (letters to
 * run, e.g. `b,w,d`; a always runs: it is the reference), BENCH_BASELINE (the servers.js of
 * another build: each gateway peer also runs from it, marked `~`, in the same rounds — before/after
 * in one run).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { cpuSeconds } from './proc-cpu.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 50);
const serversJs = path.join(path.dirname(fileURLToPath(import.meta.url)), 'servers.js');
const baselineJs = process.env.BENCH_BASELINE ? path.resolve(process.env.BENCH_BASELINE) : undefined;
const selected = process.env.BENCH_PEERS ? new Set(process.env.BENCH_PEERS.split(',').map((p) => p.trim())) : null;

interface Started {
  child: ChildProcess;
  info: { url: string; token?: string; tokensFile?: string; statsUrl?: string; backends?: Record<string, string> };
  /** Many principals: one token per principal, handed out by `cursor`, shared by all connections. */
  tokens?: string[];
  cursor: number;
}

function start(args: string[], env: NodeJS.ProcessEnv, script = serversJs): Promise<Started> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`${args[0]} did not start in 120 s`)), 120_000);
    child.stdout!.on('data', (chunk) => {
      buffer += chunk;
      const line = buffer.split('\n')[0];
      if (buffer.includes('\n') && line) {
        clearTimeout(timer);
        const info = JSON.parse(line) as Started['info'];
        const started: Started = { child, info, cursor: 0 };
        if (info.tokensFile) started.tokens = JSON.parse(readFileSync(info.tokensFile, 'utf8')) as string[];
        child.stdout!.removeAllListeners('data');
        child.stdout!.resume();
        resolve(started);
      }
    });
    child.on('exit', (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

function stop(started: Started): Promise<void> {
  return new Promise((resolve) => {
    started.child.removeAllListeners('exit');
    started.child.once('exit', () => resolve());
    started.child.kill('SIGTERM');
    setTimeout(() => started.child.kill('SIGKILL'), 15_000).unref();
  });
}

interface Sample {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  /** Distinct principals in the decisions the gateway recorded during this sample (gateway peers). */
  principals?: number;
  /** CPU time of the proxy's process per answered request, µs (Linux); what noise on a shared machine moves least. */
  cpuUs?: number;
}

interface ServerStats {
  decisions: number;
  /** Since the previous read. */
  distinctPrincipals: number;
  /** Since the last read with `resetTotal`. */
  distinctTotal: number;
}

/** The gateway's own count (bench/servers.ts); `resetTotal` starts a new total after this read. */
async function serverStats(started: Started, resetTotal = false): Promise<ServerStats | undefined> {
  if (!started.info.statsUrl) return undefined;
  const response = await fetch(`${started.info.statsUrl}/${resetTotal ? '?reset-total' : ''}`);
  return (await response.json()) as ServerStats;
}

/** `amount` instead of a duration: exactly that many requests (the many-principals warm-up). */
async function load(started: Started, run: { duration: number; overallRate?: number } | { amount: number }): Promise<Sample> {
  const { url, token } = started.info;
  const { tokens } = started;
  const cpuBefore = cpuSeconds(started.child.pid);
  const result = await autocannon({
    url: `${url}/proxy/echo/v1/chat/completions`,
    connections,
    ...run,
    headers: token ? { authorization: `Bearer ${token}` } : {},
    // One request whose token is taken from the shared cursor each time it is built: a list of
    // requests would restart at its first entry on every connection, so 50 connections would keep
    // sending the same first few hundred tokens.
    ...(tokens
      ? {
          requests: [
            {
              method: 'GET' as const,
              setupRequest: (request: { headers?: Record<string, string> }) => {
                request.headers = { ...request.headers, authorization: `Bearer ${tokens[started.cursor++ % tokens.length]}` };
                return request;
              },
            },
          ],
        }
      : {}),
  } as autocannon.Options);
  const cpuAfter = cpuSeconds(started.child.pid);
  const stats = await serverStats(started, 'amount' in run);
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.timeouts,
    non2xx: result.non2xx,
    ...(stats ? { principals: stats.distinctPrincipals } : {}),
    ...(cpuBefore !== undefined && cpuAfter !== undefined && result.requests.total > 0 ? { cpuUs: ((cpuAfter - cpuBefore) * 1e6) / result.requests.total } : {}),
  };
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

function summarise(samples: Sample[]): Sample {
  const principals = samples.map((s) => s.principals).filter((p): p is number => p !== undefined);
  const cpu = samples.map((s) => s.cpuUs).filter((c): c is number => c !== undefined);
  return {
    rps: median(samples.map((s) => s.rps)),
    p50: median(samples.map((s) => s.p50)),
    p99: median(samples.map((s) => s.p99)),
    errors: samples.reduce((n, s) => n + s.errors, 0),
    non2xx: samples.reduce((n, s) => n + s.non2xx, 0),
    ...(principals.length > 0 ? { principals: Math.min(...principals) } : {}),
    ...(cpu.length > 0 ? { cpuUs: median(cpu) } : {}),
  };
}

const embeddedEnv: NodeJS.ProcessEnv = { ...process.env };
for (const name of ['DATABASE_URL', 'KAFKA_BROKERS', 'REDIS_URL']) delete embeddedEnv[name];

interface PeerSpec {
  letter: string;
  name: string;
  args: string[];
  env: NodeJS.ProcessEnv;
}

const upstream = await start(['upstream'], embeddedEnv);
const u = upstream.info.url;
const principals = Number(process.env.BENCH_PRINCIPALS ?? 10_000);
const specs: PeerSpec[] = [
  { letter: 'a', name: 'a  bare @fastify/http-proxy', args: ['bare', u], env: embeddedEnv },
  // The embedded default as configured (decisions durable in the local spool, shipped to PGlite).
  { letter: 'b', name: 'b  caracal gateway, embedded default', args: ['gateway', u], env: embeddedEnv },
  { letter: 'w', name: 'w  as b, spool off: waits for PGlite per request', args: ['gateway', u, '--no-spool'], env: embeddedEnv },
  // What recording each decision's policy input (for replay) costs: b without it.
  { letter: 'i', name: 'i  as b, policy inputs not recorded in events', args: ['gateway', u], env: { ...embeddedEnv, CARACAL_POLICY_RECORD_INPUT: 'false' } },
  // A shadow bundle: every decision evaluated twice and the shadow verdict recorded (b follows no store).
  { letter: 'h', name: 'h  as b, on a bundle store with a shadow revision', args: ['gateway', u, '--shadow'], env: embeddedEnv },
  // Metering: a priced upstream, every call costed and a metering event recorded.
  { letter: 'm', name: 'm  as b, priced upstream (metered, no budget)', args: ['gateway', u, '--priced'], env: embeddedEnv },
  // Budgets: as m, and a budget that never runs out, so every call is also reserved and settled.
  { letter: 'g', name: 'g  as m, with a budget (in-process reserve + settle)', args: ['gateway', u, '--budget'], env: embeddedEnv },
];
if (principals > 0) {
  // The same gateway with its load spread over many principals, each with its own token.
  specs.push({ letter: 'e', name: `e  as b, ${principals} distinct principals`, args: ['gateway', u, '--principals', String(principals)], env: embeddedEnv });
  if (process.env.BENCH_NO_CACHE_PEER !== '0') {
    specs.push({ letter: 'f', name: 'f  as e, verified-token cache off', args: ['gateway', u, '--principals', String(principals), '--no-token-cache'], env: embeddedEnv });
  }
}
if (process.env.BENCH_BREAKDOWN !== '0') {
  // Where the cost goes: durable in the spool but shipped to nowhere, then no durable record at
  // all, then also no WASM.
  specs.push({ letter: 's', name: 's  spool on, shipped to a discarding log', args: ['gateway', u, '--spool', '--discard-events'], env: embeddedEnv });
  specs.push({ letter: 'c', name: 'c  no durable record (events discarded)', args: ['gateway', u, '--discard-events'], env: embeddedEnv });
  specs.push({ letter: 'd', name: 'd  as c, allow-all (no WASM)', args: ['gateway', u, '--discard-events', '--allow-all'], env: embeddedEnv });
}
if (process.env.KAFKA_BROKERS && process.env.DATABASE_URL) {
  const env = { ...process.env, CARACAL_DB_SCHEMA: `bench_${Date.now()}`, CARACAL_TOPIC_PREFIX: `bench${Date.now()}.` };
  specs.push({ letter: "b'", name: "b' as b on PostgreSQL + Kafka + Redis", args: ['gateway', u], env });
  const waitEnv = { ...process.env, CARACAL_DB_SCHEMA: `bench_wait_${Date.now()}`, CARACAL_TOPIC_PREFIX: `benchwait${Date.now()}.` };
  specs.push({ letter: "w'", name: "w' as b', spool off: waits for Kafka acks", args: ['gateway', u, '--no-spool'], env: waitEnv });
  const noInputEnv = { ...process.env, CARACAL_DB_SCHEMA: `bench_noinput_${Date.now()}`, CARACAL_TOPIC_PREFIX: `benchnoinput${Date.now()}.`, CARACAL_POLICY_RECORD_INPUT: 'false' };
  specs.push({ letter: "i'", name: "i' as b', policy inputs not recorded in events", args: ['gateway', u], env: noInputEnv });
  const pricedEnv = { ...process.env, CARACAL_DB_SCHEMA: `bench_priced_${Date.now()}`, CARACAL_TOPIC_PREFIX: `benchpriced${Date.now()}.` };
  specs.push({ letter: "m'", name: "m' as b', priced upstream (metered, no budget)", args: ['gateway', u, '--priced'], env: pricedEnv });
  const budgetEnv = { ...process.env, CARACAL_DB_SCHEMA: `bench_budget_${Date.now()}`, CARACAL_TOPIC_PREFIX: `benchbudget${Date.now()}.` };
  specs.push({ letter: "g'", name: "g' as m', with a budget (Redis)", args: ['gateway', u, '--budget'], env: budgetEnv });
}

const peers: { name: string; started: Started }[] = [];
try {
  for (const spec of specs) {
    if (selected && spec.letter !== 'a' && !selected.has(spec.letter)) continue;
    peers.push({ name: spec.name, started: await start(spec.args, spec.env) });
    if (baselineJs && spec.args[0] === 'gateway') {
      // A baseline peer gets its own schema and topics so it never shares state with its twin.
      const env = { ...spec.env, ...(spec.env.CARACAL_DB_SCHEMA ? { CARACAL_DB_SCHEMA: `${spec.env.CARACAL_DB_SCHEMA}_base`, CARACAL_TOPIC_PREFIX: `base${spec.env.CARACAL_TOPIC_PREFIX}` } : {}) };
      peers.push({ name: `${spec.name.slice(0, 2)}~ ${spec.name.slice(3)} [baseline]`, started: await start(spec.args, env, baselineJs) });
    }
  }

  // Warm-up: JIT, connection pools; for many principals one request per principal (each token
  // verified and cached, each principal's facts and allowlist loaded) before anything is measured.
  for (const peer of peers) {
    const { tokens } = peer.started;
    const warm = await load(peer.started, tokens ? { amount: tokens.length } : { duration: 2 });
    if (tokens) process.stderr.write(`warm-up ${peer.name}: ${tokens.length} requests, ${warm.principals ?? '?'} distinct principals seen by the gateway\n`);
  }
  const samples = new Map<string, Sample[]>(peers.map((p) => [p.name, []]));
  const sent = new Map<string, number>();
  for (let round = 0; round < rounds; round++) {
    for (const peer of peers) {
      const before = peer.started.cursor;
      const sample = await load(peer.started, { duration: seconds });
      samples.get(peer.name)!.push(sample);
      if (peer.started.tokens) sent.set(peer.name, (sent.get(peer.name) ?? 0) + (peer.started.cursor - before));
      process.stderr.write(
        `round ${round + 1}/${rounds} ${peer.name}: ${sample.rps.toFixed(0)} rps${sample.cpuUs !== undefined ? `, ${sample.cpuUs.toFixed(0)} µs cpu/req` : ''}${sample.principals !== undefined ? `, ${sample.principals} principals` : ''}\n`,
      );
    }
  }
  const results = peers.map((p) => ({ name: p.name, ...summarise(samples.get(p.name)!) }));
  const bare = results[0]!;
  console.log(`\nproxy overhead — ${new Date().toISOString()} — ${os.cpus().length} cores (${os.cpus()[0]?.model.trim()}), node ${process.version}`);
  console.log(`${connections} connections, ${rounds} rounds × ${seconds} s each, medians; upstream, proxies and load generator in separate processes\n`);
  // ratio: req/s against a's in the same run. cpu ratio: a's CPU per request over this peer's — the
  // throughput ratio the peer would have if CPU were all that limited both.
  console.log(
    `${'peer'.padEnd(60)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'errors'.padStart(7)} ${'non-2xx'.padStart(8)} ${'principals'.padStart(10)} ${'ratio'.padStart(6)} ${'cpu µs/req'.padStart(10)} ${'cpu ratio'.padStart(9)}`,
  );
  for (const r of results) {
    const cpuRatio = r.cpuUs !== undefined && bare.cpuUs !== undefined ? (bare.cpuUs / r.cpuUs).toFixed(2) : '-';
    console.log(
      `${r.name.padEnd(60)} ${r.rps.toFixed(0).padStart(9)} ${r.p50.toFixed(1).padStart(7)} ${r.p99.toFixed(1).padStart(7)} ${String(r.errors).padStart(7)} ${String(r.non2xx).padStart(8)} ${String(r.principals ?? '-').padStart(10)} ${(r.rps / bare.rps).toFixed(2).padStart(6)} ${(r.cpuUs?.toFixed(0) ?? '-').padStart(10)} ${cpuRatio.padStart(9)}`,
    );
  }
  // Each feature against its peer without it, measured in the same rounds.
  const byLetter = (letter: string) => results.find((r) => r.name.startsWith(`${letter} `));
  for (const [what, withIt, without] of [
    ['metering (m/b)', 'm', 'b'],
    ['budgets (g/m)', 'g', 'm'],
    ["metering (m'/b')", "m'", "b'"],
    ["budgets (g'/m')", "g'", "m'"],
  ] as const) {
    const on = byLetter(withIt);
    const off = byLetter(without);
    if (!on || !off) continue;
    const cpu = on.cpuUs !== undefined && off.cpuUs !== undefined ? `, CPU per request ×${(on.cpuUs / off.cpuUs).toFixed(2)}` : '';
    console.log(`${what}: req/s ratio ${(on.rps / off.rps).toFixed(3)} (cost ${((1 - on.rps / off.rps) * 100).toFixed(1)} %)${cpu}`);
  }
  // Added latency at a fixed offered load of half the bare proxy's req/s (BENCH_HALF_LOAD=0 skips
  // it): throughput ratios say how far each peer can go, this says what a request pays below
  // saturation. A peer that cannot keep up with the rate shows it in its achieved req/s.
  if (process.env.BENCH_HALF_LOAD !== '0') {
    const rate = Math.max(1, Math.round(bare.rps / 2));
    const fixed = [];
    for (const peer of peers) fixed.push({ name: peer.name, ...(await load(peer.started, { duration: seconds, overallRate: rate })) });
    const reference = fixed[0]!;
    console.log(`
at a fixed ${rate} req/s offered (half of a's median), ${seconds} s each:
`);
    console.log(`${'peer'.padEnd(60)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'added p50'.padStart(10)} ${'added p99'.padStart(10)}`);
    for (const r of fixed) {
      console.log(
        `${r.name.padEnd(60)} ${r.rps.toFixed(0).padStart(9)} ${r.p50.toFixed(1).padStart(7)} ${r.p99.toFixed(1).padStart(7)} ${(r.p50 - reference.p50).toFixed(1).padStart(10)} ${(r.p99 - reference.p99).toFixed(1).padStart(10)}`,
      );
    }
  }
  for (const peer of peers) {
    if (!peer.started.tokens) continue;
    const total = await serverStats(peer.started);
    console.log(
      `${peer.name.trim()}: over the measured rounds the client sent ${sent.get(peer.name)} requests over ${peer.started.tokens.length} tokens; the gateway recorded decisions for ${total?.distinctTotal ?? '?'} distinct principals (per round: the principals column)`,
    );
  }
} finally {
  for (const peer of peers) await stop(peer.started);
  await stop(upstream);
}

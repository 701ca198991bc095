/**
 * `npm run bench`: the same local upstream behind (a) bare @fastify/http-proxy and (b) the Caracal
 * gateway doing auth (ES256 JWT, verified-token cache) + one WASM policy evaluation + a
 * policy.decisions event per request. Rounds alternate a, b, a, b … in one run so machine noise
 * hits both; medians are reported with the ratio b/a. With KAFKA_BROKERS/DATABASE_URL/REDIS_URL set,
 * (b) also runs on Kafka + PostgreSQL + Redis.
 *
 * Peer e spreads the load over BENCH_PRINCIPALS (default 10000) principals with one token each,
 * to show what the verified-token cache does (warm-up covers every token once).
 * Peers g and g' record decisions through the gateway's local spool (spool.enabled) instead of
 * waiting for the event log.
 * Peers c and d break the cost down (BENCH_BREAKDOWN=0 skips them): c discards decision events
 * through a bench-only EventLog, d also replaces the WASM engine by an allow-all stub.
 *
 * Env: BENCH_SECONDS (default 8), BENCH_ROUNDS (3), BENCH_CONNECTIONS (50).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 50);
const serversJs = path.join(path.dirname(fileURLToPath(import.meta.url)), 'servers.js');

interface Started {
  child: ChildProcess;
  info: { url: string; token?: string; tokensFile?: string; backends?: Record<string, string> };
  /** Many principals: one token per principal, cycled through by every connection. */
  tokens?: string[];
}

function start(args: string[], env: NodeJS.ProcessEnv): Promise<Started> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [serversJs, ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`${args[0]} did not start in 60 s`)), 60_000);
    child.stdout!.on('data', (chunk) => {
      buffer += chunk;
      const line = buffer.split('\n')[0];
      if (buffer.includes('\n') && line) {
        clearTimeout(timer);
        resolve({ child, info: JSON.parse(line) });
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
}

async function load(started: Started, duration: number): Promise<Sample> {
  const { url, token } = started.info;
  const result = await autocannon({
    url: `${url}/proxy/echo/v1/chat/completions`,
    connections,
    duration,
    headers: token ? { authorization: `Bearer ${token}` } : {},
    // Each connection walks the principals' tokens in turn (offset per connection by autocannon's
    // request cycling), so the verified-token cache sees every principal.
    ...(started.tokens ? { requests: started.tokens.map((t) => ({ method: 'GET' as const, headers: { authorization: `Bearer ${t}` } })) } : {}),
  });
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, errors: result.errors + result.timeouts, non2xx: result.non2xx };
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

function summarise(samples: Sample[]): Sample {
  return {
    rps: median(samples.map((s) => s.rps)),
    p50: median(samples.map((s) => s.p50)),
    p99: median(samples.map((s) => s.p99)),
    errors: samples.reduce((n, s) => n + s.errors, 0),
    non2xx: samples.reduce((n, s) => n + s.non2xx, 0),
  };
}

const embeddedEnv: NodeJS.ProcessEnv = { ...process.env };
for (const name of ['DATABASE_URL', 'KAFKA_BROKERS', 'REDIS_URL']) delete embeddedEnv[name];

const upstream = await start(['upstream'], embeddedEnv);
const peers: { name: string; started: Started }[] = [
  { name: 'a  bare @fastify/http-proxy', started: await start(['bare', upstream.info.url], embeddedEnv) },
  { name: 'b  caracal gateway (embedded: PGlite + local log)', started: await start(['gateway', upstream.info.url], embeddedEnv) },
  { name: 'g  as b, decisions through the local spool', started: await start(['gateway', upstream.info.url, '--spool'], embeddedEnv) },
];
const principals = Number(process.env.BENCH_PRINCIPALS ?? 10_000);
if (principals > 0) {
  // The same gateway with its load spread over many principals, each with its own token.
  const many = await start(['gateway', upstream.info.url, '--principals', String(principals)], embeddedEnv);
  many.tokens = JSON.parse(readFileSync(many.info.tokensFile!, 'utf8')) as string[];
  peers.push({ name: `e  gateway, ${principals} distinct principals`, started: many });
  if (process.env.BENCH_NO_CACHE_PEER !== '0') {
    const uncached = await start(['gateway', upstream.info.url, '--principals', String(principals), '--no-token-cache'], embeddedEnv);
    uncached.tokens = JSON.parse(readFileSync(uncached.info.tokensFile!, 'utf8')) as string[];
    peers.push({ name: `f  as e, verified-token cache off`, started: uncached });
  }
}
if (process.env.BENCH_BREAKDOWN !== '0') {
  // Where the cost goes: the same gateway without durable recording, then also without WASM.
  peers.push({ name: 'c  gateway, decision events discarded', started: await start(['gateway', upstream.info.url, '--discard-events'], embeddedEnv) });
  peers.push({ name: 'd  gateway, events discarded, allow-all (no WASM)', started: await start(['gateway', upstream.info.url, '--discard-events', '--allow-all'], embeddedEnv) });
}
if (process.env.KAFKA_BROKERS && process.env.DATABASE_URL) {
  const env = { ...process.env, CARACAL_DB_SCHEMA: `bench_${Date.now()}`, CARACAL_TOPIC_PREFIX: `bench${Date.now()}.` };
  peers.push({ name: 'b\' caracal gateway (PostgreSQL + Kafka + Redis)', started: await start(['gateway', upstream.info.url], env) });
  const spoolEnv = { ...process.env, CARACAL_DB_SCHEMA: `bench_spool_${Date.now()}`, CARACAL_TOPIC_PREFIX: `benchspool${Date.now()}.` };
  peers.push({ name: 'g\' as b\', decisions through the local spool', started: await start(['gateway', upstream.info.url, '--spool'], spoolEnv) });
}

try {
  // Warm-up: JIT, connection pools, the verified-token cache.
  for (const peer of peers) await load(peer.started, peer.started.tokens ? 6 : 2);
  const samples = new Map<string, Sample[]>(peers.map((p) => [p.name, []]));
  for (let round = 0; round < rounds; round++) {
    for (const peer of peers) {
      const sample = await load(peer.started, seconds);
      samples.get(peer.name)!.push(sample);
      process.stderr.write(`round ${round + 1}/${rounds} ${peer.name}: ${sample.rps.toFixed(0)} rps\n`);
    }
  }
  const results = peers.map((p) => ({ name: p.name, ...summarise(samples.get(p.name)!) }));
  const bare = results[0]!;
  console.log(`\nproxy overhead — ${new Date().toISOString()} — ${os.cpus().length} cores (${os.cpus()[0]?.model.trim()}), node ${process.version}`);
  console.log(`${connections} connections, ${rounds} rounds × ${seconds} s each, medians; upstream, proxies and load generator in separate processes\n`);
  console.log(`${'peer'.padEnd(52)} ${'req/s'.padStart(9)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'errors'.padStart(7)} ${'non-2xx'.padStart(8)} ${'ratio'.padStart(6)}`);
  for (const r of results) {
    console.log(`${r.name.padEnd(52)} ${r.rps.toFixed(0).padStart(9)} ${r.p50.toFixed(1).padStart(7)} ${r.p99.toFixed(1).padStart(7)} ${String(r.errors).padStart(7)} ${String(r.non2xx).padStart(8)} ${(r.rps / bare.rps).toFixed(2).padStart(6)}`);
  }
} finally {
  for (const peer of peers) await stop(peer.started);
  await stop(upstream);
}

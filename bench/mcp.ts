/**
 * `npm run bench:mcp`: MCP `tools/call` through the gateway's `/mcp/<server>` route against the same call straight to
 * the MCP server, in the same run. Through the gateway each JSON-RPC message is authenticated (ES256 JWT through the
 * verified-token cache), decided by one WASM evaluation (the default bundle: the core policy, which allows the tool by
 * the agent's grant), recorded as a decision event (embedded default: durable in the local spool, shipped to PGlite)
 * and forwarded; the answer streams back as the server sent it.
 *
 * Processes: the MCP servers (test/helpers/mcp-server.ts, the official SDK's McpServer + Streamable HTTP transport),
 * the gateway, and this one (the official SDK's Client + StreamableHTTPClientTransport, the load generator) — see
 * bench/mcp-roles.ts. Two response modes: the server answers each POST as an SSE stream (the SDK's default) or as one
 * JSON body (`enableJsonResponse`).
 *
 *   sequential   one session per peer and mode; after a warm-up, BENCH_MCP_CALLS calls one after the other per round,
 *                BENCH_ROUNDS rounds, the peers alternating (the order flipped every round) so drift hits both. Each
 *                call is timed with performance.now() around `callTool`; p50 / p99 are over all calls of all rounds,
 *                calls/s is calls over the time they took. Added = gateway minus direct.
 *   concurrent   BENCH_MCP_CONCURRENCY sessions per peer and mode, each calling in a loop for BENCH_MCP_SECONDS, per
 *                round; medians over rounds, the ratio gateway / direct, and the CPU time per call of the MCP server's
 *                and the gateway's processes (from /proc: what noise on a shared machine moves least).
 *
 * Every answer is checked (the tool's text, no isError); the decision events the gateway recorded are counted in its
 * process and printed against the calls sent through it.
 *
 *   npm run build && node dist/bench/mcp.js
 *
 * Env: BENCH_MCP_CALLS (2000), BENCH_ROUNDS (3), BENCH_MCP_WARMUP (300 calls per session), BENCH_MCP_CONCURRENCY (16,
 * 0 skips the concurrent run), BENCH_MCP_SECONDS (3), BENCH_MCP_MODES (`sse,json`), BENCH_MCP_SERVICES=1 (the gateway
 * on PostgreSQL + Kafka + Redis from DATABASE_URL / KAFKA_BROKERS / REDIS_URL, fresh schema and topics; default: the
 * embedded default whatever the environment says), BENCH_NODE_ARGS (node flags for the child processes, e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/prof`), BENCH_MCP_SETTLE (seconds to wait at the end for the spool to ship
 * the decision events, 30), BENCH_MCP_TIMEOUT (seconds before the whole bench gives up, 600).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { cpuSeconds } from './proc-cpu.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const CALLS = env('BENCH_MCP_CALLS', 2_000);
const ROUNDS = env('BENCH_ROUNDS', 3);
const WARMUP = env('BENCH_MCP_WARMUP', 300);
const CONCURRENCY = env('BENCH_MCP_CONCURRENCY', 16);
const SECONDS = env('BENCH_MCP_SECONDS', 3);
const TIMEOUT_S = env('BENCH_MCP_TIMEOUT', 600);
const MODES = (process.env.BENCH_MCP_MODES ?? 'sse,json').split(',').map((m) => m.trim()) as Mode[];
const SERVICES = process.env.BENCH_MCP_SERVICES === '1';
const rolesJs = path.join(path.dirname(fileURLToPath(import.meta.url)), 'mcp-roles.js');

type Mode = 'sse' | 'json';
const TOOL = { name: 'read_file', arguments: { path: '/public/x' } };
const EXPECTED = 'contents of /public/x';

interface Child {
  name: string;
  child: ChildProcess;
}
const children: Child[] = [];

function start<T>(name: string, args: string[], childEnv: NodeJS.ProcessEnv): Promise<T> {
  return new Promise((resolve, reject) => {
    // BENCH_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") go to the child processes: a profile of each role.
    const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const child = spawn(process.execPath, [...nodeArgs, rolesJs, ...args], { env: childEnv, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push({ name, child });
    let buffer = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start in 120 s`)), 120_000);
    child.stdout!.on('data', (chunk) => {
      buffer += chunk;
      const line = buffer.split('\n')[0];
      if (buffer.includes('\n') && line) {
        clearTimeout(timer);
        child.stdout!.removeAllListeners('data');
        child.stdout!.resume();
        resolve(JSON.parse(line) as T);
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code ?? signal}`));
    });
  });
}

function stop({ child }: Child): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 15_000).unref();
  });
}

// Whatever happens — an error, ^C, the watchdog — no child outlives the bench.
process.once('exit', () => {
  for (const { child } of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
const watchdog = setTimeout(() => {
  process.stderr.write(`bench:mcp gave up after ${TIMEOUT_S} s\n`);
  process.exit(1);
}, TIMEOUT_S * 1_000);
watchdog.unref();

interface Peer {
  mode: Mode;
  kind: 'direct' | 'gateway';
  name: string;
  url: string;
  headers: Record<string, string>;
}

/**
 * The SDK hands its transport's one long-lived AbortSignal to every fetch; undici leaves an abort listener on it per
 * request until the request is garbage-collected, and past 1,500 Node prints a MaxListenersExceededWarning (with a
 * stack) on every further request — a client-side cost that would land in the measurement. So POSTs (the calls) go
 * without it; GET (the event stream) and DELETE keep it, so closing a session still ends its stream. The bench never
 * closes a session with a call in flight. Same client, same fetch, for both peers.
 */
const callFetch = (url: string | URL, init?: RequestInit): Promise<Response> => fetch(url, init?.method === 'POST' ? { ...init, signal: null } : init);

async function connect(peer: Peer): Promise<Client> {
  const client = new Client({ name: 'caracal-bench', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(peer.url), { requestInit: { headers: peer.headers }, fetch: callFetch });
  await client.connect(transport);
  if (peer.kind === 'gateway') {
    viaGateway.add(client);
    gatewaySessions++;
  }
  return client;
}

/** Counted on this side, every kind: what the gateway's decision count is checked against. */
let gatewayToolCalls = 0;
let gatewaySessions = 0;
const viaGateway = new WeakSet<Client>();

async function call(client: Client): Promise<void> {
  if (viaGateway.has(client)) gatewayToolCalls++;
  const result = await client.callTool(TOOL);
  const content = result.content as { type: string; text?: string }[] | undefined;
  if (result.isError || content?.[0]?.text !== EXPECTED) throw new Error(`unexpected answer: ${JSON.stringify(result).slice(0, 300)}`);
}

/** `n` calls one after the other; the latency of each, ms. */
async function sequential(client: Client, n: number, into: number[]): Promise<number> {
  const begin = performance.now();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await call(client);
    into.push(performance.now() - t0);
  }
  return performance.now() - begin;
}

interface ConcurrentSample {
  calls: number;
  cps: number;
  p50: number;
  p99: number;
  serverCpuUs?: number;
  gatewayCpuUs?: number;
}

/** Every client calls in a loop until the deadline; calls/s over the window, and the processes' CPU per call. */
async function concurrent(clients: Client[], seconds: number, pids: { server?: number; gateway?: number }): Promise<ConcurrentSample> {
  const latencies: number[] = [];
  const serverBefore = cpuSeconds(pids.server);
  const gatewayBefore = pids.gateway !== undefined ? cpuSeconds(pids.gateway) : undefined;
  const begin = performance.now();
  const deadline = begin + seconds * 1_000;
  await Promise.all(
    clients.map(async (client) => {
      while (performance.now() < deadline) {
        const t0 = performance.now();
        await call(client);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = (performance.now() - begin) / 1_000;
  const serverAfter = cpuSeconds(pids.server);
  const gatewayAfter = pids.gateway !== undefined ? cpuSeconds(pids.gateway) : undefined;
  const n = latencies.length;
  const perCall = (before?: number, after?: number) => (before !== undefined && after !== undefined && n > 0 ? ((after - before) * 1e6) / n : undefined);
  const sorted = latencies.sort((a, b) => a - b);
  const serverCpuUs = perCall(serverBefore, serverAfter);
  const gatewayCpuUs = perCall(gatewayBefore, gatewayAfter);
  return {
    calls: n,
    cps: n / elapsed,
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    ...(serverCpuUs !== undefined ? { serverCpuUs } : {}),
    ...(gatewayCpuUs !== undefined ? { gatewayCpuUs } : {}),
  };
}

const quantile = (sorted: readonly number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;
const fmt = (value: number | undefined, digits = 2) => (value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits));
const signed = (value: number) => `${value >= 0 ? '+' : ''}${value.toFixed(2)}`;

const clients: Client[] = [];
try {
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  if (SERVICES) {
    if (!process.env.DATABASE_URL || !process.env.KAFKA_BROKERS) throw new Error('BENCH_MCP_SERVICES=1 needs DATABASE_URL and KAFKA_BROKERS');
    const id = Date.now();
    Object.assign(childEnv, { CARACAL_DB_SCHEMA: `bench_mcp_${id}`, CARACAL_TOPIC_PREFIX: `benchmcp${id}.` });
  } else {
    for (const name of ['DATABASE_URL', 'KAFKA_BROKERS', 'REDIS_URL']) delete childEnv[name];
  }
  const servers = await start<Record<Mode, { url: string; origin: string }>>('mcp-servers', ['mcp-servers'], childEnv);
  const gateway = await start<{ url: string; token: string; statsUrl: string; backends: Record<string, unknown> }>('gateway', ['gateway', servers.sse.url, servers.json.url], childEnv);
  const pids = { server: children[0]!.child.pid, gateway: children[1]!.child.pid };
  const gatewayDecisions = async () => ((await (await fetch(gateway.statsUrl)).json()) as { decisions: number }).decisions;

  const peers: Peer[] = MODES.flatMap((mode): Peer[] => [
    { mode, kind: 'direct', name: `${mode.padEnd(4)} direct to the MCP server`, url: servers[mode].url, headers: {} },
    { mode, kind: 'gateway', name: `${mode.padEnd(4)} gateway /mcp/${mode === 'sse' ? 'code' : 'code-json'}`, url: `${gateway.url}/mcp/${mode === 'sse' ? 'code' : 'code-json'}`, headers: { authorization: `Bearer ${gateway.token}` } },
  ]);

  // One session per peer for the sequential run; warm-up (JIT, connection pools, the token cache, the agent's facts).
  const sessions = new Map<Peer, Client>();
  for (const peer of peers) {
    const client = await connect(peer);
    clients.push(client);
    sessions.set(peer, client);
    await sequential(client, WARMUP, []);
  }

  const latencies = new Map<Peer, number[]>(peers.map((p) => [p, []]));
  const elapsed = new Map<Peer, number>(peers.map((p) => [p, 0]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of MODES) {
      const pair = peers.filter((p) => p.mode === mode);
      if (round % 2 === 1) pair.reverse();
      for (const peer of pair) {
        const into: number[] = [];
        const ms = await sequential(sessions.get(peer)!, CALLS, into);
        latencies.get(peer)!.push(...into);
        elapsed.set(peer, elapsed.get(peer)! + ms);
        into.sort((a, b) => a - b);
        process.stderr.write(`round ${round + 1}/${ROUNDS} sequential ${peer.name}: ${((CALLS * 1000) / ms).toFixed(0)} calls/s, p50 ${quantile(into, 0.5).toFixed(2)} ms, p99 ${quantile(into, 0.99).toFixed(2)} ms\n`);
      }
    }
  }

  const concurrentSamples = new Map<Peer, ConcurrentSample[]>(peers.map((p) => [p, []]));
  if (CONCURRENCY > 0) {
    const pools = new Map<Peer, Client[]>();
    for (const peer of peers) {
      const pool: Client[] = [];
      for (let i = 0; i < CONCURRENCY; i++) {
        const client = await connect(peer);
        clients.push(client);
        pool.push(client);
      }
      pools.set(peer, pool);
      // Warm the new sessions (and, through the gateway, the concurrent path) for a second.
      await concurrent(pool, 1, {});
    }
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        const pair = peers.filter((p) => p.mode === mode);
        if (round % 2 === 1) pair.reverse();
        for (const peer of pair) {
          const sample = await concurrent(pools.get(peer)!, SECONDS, peer.kind === 'gateway' ? pids : { server: pids.server });
          concurrentSamples.get(peer)!.push(sample);
          process.stderr.write(
            `round ${round + 1}/${ROUNDS} concurrent ${peer.name}: ${sample.cps.toFixed(0)} calls/s, p50 ${sample.p50.toFixed(2)} ms, p99 ${sample.p99.toFixed(2)} ms\n`,
          );
        }
      }
    }
  }

  const cpus = os.cpus();
  console.log(`\nMCP tools/call — ${new Date().toISOString()} — ${cpus.length} cores (${cpus[0]?.model.trim()}), node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`gateway: ${SERVICES ? 'PostgreSQL + Kafka + Redis' : 'embedded default'} (${JSON.stringify(gateway.backends)}), default bundle; MCP server: official SDK (test/helpers/mcp-server.ts); client: official SDK Client + StreamableHTTPClientTransport`);
  console.log('MCP server, gateway and client in separate processes; each call: read_file {path: "/public/x"}\n');
  console.log(`sequential: one session per peer, ${CALLS} calls × ${ROUNDS} rounds (after ${WARMUP} warm-up calls), peers alternating; p50 / p99 over all ${CALLS * ROUNDS} calls\n`);
  console.log(`${'peer'.padEnd(34)} ${'calls/s'.padStart(8)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'added p50'.padStart(10)} ${'added p99'.padStart(10)}`);
  const seqSummary = new Map<Peer, { cps: number; p50: number; p99: number }>();
  for (const peer of peers) {
    const sorted = latencies.get(peer)!.sort((a, b) => a - b);
    seqSummary.set(peer, { cps: (sorted.length * 1000) / elapsed.get(peer)!, p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99) });
  }
  for (const peer of peers) {
    const s = seqSummary.get(peer)!;
    const direct = seqSummary.get(peers.find((p) => p.mode === peer.mode && p.kind === 'direct')!)!;
    const added = peer.kind === 'gateway' ? [signed(s.p50 - direct.p50), signed(s.p99 - direct.p99)] : ['', ''];
    console.log(`${peer.name.padEnd(34)} ${s.cps.toFixed(0).padStart(8)} ${s.p50.toFixed(2).padStart(7)} ${s.p99.toFixed(2).padStart(7)} ${added[0]!.padStart(10)} ${added[1]!.padStart(10)}`);
  }

  if (CONCURRENCY > 0) {
    console.log(`\nconcurrent: ${CONCURRENCY} sessions per peer, each calling in a loop, ${SECONDS} s × ${ROUNDS} rounds, medians; cpu µs/call: the process's CPU time over the calls answered\n`);
    console.log(
      `${'peer'.padEnd(34)} ${'calls/s'.padStart(8)} ${'ratio'.padStart(6)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'server cpu µs/call'.padStart(19)} ${'gateway cpu µs/call'.padStart(20)}`,
    );
    const conSummary = new Map<Peer, ConcurrentSample>();
    for (const peer of peers) {
      const samples = concurrentSamples.get(peer)!;
      const server = samples.map((s) => s.serverCpuUs).filter((v): v is number => v !== undefined);
      const gw = samples.map((s) => s.gatewayCpuUs).filter((v): v is number => v !== undefined);
      conSummary.set(peer, {
        calls: samples.reduce((n, s) => n + s.calls, 0),
        cps: median(samples.map((s) => s.cps)),
        p50: median(samples.map((s) => s.p50)),
        p99: median(samples.map((s) => s.p99)),
        ...(server.length > 0 ? { serverCpuUs: median(server) } : {}),
        ...(gw.length > 0 ? { gatewayCpuUs: median(gw) } : {}),
      });
    }
    for (const peer of peers) {
      const s = conSummary.get(peer)!;
      const direct = conSummary.get(peers.find((p) => p.mode === peer.mode && p.kind === 'direct')!)!;
      console.log(
        `${peer.name.padEnd(34)} ${s.cps.toFixed(0).padStart(8)} ${(s.cps / direct.cps).toFixed(2).padStart(6)} ${s.p50.toFixed(2).padStart(7)} ${s.p99.toFixed(2).padStart(7)} ${fmt(s.serverCpuUs, 0).padStart(19)} ${fmt(s.gatewayCpuUs, 0).padStart(20)}`,
      );
    }
    for (const mode of MODES) {
      const [direct, through] = [peers.find((p) => p.mode === mode && p.kind === 'direct')!, peers.find((p) => p.mode === mode && p.kind === 'gateway')!];
      const ratio = conSummary.get(through)!.cps / conSummary.get(direct)!.cps;
      console.log(`${mode}: gateway / direct calls/s ${ratio.toFixed(3)} (cost ${((1 - ratio) * 100).toFixed(1)} %)`);
    }
  }

  // Every message through the gateway is one decision event; with the spool they reach the event log in the
  // background, so wait (at most BENCH_MCP_SETTLE s) until every tools/call and session opening can be accounted for, or the count stops growing.
  let recorded = await gatewayDecisions();
  const settle = performance.now() + env('BENCH_MCP_SETTLE', 30) * 1_000;
  const expected = gatewayToolCalls + 2 * gatewaySessions;
  for (let last = -1; recorded < expected && recorded !== last && performance.now() < settle; ) {
    last = recorded;
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    recorded += await gatewayDecisions();
  }
  console.log(
    `\ndecision events in the gateway's event log: ${recorded}, for ${gatewayToolCalls} tools/call sent through it (warm-ups included) over ${gatewaySessions} sessions (each also decided: initialize, notifications/initialized, the GET stream)`,
  );
} finally {
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
  for (const child of [...children].reverse()) await stop(child);
}

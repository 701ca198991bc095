/**
 * Where a proxy's CPU goes under the load of `npm run bench`:
 *
 *   node dist/bench/profile.js gateway [--discard-events] [--allow-all] [--spool] …
 *   node dist/bench/profile.js bare
 *
 * Starts the bench upstream and one proxy (bench/servers.ts) with `--profile`, warms it up, then
 * profiles it (V8 CPU profiler, started and stopped around the load window only) while autocannon
 * sends BENCH_SECONDS (default 10) s of load over BENCH_CONNECTIONS (50) connections. Prints the
 * request rate, then the functions with the most self time and the self time by where the code
 * lives (Caracal's own files, each package, Node internals, GC, idle). The .cpuprofile is kept
 * (path printed) for a flame graph in Chrome DevTools or speedscope.
 *
 * Env: BENCH_PROFILE_TOP (25 rows), BENCH_PROFILE_OUT (directory for the .cpuprofile; default a
 * fresh one under the OS temp directory).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 50);
const top = Number(process.env.BENCH_PROFILE_TOP ?? 25);
const here = path.dirname(fileURLToPath(import.meta.url));
const serversJs = path.join(here, 'servers.js');
const [role = 'gateway', ...flags] = process.argv.slice(2);
const outDir = process.env.BENCH_PROFILE_OUT ?? mkdtempSync(path.join(os.tmpdir(), 'caracal-profile-'));
const profileFile = path.join(outDir, `${role}${flags.join('')}.cpuprofile`);

interface Child {
  child: ChildProcess;
  info: { url: string; token?: string };
  lines: AsyncIterator<Record<string, unknown>>;
}

function start(args: string[]): Promise<Child> {
  const child = spawn(process.execPath, [serversJs, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const queue: Record<string, unknown>[] = [];
  const waiting: ((line: Record<string, unknown>) => void)[] = [];
  let buffer = '';
  child.stdout!.on('data', (chunk) => {
    buffer += chunk;
    let at: number;
    while ((at = buffer.indexOf('\n')) >= 0) {
      const line = JSON.parse(buffer.slice(0, at)) as Record<string, unknown>;
      buffer = buffer.slice(at + 1);
      const next = waiting.shift();
      if (next) next(line);
      else queue.push(line);
    }
  });
  const lines: AsyncIterator<Record<string, unknown>> = {
    next: () => (queue.length > 0 ? Promise.resolve({ value: queue.shift()!, done: false }) : new Promise((resolve) => waiting.push((value) => resolve({ value, done: false })))),
  };
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${args[0]} exited with ${code}`)));
    void lines.next().then(({ value }) => resolve({ child, info: value as Child['info'], lines }));
  });
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.removeAllListeners('exit');
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 15_000).unref();
  });
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

/** Where a frame's code lives: a Caracal file, a package, Node's internals, or V8's pseudo-frames. */
function placeOf(url: string, name: string): string {
  if (!url) return name.startsWith('(') ? name : '(native)';
  if (url.startsWith('node:')) return 'node internals';
  const inModules = url.lastIndexOf('node_modules/');
  if (inModules >= 0) {
    const parts = url.slice(inModules + 'node_modules/'.length).split('/');
    return parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!;
  }
  const inDist = url.lastIndexOf('/dist/');
  return inDist >= 0 ? url.slice(inDist + '/dist/'.length).replace(/\.js$/, '') : path.basename(url);
}

function report(file: string): void {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[] };
  let total = 0;
  const byFunction = new Map<string, number>();
  const byPlace = new Map<string, number>();
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0;
    if (hits === 0) continue;
    total += hits;
    const { functionName, url, lineNumber } = node.callFrame;
    const place = placeOf(url, functionName);
    const key = `${functionName || '(anonymous)'}  ${place}${url ? `:${lineNumber + 1}` : ''}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + hits);
    byPlace.set(place, (byPlace.get(place) ?? 0) + hits);
  }
  const pct = (n: number) => `${((100 * n) / total).toFixed(1).padStart(5)} %`;
  console.log(`\nself time, top ${top} functions (${total} samples):`);
  for (const [key, hits] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(hits)}  ${key}`);
  // Inclusive time of Caracal's own functions: each sample counted once per function on its stack.
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const inclusive = new Map<string, number>();
  const walk = (id: number, onStack: Set<string>): number => {
    const node = nodes.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    const own = url.includes('/dist/src/') ? `${functionName || '(anonymous)'}  ${placeOf(url, functionName)}:${lineNumber + 1}` : undefined;
    const fresh = own !== undefined && !onStack.has(own);
    if (fresh) onStack.add(own);
    let hits = node.hitCount ?? 0;
    for (const child of node.children ?? []) hits += walk(child, onStack);
    if (fresh) {
      onStack.delete(own);
      inclusive.set(own, (inclusive.get(own) ?? 0) + hits);
    }
    return hits;
  };
  walk(profile.nodes[0]!.id, new Set());
  console.log(`\ninclusive time, top ${top} of Caracal's functions:`);
  for (const [key, hits] of [...inclusive].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(hits)}  ${key}`);
  console.log('\nself time by where the code lives:');
  for (const [place, hits] of [...byPlace].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(hits)}  ${place}`);
}

const upstream = await start(['upstream']);
const proxy = await start(role === 'bare' ? ['bare', upstream.info.url, '--profile', profileFile] : ['gateway', upstream.info.url, ...flags, '--profile', profileFile]);
try {
  const options = {
    url: `${proxy.info.url}/proxy/echo/v1/chat/completions`,
    connections,
    headers: proxy.info.token ? { authorization: `Bearer ${proxy.info.token}` } : {},
  };
  await autocannon({ ...options, duration: 3 });
  proxy.child.kill('SIGUSR2');
  const result = await autocannon({ ...options, duration: seconds });
  proxy.child.kill('SIGUSR2');
  await proxy.lines.next();
  console.log(`${role} ${flags.join(' ')}: ${result.requests.average.toFixed(0)} req/s over ${seconds} s, ${connections} connections, p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms, non-2xx ${result.non2xx}`);
  console.log(`profile: ${profileFile}`);
  report(profileFile);
} finally {
  await stop(proxy.child);
  await stop(upstream.child);
}

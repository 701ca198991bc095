import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { PACKAGE_ROOT } from '../../src/paths.js';

const SERVICES_SH = path.join(PACKAGE_ROOT, 'scripts', 'services.sh');

/**
 * A private set of PostgreSQL, Redis and Kafka (scripts/services.sh) for a test that stops and
 * restarts them: the shared services other test files use at the same time are never touched.
 */
export interface PrivateServices {
  dir: string;
  databaseUrl: string;
  redisUrl: string;
  kafkaBrokers: string;
  /** `services.sh <command> <dir>`, e.g. `stop-kafka`, `start-kafka`, `restart-postgres`. */
  run(command: string, timeoutMs?: number): Promise<string>;
  /** Stops all three and removes the state dir (logs are kept when `keepLogs`). */
  stop(keepLogs?: boolean): Promise<void>;
}

function servicesSh(command: string, dir: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [SERVICES_SH, command, dir], { cwd: PACKAGE_ROOT, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(output);
      else reject(new Error(`scripts/services.sh ${command} ${dir} failed (${signal ?? code}):\n${output}`));
    });
  });
}

function readEnvFile(file: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const match = /^export ([A-Z_]+)=(.*)$/.exec(line.trim());
    if (match) env[match[1]!] = match[2]!;
  }
  return env;
}

export async function startPrivateServices(): Promise<PrivateServices> {
  // Under /tmp: when the tests run as root, PostgreSQL runs as the `postgres` OS user, which must
  // be able to reach the state dir.
  const dir = mkdtempSync('/tmp/caracal-fault-');
  try {
    await servicesSh('start', dir, 180_000);
  } catch (err) {
    await servicesSh('stop', dir, 60_000).catch(() => {});
    throw err;
  }
  const env = readEnvFile(path.join(dir, 'env'));
  let stopped = false;
  return {
    dir,
    databaseUrl: env.DATABASE_URL!,
    redisUrl: env.REDIS_URL!,
    kafkaBrokers: env.KAFKA_BROKERS!,
    run: (command, timeoutMs = 150_000) => servicesSh(command, dir, timeoutMs),
    stop: async (keepLogs = false) => {
      if (stopped) return;
      stopped = true;
      await servicesSh('stop', dir, 120_000);
      if (!keepLogs) rmSync(dir, { recursive: true, force: true });
    },
  };
}

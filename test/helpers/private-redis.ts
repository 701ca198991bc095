import { spawn, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { closedPort } from './ports.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A redis-server of the test's own (no persistence, loopback), so its FLUSHALL touches no other test's keys. */
export async function startPrivateRedis(): Promise<{ url: string; flushAll(): Promise<void>; stop(): Promise<void> }> {
  const port = await closedPort();
  const child: ChildProcess = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const admin = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 50 });
  admin.on('error', () => {});
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      await admin.connect().catch(() => {});
      if ((await admin.ping()) === 'PONG') break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`private redis-server on port ${port} did not start`);
    await sleep(100);
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    flushAll: async () => {
      await admin.flushall();
    },
    stop: async () => {
      admin.disconnect();
      child.kill('SIGTERM');
    },
  };
}

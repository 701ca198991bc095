import net from 'node:net';
import { startCli, type LongRunning } from './processes.js';

function tryListen(port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.on('error', () => resolve(null));
    server.listen(port, '127.0.0.1', () => {
      const { port: bound } = server.address() as net.AddressInfo;
      server.close(() => resolve(bound));
    });
  });
}

/**
 * A free loopback port for a gateway that is restarted on the same address. Taken below Linux's
 * default ephemeral range (32768–60999): while the gateway is down, the thousands of outgoing
 * connections of the load could otherwise be given that very port as their local port, and the
 * restart would fail with EADDRINUSE.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await tryListen(20_000 + Math.floor(Math.random() * 12_000));
    if (port !== null) return port;
  }
  const port = await tryListen(0);
  if (port === null) throw new Error('no free loopback port');
  return port;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A `caracal gateway start` / `caracal dev` process that can be SIGKILLed and started again with
 * the same environment (same port, same spool dir). `start` resolves once `/ready` answers 200.
 */
export class RestartableGateway {
  private current: LongRunning | undefined;
  /** Output of the processes killed so far (for a failure report). */
  private readonly previous: string[] = [];
  starts = 0;

  constructor(
    private readonly args: string[],
    private readonly env: NodeJS.ProcessEnv,
    readonly url: string,
  ) {}

  async start(timeoutMs = 90_000): Promise<void> {
    const proc = startCli(this.args, this.env);
    this.current = proc;
    this.starts++;
    const started = Date.now();
    await proc.waitFor(/caracal gateway listening on/, timeoutMs);
    for (;;) {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) throw new Error(`gateway exited before it was ready:\n${proc.output().slice(-4000)}`);
      const status = await fetch(`${this.url}/ready`, { signal: AbortSignal.timeout(2_000) }).then(
        (r) => r.status,
        () => 0,
      );
      if (status === 200) return;
      if (Date.now() - started > timeoutMs) throw new Error(`gateway not ready after ${timeoutMs} ms (last /ready ${status}):\n${proc.output().slice(-4000)}`);
      await sleep(100);
    }
  }

  /** SIGKILL: no drain, no flush, no lock release — what a crash or an OOM kill leaves. */
  async kill(): Promise<void> {
    const proc = this.current;
    if (!proc) return;
    this.current = undefined;
    if (proc.child.exitCode === null && proc.child.signalCode === null) {
      const exited = new Promise((resolve) => proc.child.once('exit', resolve));
      proc.child.kill('SIGKILL');
      await exited;
    }
    this.previous.push(proc.output());
  }

  /** Whether the current process is still running (not crashed). */
  alive(): boolean {
    return this.current !== undefined && this.current.child.exitCode === null && this.current.child.signalCode === null;
  }

  /** SIGTERM (drain), SIGKILL after the timeout; resolves with the exit code. */
  async stop(timeoutMs = 30_000): Promise<number | null> {
    const proc = this.current;
    if (!proc) return null;
    this.current = undefined;
    const code = await proc.stop(timeoutMs);
    this.previous.push(proc.output());
    return code;
  }

  /** The tail of every process's output, oldest first. */
  output(tail = 3_000): string {
    return [...this.previous, ...(this.current ? [this.current.output()] : [])].map((o, i) => `--- gateway process ${i + 1} ---\n${o.slice(-tail)}`).join('\n');
  }
}

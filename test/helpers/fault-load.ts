import http from 'node:http';

/**
 * A bounded client load for fault tests: `loops` sequential clients, each at most `maxPerLoop`
 * requests and none after `maxMs`. Every request is a new connection (no keep-alive), so a
 * restarted gateway is reached at once and a killed one shows as a connection error, not as a
 * stale pooled socket. Statuses are counted per phase (the test names the phase it is in).
 */
export interface LoadOptions {
  url: string;
  headers: Record<string, string>;
  loops: number;
  maxPerLoop: number;
  maxMs: number;
  requestTimeoutMs?: number;
}

export interface LoadFigures {
  sent: number;
  /** status code (or `error:<code>`) → count, over the whole run. */
  statuses: Record<string, number>;
  /** phase → status → count. */
  byPhase: Record<string, Record<string, number>>;
}

export interface RunningLoad {
  setPhase(name: string): void;
  figures(): LoadFigures;
  /** Asks every loop to finish its current request and resolves with the figures. */
  stop(): Promise<LoadFigures>;
}

function once(url: URL, headers: Record<string, string>, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (outcome: string) => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    const request = http.request(url, { method: 'GET', agent: false, headers: { ...headers, connection: 'close' } }, (response) => {
      const status = String(response.statusCode);
      // A body cut off by a killed gateway never 'end's; 'close' always comes.
      response.on('end', () => settle(status));
      response.on('close', () => settle(status));
      response.on('error', () => settle(status));
      response.resume();
    });
    request.setTimeout(timeoutMs, () => request.destroy(Object.assign(new Error('request timed out'), { code: 'TIMEOUT' })));
    request.on('error', (err: NodeJS.ErrnoException) => settle(`error:${err.code ?? 'unknown'}`));
    request.end();
  });
}

export function startLoad(options: LoadOptions): RunningLoad {
  const url = new URL(options.url);
  const statuses: Record<string, number> = {};
  const byPhase: Record<string, Record<string, number>> = {};
  let phase = 'start';
  let sent = 0;
  let stopping = false;
  const deadline = Date.now() + options.maxMs;
  const count = (outcome: string) => {
    statuses[outcome] = (statuses[outcome] ?? 0) + 1;
    const phaseCounts = (byPhase[phase] ??= {});
    phaseCounts[outcome] = (phaseCounts[outcome] ?? 0) + 1;
  };
  const loop = async () => {
    for (let i = 0; i < options.maxPerLoop && !stopping && Date.now() < deadline; i++) {
      sent++;
      const outcome = await once(url, options.headers, options.requestTimeoutMs ?? 10_000);
      count(outcome);
      // While the gateway is down a refused connection comes back at once: do not spin.
      if (outcome.startsWith('error:')) await new Promise((resolve) => setTimeout(resolve, 25));
    }
  };
  const loops = Promise.all(Array.from({ length: options.loops }, loop));
  const figures = (): LoadFigures => ({ sent, statuses: { ...statuses }, byPhase: structuredClone(byPhase) });
  return {
    setPhase: (name) => {
      phase = name;
    },
    figures,
    stop: async () => {
      stopping = true;
      await loops;
      return figures();
    },
  };
}

import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bodyBytes: number;
  /** Whether the request body arrived whole (false when the gateway cut or aborted it). */
  complete: boolean;
}

/**
 * An upstream that records every request it receives and answers by path:
 * - `/slow?ms=N` waits N ms before answering 200;
 * - `/status/N` answers status N (with `retry-after: 1` on 503);
 * - `/evil-headers` answers with headers that try to impersonate the gateway;
 * - anything else answers 200 with what it received.
 */
export interface RecordingUpstream {
  url: string;
  readonly requests: RecordedRequest[];
  /** Most requests that were open at the same time. */
  readonly maxInFlight: number;
  close(): Promise<void>;
}

export async function startRecordingUpstream(): Promise<RecordingUpstream> {
  const requests: RecordedRequest[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const server = http.createServer((req, res) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.on('close', () => inFlight--);
    const record: RecordedRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodyBytes: 0, complete: false };
    requests.push(record);
    req.on('data', (chunk: Buffer) => {
      record.bodyBytes += chunk.length;
    });
    req.on('error', () => {});
    req.on('end', () => {
      record.complete = true;
      const url = new URL(req.url ?? '/', 'http://upstream');
      const answer = (status: number, headers: http.OutgoingHttpHeaders, body: string) => {
        if (res.destroyed) return;
        res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
        res.end(body);
      };
      const echo = JSON.stringify({ method: req.method, path: req.url, headers: req.headers, bodyBytes: record.bodyBytes });
      if (url.pathname.endsWith('/slow')) {
        setTimeout(() => answer(200, {}, echo), Number(url.searchParams.get('ms') ?? 1000));
      } else if (/\/status\/\d{3}$/.test(url.pathname)) {
        const status = Number(url.pathname.slice(-3));
        answer(status, status === 503 ? { 'retry-after': '1' } : {}, JSON.stringify({ status }));
      } else if (url.pathname.endsWith('/evil-headers')) {
        answer(
          200,
          {
            'x-caracal-decision-id': 'forged-by-upstream',
            'x-request-id': 'forged-by-upstream',
            'x-caracal-policy': 'allow-all',
            'keep-alive': 'timeout=600',
            'proxy-authenticate': 'Basic',
            connection: 'keep-alive, x-hop-secret',
            'x-hop-secret': 'hop-by-hop by the connection header',
            'x-kept': 'yes',
          },
          echo,
        );
      } else {
        answer(200, {}, echo);
      }
    });
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${address.port}`,
    requests,
    get maxInFlight() {
      return maxInFlight;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

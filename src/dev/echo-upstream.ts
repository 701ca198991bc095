import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A tiny local upstream that answers with what it received (method, path, headers, body size).
 * `npm start` routes the `echo` upstream to it so the walkthrough works with nothing else
 * installed, and tests use it to see exactly what the gateway forwarded.
 */
export interface EchoUpstream {
  url: string;
  /** Requests received so far (tests assert that denied requests never arrive). */
  readonly requests: number;
  close(): Promise<void>;
}

export async function startEchoUpstream(port = 0, host = '127.0.0.1'): Promise<EchoUpstream> {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
    });
    req.on('end', () => {
      const body = JSON.stringify({ method: req.method, path: req.url, headers: req.headers, bodyBytes: size });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const address = server.address() as AddressInfo;
  return {
    url: `http://${host}:${address.port}`,
    get requests() {
      return requests;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

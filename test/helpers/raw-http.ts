import net from 'node:net';

/** Status line and header block of a raw HTTP response, and its body as text. */
export interface RawResponse {
  /** Every status line seen, in order (an interim `100 Continue` comes first). */
  statuses: number[];
  status: number;
  head: string;
  body: string;
  text: string;
  /** A final response arrived whole (its content-length worth of body). */
  complete: boolean;
}

export function parseRawResponse(text: string): RawResponse {
  const statuses = [...text.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));
  const finalAt = text.lastIndexOf('HTTP/1.1 ');
  const final = finalAt >= 0 ? text.slice(finalAt) : text;
  const split = final.indexOf('\r\n\r\n');
  const length = /^content-length: (\d+)$/im.exec(split >= 0 ? final.slice(0, split) : '');
  const complete = split >= 0 && (statuses.at(-1) ?? 100) >= 200 && length !== null && Buffer.byteLength(final.slice(split + 4), 'latin1') >= Number(length[1]);
  return {
    complete,
    statuses,
    status: statuses.at(-1) ?? 0,
    head: split >= 0 ? final.slice(0, split) : final,
    body: split >= 0 ? final.slice(split + 4) : '',
    text,
  };
}

/**
 * Sends bytes exactly as given (no client-side URL normalisation) and reads until the server closes
 * or `timeoutMs` passes. `then` lets a test send more after the first response bytes arrive (e.g.
 * the body after `100 Continue`).
 */
export function rawRequest(port: number, request: string | Buffer, options: { timeoutMs?: number; then?: (socket: net.Socket, soFar: string) => void } = {}): Promise<RawResponse> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    let thenCalled = false;
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(parseRawResponse(text));
    };
    const timer = setTimeout(finish, options.timeoutMs ?? 5_000);
    socket.on('data', (chunk) => {
      text += chunk.toString('latin1');
      if (options.then && !thenCalled) {
        thenCalled = true;
        options.then(socket, text);
      }
      // A whole final response ends the exchange: the server may keep reading a body it never
      // asked for, and waiting for its close would measure its timeout, not its answer.
      if (parseRawResponse(text).complete) finish();
    });
    socket.on('error', finish);
    socket.on('close', finish);
    socket.write(request);
  });
}

/** A GET with `Connection: close` and the given extra header lines. */
export function rawGet(target: string, headers: Record<string, string> = {}): string {
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `GET ${target} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n${lines}\r\n`;
}

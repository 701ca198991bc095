import http from 'node:http';
import type { CaracalConfig } from '../config/schema.js';
import { newId } from '../util/ids.js';

/**
 * The agent-facing HTTP server: Node rejects oversize headers before Fastify sees the request,
 * so the answer to a malformed or oversize request is written here, in our JSON shape.
 */
export function gatewayServerFactory(config: Readonly<CaracalConfig>) {
  return (handler: http.RequestListener) => http.createServer({ maxHeaderSize: config.gateway.maxHeaderBytes }, handler);
}

export function clientErrorHandler(err: Error, socket: import('node:net').Socket): void {
  const code = (err as NodeJS.ErrnoException).code;
  const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  const error = status === 431 ? 'CARACAL_HEADERS_TOO_LARGE' : 'CARACAL_BAD_REQUEST';
  const body = JSON.stringify({ error, message: status === 431 ? 'the request headers are too large' : 'the request is malformed', reasons: [], request_id: newId() });
  if (socket.writable) {
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  } else socket.destroy();
}

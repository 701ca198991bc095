import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { createSecureContext } from 'node:tls';
import type { CaracalConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import { newId } from '../util/ids.js';
import { isClientCertHeader } from './authenticators.js';

/**
 * The agent-facing server: plain HTTP, or HTTPS when `gateway.tls` is set, with client
 * certificates requested when `gateway.tls.clientCaFile` is set. Node rejects oversize headers
 * before Fastify sees the request, so the answer to a malformed or oversize request is written
 * here (`clientErrorHandler`), in our JSON shape, on plain and TLS sockets alike.
 *
 * mTLS: `requestCert: true`, `ca` = the client CA bundle, `rejectUnauthorized` =
 * `requireClientCert`. With `requireClientCert: false` a client without a certificate still
 * completes the handshake (and authenticates with a bearer token), and a certificate that does
 * not chain to the CA completes it too but is never `socket.authorized`, so it names no one.
 *
 * The TLS files are read and checked here, at start-up: a missing file, a file that is not PEM, or
 * a key that does not belong to the certificate is one `CARACAL_CONFIG_INVALID` naming each key.
 *
 * Every request first loses the client-certificate headers a TLS-terminating proxy would set
 * (`isClientCertHeader`): the gateway only trusts its own TLS layer, and they never reach an
 * upstream.
 */
export function gatewayServerFactory(config: Readonly<CaracalConfig>) {
  const tls = config.gateway.tls ? loadTlsMaterial(config.gateway.tls) : null;
  const { timeouts } = config.gateway;
  return (handler: http.RequestListener) => {
    const listener: http.RequestListener = (req, res) => {
      for (const name of Object.keys(req.headers)) if (isClientCertHeader(name)) delete req.headers[name];
      handler(req, res);
    };
    const server = tls
      ? https.createServer(
          {
            maxHeaderSize: config.gateway.maxHeaderBytes,
            minVersion: 'TLSv1.2',
            cert: tls.cert,
            key: tls.key,
            ...(tls.ca ? { ca: tls.ca, requestCert: true, rejectUnauthorized: tls.requireClientCert } : {}),
          },
          listener,
        )
      : http.createServer({ maxHeaderSize: config.gateway.maxHeaderBytes }, listener);
    // Slow or idle clients must not hold sockets forever: idle sockets close, headers and whole
    // requests have deadlines, and the number of open connections is capped.
    server.keepAliveTimeout = timeouts.keepAliveMs;
    server.requestTimeout = timeouts.requestMs;
    server.headersTimeout = Math.min(timeouts.headersMs, timeouts.requestMs);
    server.setTimeout(timeouts.idleSocketMs);
    server.maxConnections = config.gateway.maxConnections;
    // `Expect: 100-continue`: Node would answer "100 Continue" at once, inviting the body before
    // the request is authenticated. The request is routed as usual instead, and the gateway sends
    // 100 Continue only after an allow (a denial answers without ever asking for the body).
    server.on('checkContinue', listener);
    // Any other expectation is refused before routing, in Caracal's shape (Node's own 417 has no body).
    server.on('checkExpectation', (_req: http.IncomingMessage, res: http.ServerResponse) => {
      const body = JSON.stringify({ error: 'CARACAL_EXPECTATION_FAILED', message: 'the only Expect value supported is 100-continue', reasons: ['expectation_unsupported'], request_id: newId() });
      res.writeHead(417, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' });
      res.end(body);
    });
    return server;
  };
}

/** The same deadlines for Fastify, which applies its own defaults to the server it is given. */
export function serverTimeouts(config: Readonly<CaracalConfig>) {
  const { timeouts } = config.gateway;
  return { connectionTimeout: timeouts.idleSocketMs, keepAliveTimeout: timeouts.keepAliveMs, requestTimeout: timeouts.requestMs };
}

interface TlsMaterial {
  cert: string;
  key: string;
  ca: string | null;
  requireClientCert: boolean;
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** Reads and checks the TLS files; every problem is reported at once, each naming its key. */
export function loadTlsMaterial(tls: NonNullable<CaracalConfig['gateway']['tls']>): TlsMaterial {
  const problems: string[] = [];
  const read = (key: string, file: string): string | null => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      problems.push(`gateway.tls.${key}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      return null;
    }
  };
  const certPem = read('certFile', tls.certFile);
  const keyPem = read('keyFile', tls.keyFile);
  const caPem = tls.clientCaFile ? read('clientCaFile', tls.clientCaFile) : null;

  let cert: X509Certificate | null = null;
  if (certPem !== null) {
    const first = certPem.match(PEM_CERT)?.[0];
    try {
      if (!first) throw new Error('no PEM certificate');
      cert = new X509Certificate(first);
    } catch {
      problems.push(`gateway.tls.certFile: ${tls.certFile} is not a PEM certificate`);
    }
  }
  let key: KeyObject | null = null;
  if (keyPem !== null) {
    try {
      if (!keyPem.includes('-----BEGIN')) throw new Error('not PEM');
      key = createPrivateKey(keyPem);
    } catch {
      problems.push(`gateway.tls.keyFile: ${tls.keyFile} is not a PEM private key (or it is encrypted)`);
    }
  }
  if (cert && key && !cert.checkPrivateKey(key)) problems.push(`gateway.tls.keyFile: ${tls.keyFile} is not the private key of gateway.tls.certFile ${tls.certFile}`);
  if (caPem !== null) {
    const blocks = caPem.match(PEM_CERT) ?? [];
    try {
      if (blocks.length === 0) throw new Error('no PEM certificate');
      for (const block of blocks) new X509Certificate(block);
    } catch {
      problems.push(`gateway.tls.clientCaFile: ${tls.clientCaFile} is not a PEM certificate bundle`);
    }
  }
  if (tls.requireClientCert && !tls.clientCaFile) problems.push('gateway.tls.requireClientCert: needs gateway.tls.clientCaFile');

  if (problems.length === 0) {
    // Last word to OpenSSL itself (e.g. a key type or size it refuses).
    try {
      createSecureContext({ cert: certPem!, key: keyPem!, ...(caPem ? { ca: caPem } : {}) });
    } catch (err) {
      problems.push(`gateway.tls.certFile: OpenSSL refuses the certificate and key (${(err as Error).message})`);
    }
  }
  if (problems.length > 0) throw new CaracalError('CARACAL_CONFIG_INVALID', `invalid configuration: ${problems.join('; ')}`, { reasons: problems });
  return { cert: certPem!, key: keyPem!, ca: caPem, requireClientCert: tls.requireClientCert };
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

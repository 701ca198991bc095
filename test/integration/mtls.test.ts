import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { CaracalError } from '../../src/errors/catalog.js';
import { gatewayServerFactory } from '../../src/gateway/listener.js';
import { waitUntil } from '../helpers/fixtures.js';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';
import { randomName } from '../helpers/services.js';

const SPIFFE = 'spiffe://caracal.test/agent/';

/** Certificates made with the real openssl CLI, in a temp dir. */
class Pki {
  readonly dir = mkdtempSync(path.join(tmpdir(), 'caracal-mtls-'));

  private openssl(args: string[]): void {
    execFileSync('openssl', args, { cwd: this.dir, stdio: 'pipe' });
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  read(name: string): string {
    return readFileSync(this.file(name), 'utf8');
  }

  /** A self-signed certificate (a CA, or the gateway's server certificate). */
  selfSigned(name: string, subject: string, extra: string[] = []): void {
    this.openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', subject, ...extra]);
  }

  /** A client certificate signed by `ca`, with the given subjectAltName; `days` -1 makes it expired. */
  client(name: string, ca: string, san: string, days = 1): { cert: string; key: string } {
    this.openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    writeFileSync(this.file(`${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n`);
    this.openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', String(randomInt(1, 2 ** 47)), '-out', `${name}.crt`, '-days', String(days), '-extfile', `${name}.ext`]);
    return { cert: this.read(`${name}.crt`), key: this.read(`${name}.key`) };
  }
}

interface Reply {
  status: number;
  body: string;
}

/** One HTTPS request on a fresh connection (no session reuse between identities). */
function httpsGet(port: number, ca: string, options: { cert?: { cert: string; key: string }; headers?: Record<string, string>; path?: string; method?: string } = {}): Promise<Reply> {
  return new Promise<Reply>((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        servername: 'localhost',
        path: options.path ?? '/proxy/echo/v1/things',
        method: options.method ?? 'GET',
        ca,
        agent: false,
        headers: options.headers ?? {},
        ...(options.cert ?? {}),
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (body += chunk));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const CERT_HEADERS = (name: string, pem: string) => ({
  'x-forwarded-client-cert': `By=spiffe://caracal.test/gateway;URI=${SPIFFE}${name}`,
  'x-ssl-client-cert': encodeURIComponent(pem),
  'x-client-cert': `:${Buffer.from(pem).toString('base64')}:`,
  'ssl-client-cert': encodeURIComponent(pem),
  'client-cert': `:${Buffer.from(pem).toString('base64')}:`,
  'x-ssl-client-verify': 'SUCCESS',
  'x-ssl-client-s-dn': `CN=${name}`,
});

describe('HTTPS listener with mTLS (openssl-made PKI, loopback)', () => {
  const pki = new Pki();
  let h: Harness;
  let port: number;
  let serverCa: string;
  const certName = randomName('mtls_agent');
  const tokenName = randomName('bearer_agent');
  let certAgent: string;
  let tokenAgent: string;
  let token: string;
  let good: { cert: string; key: string };
  let evil: { cert: string; key: string };
  let expired: { cert: string; key: string };
  let ghost: { cert: string; key: string };
  let dnsOnly: { cert: string; key: string };

  const tlsConfig = (extra: Record<string, unknown> = {}) => ({
    certFile: pki.file('server.crt'),
    keyFile: pki.file('server.key'),
    clientCaFile: pki.file('ca.crt'),
    requireClientCert: false,
    principalSan: 'uri',
    mapping: { by: 'name', stripPrefix: SPIFFE },
    ...extra,
  });

  beforeAll(async () => {
    pki.selfSigned('ca', '/CN=Caracal Test Client CA');
    pki.selfSigned('evil-ca', '/CN=Caracal Test Client CA'); // same name, different key
    pki.selfSigned('server', '/CN=localhost', ['-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
    serverCa = pki.read('server.crt');
    good = pki.client('good', 'ca', `URI:${SPIFFE}${certName}`);
    evil = pki.client('evil', 'evil-ca', `URI:${SPIFFE}${certName}`);
    expired = pki.client('expired', 'ca', `URI:${SPIFFE}${certName}`, -1);
    ghost = pki.client('ghost', 'ca', `URI:${SPIFFE}nobody-has-this-name`);
    dnsOnly = pki.client('dns-only', 'ca', `DNS:${certName}.caracal.test`);

    // Identity is under test here, not allowlists: the policy alone decides.
    h = await createHarness({ configOverrides: { allowlists: { whenEmpty: 'allow' }, gateway: { tls: tlsConfig() } } });
    certAgent = await h.registerAgent(certName);
    await h.grant(certAgent, ['api:external/echo'], ['read']);
    tokenAgent = await h.registerAgent(tokenName);
    await h.grant(tokenAgent, ['api:external/echo'], ['read', 'write']);
    token = await h.token(tokenAgent);
    await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
    port = (h.assembled.gateway.app.server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    await h?.close();
    rmSync(pki.dir, { recursive: true, force: true });
  });

  it('takes the principal from the client certificate URI SAN, and its policy decides', async () => {
    const before = h.upstream.requests;
    const allowed = await httpsGet(port, serverCa, { cert: good });
    expect(allowed.status, allowed.body).toBe(200);
    expect(JSON.parse(allowed.body).headers.authorization).toBeUndefined();
    // The certificate's principal may only read: a write is denied by its policy.
    const denied = await httpsGet(port, serverCa, { cert: good, method: 'POST' });
    expect(denied.status).toBe(403);
    expect(JSON.parse(denied.body).reasons).toEqual(['scope_action']);
    // A validated certificate comes first: a bearer token for a principal that may write changes nothing.
    expect((await httpsGet(port, serverCa, { cert: good, method: 'POST', headers: { authorization: `Bearer ${token}` } })).status).toBe(403);
    expect(h.upstream.requests).toBe(before + 1);
  });

  it('without a client certificate, a bearer token still works (requireClientCert: false); neither → 401', async () => {
    expect((await httpsGet(port, serverCa, { headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
    const none = await httpsGet(port, serverCa);
    expect(none.status).toBe(401);
    expect(JSON.parse(none.body).error).toBe('CARACAL_UNAUTHENTICATED');
  });

  it('never authenticates a certificate from another CA, an expired one, or one that names no principal', async () => {
    const before = h.upstream.requests;
    for (const [name, cert] of [
      ['evil CA', evil],
      ['expired', expired],
      ['unknown principal', ghost],
      ['no URI SAN', dnsOnly],
    ] as const) {
      const reply = await httpsGet(port, serverCa, { cert });
      expect(reply.status, `${name}: ${reply.body}`).toBe(401);
    }
    expect(h.upstream.requests).toBe(before);
    // An unvalidated certificate is ignored, not fatal: the bearer token decides.
    expect((await httpsGet(port, serverCa, { cert: evil, headers: { authorization: `Bearer ${token}` } })).status).toBe(200);
  });

  it('ignores client-certificate headers for authentication and never forwards them', async () => {
    const headers = CERT_HEADERS(certName, good.cert);
    const before = h.upstream.requests;
    const forged = await httpsGet(port, serverCa, { headers });
    expect(forged.status).toBe(401);
    expect(h.upstream.requests).toBe(before);
    // With the bearer token of another principal: that principal, and the headers stay here.
    const reply = await httpsGet(port, serverCa, { headers: { ...headers, authorization: `Bearer ${token}` }, method: 'POST' });
    expect(reply.status).toBe(200); // the token's principal may write; the certificate's may not
    const forwarded = JSON.parse(reply.body).headers as Record<string, string>;
    for (const name of Object.keys(headers)) expect(forwarded[name], name).toBeUndefined();
  });

  it('answers oversize headers on a TLS socket with 431, and survives plain HTTP on the TLS port', async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ca: serverCa }, () => {
        socket.write(`GET /proxy/echo/x HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`);
      });
      let data = '';
      socket.on('data', (chunk: Buffer) => (data += chunk.toString()));
      socket.on('end', () => resolve(data));
      socket.on('error', (err) => (data ? resolve(data) : reject(err)));
    });
    expect(reply).toMatch(/^HTTP\/1\.1 431/);
    expect(reply).toContain('CARACAL_HEADERS_TOO_LARGE');

    await new Promise<void>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => socket.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n'));
      socket.on('data', () => {});
      socket.on('close', () => resolve());
      socket.on('error', () => {});
    });
    expect((await httpsGet(port, serverCa, { path: '/health' })).status).toBe(200);
  });

  it('with requireClientCert: true, refuses the handshake without a certificate the CA signed', async () => {
    const config = loadConfig({ env: {}, cwd: pki.dir, overrides: { home: pki.dir, gateway: { tls: tlsConfig({ requireClientCert: true }) } } });
    let served = 0;
    const server = gatewayServerFactory(config)((_req, res) => {
      served++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    }) as http.Server;
    const refused: string[] = [];
    server.on('tlsClientError', (err: NodeJS.ErrnoException) => refused.push(err.code ?? err.message));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const strictPort = (server.address() as AddressInfo).port;
    try {
      expect((await httpsGet(strictPort, serverCa, { cert: good, path: '/' })).status).toBe(200);
      for (const [name, cert] of [
        ['no certificate', undefined],
        ['evil CA', evil],
        ['expired', expired],
      ] as const) {
        await expect(httpsGet(strictPort, serverCa, { ...(cert ? { cert } : {}), path: '/' }), name).rejects.toThrow();
      }
      // Refused by the server's TLS layer (no certificate: an alert; a bad one: the socket is
      // destroyed after the handshake), and no request reached the handler.
      await waitUntil(() => refused.includes('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE'), 'the refused handshake without a certificate', 5_000);
      expect(served).toBe(1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('reports bad TLS files at start-up as one CARACAL_CONFIG_INVALID naming each key', () => {
    writeFileSync(pki.file('garbage.pem'), 'this is not PEM\n');
    const build = (extra: Record<string, unknown>) => () =>
      gatewayServerFactory(loadConfig({ env: {}, cwd: pki.dir, overrides: { home: pki.dir, gateway: { tls: tlsConfig(extra) } } }));
    const failure = (fn: () => unknown): CaracalError => {
      try {
        fn();
      } catch (err) {
        return err as CaracalError;
      }
      throw new Error('expected a configuration error');
    };

    const several = failure(build({ certFile: pki.file('missing.crt'), keyFile: pki.file('garbage.pem'), clientCaFile: pki.file('garbage.pem') }));
    expect(several).toBeInstanceOf(CaracalError);
    expect(several.code).toBe('CARACAL_CONFIG_INVALID');
    expect(several.message).toContain('gateway.tls.certFile: cannot read');
    expect(several.message).toContain('ENOENT');
    expect(several.message).toContain('gateway.tls.keyFile:');
    expect(several.message).toContain('gateway.tls.clientCaFile:');
    expect(several.reasons).toHaveLength(3);

    const mismatch = failure(build({ keyFile: pki.file('evil-ca.key') }));
    expect(mismatch.code).toBe('CARACAL_CONFIG_INVALID');
    expect(mismatch.message).toMatch(/gateway\.tls\.keyFile: .* is not the private key of gateway\.tls\.certFile/);

    const notPem = failure(build({ certFile: pki.file('garbage.pem') }));
    expect(notPem.message).toContain('gateway.tls.certFile:');
    expect(notPem.message).toContain('is not a PEM certificate');
  });
});

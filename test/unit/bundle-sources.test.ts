/**
 * The bundle sources on their own (src/policy/bundle-sources.ts) — the HTTP one against a real server on loopback:
 * ETag / If-None-Match, the bearer credential, what it refuses (status, size, time, redirects) — and the
 * If-None-Match matching of the bundle server (src/gateway/bundle-server.ts).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import { matchesEtag } from '../../src/gateway/bundle-server.js';
import { HttpBundleSource, shadowUrlOf } from '../../src/policy/bundle-sources.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

describe('HttpBundleSource', () => {
  let server: Server;
  let base: string;
  let handler: Handler;
  let seen: { url: string; authorization: string | undefined; ifNoneMatch: string | undefined }[];

  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push({ url: req.url ?? '', authorization: req.headers.authorization, ifNoneMatch: req.headers['if-none-match'] });
      handler(req, res);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  beforeEach(() => {
    seen = [];
  });

  /** Serves `active` (and `shadow`, 404 when null) with their ETags and 304 on a matching If-None-Match. */
  function bundles(slots: { active: Buffer | null; shadow: Buffer | null }): Handler {
    return (req, res) => {
      const name = req.url?.endsWith('/shadow') ? 'shadow' : 'active';
      const bytes = slots[name];
      if (!bytes) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'CARACAL_NOT_FOUND', message: `no ${name}` }));
        return;
      }
      const etag = `"${name}-${bytes.length}-${bytes[0]}"`;
      if (req.headers['if-none-match'] === etag) res.writeHead(304, { etag }).end();
      else res.writeHead(200, { etag, 'content-type': 'application/gzip' }).end(bytes);
    };
  }

  it('downloads once, then polls with If-None-Match and the bearer token; 304 is unchanged; 404 on the shadow is none', async () => {
    const slots = { active: Buffer.from('first-active'), shadow: null as Buffer | null };
    handler = bundles(slots);
    const source = new HttpBundleSource({ url: `${base}/admin/v1/bundles/active`, token: 'secret-token' });
    const first = await source.poll();
    expect(first.active).toMatchObject({ kind: 'bytes', bytes: slots.active });
    expect(first.shadow).toEqual({ kind: 'none' });
    expect((await source.poll()).active).toEqual({ kind: 'unchanged' });
    expect(seen.map((s) => s.url)).toEqual(['/admin/v1/bundles/active', '/admin/v1/bundles/shadow', '/admin/v1/bundles/active', '/admin/v1/bundles/shadow']);
    expect(seen.every((s) => s.authorization === 'Bearer secret-token')).toBe(true);
    expect(seen[0]!.ifNoneMatch).toBeUndefined();
    expect(seen[2]!.ifNoneMatch).toBe(`"active-${slots.active.length}-${slots.active[0]}"`);

    slots.shadow = Buffer.from('a shadow');
    slots.active = Buffer.from('second active bundle');
    const changed = await source.poll();
    expect(changed.active).toMatchObject({ kind: 'bytes', bytes: slots.active });
    expect(changed.shadow).toMatchObject({ kind: 'bytes', bytes: slots.shadow });
    expect(await source.poll()).toEqual({ active: { kind: 'unchanged' }, shadow: { kind: 'unchanged' } });
    slots.shadow = null;
    expect((await source.poll()).shadow).toEqual({ kind: 'none' });
  });

  it('has no shadow when the URL does not end in /active (and never asks for one)', async () => {
    handler = bundles({ active: Buffer.from('x'), shadow: Buffer.from('y') });
    const source = new HttpBundleSource({ url: `${base}/bundles/authz.tar.gz` });
    expect((await source.poll()).shadow).toEqual({ kind: 'none' });
    expect(seen.map((s) => s.url)).toEqual(['/bundles/authz.tar.gz']);
    expect(seen[0]!.authorization).toBeUndefined();
    expect(shadowUrlOf(new URL('http://h/admin/v1/bundles/active'))?.href).toBe('http://h/admin/v1/bundles/shadow');
    expect(shadowUrlOf(new URL('http://h/x/active?t=1'))?.href).toBe('http://h/x/shadow?t=1');
    expect(shadowUrlOf(new URL('http://h/active/x'))).toBeNull();
    expect(shadowUrlOf(new URL('http://h/inactive'))).toBeNull();
  });

  it('an error answer (not 200/304) is an error with the status and the server message, and the next poll downloads whole', async () => {
    handler = bundles({ active: Buffer.from('ok'), shadow: null });
    const source = new HttpBundleSource({ url: `${base}/b/active?token=do-not-show` });
    expect((await source.poll()).active.kind).toBe('bytes');
    handler = (_req, res) => res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ message: 'database\nis down' }));
    const failed = (await source.poll()).active;
    expect(failed).toMatchObject({ kind: 'error', message: expect.stringMatching(/HTTP 503 \(database is down\)/) });
    expect(JSON.stringify(failed)).not.toContain('do-not-show');
    handler = bundles({ active: Buffer.from('ok'), shadow: null });
    seen = [];
    expect((await source.poll()).active.kind).toBe('bytes');
    expect(seen[0]!.ifNoneMatch).toBeUndefined();

    // 404 on the active URL is an error, not "none"; a 304 to a request without an ETag too.
    handler = (_req, res) => res.writeHead(404).end('x'.repeat(100_000));
    expect((await new HttpBundleSource({ url: `${base}/b/active` }).poll()).active).toMatchObject({ kind: 'error', message: expect.stringMatching(/HTTP 404/) });
    handler = (_req, res) => res.writeHead(304).end();
    expect((await new HttpBundleSource({ url: `${base}/b/active` }).poll()).active).toMatchObject({ kind: 'error', message: expect.stringMatching(/HTTP 304/) });
  });

  it('refuses a bundle over the size cap (declared or streamed), a slow server, and does not follow redirects', async () => {
    handler = (_req, res) => res.writeHead(200, { 'content-length': '2000' }).end(Buffer.alloc(2000));
    expect((await new HttpBundleSource({ url: `${base}/b/active`, maxBytes: 1000 }).poll()).active).toMatchObject({ kind: 'error', message: expect.stringMatching(/2000 bytes, more than the 1000/) });

    handler = (_req, res) => {
      res.writeHead(200, { 'transfer-encoding': 'chunked' });
      for (let i = 0; i < 10; i++) res.write(Buffer.alloc(500));
      res.end();
    };
    expect((await new HttpBundleSource({ url: `${base}/b/active`, maxBytes: 1000 }).poll()).active).toMatchObject({ kind: 'error', message: expect.stringMatching(/more than the 1000 bytes/) });

    handler = () => {}; // never answers
    const started = Date.now();
    const slow = (await new HttpBundleSource({ url: `${base}/b/active`, timeoutMs: 200 }).poll()).active;
    expect(slow).toMatchObject({ kind: 'error', message: expect.stringMatching(/no complete answer within 200 ms/) });
    expect(Date.now() - started).toBeLessThan(5_000);

    handler = (req, res) => {
      if (req.url === '/elsewhere') res.writeHead(200).end('stolen');
      else res.writeHead(302, { location: '/elsewhere' }).end();
    };
    seen = [];
    expect((await new HttpBundleSource({ url: `${base}/b/active`, token: 't' }).poll()).active).toMatchObject({ kind: 'error', message: expect.stringMatching(/HTTP 302/) });
    expect(seen.map((s) => s.url)).not.toContain('/elsewhere');
  });

  it('an unreachable server is an error; a non-http URL is refused at construction', async () => {
    server.closeIdleConnections();
    const dead = new HttpBundleSource({ url: 'http://127.0.0.1:1/active', timeoutMs: 2_000 });
    expect((await dead.poll()).active).toMatchObject({ kind: 'error', message: expect.stringMatching(/^GET http:\/\/127\.0\.0\.1:1\/active: /) });
    expect(() => new HttpBundleSource({ url: 'file:///etc/passwd' })).toThrow(/http/);
  });
});

describe('matchesEtag (If-None-Match)', () => {
  const sha = 'ab'.repeat(32);
  it.each([
    [`"${sha}"`, true],
    [`W/"${sha}"`, true],
    [`"x", "${sha}"`, true],
    [`"x",W/"${sha}"`, true],
    ['*', true],
    [[`"x"`, `"${sha}"`], true],
    [undefined, false],
    ['', false],
    [sha, false],
    [`"${sha.toUpperCase()}"`, false],
    [`"${sha}`, false],
    ['W/', false],
    [`w/"${sha}"`, false],
    [`"x", ${'"y", '.repeat(3000)}"${sha}"`, false],
  ] as const)('%s → %s', (header, expected) => {
    expect(matchesEtag(header as string | string[] | undefined, sha)).toBe(expected);
  });
});

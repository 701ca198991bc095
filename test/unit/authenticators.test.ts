import { describe, expect, it } from 'vitest';
import { isClientCertHeader, parseSubjectAltName } from '../../src/gateway/authenticators.js';

describe('parseSubjectAltName (Node subjectaltname strings)', () => {
  it('splits entries and unquotes JSON-quoted values, as Node writes them', () => {
    // Verbatim from Node 20 for a certificate made with openssl (the comma is escaped as \u002c).
    const text = 'URI:spiffe://a/b, DNS:a.example, email:x@y.z, URI:"http://h/p?a=1\\u002cb=2", URI:urn:x:q';
    expect(parseSubjectAltName(text)).toEqual([
      { type: 'URI', value: 'spiffe://a/b' },
      { type: 'DNS', value: 'a.example' },
      { type: 'email', value: 'x@y.z' },
      { type: 'URI', value: 'http://h/p?a=1,b=2' },
      { type: 'URI', value: 'urn:x:q' },
    ]);
  });

  it('a quoted comma cannot smuggle in a second SAN', () => {
    expect(parseSubjectAltName('URI:"spiffe://a/x\\u002c URI:spiffe://a/admin"')).toEqual([{ type: 'URI', value: 'spiffe://a/x, URI:spiffe://a/admin' }]);
  });

  it('yields nothing for what it cannot parse', () => {
    for (const text of [undefined, '', 'no colon here', 'URI:"unterminated', 'URI:"bad \\x escape"', 'URI:"a"junk']) {
      expect(parseSubjectAltName(text), String(text)).toEqual([]);
    }
  });
});

describe('isClientCertHeader', () => {
  it('matches the headers proxies use to pass client certificates along', () => {
    for (const name of [
      'x-forwarded-client-cert',
      'X-SSL-Client-Cert',
      'x-client-cert',
      'ssl-client-cert',
      'client-cert',
      'client-cert-chain',
      'x-arr-clientcert',
      'x-amzn-mtls-clientcert',
      'x-ssl-client-verify',
      'x-ssl-client-s-dn',
      'x-client-verify',
      'x-client-dn',
    ]) {
      expect(isClientCertHeader(name), name).toBe(true);
    }
  });

  it('leaves ordinary headers alone', () => {
    for (const name of ['authorization', 'content-type', 'x-request-id', 'x-client-id', 'x-client-version', 'user-agent', 'certificate-transparency']) {
      expect(isClientCertHeader(name), name).toBe(false);
    }
  });
});

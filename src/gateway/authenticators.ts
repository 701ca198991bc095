import type { TLSSocket } from 'node:tls';
import type { FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { ExternalTokenVerifier, type ExternalVerifiedToken } from '../authority/tokens/external-tokens.js';
import { PrincipalLookup } from '../authority/views/principal-lookup.js';
import { TokenRejected, type VerifiedTokenCache } from '../authority/tokens/tokens.js';
import type { CaracalConfig, GatewayTlsSchema } from '../config/schema.js';
import type { Logger } from '../logging/logger.js';
import type { GatewayMetrics } from '../metrics/metrics.js';
import type { Queryable } from '../store/db.js';
import { bearerToken, HIT, MISS, type Authenticator, type AuthResult } from './authenticate.js';

type TlsConfig = z.infer<typeof GatewayTlsSchema>;

/**
 * Headers that TLS-terminating proxies use to pass a client certificate or its verdict along
 * (Envoy's x-forwarded-client-cert, nginx/HAProxy ssl-client-*, RFC 9440 client-cert, Azure
 * x-arr-clientcert, AWS ALB x-amzn-mtls-*). Caracal authenticates mTLS only from its own TLS
 * layer, so these are never trusted, and the listener drops them before the request is routed
 * so they never reach an upstream either.
 */
const CLIENT_CERT_HEADER = /(^|-)(client-?cert|clientcert)|^x-amzn-mtls-|(^|-)ssl-client-|^x-client-(verify|dn|s-dn|i-dn|subject|issuer|san)$/;

export function isClientCertHeader(name: string): boolean {
  return CLIENT_CERT_HEADER.test(name.toLowerCase());
}

/**
 * Parses Node's `subjectaltname` string (`URI:spiffe://x, DNS:a.example, email:"a,b@x"`): entries
 * joined by ", ", values with separator-like characters JSON-quoted. Anything it cannot parse
 * yields no entries at all, so a crafted SAN can never be read as a different one.
 */
export function parseSubjectAltName(text: string | undefined): { type: string; value: string }[] {
  if (!text) return [];
  const out: { type: string; value: string }[] = [];
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(':', i);
    if (colon < 0) return [];
    const type = text.slice(i, colon);
    let j = colon + 1;
    let value: string;
    if (text[j] === '"') {
      let k = j + 1;
      while (k < text.length && text[k] !== '"') k += text[k] === '\\' ? 2 : 1;
      if (k >= text.length) return [];
      try {
        value = JSON.parse(text.slice(j, k + 1)) as string;
      } catch {
        return [];
      }
      j = k + 1;
    } else {
      const end = text.indexOf(', ', j);
      j = end < 0 ? text.length : end;
      value = text.slice(colon + 1, j);
    }
    out.push({ type, value });
    if (j < text.length) {
      if (!text.startsWith(', ', j)) return [];
      j += 2;
    }
    i = j;
  }
  return out;
}

function externalResult(verified: ExternalVerifiedToken): AuthResult {
  return { principalId: verified.principalId, tokenId: verified.tokenId, method: 'external-token', token: verified, issuer: verified.issuer };
}

const SAN_TYPE = { uri: 'URI', dns: 'DNS', email: 'email' } as const;

export interface ChainAuthenticatorDeps {
  /** Caracal-issued bearer tokens (the existing BearerAuthenticator). */
  caracal: Authenticator;
  /** External IdP tokens; null when no `auth.externalIssuers` are configured. */
  external: ExternalTokenVerifier | null;
  /** mTLS principal mapping; null unless `gateway.tls.clientCaFile` is set. */
  mtls: Pick<TlsConfig, 'principalSan' | 'mapping'> | null;
  lookup: PrincipalLookup;
  cache: VerifiedTokenCache;
  metrics: GatewayMetrics;
}

/**
 * Authentication in a fixed order, first match wins:
 *
 * 1. **mTLS** — the connection presented a client certificate that Caracal's own TLS layer
 *    validated against `gateway.tls.clientCaFile` (`socket.authorized === true`): the principal
 *    comes from the configured SAN. A validated certificate that maps to no principal is refused
 *    (401), not silently downgraded to a bearer token. A certificate that did not validate (other
 *    CA, expired) is ignored, and the request falls through to the bearer token.
 * 2. **External bearer token** — the token's (unverified) `iss` is one of `auth.externalIssuers`:
 *    verified by `ExternalTokenVerifier` and cached in the shared verified-token cache until `exp`.
 * 3. **Caracal bearer token** — everything else goes to the existing `BearerAuthenticator`, which
 *    refuses what it did not issue.
 *
 * Client-supplied certificate headers play no part (see `isClientCertHeader`).
 */
export class ChainAuthenticator implements Authenticator {
  constructor(private readonly deps: ChainAuthenticatorDeps) {}

  static fromConfig(options: {
    config: Readonly<CaracalConfig>;
    db: Queryable;
    logger: Logger;
    caracal: Authenticator;
    cache: VerifiedTokenCache;
    metrics: GatewayMetrics;
  }): ChainAuthenticator {
    const { config } = options;
    const lookup = new PrincipalLookup(options.db);
    const external = config.auth.externalIssuers.length > 0 ? ExternalTokenVerifier.fromConfig(config, { lookup, logger: options.logger.child({ component: 'external-tokens' }) }) : null;
    const tls = config.gateway.tls;
    return new ChainAuthenticator({
      caracal: options.caracal,
      external,
      mtls: tls?.clientCaFile ? { principalSan: tls.principalSan, mapping: tls.mapping } : null,
      lookup,
      cache: options.cache,
      metrics: options.metrics,
    });
  }

  authenticate(request: FastifyRequest): AuthResult | Promise<AuthResult> {
    const { mtls, external } = this.deps;
    if (mtls) {
      const socket = request.raw.socket as Partial<TLSSocket> | undefined;
      if (socket?.authorized === true && typeof socket.getPeerCertificate === 'function') return this.fromCertificate(socket as TLSSocket, mtls);
    }
    if (external) {
      const token = bearerToken(request);
      const issuer = token ? external.issuerOf(token) : undefined;
      if (token && issuer !== undefined) return this.fromExternalToken(token, external);
    }
    return this.deps.caracal.authenticate(request);
  }

  private fromExternalToken(token: string, external: ExternalTokenVerifier): AuthResult | Promise<AuthResult> {
    const { cache, metrics } = this.deps;
    const cached = cache.get(token, Math.floor(Date.now() / 1000)) as ExternalVerifiedToken | undefined;
    if (cached && typeof cached.issuer === 'string') {
      metrics.tokenCache.inc(HIT);
      return externalResult(cached);
    }
    metrics.tokenCache.inc(MISS);
    return external.verify(token).then((verified) => {
      cache.set(token, verified);
      return externalResult(verified);
    });
  }

  private async fromCertificate(socket: TLSSocket, mtls: NonNullable<ChainAuthenticatorDeps['mtls']>): Promise<AuthResult> {
    const cert = socket.getPeerCertificate(false);
    // Validated at the handshake; a long-lived keep-alive connection can outlive the certificate.
    const notAfter = Date.parse(cert.valid_to);
    if (!Number.isFinite(notAfter) || notAfter <= Date.now()) throw new TokenRejected('expired', 'the client certificate has expired');
    const kind = SAN_TYPE[mtls.principalSan];
    const { stripPrefix, by } = mtls.mapping;
    const candidates = parseSubjectAltName(cert.subjectaltname).filter((san) => san.type === kind && san.value.startsWith(stripPrefix));
    if (candidates.length !== 1) {
      throw new TokenRejected('bad_claims', candidates.length === 0 ? `the client certificate has no ${kind} SAN naming a principal` : `the client certificate has more than one ${kind} SAN naming a principal`);
    }
    const value = candidates[0]!.value.slice(stripPrefix.length);
    const principalId = value.length > 0 ? await this.deps.lookup.resolve(by, value) : null;
    if (!principalId) throw new TokenRejected('bad_claims', 'the client certificate names no known principal');
    return { principalId, tokenId: null, method: 'mtls', token: null };
  }
}

import type { FastifyRequest } from 'fastify';
import { TokenRejected, type TokenVerifier, type VerifiedToken, type VerifiedTokenCache } from '../authority/tokens/tokens.js';
import type { GatewayMetrics } from '../metrics/metrics.js';
import { AmbiguousCredential, agentCredential } from './dialects.js';

/** Who is calling, and how we know. */
export interface AuthResult {
  principalId: string;
  /** The credential's id (`jti`, or a digest of an external token without one); null for mTLS. */
  tokenId: string | null;
  method: 'caracal-token' | 'external-token' | 'mtls';
  /** The verified token's claims as the cache keeps them (null for mTLS). */
  token: VerifiedToken | null;
  /** The external token's issuer (`external-token` only). */
  issuer?: string;
}

/**
 * Turns a request into a principal or throws `TokenRejected` (→ 401), synchronously or through a
 * rejected promise. Implementations must never trust a header the client could set for anything but
 * the bearer credential itself. A credential already verified and cached is answered without a
 * promise: on the hot path every await is a trip through the microtask queue.
 */
export interface Authenticator {
  authenticate(request: FastifyRequest): AuthResult | Promise<AuthResult>;
}

/**
 * The agent's bearer credential, from whichever header its SDK put it in (see `agentCredential`);
 * different values in two of them are refused as malformed.
 */
export function bearerToken(request: FastifyRequest): string | null {
  try {
    return agentCredential(request.headers);
  } catch (err) {
    if (err instanceof AmbiguousCredential) throw new TokenRejected('malformed', err.message);
    throw err;
  }
}

/** Caracal-issued ES256 bearer tokens, verified once and cached until they expire. */
export class BearerAuthenticator implements Authenticator {
  constructor(
    private readonly verifier: TokenVerifier,
    private readonly cache: VerifiedTokenCache,
    private readonly metrics: GatewayMetrics,
  ) {}

  authenticate(request: FastifyRequest): AuthResult | Promise<AuthResult> {
    const token = bearerToken(request);
    if (!token) throw new TokenRejected('missing', 'a bearer token is required');
    const verified = this.verifyCached(token);
    return verified instanceof Promise ? verified.then(asAuthResult) : asAuthResult(verified);
  }

  /** A Caracal token (access token or mandate), through the verified-token cache. */
  async verifyToken(token: string): Promise<VerifiedToken> {
    return this.verifyCached(token);
  }

  /** `verifyToken`, synchronous (a return or a throw) when the token is in the cache. */
  verifyCached(token: string): VerifiedToken | Promise<VerifiedToken> {
    const now = Math.floor(Date.now() / 1000);
    const verified = this.cache.get(token, now);
    if (verified) {
      // A cached verification lasts only while its signing key is trusted (key rotation).
      if (!this.verifier.keyTrusted(verified.kid, now)) throw new TokenRejected('bad_signature', 'the token was signed by a key that is no longer trusted');
      this.metrics.tokenCache.inc(HIT);
      return verified;
    }
    this.metrics.tokenCache.inc(MISS);
    return this.verifier.verify(token).then((fresh) => {
      this.cache.set(token, fresh);
      return fresh;
    });
  }
}

/** Label objects made once: prom-client reads them, never keeps or changes them. */
export const HIT = { result: 'hit' } as const;
export const MISS = { result: 'miss' } as const;

function asAuthResult(verified: VerifiedToken): AuthResult {
  return { principalId: verified.principalId, tokenId: verified.tokenId, method: 'caracal-token', token: verified };
}

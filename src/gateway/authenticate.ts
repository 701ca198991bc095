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
 * Turns a request into a principal or throws `TokenRejected` (→ 401). Implementations must never
 * trust a header the client could set for anything but the bearer credential itself.
 */
export interface Authenticator {
  authenticate(request: FastifyRequest): Promise<AuthResult>;
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

  async authenticate(request: FastifyRequest): Promise<AuthResult> {
    const token = bearerToken(request);
    if (!token) throw new TokenRejected('missing', 'a bearer token is required');
    const verified = await this.verifyToken(token);
    return { principalId: verified.principalId, tokenId: verified.tokenId, method: 'caracal-token', token: verified };
  }

  /** A Caracal token (access token or mandate), through the verified-token cache. */
  async verifyToken(token: string): Promise<VerifiedToken> {
    const now = Math.floor(Date.now() / 1000);
    let verified = this.cache.get(token, now);
    // A cached verification lasts only while its signing key is trusted (key rotation).
    if (verified && !this.verifier.keyTrusted(verified.kid, now)) {
      throw new TokenRejected('bad_signature', 'the token was signed by a key that is no longer trusted');
    }
    if (verified) {
      this.metrics.tokenCache.inc({ result: 'hit' });
    } else {
      this.metrics.tokenCache.inc({ result: 'miss' });
      verified = await this.verifier.verify(token);
      this.cache.set(token, verified);
    }
    return verified;
  }
}

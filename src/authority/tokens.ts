import { decodeProtectedHeader, errors as joseErrors, jwtVerify, SignJWT, type JWTPayload } from 'jose';
import { CaracalError } from '../errors/catalog.js';
import { newId } from '../util/ids.js';
import type { SigningKey } from './keys.js';

export interface TokenSettings {
  issuer: string;
  audience: string;
  clockSkewSeconds: number;
}

export interface IssuedToken {
  token: string;
  tokenId: string;
  principalId: string;
  issuedAt: string;
  expiresAt: string;
}

/** Mints a short-lived ES256 access token for a principal (mandates, with scope, come later). */
export async function issueAccessToken(
  key: SigningKey,
  settings: TokenSettings,
  principalId: string,
  ttlSeconds: number,
  now: Date = new Date(),
): Promise<IssuedToken> {
  const iat = Math.floor(now.getTime() / 1000);
  const tokenId = newId();
  const token = await new SignJWT({})
    .setProtectedHeader({ alg: 'ES256', typ: 'JWT', kid: key.kid })
    .setIssuer(settings.issuer)
    .setAudience(settings.audience)
    .setSubject(principalId)
    .setJti(tokenId)
    .setIssuedAt(iat)
    .setNotBefore(iat)
    .setExpirationTime(iat + ttlSeconds)
    .sign(key.privateKey);
  return {
    token,
    tokenId,
    principalId,
    issuedAt: new Date(iat * 1000).toISOString(),
    expiresAt: new Date((iat + ttlSeconds) * 1000).toISOString(),
  };
}

export interface VerifiedToken {
  principalId: string;
  tokenId: string;
  /** Expiry, epoch seconds. */
  exp: number;
}

/** Why a token was refused; the label of caracal_auth_failures_total. */
export type AuthFailure = 'missing' | 'malformed' | 'expired' | 'not_yet_valid' | 'bad_signature' | 'bad_claims' | 'unsupported_header';

export class TokenRejected extends CaracalError {
  constructor(readonly failure: AuthFailure, message: string) {
    super(failure === 'expired' ? 'CARACAL_TOKEN_EXPIRED' : failure === 'missing' ? 'CARACAL_UNAUTHENTICATED' : 'CARACAL_TOKEN_INVALID', message);
  }
}

const MAX_TOKEN_LENGTH = 8192;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/**
 * Verifies Caracal-issued tokens: ES256 only (no `none`, no HMAC confusion), our issuer and
 * audience, `exp`/`nbf` with bounded skew, `sub` and `jti` present, and no header that asks the
 * verifier to fetch or trust a key from the token itself (`jku`, `x5u`, `jwk`, `x5c`).
 */
export class TokenVerifier {
  private readonly keys: Map<string, SigningKey>;

  constructor(keys: SigningKey[], private readonly settings: TokenSettings) {
    this.keys = new Map(keys.map((key) => [key.kid, key]));
  }

  async verify(token: string): Promise<VerifiedToken> {
    if (token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) throw new TokenRejected('malformed', 'the bearer token is not a compact JWS');
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      throw new TokenRejected('malformed', 'the token header cannot be decoded');
    }
    if (header.alg !== 'ES256') throw new TokenRejected('unsupported_header', `token algorithm ${String(header.alg)} is not accepted`);
    for (const field of ['jku', 'x5u', 'jwk', 'x5c'] as const) {
      if (field in header) throw new TokenRejected('unsupported_header', `token header "${field}" is not accepted`);
    }
    const key = header.kid === undefined && this.keys.size === 1 ? [...this.keys.values()][0] : this.keys.get(String(header.kid));
    if (!key) throw new TokenRejected('bad_signature', 'the token was not signed by a known key');
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, key.publicKey, {
        algorithms: ['ES256'],
        issuer: this.settings.issuer,
        audience: this.settings.audience,
        clockTolerance: this.settings.clockSkewSeconds,
        requiredClaims: ['exp', 'sub', 'jti', 'iat'],
      }));
    } catch (err) {
      throw mapJoseError(err);
    }
    return { principalId: payload.sub!, tokenId: payload.jti!, exp: payload.exp! };
  }
}

function mapJoseError(err: unknown): TokenRejected {
  if (err instanceof joseErrors.JWTExpired) return new TokenRejected('expired', 'the bearer token has expired');
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    return err.claim === 'nbf' ? new TokenRejected('not_yet_valid', 'the bearer token is not valid yet') : new TokenRejected('bad_claims', `token claim "${err.claim}" is invalid`);
  }
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return new TokenRejected('bad_signature', 'the token signature does not verify');
  return new TokenRejected('malformed', 'the bearer token is invalid');
}

/**
 * Verifications are cached until the token's expiry: ES256 verification costs more than the whole
 * proxy hop. Bounded LRU (Map insertion order); `evict` exists for revocation.
 */
export class VerifiedTokenCache {
  private readonly entries = new Map<string, VerifiedToken>();

  constructor(private readonly capacity: number) {}

  get(token: string, nowSeconds: number): VerifiedToken | undefined {
    const hit = this.entries.get(token);
    if (!hit) return undefined;
    if (hit.exp <= nowSeconds) {
      this.entries.delete(token);
      return undefined;
    }
    // Refresh recency.
    this.entries.delete(token);
    this.entries.set(token, hit);
    return hit;
  }

  set(token: string, verified: VerifiedToken): void {
    if (this.capacity === 0) return;
    this.entries.delete(token);
    this.entries.set(token, verified);
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!);
  }

  evictWhere(predicate: (verified: VerifiedToken) => boolean): number {
    let evicted = 0;
    for (const [token, verified] of this.entries) {
      if (predicate(verified)) {
        this.entries.delete(token);
        evicted++;
      }
    }
    return evicted;
  }

  get size(): number {
    return this.entries.size;
  }
}

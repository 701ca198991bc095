import { createHash } from 'node:crypto';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JSONWebKeySet, type JWK, type JWTHeaderParameters, type JWTPayload } from 'jose';
import type { z } from 'zod';
import type { CaracalConfig, ExternalIssuerSchema } from '../../config/schema.js';
import { CaracalError } from '../../errors/catalog.js';
import type { Logger } from '../../logging/logger.js';
import type { PrincipalLookup } from '../views/principal-lookup.js';
import { TokenRejected, type VerifiedToken } from './tokens.js';

export type ExternalIssuerConfig = z.infer<typeof ExternalIssuerSchema>;

/** A verified external token as the shared verified-token cache keeps it. */
export interface ExternalVerifiedToken extends VerifiedToken {
  /** The issuer (`iss`) whose keys verified it; its presence marks a cache entry as external. */
  issuer: string;
}

export interface JwksFetchOptions {
  /** Per-fetch deadline (connect + headers + body). */
  timeoutMs?: number;
  /** Largest JWKS document accepted; a bigger one is a failed fetch. */
  maxBytes?: number;
}

const MAX_TOKEN_LENGTH = 8192;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const MAX_CLAIM_LENGTH = 256;
/** Members a public verification key never has; a JWKS entry with one is dropped. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

/** The issuer's keys could not be fetched (down, timeout, too big, not a JWKS). */
export class JwksUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'JwksUnavailable';
  }
}

/**
 * One issuer's remote JWKS. Written on `fetch` + `createLocalJWKSet` rather than jose's
 * `createRemoteJWKSet` because that one (a) lets every request retry a failed fetch, so a down
 * IdP is hammered at request rate, and (b) reads a response of any size. Here:
 *
 * - keys are used for `jwksCacheSeconds` after a successful fetch; after that the next request
 *   refetches (awaited) and, if that fails, the stale keys are NOT used (fail closed → 401);
 * - a token naming a `kid` the cached set does not have triggers a refetch (key rotation);
 * - every fetch attempt, successful or not, starts a window of `jwksMinRefreshSeconds` during
 *   which no other fetch starts for this issuer: unknown `kid`s inside the window are refused
 *   without network traffic, so random `kid`s cannot turn the gateway into a JWKS flooder;
 * - concurrent callers that need keys while a fetch is in flight share that one fetch;
 * - each fetch has a deadline and a body size cap, follows no redirects, and private or
 *   symmetric (`oct`) members are dropped from the set.
 */
export class RemoteJwks {
  private local: ReturnType<typeof createLocalJWKSet> | null = null;
  private fetchedAt = 0;
  private lastAttempt = Number.NEGATIVE_INFINITY;
  private pending: Promise<void> | null = null;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly minRefreshMs: number;
  /** Fetch attempts so far (diagnostics and tests). */
  fetches = 0;

  constructor(
    private readonly url: string,
    private readonly cacheMs: number,
    minRefreshMs: number,
    options: JwksFetchOptions = {},
    private readonly onFetchError: (err: Error) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {
    this.timeoutMs = options.timeoutMs ?? 5_000;
    this.maxBytes = options.maxBytes ?? 256 * 1024;
    // A window longer than the cache lifetime would leave expired keys unrefreshable.
    this.minRefreshMs = Math.min(minRefreshMs, cacheMs);
  }

  /** The key for a token header; the function shape `jwtVerify` accepts. */
  async getKey(header: JWTHeaderParameters, token: Parameters<ReturnType<typeof createLocalJWKSet>>[1]) {
    if (!this.local || this.now() - this.fetchedAt >= this.cacheMs) {
      await this.refresh();
      if (!this.local || this.now() - this.fetchedAt >= this.cacheMs) throw new JwksUnavailable(`the keys of ${this.url} are not available`);
    }
    try {
      return await this.local(header, token);
    } catch (err) {
      // Only a named kid we do not know is a reason to look again; a kid-less header is not.
      if (!(err instanceof joseErrors.JWKSNoMatchingKey) || typeof header.kid !== 'string') throw err;
      const before = this.local;
      await this.refresh();
      if (this.local === before) throw err;
      return await this.local!(header, token);
    }
  }

  /** Refetches unless one is in flight (joined) or the rate limit forbids it (no-op). */
  private refresh(): Promise<void> {
    if (this.pending) return this.pending;
    if (this.now() - this.lastAttempt < this.minRefreshMs) return Promise.resolve();
    this.lastAttempt = this.now();
    this.pending = this.fetchOnce()
      .then((jwks) => {
        this.local = createLocalJWKSet(jwks);
        this.fetchedAt = this.now();
      })
      .catch((err) => this.onFetchError(err as Error))
      .finally(() => {
        this.pending = null;
      });
    return this.pending;
  }

  private async fetchOnce(): Promise<JSONWebKeySet> {
    this.fetches++;
    const signal = AbortSignal.timeout(this.timeoutMs);
    let response: Response;
    try {
      response = await fetch(this.url, { signal, redirect: 'error', headers: { accept: 'application/jwk-set+json, application/json' } });
    } catch (err) {
      throw new JwksUnavailable(`fetching ${this.url} failed: ${(err as Error).message}`, { cause: err });
    }
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => {});
      throw new JwksUnavailable(`fetching ${this.url} answered ${response.status}`);
    }
    const declared = Number(response.headers.get('content-length') ?? NaN);
    if (declared > this.maxBytes) {
      await response.body?.cancel().catch(() => {});
      throw new JwksUnavailable(`the JWKS at ${this.url} is larger than ${this.maxBytes} bytes`);
    }
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        size += chunk.byteLength;
        if (size > this.maxBytes) throw new JwksUnavailable(`the JWKS at ${this.url} is larger than ${this.maxBytes} bytes`);
        chunks.push(chunk);
      }
    } catch (err) {
      await response.body?.cancel().catch(() => {});
      if (err instanceof JwksUnavailable) throw err;
      throw new JwksUnavailable(`reading the JWKS at ${this.url} failed: ${(err as Error).message}`, { cause: err });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      throw new JwksUnavailable(`the JWKS at ${this.url} is not JSON`);
    }
    const keys = (parsed as { keys?: unknown }).keys;
    if (!Array.isArray(keys)) throw new JwksUnavailable(`the document at ${this.url} is not a JWK set`);
    const usable = keys.filter(
      (key): key is JWK => typeof key === 'object' && key !== null && typeof (key as JWK).kty === 'string' && (key as JWK).kty !== 'oct' && PRIVATE_MEMBERS.every((m) => !(m in key)),
    );
    return { keys: usable };
  }
}

/** Where a token's principal comes from, after verification. */
export interface ExternalVerifierDeps {
  lookup: PrincipalLookup;
  logger: Logger;
  fetch?: JwksFetchOptions;
}

/**
 * Verifies bearer tokens from the external IdPs in `auth.externalIssuers`. The token's
 * *unverified* `iss` only selects which issuer's keys and rules apply (`issuerOf`); everything
 * is then verified against that issuer: its remote JWKS (see `RemoteJwks`), `iss`, `aud`, `exp`
 * (required), `nbf`, clock skew `auth.clockSkewSeconds`, algorithms limited to the issuer's list
 * (the schema allows only asymmetric ones: never `none`, never HMAC), and no header that names a
 * key source (`jku`, `x5u`, `jwk`, `x5c`). The principal is the issuer's `principalClaim`, with
 * `mapping.stripPrefix` removed (required when set), resolved `by` id or by name; a verified
 * token naming no existing principal is refused (`bad_claims`). Every failure, including "the
 * IdP's keys cannot be fetched", is a `TokenRejected` (401): nothing unverified gets through.
 */
export class ExternalTokenVerifier {
  private readonly issuers = new Map<string, { config: ExternalIssuerConfig; jwks: RemoteJwks }>();

  constructor(
    issuers: readonly ExternalIssuerConfig[],
    private readonly clockSkewSeconds: number,
    private readonly deps: ExternalVerifierDeps,
  ) {
    for (const config of issuers) {
      this.issuers.set(config.issuer, {
        config,
        jwks: new RemoteJwks(config.jwksUrl, config.jwksCacheSeconds * 1000, config.jwksMinRefreshSeconds * 1000, deps.fetch, (err) =>
          // Once per attempt (attempts are rate-limited), not once per refused token.
          deps.logger.warn({ issuer: config.issuer, err: err.message }, 'could not fetch the external issuer keys'),
        ),
      });
    }
  }

  /** Checks what the schema cannot: issuers are unique and none of them is Caracal itself. */
  static fromConfig(config: Readonly<CaracalConfig>, deps: ExternalVerifierDeps): ExternalTokenVerifier {
    const problems: string[] = [];
    const seen = new Set<string>();
    config.auth.externalIssuers.forEach((issuer, i) => {
      if (issuer.issuer === config.auth.issuer) problems.push(`auth.externalIssuers.${i}.issuer: must differ from auth.issuer ("${config.auth.issuer}")`);
      if (seen.has(issuer.issuer)) problems.push(`auth.externalIssuers.${i}.issuer: "${issuer.issuer}" is configured twice`);
      seen.add(issuer.issuer);
    });
    if (problems.length > 0) throw new CaracalError('CARACAL_CONFIG_INVALID', `invalid configuration: ${problems.join('; ')}`, { reasons: problems });
    return new ExternalTokenVerifier(config.auth.externalIssuers, config.auth.clockSkewSeconds, deps);
  }

  get size(): number {
    return this.issuers.size;
  }

  /** The configured issuer a token claims (unverified), or undefined when it is not one of ours. */
  issuerOf(token: string): string | undefined {
    if (this.issuers.size === 0 || token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) return undefined;
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      return undefined;
    }
    return typeof iss === 'string' && this.issuers.has(iss) ? iss : undefined;
  }

  /** The JWKS source of one issuer (diagnostics, tests). */
  jwksOf(issuer: string): RemoteJwks | undefined {
    return this.issuers.get(issuer)?.jwks;
  }

  async verify(token: string): Promise<ExternalVerifiedToken> {
    const issuer = this.issuerOf(token);
    const entry = issuer === undefined ? undefined : this.issuers.get(issuer);
    if (!entry) throw new TokenRejected('bad_claims', 'the token issuer is not accepted');
    const { config, jwks } = entry;

    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      throw new TokenRejected('malformed', 'the token header cannot be decoded');
    }
    if (typeof header.alg !== 'string' || !(config.algorithms as string[]).includes(header.alg)) {
      throw new TokenRejected('unsupported_header', `token algorithm ${String(header.alg)} is not accepted for this issuer`);
    }
    for (const field of ['jku', 'x5u', 'jwk', 'x5c'] as const) {
      if (field in header) throw new TokenRejected('unsupported_header', `token header "${field}" is not accepted`);
    }

    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, (h, t) => jwks.getKey(h, t), {
        algorithms: config.algorithms,
        issuer: config.issuer,
        audience: config.audience,
        clockTolerance: this.clockSkewSeconds,
        requiredClaims: ['exp'],
      }));
    } catch (err) {
      throw this.mapError(err);
    }

    const principalId = await this.principalOf(payload, config);
    const exp = payload.exp!;
    const tokenId = typeof payload.jti === 'string' && payload.jti.length > 0 && payload.jti.length <= MAX_CLAIM_LENGTH ? payload.jti : tokenDigest(token);
    const nbf = typeof payload.nbf === 'number' ? payload.nbf : typeof payload.iat === 'number' ? payload.iat : 0;
    // `kid` names the IdP's key, for the record; external tokens are never mandates.
    return { principalId, tokenId, exp, nbf, kid: typeof header.kid === 'string' ? header.kid : '', mandate: null, issuer: config.issuer };
  }

  private async principalOf(payload: JWTPayload, config: ExternalIssuerConfig): Promise<string> {
    const claim = payload[config.principalClaim];
    if (typeof claim !== 'string' || claim.length === 0 || claim.length > MAX_CLAIM_LENGTH) {
      throw new TokenRejected('bad_claims', `token claim "${config.principalClaim}" is missing or not a string`);
    }
    const { stripPrefix, by } = config.mapping;
    if (!claim.startsWith(stripPrefix)) throw new TokenRejected('bad_claims', `token claim "${config.principalClaim}" does not have the expected prefix`);
    const value = claim.slice(stripPrefix.length);
    const principalId = value.length > 0 ? await this.deps.lookup.resolve(by, value) : null;
    if (!principalId) throw new TokenRejected('bad_claims', `token claim "${config.principalClaim}" names no known principal`);
    return principalId;
  }

  private mapError(err: unknown): TokenRejected {
    if (err instanceof TokenRejected) return err;
    if (err instanceof JwksUnavailable) return new TokenRejected('bad_signature', "the token cannot be verified: the issuer's keys are unavailable");
    if (err instanceof joseErrors.JWTExpired) return new TokenRejected('expired', 'the bearer token has expired');
    if (err instanceof joseErrors.JWTClaimValidationFailed) {
      return err.claim === 'nbf' ? new TokenRejected('not_yet_valid', 'the bearer token is not valid yet') : new TokenRejected('bad_claims', `token claim "${err.claim}" is invalid`);
    }
    if (err instanceof joseErrors.JWKSNoMatchingKey || err instanceof joseErrors.JWKSMultipleMatchingKeys) {
      return new TokenRejected('bad_signature', 'the token was not signed by a key the issuer publishes');
    }
    if (err instanceof joseErrors.JWSSignatureVerificationFailed) return new TokenRejected('bad_signature', 'the token signature does not verify');
    if (err instanceof joseErrors.JOSEAlgNotAllowed) return new TokenRejected('unsupported_header', 'the token algorithm is not accepted');
    return new TokenRejected('malformed', 'the bearer token is invalid');
  }
}

/** A stable, non-secret id for a token without `jti` (decision records name it). */
function tokenDigest(token: string): string {
  return `sha256:${createHash('sha256').update(token).digest('hex').slice(0, 32)}`;
}

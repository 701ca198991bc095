import { decodeProtectedHeader, errors as joseErrors, jwtVerify, SignJWT, type JWTPayload } from 'jose';
import { LRUCache } from 'lru-cache';
import { CaracalError } from '../../errors/catalog.js';
import { BUDGET_WINDOWS, MAX_AMOUNT_MICROS } from '../../metering/money.js';
import { newId } from '../../util/ids.js';
import { z } from 'zod';
import { verificationKeys, type KeyRing, type SigningKey } from './keys.js';

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

/**
 * A mandate's own spending budget as signed into tokens: integer micro-units within the bounds
 * budgets have (src/metering/money.ts), a UTC calendar window and an ISO 4217 code.
 */
export const MandateBudgetClaimSchema = z
  .object({
    limit_micros: z.number().int().min(1).max(MAX_AMOUNT_MICROS),
    window: z.enum(BUDGET_WINDOWS),
    currency: z.string().regex(/^[A-Z]{3}$/),
  })
  .strict();
export type MandateBudgetClaim = z.infer<typeof MandateBudgetClaimSchema>;

/** The claims that make an access token a mandate (docs/architecture.md, "The authority model"). */
export const MandateClaimsSchema = z
  .object({
    scope: z.object({ resources: z.array(z.string().min(1).max(300)).min(1).max(256), actions: z.array(z.string().min(1).max(64)).min(1).max(64) }).strict(),
    parent: z.string().min(1).max(64).nullable(),
    depth: z.number().int().min(0).max(16),
    root: z.string().min(1).max(64),
    /** The root mandate's authority policy. */
    policy: z.string().min(1).max(64),
    /**
     * The ancestors, root first: the gateway checks each one's revocation and subject on every call.
     * Each link carries that ancestor's own budget, if it has one (absent in tokens issued before budgets).
     */
    chain: z.array(z.object({ id: z.string().min(1).max(64), sub: z.string().min(1).max(64), budget: MandateBudgetClaimSchema.optional() }).strict()).max(16),
    /** This mandate's own budget (set at delegation); absent when it has none. */
    budget: MandateBudgetClaimSchema.optional(),
  })
  .strict()
  .refine((m) => m.chain.length === m.depth && (m.parent ?? null) === (m.chain.at(-1)?.id ?? null) && (m.depth === 0 || m.root === m.chain[0]!.id), {
    message: 'inconsistent chain',
  });
export type MandateClaims = z.infer<typeof MandateClaimsSchema>;

export interface VerifiedToken {
  principalId: string;
  tokenId: string;
  /** Expiry and not-before, epoch seconds. */
  exp: number;
  nbf: number;
  /** The key that signed it: a cached verification is only good while that key is trusted. */
  kid: string;
  /** Present when the token is a mandate. */
  mandate: MandateClaims | null;
}

/**
 * Why a token was refused; the label of caracal_auth_failures_total. `mandate_unbound`: a delegated
 * mandate presented without its subject's own credential (see src/gateway/mandate-binding.ts).
 */
export type AuthFailure = 'missing' | 'malformed' | 'expired' | 'not_yet_valid' | 'bad_signature' | 'bad_claims' | 'unsupported_header' | 'mandate_unbound';

export class TokenRejected extends CaracalError {
  constructor(readonly failure: AuthFailure, message: string, reasons?: string[]) {
    super(failure === 'expired' ? 'CARACAL_TOKEN_EXPIRED' : failure === 'missing' ? 'CARACAL_UNAUTHENTICATED' : 'CARACAL_TOKEN_INVALID', message, reasons ? { reasons } : {});
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
  constructor(
    private readonly ring: KeyRing,
    private readonly settings: TokenSettings,
  ) {}

  /** Is the key that signed a (cached) token still trusted now? */
  keyTrusted(kid: string, nowSeconds: number): boolean {
    // On every cached-token hit: no allocation.
    if (kid === this.ring.current.kid) return true;
    for (const previous of this.ring.previous) if (previous.key.kid === kid && previous.validUntil > nowSeconds) return true;
    return false;
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
    const trusted = verificationKeys(this.ring, Math.floor(Date.now() / 1000));
    const key = header.kid === undefined ? undefined : trusted.find((k) => k.kid === header.kid);
    if (!key) throw new TokenRejected('bad_signature', 'the token was not signed by a trusted key');
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
    let mandate: MandateClaims | null = null;
    if ('scope' in payload || 'parent' in payload || 'depth' in payload || 'budget' in payload) {
      const parsed = MandateClaimsSchema.safeParse({
        scope: payload.scope,
        parent: payload.parent ?? null,
        depth: payload.depth,
        root: payload.root,
        policy: payload.policy,
        chain: payload.chain,
        // Absent stays absent; any value present (null included) must be a valid budget: fail closed.
        ...('budget' in payload ? { budget: payload.budget } : {}),
      });
      if (!parsed.success) throw new TokenRejected('bad_claims', 'the mandate claims are malformed');
      mandate = parsed.data;
      if (mandate.depth === 0 && mandate.root !== payload.jti) throw new TokenRejected('bad_claims', 'the mandate claims are malformed');
    }
    return { principalId: payload.sub!, tokenId: payload.jti!, exp: payload.exp!, nbf: payload.nbf ?? payload.iat!, kid: key.kid, mandate };
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
 * proxy hop. Bounded LRU (a hit makes the token the most recent); `evictWhere` exists for revocation.
 */
export class VerifiedTokenCache {
  private readonly entries: LRUCache<string, VerifiedToken>;
  /**
   * Handed to every `get`: without options lru-cache creates a fresh options object per call, and
   * `get` runs on every request. lru-cache writes its diagnostics status into it, reset after use.
   */
  private readonly getOptions: LRUCache.GetOptions<string, VerifiedToken, unknown> = { status: undefined };

  constructor(private readonly capacity: number) {
    // Counted through maxSize (every entry weighs 1) rather than `max`, which would allocate its
    // arrays for the whole capacity up front (up to ten million entries can be configured).
    // Capacity 0 turns caching off: `set` stores nothing, and lru-cache needs a bound of at least 1.
    this.entries = new LRUCache<string, VerifiedToken>({ maxSize: Math.max(capacity, 1), sizeCalculation: () => 1 });
  }

  get(token: string, nowSeconds: number): VerifiedToken | undefined {
    const hit = this.entries.get(token, this.getOptions);
    this.getOptions.status = undefined;
    if (!hit) return undefined;
    if (hit.exp <= nowSeconds) {
      this.entries.delete(token);
      return undefined;
    }
    return hit;
  }

  set(token: string, verified: VerifiedToken): void {
    if (this.capacity === 0) return;
    this.entries.set(token, verified);
  }

  evictWhere(predicate: (verified: VerifiedToken) => boolean): number {
    // Collected first: deleting the least recent entry during lru-cache's own walk makes the walk
    // visit entries again.
    const doomed: string[] = [];
    this.entries.forEach((verified, token) => {
      if (predicate(verified)) doomed.push(token);
    });
    for (const token of doomed) this.entries.delete(token);
    return doomed.length;
  }

  get size(): number {
    return this.entries.size;
  }
}

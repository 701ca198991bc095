import { LRUCache } from 'lru-cache';
import type { GatewayLimits } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';

/** Milliseconds from a monotonic origin: wall-clock jumps (NTP, manual changes) must not refill or drain buckets. */
export type Clock = () => number;

export const monotonicNow: Clock = () => performance.now();

export interface RateLimit {
  ratePerSecond: number;
  burst: number;
}

/**
 * Facts about the caller's limits at the moment of the decision, for the policy input. Snake case
 * because they are read by Rego next to the other input facts.
 */
export interface LimitFacts {
  /** Requests of this principal in flight, counting this one when it was admitted. */
  in_flight: number;
  max_concurrent: number;
  /** Whole tokens left in the principal's bucket after this request. */
  rate_remaining: number;
  rate_per_second: number;
}

/** An admitted request. `release()` frees its concurrency slot; later calls do nothing. */
export interface LimitLease {
  readonly ok: true;
  readonly facts: LimitFacts;
  release(): void;
}

export interface LimitRefusal {
  readonly ok: false;
  readonly reason: 'rate_limited' | 'concurrency_limited';
  /** Whole seconds, at least 1: what a `Retry-After` header should say. */
  readonly retryAfterSeconds: number;
  readonly facts: LimitFacts;
}

export type AcquireResult = LimitLease | LimitRefusal;

export type SourceTakeResult = { readonly ok: true } | { readonly ok: false; readonly retryAfterSeconds: number };

export interface LimiterOptions {
  /**
   * Most keys whose state is kept (least recently used dropped first). Dropping an idle key only
   * forgets a partly drained bucket: it comes back full. Default 100 000.
   */
  maxEntries?: number;
  now?: Clock;
}

const DEFAULT_MAX_ENTRIES = 100_000;

/**
 * Tokens short of a whole one that still count as whole. Refill adds fractions, so a bucket that
 * should hold exactly 1 token can hold 0.9999999999999999 (0.4 + 0.6); without this a client that
 * waited the `Retry-After` it was told would be refused again, and told to wait one second more.
 */
const TOKEN_EPSILON = 1e-9;

function checkRate(rate: RateLimit): void {
  if (!(rate.ratePerSecond > 0) || !Number.isFinite(rate.ratePerSecond)) {
    throw new RangeError(`ratePerSecond must be a positive finite number, got ${rate.ratePerSecond}`);
  }
  if (!Number.isInteger(rate.burst) || rate.burst < 1) {
    throw new RangeError(`burst must be an integer of at least 1, got ${rate.burst}`);
  }
}

function checkMaxEntries(maxEntries: number): number {
  if (!Number.isInteger(maxEntries) || maxEntries < 1) {
    throw new RangeError(`maxEntries must be an integer of at least 1, got ${maxEntries}`);
  }
  return maxEntries;
}

/**
 * Continuous-refill token bucket: starts full at `burst` tokens and gains `ratePerSecond` tokens per
 * second up to `burst`. Refill is computed lazily from the clock on each call, so an idle bucket costs
 * no timers.
 */
export class TokenBucket {
  readonly ratePerSecond: number;
  readonly burst: number;
  private readonly ratePerMs: number;
  private readonly now: Clock;
  private tokens: number;
  private updatedAt: number;

  constructor(rate: RateLimit, now: Clock = monotonicNow) {
    checkRate(rate);
    this.ratePerSecond = rate.ratePerSecond;
    this.burst = rate.burst;
    this.ratePerMs = rate.ratePerSecond / 1000;
    this.now = now;
    this.tokens = rate.burst;
    this.updatedAt = now();
  }

  /** Brings the bucket up to `at`. A clock that steps back (only possible with an injected one) neither refills nor drains. */
  private refill(at: number): void {
    const elapsed = at - this.updatedAt;
    if (elapsed > 0) {
      const tokens = this.tokens + elapsed * this.ratePerMs;
      this.tokens = tokens < this.burst ? tokens : this.burst;
      this.updatedAt = at;
    }
  }

  // Each method takes the time so a caller making several calls for one request reads the clock once.

  /** Takes one token if one is there. */
  tryTake(at: number = this.now()): boolean {
    this.refill(at);
    if (this.tokens < 1 - TOKEN_EPSILON) return false;
    this.tokens -= 1;
    return true;
  }

  /** Returns a token taken for a request that was then not admitted after all. */
  giveBack(): void {
    const tokens = this.tokens + 1;
    this.tokens = tokens < this.burst ? tokens : this.burst;
  }

  /** Whole tokens available. */
  remaining(at: number = this.now()): number {
    this.refill(at);
    return Math.floor(this.tokens + TOKEN_EPSILON);
  }

  /** Whole seconds (at least 1) until one token is available. */
  retryAfterSeconds(at: number = this.now()): number {
    this.refill(at);
    const seconds = Math.ceil((1 - TOKEN_EPSILON - this.tokens) / this.ratePerSecond);
    return seconds > 1 ? seconds : 1;
  }
}

/** One principal's bucket and requests in flight; one object per principal keeps the hot path to a single lookup. */
class PrincipalState extends TokenBucket {
  inFlight = 0;
  /** Pushed out of the LRU while requests were in flight: held in `PrincipalStates.evictedInFlight` until they finish. */
  evicted = false;

  constructor(
    readonly id: string,
    rate: RateLimit,
    now: Clock,
  ) {
    super(rate, now);
  }
}

/**
 * Principals' state in a bounded LRU. A principal evicted while it has requests in flight is moved to
 * a side map until they finish: dropping it would let its next request start from zero in flight (more
 * than `maxConcurrent` at once) while its leases decrement a counter nobody reads any more. The side
 * map never holds more principals than there are requests in flight.
 */
class PrincipalStates {
  private readonly lru: LRUCache<string, PrincipalState>;
  private readonly evictedInFlight = new Map<string, PrincipalState>();

  constructor(
    maxEntries: number,
    private readonly rate: RateLimit,
    private readonly now: Clock,
  ) {
    this.lru = new LRUCache<string, PrincipalState>({
      max: maxEntries,
      dispose: (state, _id, reason) => {
        if (reason === 'evict' && state.inFlight > 0) {
          state.evicted = true;
          this.evictedInFlight.set(state.id, state);
        }
      },
    });
  }

  get(principalId: string): PrincipalState {
    let state = this.lru.get(principalId);
    if (state !== undefined) return state;
    state = this.evictedInFlight.get(principalId);
    if (state !== undefined) {
      // Active again: back under LRU management (which may in turn push out another principal).
      this.evictedInFlight.delete(principalId);
      state.evicted = false;
    } else {
      state = new PrincipalState(principalId, this.rate, this.now);
    }
    this.lru.set(principalId, state);
    return state;
  }

  /** Without creating state or touching LRU order. */
  peek(principalId: string): PrincipalState | undefined {
    return this.lru.peek(principalId) ?? this.evictedInFlight.get(principalId);
  }

  release(state: PrincipalState): void {
    state.inFlight -= 1;
    if (state.inFlight === 0 && state.evicted) {
      // Back into the LRU rather than dropped, so its partly drained bucket is not forgotten.
      this.evictedInFlight.delete(state.id);
      state.evicted = false;
      this.lru.set(state.id, state);
    }
  }

  get size(): number {
    return this.lru.size + this.evictedInFlight.size;
  }

  get evictedInFlightSize(): number {
    return this.evictedInFlight.size;
  }
}

/**
 * A class rather than a closure so that an admitted request costs two small objects (lease and facts).
 * The slot is freed through the state object, not by key, so it stays correct whatever the LRU did meanwhile.
 */
class Lease implements LimitLease {
  readonly ok = true as const;
  private state: PrincipalState | null;

  constructor(
    private readonly states: PrincipalStates,
    state: PrincipalState,
    readonly facts: LimitFacts,
  ) {
    this.state = state;
  }

  release(): void {
    const state = this.state;
    if (state === null) return;
    this.state = null;
    this.states.release(state);
  }
}

/**
 * Per-principal admission: at most `maxConcurrent` requests in flight and a token bucket on the
 * request rate, so one agent's flood cannot queue everyone else behind it.
 */
export class PrincipalLimiter {
  readonly maxConcurrent: number;
  readonly ratePerSecond: number;
  private readonly now: Clock;
  private readonly states: PrincipalStates;

  constructor(limits: GatewayLimits['perPrincipal'], options: LimiterOptions = {}) {
    if (!Number.isInteger(limits.maxConcurrent) || limits.maxConcurrent < 1) {
      throw new RangeError(`maxConcurrent must be an integer of at least 1, got ${limits.maxConcurrent}`);
    }
    checkRate(limits.rate);
    this.maxConcurrent = limits.maxConcurrent;
    this.ratePerSecond = limits.rate.ratePerSecond;
    this.now = options.now ?? monotonicNow;
    this.states = new PrincipalStates(
      checkMaxEntries(options.maxEntries ?? DEFAULT_MAX_ENTRIES),
      { ratePerSecond: limits.rate.ratePerSecond, burst: limits.rate.burst },
      this.now,
    );
  }

  /** Synchronous and O(1). An admitted request must be `release()`d exactly when it finishes, however it finishes. */
  acquire(principalId: string): AcquireResult {
    const state = this.states.get(principalId);
    const at = this.now();
    if (!state.tryTake(at)) {
      return {
        ok: false,
        reason: 'rate_limited',
        retryAfterSeconds: state.retryAfterSeconds(at),
        facts: this.factsOf(state, at),
      };
    }
    if (state.inFlight >= this.maxConcurrent) {
      // Refused for concurrency: the request was not served, so it must not count against the rate.
      state.giveBack();
      return { ok: false, reason: 'concurrency_limited', retryAfterSeconds: 1, facts: this.factsOf(state, at) };
    }
    state.inFlight += 1;
    return new Lease(this.states, state, this.factsOf(state, at));
  }

  /** The principal's limits now, without taking anything or touching LRU order; undefined when it has no state. */
  peek(principalId: string): LimitFacts | undefined {
    const state = this.states.peek(principalId);
    return state === undefined ? undefined : this.factsOf(state, this.now());
  }

  /** Principals with state held, and how many of those are held only because requests are in flight after eviction. */
  stats(): { principals: number; evictedInFlight: number } {
    return { principals: this.states.size, evictedInFlight: this.states.evictedInFlightSize };
  }

  private factsOf(state: PrincipalState, at: number): LimitFacts {
    return {
      in_flight: state.inFlight,
      max_concurrent: this.maxConcurrent,
      rate_remaining: state.remaining(at),
      rate_per_second: this.ratePerSecond,
    };
  }
}

const IPV4_MAPPED_PREFIX = '::ffff:';

/**
 * `::ffff:1.2.3.4` (how a dual-stack socket reports an IPv4 client) and `1.2.3.4` are the same
 * client: without this, one client would get two buckets depending on how it connected.
 */
export function normaliseSourceAddress(address: string): string {
  if (address.length > IPV4_MAPPED_PREFIX.length && address.slice(0, IPV4_MAPPED_PREFIX.length).toLowerCase() === IPV4_MAPPED_PREFIX) {
    const rest = address.slice(IPV4_MAPPED_PREFIX.length);
    if (rest.includes('.')) return rest;
  }
  return address;
}

const TAKEN: SourceTakeResult = Object.freeze({ ok: true as const });

/**
 * Per client address token bucket charged only by requests that fail authentication: an address
 * sending a flood of bad credentials is refused once its budget is spent, while authenticated traffic
 * from the same address (many agents behind one NAT) is never charged.
 */
export class SourceLimiter {
  private readonly rate: RateLimit;
  private readonly now: Clock;
  private readonly buckets: LRUCache<string, TokenBucket>;

  constructor(limit: GatewayLimits['unauthenticatedPerSource'], options: LimiterOptions = {}) {
    checkRate(limit);
    this.rate = { ratePerSecond: limit.ratePerSecond, burst: limit.burst };
    this.now = options.now ?? monotonicNow;
    this.buckets = new LRUCache<string, TokenBucket>({ max: checkMaxEntries(options.maxEntries ?? DEFAULT_MAX_ENTRIES) });
  }

  take(sourceAddress: string): SourceTakeResult {
    const key = normaliseSourceAddress(sourceAddress);
    let bucket = this.buckets.get(key);
    if (bucket === undefined) {
      bucket = new TokenBucket(this.rate, this.now);
      this.buckets.set(key, bucket);
    }
    const at = this.now();
    if (bucket.tryTake(at)) return TAKEN;
    return { ok: false, retryAfterSeconds: bucket.retryAfterSeconds(at) };
  }

  /** Addresses with a bucket held. */
  get size(): number {
    return this.buckets.size;
  }
}

/** The 429 of every limit: the reason, and when to retry (the error handler sets `retry-after`). */
export function rateLimited(reason: string, retryAfterSeconds: number): CaracalError {
  return new CaracalError('CARACAL_RATE_LIMITED', `too many requests (${reason}); retry in ${retryAfterSeconds} s`, {
    reasons: [reason],
    details: { retry_after_seconds: retryAfterSeconds },
  });
}

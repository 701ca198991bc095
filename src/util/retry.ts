/**
 * The one way Caracal waits and retries: exponential backoff with optional jitter, always bounded
 * (attempts and/or elapsed time), cancellable through an AbortSignal. Loops that must never give up
 * (a consumer redelivering one message until it succeeds) are not retries in this sense; they share
 * `backoffDelay` and `sleep` so that their timing follows the same rules.
 */

export type Jitter = 'full' | 'equal' | 'none';

export interface BackoffOptions {
  /** Delay after the first failure; it doubles after each further one. */
  baseDelayMs: number;
  /** Cap on a single delay (before jitter). */
  maxDelayMs: number;
  /**
   * `full`: uniform in [0, delay) — spreads callers out the most. `equal`: uniform in
   * [delay / 2, delay) — spreads them while keeping at least half of the wait. `none`: exactly the
   * delay, for call sites whose timing budget must stay deterministic.
   */
  jitter: Jitter;
}

export interface RetryOptions extends BackoffOptions {
  /** Most calls of `fn` in all, the first included. At least one of `attempts` / `maxElapsedMs`. */
  attempts?: number;
  /**
   * Budget from the first call: no attempt starts after it. A wait that would end past it is not
   * started; the last error is thrown instead.
   */
  maxElapsedMs?: number;
  /** Whether an error is worth another attempt; anything else is thrown at once. Default: all are. */
  isRetriable?: (err: unknown) => boolean;
  /** Aborting rejects at once with `signal.reason`, also while `fn` or a wait is in progress. */
  signal?: AbortSignal;
  /** Told before each wait: the error, the number of the attempt that failed (1-based), the delay. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void;
  /**
   * Replaces the real wait (tests). It should reject when `signal` aborts, as `sleep` does; one
   * that does not delays the abort until the wait ends.
   */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** Clock for `maxElapsedMs` (tests). */
  now?: () => number;
  /** Source of jitter in [0, 1) (tests). */
  random?: () => number;
}

const ATTEMPTS = Symbol('retryAttempts');

/**
 * How many times `retry` called the function before it gave up with this error (the error it
 * rethrows is the function's own, so callers' `instanceof` checks keep working); undefined for an
 * error that did not come out of `retry`, or that could not be annotated (a primitive, a frozen object).
 */
export function attemptsOf(err: unknown): number | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const value = (err as { [ATTEMPTS]?: unknown })[ATTEMPTS];
  return typeof value === 'number' ? value : undefined;
}

function annotate(err: unknown, attempts: number): unknown {
  if (typeof err === 'object' && err !== null && Object.isExtensible(err)) {
    // Non-enumerable: serialisers and loggers see the error exactly as the function threw it.
    Object.defineProperty(err, ATTEMPTS, { value: attempts, configurable: true, enumerable: false, writable: true });
  }
  return err;
}

/** The wait after failed attempt number `attempt` (1-based). */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  const { baseDelayMs, maxDelayMs, jitter } = options;
  // The exponent is clamped so that the product stays finite (0 * Infinity would be NaN).
  const exponential = baseDelayMs === 0 ? 0 : Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(Math.max(attempt - 1, 0), 1023));
  switch (jitter) {
    case 'full':
      return random() * exponential;
    case 'equal':
      return exponential / 2 + (random() * exponential) / 2;
    case 'none':
      return exponential;
  }
}

/**
 * Resolves after `ms`, or rejects with `signal.reason` as soon as `signal` aborts (at once when it
 * already has). The timer keeps the process alive, as the work waiting on it would.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `promise`, or a rejection with the abort reason as soon as `signal` aborts, whichever is first. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    // Settling after the abort is a no-op, and this handler keeps a late rejection from going unhandled.
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

function checkOptions(options: RetryOptions): void {
  const { attempts, maxElapsedMs, baseDelayMs, maxDelayMs, jitter } = options;
  if (attempts === undefined && maxElapsedMs === undefined) throw new RangeError('retry needs a bound: attempts and/or maxElapsedMs');
  if (attempts !== undefined && (!Number.isInteger(attempts) || attempts < 1)) throw new RangeError(`attempts must be an integer of at least 1, got ${attempts}`);
  if (maxElapsedMs !== undefined && !(Number.isFinite(maxElapsedMs) && maxElapsedMs >= 0)) throw new RangeError(`maxElapsedMs must be a finite number of at least 0, got ${maxElapsedMs}`);
  if (!(Number.isFinite(baseDelayMs) && baseDelayMs >= 0)) throw new RangeError(`baseDelayMs must be a finite number of at least 0, got ${baseDelayMs}`);
  if (!(Number.isFinite(maxDelayMs) && maxDelayMs >= baseDelayMs)) throw new RangeError(`maxDelayMs must be finite and at least baseDelayMs, got ${maxDelayMs}`);
  if (jitter !== 'full' && jitter !== 'equal' && jitter !== 'none') throw new RangeError(`unknown jitter "${String(jitter)}"`);
}

/**
 * Calls `fn` (with the 1-based attempt number) until it resolves, an error is not retriable, or a
 * bound is reached; then rethrows the last error, annotated with the attempt count (`attemptsOf`).
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, options: RetryOptions): Promise<T> {
  checkOptions(options);
  const { signal, isRetriable = () => true, onRetry, sleep: wait = sleep, now = Date.now, random = Math.random } = options;
  const maxAttempts = options.attempts ?? Number.POSITIVE_INFINITY;
  const deadline = options.maxElapsedMs === undefined ? Number.POSITIVE_INFINITY : now() + options.maxElapsedMs;
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    try {
      return await (signal ? untilAborted(fn(attempt), signal) : fn(attempt));
    } catch (err) {
      if (attempt >= maxAttempts || !isRetriable(err)) throw annotate(err, attempt);
      const delayMs = backoffDelay(attempt, options, random);
      if (now() + delayMs > deadline) throw annotate(err, attempt);
      onRetry?.(err, attempt, delayMs);
      await wait(delayMs, signal);
    }
  }
}

/**
 * A dependency that is down (the database restarting, a connection refused) is not the message's
 * fault: those are retried without limit, so an outage never empties the stream into the DLQ.
 */
export function isOutage(err: unknown): boolean {
  const e = err as { code?: string; retriable?: boolean; cause?: unknown; message?: string };
  if (e?.retriable === true) return true;
  const code = e?.code ?? '';
  if (/^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|ENOTFOUND|57P0[1-3]|08\d{3}|53300|40001|40P01)$/.test(code)) return true;
  if (/Connection terminated|connection is closed|Client has encountered a connection error|terminating connection/i.test(e?.message ?? '')) return true;
  return e?.cause !== undefined && e.cause !== err ? isOutage(e.cause) : false;
}

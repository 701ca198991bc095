/**
 * The closed set of errors Caracal reports. Every code maps to exactly one HTTP status
 * (see `statusOf`), and the table is checked by test/unit/errors.test.ts so that a new
 * code cannot be added without a status and a one-line description.
 */
export const ERROR_CATALOG = {
  // configuration and CLI
  CARACAL_CONFIG_INVALID: { status: 500, message: 'configuration is invalid' },
  CARACAL_USAGE: { status: 400, message: 'invalid command usage' },
  CARACAL_CONFIRM_REQUIRED: { status: 400, message: 'this operation is destructive and requires --confirm' },
  // request validation
  CARACAL_BAD_REQUEST: { status: 400, message: 'the request is malformed' },
  CARACAL_VALIDATION: { status: 400, message: 'a value is invalid' },
  CARACAL_NOT_FOUND: { status: 404, message: 'not found' },
  CARACAL_UNKNOWN_UPSTREAM: { status: 404, message: 'no upstream with that name is configured' },
  CARACAL_ROUTE_NOT_FOUND: { status: 404, message: 'no such route' },
  CARACAL_METHOD_NOT_ALLOWED: { status: 405, message: 'this method is not mapped to an action for this upstream' },
  CARACAL_CONFLICT: { status: 409, message: 'the resource already exists or changed concurrently' },
  CARACAL_PAYLOAD_TOO_LARGE: { status: 413, message: 'the request body is too large' },
  CARACAL_EXPECTATION_FAILED: { status: 417, message: 'the only Expect value supported is 100-continue' },
  CARACAL_HEADERS_TOO_LARGE: { status: 431, message: 'the request headers are too large' },
  CARACAL_RATE_LIMITED: { status: 429, message: 'too many requests; retry after the time in Retry-After' },
  CARACAL_BUDGET_EXCEEDED: { status: 429, message: 'the budget does not cover this call; it resets at the time in the error' },
  // authentication and authorisation
  CARACAL_UNAUTHENTICATED: { status: 401, message: 'a valid bearer token is required' },
  CARACAL_TOKEN_INVALID: { status: 401, message: 'the bearer token is invalid' },
  CARACAL_TOKEN_EXPIRED: { status: 401, message: 'the bearer token has expired' },
  CARACAL_ADMIN_UNAUTHENTICATED: { status: 401, message: 'a valid admin credential is required' },
  CARACAL_POLICY_DENIED: { status: 403, message: 'the authority policy denied the request' },
  CARACAL_PRINCIPAL_SUSPENDED: { status: 403, message: 'the principal is suspended' },
  // dependencies and lifecycle
  CARACAL_POLICY_ENGINE: { status: 503, message: 'the policy engine could not decide; denied' },
  CARACAL_EVENTS_UNAVAILABLE: { status: 503, message: 'the decision could not be recorded; denied' },
  CARACAL_SHUTTING_DOWN: { status: 503, message: 'the gateway is shutting down' },
  CARACAL_NOT_READY: { status: 503, message: 'a dependency is not ready' },
  CARACAL_UPSTREAM_UNREACHABLE: { status: 502, message: 'the upstream could not be reached' },
  CARACAL_UPSTREAM_TIMEOUT: { status: 504, message: 'the upstream did not answer in time' },
  CARACAL_DEPENDENCY: { status: 503, message: 'a backing service failed' },
  CARACAL_INTERNAL: { status: 500, message: 'internal error' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

export interface CaracalErrorOptions {
  cause?: unknown;
  retriable?: boolean;
  /** Machine-readable reasons returned to the caller (policy reasons, config keys, …). */
  reasons?: string[];
  /** Extra fields merged into the JSON error body (decision_id, …). */
  details?: Record<string, unknown>;
}

export class CaracalError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly retriable: boolean;
  readonly reasons: string[];
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message?: string, options: CaracalErrorOptions = {}) {
    super(message ?? ERROR_CATALOG[code].message, options.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'CaracalError';
    this.code = code;
    this.statusCode = ERROR_CATALOG[code].status;
    this.retriable = options.retriable ?? false;
    this.reasons = options.reasons ?? [];
    this.details = options.details ?? {};
  }
}

export function statusOf(code: ErrorCode): number {
  return ERROR_CATALOG[code].status;
}

export function isCaracalError(err: unknown): err is CaracalError {
  return err instanceof CaracalError;
}

/** Libraries such as opa-wasm throw strings; normalise anything thrown into an Error. */
export function toError(thrown: unknown): Error {
  if (thrown instanceof Error) return thrown;
  return new Error(typeof thrown === 'string' ? thrown : JSON.stringify(thrown));
}

import { CaracalError } from '../errors/catalog.js';

/** Upstream failures mapped in one place: connect → 502, timeout → 504; the cause is kept for logs. */
export function mapUpstreamError(error: unknown): CaracalError {
  const code = (error as { code?: string }).code ?? '';
  const causeCode = ((error as { cause?: { code?: string } }).cause?.code) ?? '';
  const all = `${code} ${causeCode}`;
  if (/TIMEOUT|ETIMEDOUT|UND_ERR_HEADERS_TIMEOUT|UND_ERR_BODY_TIMEOUT/.test(all)) {
    return new CaracalError('CARACAL_UPSTREAM_TIMEOUT', undefined, { cause: error, retriable: true });
  }
  return new CaracalError('CARACAL_UPSTREAM_UNREACHABLE', undefined, { cause: error, retriable: true });
}

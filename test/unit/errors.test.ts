import { describe, expect, it } from 'vitest';
import { CaracalError, ERROR_CATALOG, statusOf, toError } from '../../src/errors/catalog.js';

describe('error catalog', () => {
  it('gives every code a valid HTTP status and a message', () => {
    for (const [code, entry] of Object.entries(ERROR_CATALOG)) {
      expect(code).toMatch(/^CARACAL_[A-Z_]+$/);
      expect(entry.status).toBeGreaterThanOrEqual(400);
      expect(entry.status).toBeLessThan(600);
      expect(entry.message.length).toBeGreaterThan(5);
    }
  });

  it('never uses 500 for request-input codes', () => {
    const inputCodes = Object.keys(ERROR_CATALOG).filter((code) => /BAD_REQUEST|VALIDATION|TOO_LARGE|TOKEN|UNAUTHENTICATED|DENIED|NOT_FOUND|UNKNOWN/.test(code));
    for (const code of inputCodes) expect(statusOf(code as keyof typeof ERROR_CATALOG)).toBeLessThan(500);
  });

  it('carries code, status, retriable, reasons and cause', () => {
    const cause = new Error('boom');
    const err = new CaracalError('CARACAL_DEPENDENCY', undefined, { cause, retriable: true, reasons: ['x'] });
    expect(err).toMatchObject({ code: 'CARACAL_DEPENDENCY', statusCode: 503, retriable: true, reasons: ['x'], cause });
    expect(err.message).toBe(ERROR_CATALOG.CARACAL_DEPENDENCY.message);
  });

  it('wraps thrown strings and objects into Errors', () => {
    expect(toError('opa: undefined function').message).toBe('opa: undefined function');
    expect(toError({ a: 1 }).message).toBe('{"a":1}');
  });
});

import type { CaracalError, ErrorCode } from '../errors/catalog.js';

/** Caracal's own error shape (the `http` dialect's), which every other dialect wraps. */
export interface ErrorBody {
  error: ErrorCode;
  message: string;
  reasons: string[];
  request_id: string;
  [extra: string]: unknown;
}

export function errorBody(error: CaracalError, requestId: string): ErrorBody {
  return { error: error.code, message: error.message, reasons: error.reasons, ...error.details, request_id: requestId };
}

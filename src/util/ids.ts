import { v7 as uuidv7 } from 'uuid';

/** Time-ordered ids (UUIDv7) for principals, policies, events, decisions and requests. */
export function newId(): string {
  return uuidv7();
}

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** An inbound x-request-id is kept only when it is short and harmless; otherwise we mint one. */
export function acceptRequestId(inbound: unknown): string {
  return typeof inbound === 'string' && SAFE_REQUEST_ID.test(inbound) ? inbound : newId();
}

import { randomFillSync } from 'node:crypto';

/**
 * Time-ordered ids (UUIDv7, RFC 9562) for principals, policies, events, decisions and requests:
 * 48 bits of Unix milliseconds, then a 31-bit counter seeded at random each millisecond (method 1 of
 * RFC 9562 §6.2, the same layout and state rules as the `uuid` package's v7), then random bits.
 * Written here because the gateway mints three per request: random bytes come from a pool filled
 * 256 ids at a time, and no byte array is allocated per id.
 */
const HEX = Array.from({ length: 256 }, (_, byte) => byte.toString(16).padStart(2, '0'));
const POOL = new Uint8Array(16 * 256);
let poolAt = POOL.length;
let lastMs = -Infinity;
let seq = 0;

export function newId(): string {
  if (poolAt === POOL.length) {
    randomFillSync(POOL);
    poolAt = 0;
  }
  const r = poolAt;
  poolAt += 16;
  const now = Date.now();
  if (now > lastMs) {
    seq = (POOL[r + 6]! << 23) | (POOL[r + 7]! << 16) | (POOL[r + 8]! << 8) | POOL[r + 9]!;
    lastMs = now;
  } else {
    // Same millisecond (or the clock stepped back): count on, and borrow the next millisecond
    // when the counter wraps, so ids stay ordered.
    seq = (seq + 1) | 0;
    if (seq === 0) lastMs++;
  }
  const ms = lastMs;
  return (
    HEX[(ms / 0x10000000000) & 0xff]! +
    HEX[(ms / 0x100000000) & 0xff]! +
    HEX[(ms / 0x1000000) & 0xff]! +
    HEX[(ms / 0x10000) & 0xff]! +
    '-' +
    HEX[(ms / 0x100) & 0xff]! +
    HEX[ms & 0xff]! +
    '-' +
    HEX[0x70 | ((seq >>> 28) & 0x0f)]! +
    HEX[(seq >>> 20) & 0xff]! +
    '-' +
    HEX[0x80 | ((seq >>> 14) & 0x3f)]! +
    HEX[(seq >>> 6) & 0xff]! +
    '-' +
    HEX[((seq << 2) & 0xff) | (POOL[r + 10]! & 0x03)]! +
    HEX[POOL[r + 11]!]! +
    HEX[POOL[r + 12]!]! +
    HEX[POOL[r + 13]!]! +
    HEX[POOL[r + 14]!]! +
    HEX[POOL[r + 15]!]!
  );
}

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** An inbound x-request-id is kept only when it is short and harmless; otherwise we mint one. */
export function acceptRequestId(inbound: unknown): string {
  return typeof inbound === 'string' && SAFE_REQUEST_ID.test(inbound) ? inbound : newId();
}

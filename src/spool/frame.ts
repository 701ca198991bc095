import zlib from 'node:zlib';

/**
 * On-disk framing of one spooled record: `u32 length | u32 crc32(payload) | payload`, big-endian.
 * The payload is the JSON array `[appendedAtMs, topic, key, value, headers | null]`. A zero length
 * is never written, so a tail of zeros (what some filesystems leave after a crash that extended the
 * file but lost the data) reads as torn rather than as empty records whose checksum happens to hold.
 */
export const HEADER_BYTES = 8;
/** Larger lengths can only be garbage: a gateway decision is a few KiB. */
export const MAX_RECORD_BYTES = 16 * 1024 * 1024;

export interface SpoolRecord {
  topic: string;
  key: string;
  value: string;
  headers?: Record<string, string>;
}

export interface StoredRecord extends SpoolRecord {
  appendedAt: number;
}

let table: Uint32Array | undefined;

/** Fallback for Node 20 releases that lack `zlib.crc32` (added in 20.15). */
function crc32Table(data: Uint8Array): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = table[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

export const crc32: (data: Uint8Array) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function' ? (data) => zlib.crc32(data) >>> 0 : crc32Table;

export function encodeRecord(record: SpoolRecord, appendedAt: number): Buffer {
  const payload = Buffer.from(JSON.stringify([appendedAt, record.topic, record.key, record.value, record.headers ?? null]), 'utf8');
  if (payload.length > MAX_RECORD_BYTES) throw new RangeError(`a spooled record is limited to ${MAX_RECORD_BYTES} bytes, got ${payload.length}`);
  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  frame.writeUInt32BE(crc32(payload), 4);
  payload.copy(frame, HEADER_BYTES);
  return frame;
}

function decodePayload(payload: Buffer): StoredRecord | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(payload.toString('utf8'));
  } catch {
    return null;
  }
  if (!Array.isArray(parsed) || parsed.length !== 5) return null;
  const [appendedAt, topic, key, value, headers] = parsed as unknown[];
  if (typeof appendedAt !== 'number' || typeof topic !== 'string' || typeof key !== 'string' || typeof value !== 'string') return null;
  if (headers !== null && (typeof headers !== 'object' || Array.isArray(headers))) return null;
  return { appendedAt, topic, key, value, ...(headers ? { headers: headers as Record<string, string> } : {}) };
}

export type FrameResult =
  | { kind: 'record'; record: StoredRecord; bytes: number }
  /** Not enough bytes in the buffer for the frame that starts here; `need` is its full size when known. */
  | { kind: 'short'; need: number }
  | { kind: 'bad'; reason: string };

/** The frame at `offset` of `buf`. */
export function decodeFrame(buf: Buffer, offset: number): FrameResult {
  if (buf.length - offset < HEADER_BYTES) return { kind: 'short', need: HEADER_BYTES };
  const length = buf.readUInt32BE(offset);
  if (length === 0 || length > MAX_RECORD_BYTES) return { kind: 'bad', reason: `impossible length ${length}` };
  if (buf.length - offset < HEADER_BYTES + length) return { kind: 'short', need: HEADER_BYTES + length };
  const payload = buf.subarray(offset + HEADER_BYTES, offset + HEADER_BYTES + length);
  if (crc32(payload) !== buf.readUInt32BE(offset + 4)) return { kind: 'bad', reason: 'checksum mismatch' };
  const record = decodePayload(payload);
  if (!record) return { kind: 'bad', reason: 'undecodable payload' };
  return { kind: 'record', record, bytes: HEADER_BYTES + length };
}

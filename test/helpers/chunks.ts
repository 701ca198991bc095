/** Splits `text`'s UTF-8 bytes at the given offsets (mid-character splits included): a stream's chunks, as a network may cut them. */
export function splitBytes(text: string | Buffer, cuts: number[]): Buffer[] {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const parts: Buffer[] = [];
  let at = 0;
  for (const p of [...points, bytes.length]) {
    if (p > at) parts.push(bytes.subarray(at, p));
    at = Math.max(at, p);
  }
  return parts;
}

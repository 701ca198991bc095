import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { CaracalError } from '../errors/catalog.js';

/**
 * Proxied bodies are streamed, never buffered, so the body limit is enforced while they flow: a
 * declared `content-length` over the limit is refused before anything is read (413), and a chunked
 * body is cut when it crosses the limit (the upstream request is aborted, the agent gets 413 if
 * nothing was answered yet).
 */
export class BodyTooLarge extends CaracalError {
  constructor(limit: number) {
    super('CARACAL_PAYLOAD_TOO_LARGE', `the request body is larger than ${limit} bytes`, { reasons: ['body_too_large'] });
  }
}

export function assertDeclaredLength(contentLength: string | undefined, limit: number): void {
  if (contentLength === undefined) return;
  const declared = Number(contentLength);
  if (!Number.isSafeInteger(declared) || declared < 0) throw new CaracalError('CARACAL_BAD_REQUEST', 'content-length is not a valid length', { reasons: ['bad_content_length'] });
  if (declared > limit) throw new BodyTooLarge(limit);
}

class LimitedBody extends Transform {
  private seen = 0;

  constructor(private readonly limit: number) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.limit) callback(new BodyTooLarge(this.limit));
    else callback(null, chunk);
  }
}

/** The agent's body as a stream that fails with `BodyTooLarge` past `limit` bytes. */
export function limitBody(body: Readable, limit: number): Readable {
  const limited = new LimitedBody(limit);
  body.on('error', (err) => limited.destroy(err));
  limited.on('error', () => body.unpipe(limited));
  return body.pipe(limited);
}

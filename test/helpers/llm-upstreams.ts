import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request as the upstream received it. */
export interface LlmRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * A local stand-in for a model provider that speaks just enough of its protocol for the official
 * SDK to parse the answers, checks its own credential the way the provider does, and records every
 * request it receives.
 */
export interface LlmUpstream {
  url: string;
  readonly requests: LlmRequest[];
  close(): Promise<void>;
}

type Handler = (request: LlmRequest) => { status: number; body: unknown };

async function startUpstream(handle: Handler): Promise<LlmUpstream> {
  const requests: LlmRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('error', () => {});
    req.on('end', () => {
      const request: LlmRequest = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      requests.push(request);
      let answer: { status: number; body: unknown };
      try {
        answer = handle(request);
      } catch (err) {
        answer = { status: 500, body: { error: { message: (err as Error).message } } };
      }
      const text = JSON.stringify(answer.body);
      res.writeHead(answer.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${address.port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function parseJson(body: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(body);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

/** The text every OpenAI-style chat completion answers with. */
export const OPENAI_REPLY = 'Hello from the OpenAI-style upstream.';
/** The text every Anthropic-style message answers with. */
export const ANTHROPIC_REPLY = 'Hello from the Anthropic-style upstream.';

/**
 * OpenAI-style: `POST /v1/chat/completions`, `GET /v1/models`; anything else is a 404 in OpenAI's
 * error shape. A request without `authorization: Bearer <apiKey>` is a 401, as the provider does.
 */
export function startOpenAiUpstream(options: { apiKey: string }): Promise<LlmUpstream> {
  const openAiError = (status: number, message: string, type: string, code: string | null) => ({ status, body: { error: { message, type, param: null, code } } });
  return startUpstream((request) => {
    if (request.headers.authorization !== `Bearer ${options.apiKey}`) {
      return openAiError(401, 'Incorrect API key provided.', 'invalid_request_error', 'invalid_api_key');
    }
    const path = request.url.split('?', 1)[0];
    if (request.method === 'POST' && path === '/v1/chat/completions') {
      const body = parseJson(request.body);
      return {
        status: 200,
        body: {
          id: 'chatcmpl-test-0001',
          object: 'chat.completion',
          created: 1_700_000_000,
          model: typeof body.model === 'string' ? body.model : 'unknown',
          choices: [{ index: 0, message: { role: 'assistant', content: OPENAI_REPLY, refusal: null }, logprobs: null, finish_reason: 'stop' }],
          usage: { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 },
        },
      };
    }
    if (request.method === 'GET' && path === '/v1/models') {
      return {
        status: 200,
        body: {
          object: 'list',
          data: [
            { id: 'gpt-test-small', object: 'model', created: 1_700_000_000, owned_by: 'test' },
            { id: 'gpt-test-large', object: 'model', created: 1_700_000_000, owned_by: 'test' },
          ],
        },
      };
    }
    return openAiError(404, `Unknown request URL: ${request.method} ${path}.`, 'invalid_request_error', 'unknown_url');
  });
}

/**
 * Anthropic-style: `POST /v1/messages`; anything else is a 404 in Anthropic's error shape. A
 * request without `x-api-key: <apiKey>` is a 401, as the provider does.
 */
export function startAnthropicUpstream(options: { apiKey: string }): Promise<LlmUpstream> {
  const anthropicError = (status: number, type: string, message: string) => ({ status, body: { type: 'error', error: { type, message } } });
  return startUpstream((request) => {
    if (request.headers['x-api-key'] !== options.apiKey) return anthropicError(401, 'authentication_error', 'invalid x-api-key');
    const path = request.url.split('?', 1)[0];
    if (request.method === 'POST' && path === '/v1/messages') {
      const body = parseJson(request.body);
      return {
        status: 200,
        body: {
          id: 'msg_test_0001',
          type: 'message',
          role: 'assistant',
          model: typeof body.model === 'string' ? body.model : 'unknown',
          content: [{ type: 'text', text: ANTHROPIC_REPLY }],
          stop_reason: 'end_turn',
          stop_sequence: null,
          usage: { input_tokens: 11, output_tokens: 8 },
        },
      };
    }
    return anthropicError(404, 'not_found_error', `Not found: ${request.method} ${path}`);
  });
}

import Anthropic from '@anthropic-ai/sdk';
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHarness, type Harness } from '../helpers/gateway-harness.js';
import { closedPort } from '../helpers/ports.js';
import { ANTHROPIC_REPLY, OPENAI_REPLY, startAnthropicUpstream, startOpenAiUpstream, type LlmUpstream } from '../helpers/llm-upstreams.js';

/**
 * Agents use the official OpenAI and Anthropic SDKs, unchanged except for `baseURL` and `apiKey`
 * (their Caracal token). What they must get: the upstream's answer when allowed (the upstream
 * sees its own credential, never the agent's token); otherwise an exception of the SDK's own
 * error class whose message says why, with Caracal's reasons and ids inside — and the upstream
 * never hears of a refused request.
 */

const OPENAI_KEY_ENV = 'TEST_OPENAI_KEY';
const ANTHROPIC_KEY_ENV = 'TEST_ANTHROPIC_KEY';
const BODY_LIMIT = 64 * 1024;

let h: Harness;
let openaiUpstream: LlmUpstream;
let anthropicUpstream: LlmUpstream;
let gatewayUrl: string;
let openaiKey: string;
let anthropicKey: string;
/** read + write on every LLM upstream. */
let writerToken: string;
/** read only: POST (write) is denied with `scope_action`. */
let readerToken: string;
const savedEnv = new Map<string, string | undefined>();

/** A port that was listening a moment ago and no longer is: connections to it are refused. */
async function closedPortUrl(): Promise<string> {
  return `http://127.0.0.1:${await closedPort()}`;
}

beforeAll(async () => {
  openaiKey = `sk-upstream-openai-${randomBytes(12).toString('hex')}`;
  anthropicKey = `sk-ant-upstream-${randomBytes(12).toString('hex')}`;
  for (const name of [OPENAI_KEY_ENV, ANTHROPIC_KEY_ENV]) savedEnv.set(name, process.env[name]);
  process.env[OPENAI_KEY_ENV] = openaiKey;
  process.env[ANTHROPIC_KEY_ENV] = anthropicKey;

  openaiUpstream = await startOpenAiUpstream({ apiKey: openaiKey });
  anthropicUpstream = await startAnthropicUpstream({ apiKey: anthropicKey });
  const downUrl = await closedPortUrl();
  h = await createHarness({
    configOverrides: { gateway: { bodyLimitBytes: BODY_LIMIT } },
    extraUpstreams: [
      { name: 'openai', url: openaiUpstream.url, dialect: 'openai', credentials: { header: 'authorization', valueEnv: OPENAI_KEY_ENV, prefix: 'Bearer ' } },
      { name: 'anthropic', url: anthropicUpstream.url, dialect: 'anthropic', credentials: { header: 'x-api-key', valueEnv: ANTHROPIC_KEY_ENV } },
      { name: 'anthropic-down', url: downUrl, dialect: 'anthropic', credentials: { header: 'x-api-key', valueEnv: ANTHROPIC_KEY_ENV } },
    ],
  });
  await h.assembled.gateway.app.listen({ host: '127.0.0.1', port: 0 });
  const address = h.assembled.gateway.app.server.address() as AddressInfo;
  gatewayUrl = `http://127.0.0.1:${address.port}`;

  const resources = ['api:external/openai', 'api:external/anthropic', 'api:external/anthropic-down'];
  const allowLlmUpstreams = async (principalId: string) => {
    for (const url of [openaiUpstream.url, anthropicUpstream.url, downUrl]) {
      await h.op('allowlist.create', { principalId, pattern: `${url}/**`, patternType: 'glob' });
    }
  };
  const writer = await h.registerAgent();
  await h.grant(writer, resources, ['read', 'write']);
  await allowLlmUpstreams(writer);
  writerToken = await h.token(writer);
  const reader = await h.registerAgent();
  await h.grant(reader, resources, ['read']);
  await allowLlmUpstreams(reader);
  readerToken = await h.token(reader);
});

afterAll(async () => {
  await h?.close();
  await openaiUpstream?.close();
  await anthropicUpstream?.close();
  for (const [name, value] of savedEnv) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
});

const openai = (apiKey: string, upstream = 'openai') => new OpenAI({ apiKey, baseURL: `${gatewayUrl}/proxy/${upstream}/v1`, maxRetries: 0 });
const anthropic = (apiKey: string, upstream = 'anthropic') => new Anthropic({ apiKey, baseURL: `${gatewayUrl}/proxy/${upstream}`, maxRetries: 0 });

const chat = (client: OpenAI, content = 'Say hello.') => client.chat.completions.create({ model: 'gpt-test-small', messages: [{ role: 'user', content }] });
const message = (client: Anthropic) => client.messages.create({ model: 'claude-test', max_tokens: 64, messages: [{ role: 'user', content: 'Say hello.' }] });

/** The error a call rejects with (the test fails if it resolves). */
async function rejection(call: Promise<unknown>): Promise<unknown> {
  try {
    await call;
  } catch (err) {
    return err;
  }
  throw new Error('the call succeeded but was expected to fail');
}

/** Runs `call` and asserts that neither LLM upstream received anything meanwhile. */
async function unheardUpstream<T>(call: () => Promise<T>): Promise<T> {
  const before = [openaiUpstream.requests.length, anthropicUpstream.requests.length];
  const result = await call();
  expect([openaiUpstream.requests.length, anthropicUpstream.requests.length]).toEqual(before);
  return result;
}

/** Every header value of every request an upstream recorded, as `name: value` lines. */
function recordedHeaderLines(upstream: LlmUpstream): string[] {
  return upstream.requests.flatMap((r) => Object.entries(r.headers).flatMap(([name, value]) => (Array.isArray(value) ? value : [value ?? '']).map((v) => `${name}: ${v}`)));
}

/** The message must be readable text that names the Caracal code, not a stringified object. */
function expectReadable(text: string, code: string): void {
  expect(text).toContain(code);
  expect(text).not.toContain('[object Object]');
  expect(text).not.toMatch(/status code \(no body\)/);
}

describe('official SDKs through the gateway', () => {
  it('OpenAI SDK: an allowed chat completion returns the upstream answer; the upstream sees its own key, never the agent token', async () => {
    const sent = openaiUpstream.requests.length;
    const completion = await chat(openai(writerToken));
    expect(completion.choices[0]?.message.content).toBe(OPENAI_REPLY);
    expect(completion.model).toBe('gpt-test-small');
    expect(completion.usage).toEqual({ prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 });

    const received = openaiUpstream.requests.slice(sent);
    expect(received).toHaveLength(1);
    expect(received[0]!.method).toBe('POST');
    expect(received[0]!.url).toBe('/v1/chat/completions');
    expect(received[0]!.headers.authorization).toBe(`Bearer ${openaiKey}`);
    expect(received[0]!.headers['x-api-key']).toBeUndefined();
    expect(JSON.parse(received[0]!.body)).toMatchObject({ model: 'gpt-test-small', messages: [{ role: 'user', content: 'Say hello.' }] });

    const models = await openai(readerToken).models.list();
    expect(models.data.map((m) => m.id)).toEqual(['gpt-test-small', 'gpt-test-large']);
    expect(openaiUpstream.requests.at(-1)).toMatchObject({ method: 'GET', url: '/v1/models' });
    expect(openaiUpstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${openaiKey}`);
  });

  it('Anthropic SDK: an allowed message returns the upstream answer; the upstream sees its own key, never the agent token', async () => {
    const sent = anthropicUpstream.requests.length;
    const reply = await message(anthropic(writerToken));
    expect(reply.content).toEqual([{ type: 'text', text: ANTHROPIC_REPLY }]);
    expect(reply.stop_reason).toBe('end_turn');
    expect(reply.usage).toMatchObject({ input_tokens: 11, output_tokens: 8 });

    const received = anthropicUpstream.requests.slice(sent);
    expect(received).toHaveLength(1);
    expect(received[0]!.method).toBe('POST');
    expect(received[0]!.url).toBe('/v1/messages');
    expect(received[0]!.headers['x-api-key']).toBe(anthropicKey);
    expect(received[0]!.headers.authorization).toBeUndefined();
    expect(JSON.parse(received[0]!.body)).toMatchObject({ model: 'claude-test', max_tokens: 64 });

    // Other Anthropic clients put the key in `x-api-key`: the gateway reads it there too and
    // replaces it with the upstream's own.
    const response = await fetch(`${gatewayUrl}/proxy/anthropic/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': writerToken, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'claude-test', max_tokens: 16, messages: [{ role: 'user', content: 'Hi.' }] }),
    });
    expect(response.status).toBe(200);
    expect(((await response.json()) as { content: unknown }).content).toEqual([{ type: 'text', text: ANTHROPIC_REPLY }]);
    expect(anthropicUpstream.requests.at(-1)!.headers['x-api-key']).toBe(anthropicKey);
  });

  it('OpenAI SDK: a denied call throws PermissionDeniedError with the reason in its message and Caracal fields in err.error', async () => {
    const err = await unheardUpstream(() => rejection(chat(openai(readerToken))));
    expect(err).toBeInstanceOf(OpenAI.APIError);
    expect(err).toBeInstanceOf(OpenAI.PermissionDeniedError);
    const apiError = err as InstanceType<typeof OpenAI.APIError>;
    console.log(`OpenAI SDK, denied call: ${apiError.constructor.name}: ${apiError.message}`);
    expect(apiError.status).toBe(403);
    expectReadable(apiError.message, 'CARACAL_POLICY_DENIED');
    expect(apiError.message).toContain('scope_action');
    expect(apiError.message).toMatch(/^403 /);
    expect(apiError.code).toBe('CARACAL_POLICY_DENIED');
    expect(apiError.type).toBe('permission_error');
    const body = apiError.error as Record<string, unknown>;
    expect(body.reasons).toEqual(expect.arrayContaining(['scope_action']));
    expect(body.decision_id).toEqual(expect.any(String));
    expect(body.decision_id).toBe(apiError.headers?.get('x-caracal-decision-id'));
    expect(body.request_id).toEqual(expect.any(String));
    expect(body.request_id).toBe(apiError.requestID);
  });

  it('Anthropic SDK: a denied call throws PermissionDeniedError with the reason in its message and Caracal fields in err.error', async () => {
    const err = await unheardUpstream(() => rejection(message(anthropic(readerToken))));
    expect(err).toBeInstanceOf(Anthropic.APIError);
    expect(err).toBeInstanceOf(Anthropic.PermissionDeniedError);
    const apiError = err as InstanceType<typeof Anthropic.APIError>;
    console.log(`Anthropic SDK, denied call: ${apiError.constructor.name}: ${apiError.message}`);
    expect(apiError.status).toBe(403);
    expectReadable(apiError.message, 'CARACAL_POLICY_DENIED');
    expect(apiError.message).toContain('scope_action');
    expect(apiError.message).toMatch(/^403 /);
    expect(apiError.type).toBe('permission_error');
    const body = apiError.error as { type: string; error: Record<string, unknown>; request_id: string };
    expect(body.type).toBe('error');
    expect(body.error.type).toBe('permission_error');
    expect(body.error.code).toBe('CARACAL_POLICY_DENIED');
    expect(body.error.message).toContain('scope_action');
    expect(body.error.reasons).toEqual(expect.arrayContaining(['scope_action']));
    expect(body.error.decision_id).toEqual(expect.any(String));
    expect(body.error.decision_id).toBe(apiError.headers?.get('x-caracal-decision-id'));
    expect(body.request_id).toEqual(expect.any(String));
    expect(body.error.request_id).toBe(body.request_id);
    expect(body.request_id).toBe(apiError.headers?.get('x-request-id'));
  });

  it('a bad token is a 401 with a readable message in both SDKs', async () => {
    // A real token with its signature replaced: well-formed, not signed by the gateway's key.
    const [header, payload] = writerToken.split('.');
    const forged = `${header}.${payload}.${Buffer.from(randomBytes(64)).toString('base64url')}`;

    const openaiErr = await unheardUpstream(() => rejection(chat(openai(forged))));
    expect(openaiErr).toBeInstanceOf(OpenAI.AuthenticationError);
    const oe = openaiErr as InstanceType<typeof OpenAI.APIError>;
    console.log(`OpenAI SDK, bad token: ${oe.constructor.name}: ${oe.message}`);
    expect(oe.status).toBe(401);
    expectReadable(oe.message, 'CARACAL_TOKEN_INVALID');
    expect(oe.message).toMatch(/^401 \S+/);
    expect(oe.code).toBe('CARACAL_TOKEN_INVALID');
    expect(oe.type).toBe('authentication_error');
    expect((oe.error as Record<string, unknown>).request_id).toBe(oe.requestID);

    const anthropicErr = await unheardUpstream(() => rejection(message(anthropic(forged))));
    expect(anthropicErr).toBeInstanceOf(Anthropic.AuthenticationError);
    const ae = anthropicErr as InstanceType<typeof Anthropic.APIError>;
    console.log(`Anthropic SDK, bad token: ${ae.constructor.name}: ${ae.message}`);
    expect(ae.status).toBe(401);
    expectReadable(ae.message, 'CARACAL_TOKEN_INVALID');
    expect(ae.message).toMatch(/^401 \S+/);
    expect(ae.type).toBe('authentication_error');
    expect((ae.error as { error: Record<string, unknown> }).error.code).toBe('CARACAL_TOKEN_INVALID');

    // An expired token names its own code.
    const expiredToken = await h.token((await h.registerAgent()), 60, new Date(Date.now() - 3_600_000));
    const expired = (await unheardUpstream(() => rejection(chat(openai(expiredToken))))) as InstanceType<typeof OpenAI.APIError>;
    console.log(`OpenAI SDK, expired token: ${expired.constructor.name}: ${expired.message}`);
    expect(expired).toBeInstanceOf(OpenAI.AuthenticationError);
    expect(expired.status).toBe(401);
    expectReadable(expired.message, 'CARACAL_TOKEN_EXPIRED');
  });

  it('gateway errors before the decision keep the dialect shape: 400 for a refused path, 413 for a body over the limit', async () => {
    const client = openai(writerToken);
    const refused = (await unheardUpstream(() => rejection(client.get('/models;version=1')))) as InstanceType<typeof OpenAI.APIError>;
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    expect(refused.status).toBe(400);
    expectReadable(refused.message, 'CARACAL_BAD_REQUEST');
    expect(refused.type).toBe('invalid_request_error');
    expect((refused.error as Record<string, unknown>).reasons).toEqual(['path_parameters']);

    const tooLarge = (await unheardUpstream(() => rejection(chat(client, 'x'.repeat(BODY_LIMIT * 2))))) as InstanceType<typeof OpenAI.APIError>;
    console.log(`OpenAI SDK, body over the limit: ${tooLarge.constructor.name}: ${tooLarge.message}`);
    expect(tooLarge).toBeInstanceOf(OpenAI.APIError);
    expect(tooLarge.status).toBe(413);
    expectReadable(tooLarge.message, 'CARACAL_PAYLOAD_TOO_LARGE');
    expect(tooLarge.code).toBe('CARACAL_PAYLOAD_TOO_LARGE');
    expect(tooLarge.type).toBe('request_too_large');
  });

  it('an unreachable upstream is a 502 in the dialect shape (Anthropic SDK)', async () => {
    // A per-request timeout well above a refused connection's few milliseconds, so a gateway that
    // never answers fails this test in seconds rather than at its idle-socket timeout.
    const call = anthropic(writerToken, 'anthropic-down').messages.create(
      { model: 'claude-test', max_tokens: 64, messages: [{ role: 'user', content: 'Say hello.' }] },
      { timeout: 10_000 },
    );
    const err = (await unheardUpstream(() => rejection(call))) as InstanceType<typeof Anthropic.APIError>;
    console.log(`Anthropic SDK, upstream down: ${err.constructor.name}: ${err.message}`);
    expect(err).toBeInstanceOf(Anthropic.InternalServerError);
    expect(err.status).toBe(502);
    expectReadable(err.message, 'CARACAL_UPSTREAM_UNREACHABLE');
    expect(err.type).toBe('overloaded_error');
    const body = err.error as { type: string; error: Record<string, unknown>; request_id: string };
    expect(body.type).toBe('error');
    expect(body.error.code).toBe('CARACAL_UPSTREAM_UNREACHABLE');
    expect(body.request_id).toEqual(expect.any(String));
  });

  it('a method the upstream does not map is a 405 in the dialect shape, with Allow', async () => {
    const response = await unheardUpstream(() =>
      fetch(`${gatewayUrl}/proxy/openai/v1/models`, { method: 'PROPFIND', headers: { authorization: `Bearer ${writerToken}` } }),
    );
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toContain('POST');
    const body = (await response.json()) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ code: 'CARACAL_METHOD_NOT_ALLOWED', type: 'invalid_request_error', param: null, request_id: response.headers.get('x-request-id') });
    expect(body.error.message).toMatch(/PROPFIND .*"openai".*\[CARACAL_METHOD_NOT_ALLOWED\]$/);

    const anthropicResponse = await unheardUpstream(() =>
      fetch(`${gatewayUrl}/proxy/anthropic/v1/messages`, { method: 'PROPFIND', headers: { 'x-api-key': writerToken } }),
    );
    expect(anthropicResponse.status).toBe(405);
    const anthropicBody = (await anthropicResponse.json()) as { type: string; error: Record<string, unknown>; request_id: string };
    expect(anthropicBody).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', code: 'CARACAL_METHOD_NOT_ALLOWED' }, request_id: anthropicResponse.headers.get('x-request-id') });
  });

  it('an unknown upstream has no dialect: the plain Caracal shape, which both SDKs still turn into a readable 404', async () => {
    const openaiErr = (await unheardUpstream(() => rejection(chat(openai(writerToken, 'nope'))))) as InstanceType<typeof OpenAI.APIError>;
    console.log(`OpenAI SDK, unknown upstream: ${openaiErr.constructor.name}: ${openaiErr.message}`);
    expect(openaiErr).toBeInstanceOf(OpenAI.NotFoundError);
    expect(openaiErr.status).toBe(404);
    // The flat shape's `error` is the code string, which the OpenAI SDK takes as its error object
    // and prints as JSON.
    expect(openaiErr.message).toBe('404 "CARACAL_UNKNOWN_UPSTREAM"');
    expect(openaiErr.error).toBe('CARACAL_UNKNOWN_UPSTREAM');

    const anthropicErr = (await unheardUpstream(() => rejection(message(anthropic(writerToken, 'nope'))))) as InstanceType<typeof Anthropic.APIError>;
    console.log(`Anthropic SDK, unknown upstream: ${anthropicErr.constructor.name}: ${anthropicErr.message}`);
    expect(anthropicErr).toBeInstanceOf(Anthropic.NotFoundError);
    expect(anthropicErr.status).toBe(404);
    // The Anthropic SDK reads the flat shape's top-level `message`.
    expect(anthropicErr.message).toBe('404 no upstream named "nope" is configured');
    expect(anthropicErr.error).toMatchObject({ error: 'CARACAL_UNKNOWN_UPSTREAM', reasons: [], request_id: expect.any(String) });
    expect((anthropicErr.error as { request_id: string }).request_id).toBe(anthropicErr.headers?.get('x-request-id'));
  });

  it("the upstream's own errors reach the SDK unchanged", async () => {
    const sent = openaiUpstream.requests.length;
    const err = (await rejection(openai(writerToken).models.retrieve('no-such-model'))) as InstanceType<typeof OpenAI.APIError>;
    expect(openaiUpstream.requests.length).toBe(sent + 1);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect(err.message).toBe('404 Unknown request URL: GET /v1/models/no-such-model.');
    expect(err.code).toBe('unknown_url');
  });

  it('no header any upstream received carries an agent token', async () => {
    const lines = [...recordedHeaderLines(openaiUpstream), ...recordedHeaderLines(anthropicUpstream)];
    // The allowed calls above ran (this test runs last): the check covers real traffic, not an empty list.
    expect(openaiUpstream.requests.length).toBeGreaterThanOrEqual(3);
    expect(anthropicUpstream.requests.length).toBeGreaterThanOrEqual(2);
    for (const token of [writerToken, readerToken]) {
      for (const line of lines) expect(line).not.toContain(token);
      // The token's signature alone (the part that makes it usable) must not appear either.
      const signature = token.split('.')[2]!;
      for (const line of lines) expect(line).not.toContain(signature);
    }
  });
});

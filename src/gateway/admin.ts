import { timingSafeEqual } from 'node:crypto';
import swagger, { type FastifyDynamicSwaggerOptions } from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest, type FastifySchema } from 'fastify';
import { z } from 'zod';
import type { AppContext } from '../context.js';
import { CaracalError, ERROR_CATALOG } from '../errors/catalog.js';
import type { Logger } from '../logging/logger.js';
import type { Operation } from '../operations/define.js';
import { OPERATIONS } from '../operations/index.js';
import { adminTokenActor, runAuditedOperation } from '../audit/admin-actions.js';
import { ADMIN_BUNDLES_PREFIX, registerBundleServer, servedStoreOf } from './bundle-server.js';
import { installErrorHandling } from './errors.js';
import { baseFastifyOptions } from './fastify-defaults.js';

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export const ADMIN_OPS_PREFIX = '/admin/v1/ops';
export const ADMIN_OPENAPI_PATH = '/admin/v1/openapi.json';

/**
 * The admin API: the operator operations over HTTP, on its own listener (loopback by default)
 * with its own bearer credential, separate from agent traffic. Every route but /health needs the
 * credential — the OpenAPI document too: it holds no secret, but it tells an unauthenticated
 * caller which operations exist.
 */
export async function buildAdminApp(ctx: AppContext, adminToken: string): Promise<FastifyInstance> {
  const actor = adminTokenActor(adminToken);
  const app = Fastify({
    loggerInstance: ctx.logger.child({ component: 'admin' }) as FastifyBaseLogger,
    ...baseFastifyOptions(),
    bodyLimit: 1024 * 1024,
  });
  installErrorHandling(app, ctx.logger);
  const bundleReadToken = ctx.config.admin.bundleReadToken;
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    if (request.url === '/health') return;
    const header = request.headers.authorization ?? '';
    const given = header.startsWith('Bearer ') ? header.slice(7) : '';
    // The bundle read credential opens only the bundle server's GET/HEAD routes: judged by the route the router
    // matched (not the raw URL), so no spelling of a path reaches another route with it.
    if (bundleReadToken && given && (request.method === 'GET' || request.method === 'HEAD') && request.routeOptions.url?.startsWith(`${ADMIN_BUNDLES_PREFIX}/`) && sameSecret(given, bundleReadToken)) return;
    if (!given || !sameSecret(given, adminToken)) throw new CaracalError('CARACAL_ADMIN_UNAUTHENTICATED');
  });
  // Registers the OpenAPI generator first: it only sees the routes registered after it.
  await registerOperationRoutes(app, {
    operations: OPERATIONS,
    run: (name, raw, request) =>
      runAuditedOperation(ctx, name, raw, { transport: 'admin_api', actor, origin: { address: request.ip.slice(0, 64), host: null, request_id: request.id } }),
    logger: ctx.logger,
  });
  // operationIds of these routes contain ":", which no operation name can: they never collide.
  app.get(
    '/health',
    documentOnly({
      summary: 'Liveness of the admin listener (no credential needed)',
      operationId: 'admin:health',
      security: [],
      response: { 200: { type: 'object', properties: { status: { const: 'ok' } }, required: ['status'] } },
    }),
    async () => ({ status: 'ok' }),
  );
  app.get(
    ADMIN_OPS_PREFIX,
    documentOnly({
      summary: 'List the operations (name and description)',
      operationId: 'admin:list-operations',
      response: {
        200: { type: 'array', items: { type: 'object', properties: { name: { type: 'string' }, description: { type: 'string' } }, required: ['name', 'description'] } },
        ...ERROR_RESPONSES,
      },
    }),
    async () => Object.entries(OPERATIONS).map(([name, operation]) => ({ name, description: operation.description })),
  );
  app.get(
    ADMIN_OPENAPI_PATH,
    documentOnly({ summary: 'This OpenAPI document', operationId: 'admin:openapi', response: { 200: { type: 'object', description: 'OpenAPI 3.1 document' }, ...ERROR_RESPONSES } }),
    async () => app.swagger(),
  );
  // The gateway's bundle store as a bundle server (OPA's bundle service API), behind the same credential.
  registerBundleServer(app, servedStoreOf(ctx));
  return app;
}

type OpenApiBase = NonNullable<FastifyDynamicSwaggerOptions['openapi']>;

/** A table of operations as the admin API sees it (OPERATIONS in production; tests pass their own). */
export type OperationTable = Readonly<Record<string, Operation<z.ZodType, unknown>>>;

export interface OperationRoutesOptions {
  operations: OperationTable;
  /** Validates (zod, in the operation layer) and runs one operation. */
  run(name: string, raw: unknown, request: FastifyRequest): Promise<unknown>;
  logger: Logger;
}

/**
 * Registers @fastify/swagger and one `POST /admin/v1/ops/<name>` route per operation of the table,
 * each described in the OpenAPI document by the operation's zod schema; plus the generic
 * `POST /admin/v1/ops/:name` (hidden from the document), which answers 404 for unknown names.
 * Everything is derived from the table when the app is built, so a new operation is routed and
 * documented without touching this file.
 *
 * The schemas are DOCUMENT-ONLY: they reach the OpenAPI generator through `swaggerTransform` and
 * are never given to Fastify as the route `schema`. Validation stays in one place, the operation's
 * zod schema (`parseOperationArgs`), whose 400 names every field. Attached as Fastify schemas they
 * would be compiled by ajv — a second validator that disagrees with zod at the edges (coercion,
 * refinements, the `{}` stand-ins for unrepresentable types) and answers with other messages — and
 * the response schemas would be compiled by fast-json-stringify, which drops fields the schema does
 * not list (an error's `decision_id`, an operation's result).
 */
export async function registerOperationRoutes(app: FastifyInstance, options: OperationRoutesOptions): Promise<void> {
  const described = describeOperations(options.operations);
  const log = options.logger.child({ component: 'admin' });
  for (const [name, notes] of described.notes) {
    log.warn({ operation: name, notes }, 'part of the operation arguments cannot be expressed in JSON Schema; documented as {} (any value), validated by the operation');
  }
  // JSON Schemas made at run time: the generator copies them into the document as they are, and
  // the test validates the result against the OpenAPI 3.1 schema.
  const base: Record<string, unknown> = {
    openapi: '3.1.0',
    info: {
      title: 'Caracal admin API',
      version: 'v1',
      description:
        'Operator operations of a Caracal gateway: one POST per operation, the JSON body is its arguments. ' +
        'Answers `{"result": …}` on success and the error body (`error`, `message`, `reasons`, `request_id`) otherwise.',
    },
    components: {
      securitySchemes: {
        adminToken: {
          type: 'http',
          scheme: 'bearer',
          description: "The admin credential: the gateway's CARACAL_ADMIN_TOKEN, or the one it generated into <home>/admin.token",
        },
      },
      schemas: { ErrorBody: ERROR_BODY_SCHEMA, ...described.components },
    },
    security: [{ adminToken: [] }],
  };
  await app.register(swagger, {
    openapi: base as OpenApiBase,
    // The generator marks every documented body as required; an operation whose arguments are
    // all optional also accepts no body at all.
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject;
      for (const url of described.optionalBody) {
        const requestBody = document.openapiObject.paths?.[url]?.post?.requestBody;
        if (requestBody && 'required' in requestBody) requestBody.required = false;
      }
      return document.openapiObject;
    },
  });
  for (const [name, schema] of described.routes) {
    const bodyLimit = options.operations[name]?.bodyLimitBytes;
    app.post(`${ADMIN_OPS_PREFIX}/${name}`, { ...documentOnly(schema), ...(bodyLimit ? { bodyLimit } : {}) }, async (request) => ({ result: (await options.run(name, request.body ?? {}, request)) ?? null }));
  }
  app.post<{ Params: { name: string } }>(`${ADMIN_OPS_PREFIX}/:name`, { schema: { hide: true } }, async (request) => ({
    result: (await options.run(request.params.name, request.body ?? {}, request)) ?? null,
  }));
}

/** Route options that describe a route in the OpenAPI document without Fastify validating or serializing by it. */
function documentOnly(schema: FastifySchema) {
  return { config: { swaggerTransform: ({ url }: { url: string }) => ({ url, schema }) } };
}

const ERROR_BODY_SCHEMA = {
  type: 'object',
  description: 'Every error answer. Further fields may follow (e.g. decision_id).',
  properties: {
    error: { type: 'string', enum: Object.keys(ERROR_CATALOG), description: 'Stable code from the error catalog' },
    message: { type: 'string', description: 'One line for humans' },
    reasons: { type: 'array', items: { type: 'string' }, description: 'Machine-readable reasons; for CARACAL_VALIDATION one per invalid argument, starting with its name' },
    request_id: { type: 'string', description: 'Also in the x-request-id response header' },
  },
  required: ['error', 'message', 'reasons', 'request_id'],
  additionalProperties: true,
};

const errorRef = (description: string) => ({ description, $ref: '#/components/schemas/ErrorBody' });
const ERROR_RESPONSES = {
  401: errorRef('The admin credential is missing or wrong (CARACAL_ADMIN_UNAUTHENTICATED)'),
  '4xx': errorRef('Another client error: not found, conflict, body too large, …'),
  '5xx': errorRef('The operation failed on the server side (a backing service, internal)'),
};
const OPERATION_RESPONSES = {
  200: {
    description: 'The operation ran; `result` is what it returned',
    type: 'object',
    properties: { result: { description: "The operation's result (null when it returns nothing)" } },
    required: ['result'],
  },
  400: errorRef('The body is malformed (CARACAL_BAD_REQUEST) or an argument is invalid (CARACAL_VALIDATION; `reasons` names each field)'),
  ...ERROR_RESPONSES,
};

const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export interface DescribedOperations {
  /** Operation name → its document-only route schema. */
  routes: Map<string, FastifySchema>;
  /** Shared schemas the argument schemas refer to (zod `$defs`: recursive or `.meta({ id })` types). */
  components: Record<string, unknown>;
  /** URLs of the operations whose arguments are all optional. */
  optionalBody: string[];
  /** Operation name → what could not be expressed in JSON Schema. */
  notes: Map<string, string[]>;
}

/** The OpenAPI description of every operation of the table. Never throws on an unrepresentable schema. */
export function describeOperations(operations: OperationTable): DescribedOperations {
  const described: DescribedOperations = { routes: new Map(), components: {}, optionalBody: [], notes: new Map() };
  for (const [name, operation] of Object.entries(operations)) {
    // The name becomes a static path segment: `:` or `*` would make it a parameter or a wildcard.
    if (!SAFE_NAME.test(name)) throw new Error(`operation name ${JSON.stringify(name)} cannot be a URL path segment (letters, digits, ".", "_", "-")`);
    const args = argsJsonSchema(name, operation.args);
    Object.assign(described.components, args.components);
    if (args.notes.length > 0) described.notes.set(name, args.notes);
    if (!args.bodyRequired) described.optionalBody.push(`${ADMIN_OPS_PREFIX}/${name}`);
    const caveat = args.notes.length > 0 ? ` Not expressible in JSON Schema, so documented as {} (any value) and validated by the operation: ${args.notes.join('; ')}.` : '';
    described.routes.set(name, {
      operationId: name,
      summary: operation.description,
      ...(caveat ? { description: caveat.trim() } : {}),
      tags: [name.split('.')[0]!],
      body: args.schema,
      response: OPERATION_RESPONSES,
    });
  }
  return described;
}

interface ArgsJsonSchema {
  schema: Record<string, unknown>;
  components: Record<string, unknown>;
  bodyRequired: boolean;
  notes: string[];
}

/**
 * The JSON Schema (2020-12, the dialect of OpenAPI 3.1) of an operation's input. Types with no
 * JSON Schema equivalent (dates, bigints, custom checks, …) become `{}` and are listed in `notes`;
 * if the conversion fails as a whole, the whole body is `{}`. Zod's `$defs` are moved to the
 * document's components (a `#/$defs/…` reference would resolve against the document root).
 */
export function argsJsonSchema(name: string, schema: z.ZodType): ArgsJsonSchema {
  const notes: string[] = [];
  let json: Record<string, unknown>;
  try {
    json = z.toJSONSchema(schema, {
      io: 'input',
      unrepresentable: ({ path, message }) => {
        notes.push(`${describePath(path)}: ${message}`);
        return {};
      },
    }) as Record<string, unknown>;
  } catch (err) {
    notes.push(`arguments: ${(err as Error).message}`);
    return { schema: {}, components: {}, bodyRequired: false, notes };
  }
  const { $schema: _dialect, $defs, ...root } = json;
  const prefix = `${name}.`;
  const components: Record<string, unknown> = {};
  let selfReferenced = false;
  const rename = (ref: string): string => {
    if (ref === '#') {
      selfReferenced = true;
      return `#/components/schemas/${prefix}args`;
    }
    const key = ref.startsWith('#/$defs/') ? ref.slice('#/$defs/'.length) : undefined;
    return key !== undefined ? `#/components/schemas/${prefix}${componentKey(key)}` : ref;
  };
  for (const [key, def] of Object.entries(($defs ?? {}) as Record<string, unknown>)) components[`${prefix}${componentKey(key)}`] = rewriteRefs(def, rename);
  let body = rewriteRefs(root, rename) as Record<string, unknown>;
  if (selfReferenced) {
    components[`${prefix}args`] = body;
    body = { $ref: `#/components/schemas/${prefix}args` };
  }
  const required = root.required;
  const bodyRequired = root.type !== 'object' || (Array.isArray(required) && required.length > 0);
  return { schema: body, components, bodyRequired, notes };
}

function describePath(path: (string | number)[]): string {
  // ['properties', 'when'] → 'when'; the JSON Schema keywords in between say nothing to a user.
  const names = path.filter((part, i) => path[i - 1] === 'properties' || typeof part === 'number');
  return names.join('.') || 'arguments';
}

function componentKey(key: string): string {
  return key.replace(/[^A-Za-z0-9._-]/g, '_');
}

function rewriteRefs(node: unknown, rename: (ref: string) => string): unknown {
  if (Array.isArray(node)) return node.map((item) => rewriteRefs(item, rename));
  if (node === null || typeof node !== 'object') return node;
  return Object.fromEntries(
    Object.entries(node).map(([key, value]) => [key, key === '$ref' && typeof value === 'string' ? rename(value) : rewriteRefs(value, rename)]),
  );
}

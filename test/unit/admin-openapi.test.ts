import { Validator } from '@seriousme/openapi-schema-validator';
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { argsJsonSchema, describeOperations, registerOperationRoutes, type OperationTable } from '../../src/gateway/admin.js';
import { createLogger } from '../../src/logging/logger.js';
import { op } from '../../src/operations/define.js';
import { OPERATIONS } from '../../src/operations/index.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- OpenAPI/JSON documents of arbitrary shape, walked freely by the assertions
type Json = Record<string, any>;

/** The document a table of operations produces, without a database: runs echo their arguments. */
async function documentFor(operations: OperationTable): Promise<Json> {
  const app = Fastify();
  await registerOperationRoutes(app, { operations, run: async (_name, raw) => raw, logger: createLogger('silent') });
  await app.ready();
  const document = app.swagger() as Json;
  await app.close();
  return document;
}

function refsIn(node: unknown): string[] {
  if (Array.isArray(node)) return node.flatMap(refsIn);
  if (node === null || typeof node !== 'object') return [];
  return Object.entries(node).flatMap(([key, value]) => (key === '$ref' && typeof value === 'string' ? [value] : refsIn(value)));
}

function expectRefsResolve(document: Json): void {
  for (const ref of refsIn(document.paths).concat(refsIn(document.components))) {
    expect(ref).toMatch(/^#\/components\/schemas\//);
    expect(document.components.schemas).toHaveProperty([ref.slice('#/components/schemas/'.length)]);
  }
}

describe('admin API OpenAPI description (derived from the operations table)', () => {
  it('describes every operation of OPERATIONS, its body from the zod input schema, summary from its description', () => {
    const described = describeOperations(OPERATIONS);
    expect([...described.routes.keys()].sort()).toEqual(Object.keys(OPERATIONS).sort());
    for (const [name, operation] of Object.entries(OPERATIONS)) {
      const route = described.routes.get(name)!;
      expect(route.summary).toBe(operation.description);
      const { $schema: _dialect, ...expected } = z.toJSONSchema(operation.args, { io: 'input', unrepresentable: 'any' }) as Json;
      // With $defs the references are rewritten to the components (next tests); otherwise it is the same schema.
      if (!expected.$defs) expect(route.body, name).toEqual(expected);
    }
  });

  it('documents unrepresentable argument types as {} and says so, instead of failing the build', async () => {
    const operations: OperationTable = {
      'odd.dates': op({ description: 'Takes a date and a bigint', args: z.object({ when: z.date(), count: z.bigint(), name: z.string() }).strict(), run: async () => null }),
      'odd.custom': op({ description: 'Takes a custom check', args: z.custom<string>((v) => typeof v === 'string'), run: async () => null }),
      'odd.broken': op({
        description: 'A schema the converter cannot walk at all',
        args: z.object({
          get boom(): z.ZodString {
            throw new Error('boom');
          },
        }),
        run: async () => null,
      }),
    };
    const dates = argsJsonSchema('odd.dates', operations['odd.dates']!.args);
    expect(dates.schema).toMatchObject({ type: 'object', properties: { when: {}, count: {}, name: { type: 'string' } }, required: ['when', 'count', 'name'] });
    expect(dates.notes.join('\n')).toMatch(/when: Date cannot be represented/);
    expect(dates.notes.join('\n')).toMatch(/count: BigInt cannot be represented/);
    expect(argsJsonSchema('odd.custom', operations['odd.custom']!.args)).toMatchObject({ schema: {}, notes: [expect.stringMatching(/^arguments: Custom/)] });
    expect(argsJsonSchema('odd.broken', operations['odd.broken']!.args)).toEqual({ schema: {}, components: {}, bodyRequired: false, notes: ['arguments: boom'] });

    const document = await documentFor(operations);
    expect(await new Validator().validate(document)).toEqual({ valid: true });
    expect(Object.keys(document.paths)).toEqual(expect.arrayContaining(['/admin/v1/ops/odd.dates', '/admin/v1/ops/odd.custom', '/admin/v1/ops/odd.broken']));
    expect(document.paths['/admin/v1/ops/odd.dates'].post.description).toMatch(/documented as \{\} \(any value\).*when: Date/);
  });

  it('moves zod $defs (recursive and .meta({ id }) types) into the components and rewrites the references', async () => {
    const Label = z.string().min(1).meta({ id: 'Label', description: 'a label' });
    interface Tree {
      label: string;
      children: Tree[];
    }
    const TreeSchema: z.ZodType<Tree> = z.lazy(() => z.object({ label: Label, children: z.array(TreeSchema) }).strict());
    const operations: OperationTable = {
      'tree.plant': op({ description: 'Plant a tree', args: z.object({ tree: TreeSchema, tag: Label }).strict(), run: async () => null }),
      'tree.grow': op({ description: 'A schema that refers to itself at the root', args: TreeSchema, run: async () => null }),
    };
    const document = await documentFor(operations);
    expect(await new Validator().validate(document)).toEqual({ valid: true });
    expect(JSON.stringify(document)).not.toContain('$defs');
    expectRefsResolve(document);
    expect(document.components.schemas['tree.plant.Label']).toMatchObject({ type: 'string', description: 'a label' });
    expect(document.paths['/admin/v1/ops/tree.grow'].post.requestBody.content['application/json'].schema).toEqual({ $ref: '#/components/schemas/tree.grow.args' });
  });

  it('marks a body optional only when every argument is optional', async () => {
    const document = await documentFor({
      'x.needs': op({ description: 'Needs an id', args: z.object({ id: z.string() }).strict(), run: async () => null }),
      'x.optional': op({ description: 'All optional', args: z.object({ limit: z.number().optional() }).strict(), run: async () => null }),
    });
    expect(document.paths['/admin/v1/ops/x.needs'].post.requestBody.required).toBe(true);
    expect(document.paths['/admin/v1/ops/x.optional'].post.requestBody.required).toBe(false);
  });

  it('refuses an operation name that cannot be a static path segment', () => {
    expect(() => describeOperations({ 'agent:*': op({ description: 'x', args: z.object({}), run: async () => null }) })).toThrow(/URL path segment/);
  });

  it('routes a documented operation and the generic /:name alike, and hides the generic route', async () => {
    const app = Fastify();
    const seen: string[] = [];
    await registerOperationRoutes(app, {
      operations: { 'x.echo': op({ description: 'Echo', args: z.object({}).passthrough(), run: async () => null }) },
      run: async (name, raw) => (seen.push(name), raw),
      logger: createLogger('silent'),
    });
    const direct = await app.inject({ method: 'POST', url: '/admin/v1/ops/x.echo', payload: { a: 1 } });
    expect(direct.json()).toEqual({ result: { a: 1 } });
    const generic = await app.inject({ method: 'POST', url: '/admin/v1/ops/other' });
    expect(generic.json()).toEqual({ result: {} });
    expect(seen).toEqual(['x.echo', 'other']);
    expect(Object.keys((app.swagger() as Json).paths)).toEqual(['/admin/v1/ops/x.echo']);
    await app.close();
  });
});

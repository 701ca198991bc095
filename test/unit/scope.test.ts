import { describe, expect, it } from 'vitest';
import { literalMatches, patternWithin, scopeExcess } from '../../src/authority/tokens/scope.js';

describe('delegation scope arithmetic', () => {
  it.each([
    ['api:external/echo', 'api:external/echo', true],
    ['api:external/echo', 'api:external/*', true],
    ['api:external/echo/x', 'api:external/*', false],
    ['api:external/echo/x', 'api:external/**', true],
    ['api:external/*', 'api:external/**', true],
    ['api:external/a/*', 'api:external/**', true],
    ['api:external/**', 'api:external/*', false],
    ['api:external/*', 'api:external/echo', false],
    ['api:external/**', 'api:external/a/**', false],
    ['api:external/a/**', 'api:external/**', true],
    ['api:*/echo', 'api:**', false],
    ['api:external/echo', 'api:*/echo', false],
    ['api:externalx/echo', 'api:external/**', false],
    ['mcp:github/x', 'api:external/**', false],
  ])('%s within %s → %s', (child, parent, expected) => {
    expect(patternWithin(child, parent)).toBe(expected);
  });

  it('matches literals like the policy does', () => {
    expect(literalMatches('api:external/*', 'api:external/')).toBe(true);
    expect(literalMatches('api:external/*', 'api:external/a/b')).toBe(false);
    expect(literalMatches('api:external/**', 'api:external/a/b')).toBe(true);
  });

  it('reports what exceeds the parent scope', () => {
    expect(scopeExcess({ resources: ['api:external/echo', 'mcp:github/x'], actions: ['read', 'delete'] }, { resources: ['api:external/*'], actions: ['read', 'write'] })).toEqual({
      resources: ['mcp:github/x'],
      actions: ['delete'],
    });
    expect(scopeExcess({ resources: ['api:external/echo'], actions: ['*'] }, { resources: ['api:external/*'], actions: ['*'] })).toEqual({ resources: [], actions: [] });
    expect(scopeExcess({ resources: ['api:external/echo'], actions: ['*'] }, { resources: ['api:external/*'], actions: ['read'] }).actions).toEqual(['*']);
  });
});

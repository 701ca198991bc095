/**
 * Scope arithmetic for delegation: a child's scope must be *within* its parent's. Resource
 * patterns are globs with "/" as delimiter (`*` within a segment, `**` across), as in the Rego
 * policy. Containment of arbitrary globs is hard, so this is deliberately conservative: a child
 * pattern is within a parent pattern only when that is certain; anything else is refused.
 */
const META = /[*?[\]{}\\]/;

export function isLiteral(pattern: string): boolean {
  return !META.test(pattern);
}

/** Does the literal resource match the pattern (same semantics as the Rego fast path)? */
export function literalMatches(pattern: string, resource: string): boolean {
  if (isLiteral(pattern)) return pattern === resource;
  if (pattern.endsWith('/**') && isLiteral(pattern.slice(0, -2))) return resource.startsWith(pattern.slice(0, -2));
  if (pattern.endsWith('/*') && isLiteral(pattern.slice(0, -1))) {
    const prefix = pattern.slice(0, -1);
    return resource.startsWith(prefix) && !resource.slice(prefix.length).includes('/');
  }
  return false; // other globs: not decided here (conservative: no match)
}

/** Is every resource `child` can name also named by `parent`? */
export function patternWithin(child: string, parent: string): boolean {
  if (child === parent) return true;
  if (isLiteral(child)) return literalMatches(parent, child);
  // child "p/*" or "p/**" with literal p: within a parent "q/**" when p starts with q;
  // "p/*" is also within "q/*" only when p === q (handled by equality above).
  const childPrefix = child.endsWith('/**') ? child.slice(0, -2) : child.endsWith('/*') ? child.slice(0, -1) : null;
  if (childPrefix === null || !isLiteral(childPrefix)) return false;
  if (parent.endsWith('/**') && isLiteral(parent.slice(0, -2))) return childPrefix.startsWith(parent.slice(0, -2));
  return false;
}

export interface Scope {
  resources: string[];
  actions: string[];
}

/** Which requested entries are not covered (empty = within). */
export function scopeExcess(child: Scope, parent: Scope): { resources: string[]; actions: string[] } {
  return {
    resources: child.resources.filter((c) => !parent.resources.some((p) => patternWithin(c, p))),
    actions: parent.actions.includes('*') ? [] : child.actions.filter((a) => !parent.actions.includes(a)),
  };
}

import micromatch from 'micromatch';
import { InvalidatingCache } from '../../util/invalidating-cache.js';
import { z } from 'zod';
import { CaracalError } from '../../errors/catalog.js';
import type { Logger } from '../../logging/logger.js';
import { regexSafetyProblem } from '../../regex-safety/index.js';
import type { Queryable } from '../../store/db.js';
import { newId } from '../../util/ids.js';
import { PrincipalId, findPrincipal } from './principals.js';

/*
 * Per-principal URL allowlists (docs/architecture.md: "The request path", "The authority model").
 *
 * An entry is a `regex` or a `glob` matched against the WHOLE concrete upstream URL:
 *
 * - regex: compiled as `^(?:pattern)$` without flags, so a pattern always matches the full URL
 *   (`api\.openai\.com` does not match `https://evil.com/?api.openai.com`) and a user's own `^`/`$`
 *   are harmless. Patterns are refused when created if they can backtrack catastrophically (the
 *   analysis lives in src/regex-safety), use back-references or lookbehind, or are not valid JS
 *   regexes.
 * - glob: micromatch (`micromatch.isMatch(url, pattern, {dot: true})`). `*` matches any run of
 *   characters except `/` (one path segment, or a piece of the host; at least one character
 *   when it is a whole segment); `**` matches across `/` (any depth, including none:
 *   `https://h/**` also matches `https://h`); `?` is one character other than `/` (so it also
 *   matches a literal `?`); `[...]` is a class; `{a,b}` lists alternatives; `\` escapes. A trailing
 *   `/` on the URL is tolerated (`https://h/*` matches `https://h/v1/`). Segments starting with a
 *   dot (`.well-known`) match like any other. The query string is plain text: `https://h/*`
 *   matches `https://h/v1?a=b` but not `https://h/v1?next=/x` — use `**` for that. Matching is
 *   case-sensitive. Negation (`!…`), extglobs and parentheses, and brace ranges (`{1..9}`) are
 *   refused: they are surprising in an allowlist, and picomatch mis-compiles some ranges.
 *
 * URLs: only `scheme://authority[/…]` URLs of at most 8 KiB are ever matched, and the authority
 * must not contain `?`, `#` or `@`; URLs with control characters, whitespace or backslashes never
 * match. All these are refused (fail closed) because they make textual matching disagree with
 * how URL parsers read the URL (`https://evil.com?.example.com/` has host evil.com, and `\` is `/`
 * to a WHATWG parser). The gateway builds URLs from configured upstreams, so real URLs pass.
 *
 * A principal with no entries is governed by `allowlists.whenEmpty` (default deny). A stored
 * entry that no longer compiles (written by hand, or refused by a stricter checker after an
 * upgrade) still counts as an entry but never matches: it fails closed, never open.
 */

export const MAX_PATTERN_LENGTH = 1024;
/** URLs longer than this never match any entry: the cap bounds the matcher's work per request. */
export const MAX_URL_LENGTH = 8192;

export const AllowlistPatternType = z.enum(['regex', 'glob'], { error: 'must be "regex" or "glob"' });
export type AllowlistPatternType = z.infer<typeof AllowlistPatternType>;
export type AllowlistWhenEmpty = 'deny' | 'allow';

export const AllowlistEntryId = z.string().trim().min(1, 'is required').max(64).regex(/^[A-Za-z0-9-]+$/, 'is not a valid allowlist entry id');

export const CreateAllowlistArgs = z
  .object({
    principalId: PrincipalId,
    pattern: z.string().min(1, 'is required'),
    patternType: AllowlistPatternType,
  })
  .strict()
  .superRefine((args, ctx) => {
    const problem = allowlistPatternProblem(args.pattern, args.patternType);
    if (problem) ctx.addIssue({ code: 'custom', path: ['pattern'], message: problem });
  });

export interface AllowlistEntry {
  id: string;
  principalId: string;
  pattern: string;
  patternType: AllowlistPatternType;
  createdAt: string;
}

interface AllowlistEntryRow {
  id: string;
  principal_id: string;
  pattern: string;
  pattern_type: AllowlistPatternType;
  created_at: Date;
}

const COLUMNS = 'id, principal_id, pattern, pattern_type, created_at';

function toEntry(row: AllowlistEntryRow): AllowlistEntry {
  return {
    id: row.id,
    principalId: row.principal_id,
    pattern: row.pattern,
    patternType: row.pattern_type,
    createdAt: new Date(row.created_at).toISOString(),
  };
}

// ---------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------

export async function createAllowlistEntry(db: Queryable, input: z.input<typeof CreateAllowlistArgs>): Promise<AllowlistEntry> {
  const args = CreateAllowlistArgs.parse(input);
  if (!(await findPrincipal(db, args.principalId))) {
    throw new CaracalError('CARACAL_NOT_FOUND', `principal ${args.principalId} not found`);
  }
  try {
    const { rows } = await db.query<AllowlistEntryRow>(
      `INSERT INTO allowlist_entries (id, principal_id, pattern, pattern_type) VALUES ($1, $2, $3, $4) RETURNING ${COLUMNS}`,
      [newId(), args.principalId, args.pattern, args.patternType],
    );
    return toEntry(rows[0]!);
  } catch (err) {
    if (err instanceof CaracalError && err.code === 'CARACAL_CONFLICT') {
      throw new CaracalError('CARACAL_CONFLICT', `principal ${args.principalId} already has this ${args.patternType} pattern`, { cause: err });
    }
    throw err;
  }
}

export async function listAllowlistEntries(db: Queryable, filter: { principalId?: string } = {}): Promise<AllowlistEntry[]> {
  const { rows } = filter.principalId
    ? await db.query<AllowlistEntryRow>(`SELECT ${COLUMNS} FROM allowlist_entries WHERE principal_id = $1 ORDER BY created_at, id`, [PrincipalId.parse(filter.principalId)])
    : await db.query<AllowlistEntryRow>(`SELECT ${COLUMNS} FROM allowlist_entries ORDER BY principal_id, created_at, id`);
  return rows.map(toEntry);
}

/** Deletes one entry and returns it (its principal is needed to tell the gateways). */
export async function deleteAllowlistEntry(db: Queryable, id: string): Promise<AllowlistEntry> {
  const { rows } = await db.query<AllowlistEntryRow>(`DELETE FROM allowlist_entries WHERE id = $1 RETURNING ${COLUMNS}`, [AllowlistEntryId.parse(id)]);
  if (!rows[0]) throw new CaracalError('CARACAL_NOT_FOUND', `allowlist entry ${id} not found`);
  return toEntry(rows[0]);
}

// ---------------------------------------------------------------------------------------------
// Compiling and matching
// ---------------------------------------------------------------------------------------------

/** An entry ready to match: `matches` is null when the stored pattern no longer compiles. */
export interface CompiledAllowlistEntry {
  readonly entry: AllowlistEntry;
  readonly matches: ((url: string) => boolean) | null;
  /** Why `matches` is null. */
  readonly problem: string | null;
}

/** What the gateway passes to the policy as `input.allowlist`. */
export interface AllowlistResult {
  checked: true;
  matched: boolean;
  /** The first entry (in creation order) that matched; null when none did or the list is empty. */
  entryId: string | null;
  /** How many entries the principal has. */
  entries: number;
}

export type AllowlistReason = 'matched' | 'no_match' | 'empty_allow' | 'empty_deny' | 'url_too_long' | 'url_malformed';

export interface AllowlistTestResult extends AllowlistResult {
  reason: AllowlistReason;
}

const GLOB_OPTIONS = Object.freeze({ dot: true });

/**
 * A URL the matcher will look at: `scheme://authority` then nothing or `/…`, with no `?`, `#`, `@`
 * in the authority and no control characters, whitespace or backslashes anywhere. The two
 * classes exclude `/` from the authority, so this check is linear.
 */
// eslint-disable-next-line no-control-regex -- matching control characters is the point: they are refused
const URL_SHAPE = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#@\\\s\u0000-\u001f\u007f]*(?:\/[^\\\s\u0000-\u001f\u007f]*)?$/;

export function compileAllowlistEntry(entry: AllowlistEntry): CompiledAllowlistEntry {
  const compiled = compilePattern(entry.pattern, entry.patternType);
  return 'problem' in compiled ? { entry, matches: null, problem: compiled.problem } : { entry, matches: compiled.matches, problem: null };
}

/**
 * The allowlist decision for one URL, pure: the first entry that matches, in the order given.
 * Used by the gateway's AllowlistMatcher (on cached compiled entries) and by `allowlist test`.
 * With no entries, `whenEmpty` decides whatever the URL; otherwise a URL that is too long or not
 * URL-shaped matches nothing.
 */
export function testUrl(entries: readonly CompiledAllowlistEntry[], url: string, whenEmpty: AllowlistWhenEmpty = 'deny'): AllowlistTestResult {
  const count = entries.length;
  if (count === 0) {
    const matched = whenEmpty === 'allow';
    return { checked: true, matched, entryId: null, entries: 0, reason: matched ? 'empty_allow' : 'empty_deny' };
  }
  if (url.length > MAX_URL_LENGTH) return { checked: true, matched: false, entryId: null, entries: count, reason: 'url_too_long' };
  if (!URL_SHAPE.test(url)) return { checked: true, matched: false, entryId: null, entries: count, reason: 'url_malformed' };
  for (const compiled of entries) {
    if (compiled.matches?.(url)) return { checked: true, matched: true, entryId: compiled.entry.id, entries: count, reason: 'matched' };
  }
  return { checked: true, matched: false, entryId: null, entries: count, reason: 'no_match' };
}

/** Why a pattern would be refused (the message reads after "pattern: "), or null when it is fine. */
export function allowlistPatternProblem(pattern: string, patternType: AllowlistPatternType): string | null {
  const compiled = compilePattern(pattern, patternType);
  return 'problem' in compiled ? compiled.problem : null;
}

type Compiled = { matches: (url: string) => boolean } | { problem: string };

/**
 * Compiled patterns shared by every principal (compiling runs the backtracking analysis, and a
 * lifecycle event makes a gateway reload all of a principal's entries). Pure, so safe to share.
 */
const compiledPatterns = new Map<string, Compiled>();
const COMPILED_PATTERNS_MAX = 10_000;

function compilePattern(pattern: string, patternType: AllowlistPatternType): Compiled {
  if (typeof pattern !== 'string' || pattern.length === 0) return { problem: 'is required' };
  // Length first: nothing below looks at a pattern longer than this.
  if (pattern.length > MAX_PATTERN_LENGTH) return { problem: `is longer than ${MAX_PATTERN_LENGTH} characters` };
  const key = `${patternType}:${pattern}`;
  const cached = compiledPatterns.get(key);
  if (cached) return cached;
  // eslint-disable-next-line no-control-regex -- matching control characters is the point: they are refused
  const compiled = /[\u0000-\u001f\u007f]/.test(pattern)
    ? { problem: 'must not contain control characters' }
    : patternType === 'regex'
      ? compileRegex(pattern)
      : compileGlob(pattern);
  if (compiledPatterns.size >= COMPILED_PATTERNS_MAX) compiledPatterns.delete(compiledPatterns.keys().next().value!);
  compiledPatterns.set(key, compiled);
  return compiled;
}

function compileRegex(pattern: string): Compiled {
  try {
    // Validated on its own first: a pattern such as `a)|(.*` would otherwise close our wrapper
    // group and escape the full-match anchors.
    new RegExp(pattern);
  } catch (err) {
    return { problem: `is not a valid regex (${(err as Error).message})` };
  }
  const problem = regexSafetyProblem(pattern, 'regex');
  if (problem) return { problem };
  const re = new RegExp(`^(?:${pattern})$`);
  return { matches: (url) => re.test(url) };
}

/** Whether `pattern` has one of `chars` not preceded by an escaping backslash. */
function unescaped(pattern: string, chars: string): boolean {
  for (let i = 0; i < pattern.length; i++) {
    if (pattern[i] === '\\') i++;
    else if (chars.includes(pattern[i]!)) return true;
  }
  return false;
}

function compileGlob(pattern: string): Compiled {
  if (/\s/.test(pattern)) return { problem: 'must not contain whitespace' };
  if (pattern.startsWith('!')) return { problem: 'negated globs ("!…") are not supported in an allowlist' };
  if (unescaped(pattern, '()|')) return { problem: 'parentheses and "|" are not glob syntax here: use {a,b} for alternatives, or escape them as \\( \\) \\|' };
  if (/\{[^}]*\.\.[^}]*\}/.test(pattern)) return { problem: 'brace ranges such as {1..9} are not supported: list the alternatives, or use a class such as [1-9]' };
  let re: RegExp;
  try {
    re = micromatch.makeRe(pattern, GLOB_OPTIONS);
  } catch (err) {
    return { problem: `is not a valid glob (${(err as Error).message})` };
  }
  const problem = regexSafetyProblem(re.source, 'glob');
  if (problem) return { problem };
  // micromatch.matcher is exactly what micromatch.isMatch(url, pattern, options) runs.
  const isMatch = micromatch.matcher(pattern, GLOB_OPTIONS);
  return { matches: (url) => isMatch(url) };
}

// ---------------------------------------------------------------------------------------------
// The gateway's in-memory view
// ---------------------------------------------------------------------------------------------

/**
 * The gateway's in-memory allowlists, one compiled list per principal.
 *
 *     if (!matcher.isLoaded(principalId)) await matcher.load(principalId);
 *     const allowlist = matcher.check(principalId, url);   // synchronous
 *
 * `load` reads the principal's entries once (concurrent loads share one query) and compiles them;
 * `check` never touches the database. When an `agent.lifecycle` event with `entity: 'allowlist'`
 * (or any event for the principal) arrives, call `invalidate(principalId)`: the next request
 * reloads. A load that started before an invalidation is not stored (it reloads instead), so a
 * deleted entry cannot come back from a slow query. An unknown principal loads as "no entries".
 */
export class AllowlistMatcher {
  private readonly cache: InvalidatingCache<readonly CompiledAllowlistEntry[]>;

  constructor(
    private readonly db: Queryable,
    private readonly whenEmpty: AllowlistWhenEmpty,
    private readonly options: { logger?: Logger; maxPrincipals?: number } = {},
  ) {
    this.cache = new InvalidatingCache((principalId) => this.fetch(principalId), { maxEntries: options.maxPrincipals ?? 1_000_000 });
  }

  isLoaded(principalId: string): boolean {
    return this.cache.peek(principalId) !== undefined;
  }

  /**
   * The allowlist decision for a loaded principal; throws CARACAL_NOT_READY (a bug in the
   * caller, never a verdict) when `load` has not completed for it.
   */
  check(principalId: string, url: string): AllowlistTestResult {
    const entries = this.cache.peek(principalId)?.value;
    if (!entries) throw new CaracalError('CARACAL_NOT_READY', `allowlist of principal ${principalId} is not loaded`);
    return testUrl(entries, url, this.whenEmpty);
  }

  /** `load` then `check`, immune to the principal being evicted in between. */
  async checkAsync(principalId: string, url: string): Promise<AllowlistTestResult> {
    return testUrl(await this.cache.get(principalId), url, this.whenEmpty);
  }

  /** Loads (once; concurrent callers share the query) and returns the principal's compiled entries. */
  load(principalId: string): Promise<readonly CompiledAllowlistEntry[]> {
    return this.cache.get(principalId);
  }

  /** The principal's allowlist changed: forget it; a load already running is redone. */
  invalidate(principalId: string): void {
    this.cache.invalidate(principalId);
  }

  /** Forget everything (tests, or after a restore). */
  clear(): void {
    this.cache.clear();
  }

  private async fetch(principalId: string): Promise<readonly CompiledAllowlistEntry[]> {
    const rows = await listAllowlistEntries(this.db, { principalId });
    const compiled = Object.freeze(rows.map(compileAllowlistEntry));
    for (const bad of compiled.filter((c) => c.matches === null)) {
      this.options.logger?.warn({ agent_id: principalId, entry_id: bad.entry.id, problem: bad.problem }, 'allowlist entry does not compile; it never matches');
    }
    this.options.logger?.debug({ agent_id: principalId, entries: compiled.length }, 'allowlist loaded');
    return compiled;
  }
}

import micromatch from 'micromatch';
import { InvalidatingCache } from '../util/invalidating-cache.js';
import { z } from 'zod';
import { CaracalError } from '../errors/catalog.js';
import type { Logger } from '../logging/logger.js';
import type { Queryable } from '../store/db.js';
import { newId } from '../util/ids.js';
import { PrincipalId, findPrincipal } from './principals.js';

/*
 * Per-principal URL allowlists (DESIGN.md §2 step 3, §3).
 *
 * An entry is a `regex` or a `glob` matched against the WHOLE concrete upstream URL:
 *
 * - regex: compiled as `^(?:pattern)$` without flags, so a pattern always matches the full URL
 *   (`api\.openai\.com` does not match `https://evil.com/?api.openai.com`) and a user's own `^`/`$`
 *   are harmless. Patterns are refused when created if they can backtrack catastrophically (see
 *   "Backtracking safety" below), use back-references or lookbehind, or are not valid JS regexes.
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

// ---------------------------------------------------------------------------------------------
// Backtracking safety
// ---------------------------------------------------------------------------------------------
//
// JavaScript regexes backtrack. A pattern is refused when it is *ambiguous* in a way that makes
// a failing match explore exponentially or polynomially many paths (Weideman, van der Merwe,
// Berglund, Watson: "Analyzing matching time behavior of backtracking regular expression
// matchers by using ambiguity of NFA", 2016):
//
//   exponential (EDA): some state has two different paths back to itself reading the same
//     text — `(a+)+`, `(a|aa)+`, `(\w+\s?)+`, `(.*a){3}`;
//   polynomial (IDA): two different looping states p, q with p→p, p→q, q→q all readable on the
//     same text — `.*.*`, `.*/.*` (quadratic; on an 8 KiB URL already tens of milliseconds);
//   finite but large: more than 16 paths alive at once after some prefix — `a?a?…a?a…a`, whose
//     ambiguity is bounded but exponential in the pattern's size.
//
// With none of these, a failing match costs at most 16 paths per input character, so a URL of
// at most 8 KiB is decided in well under a millisecond for real patterns (tested).
//
// The pattern is parsed (JS syntax without flags), turned into a Thompson NFA whose ε-paths model
// the backtracker's choices (including JS's "an empty iteration fails" rule), ε-paths are folded
// into char→char edges with a multiplicity, the first two conditions are checked on the pair and
// triple products of each loop, the third by a subset construction that counts paths. Approximations only ever add paths, so they can refuse a safe
// pattern but not accept an unsafe one: bounded repeats `{n,m}` (m ≥ 2) are analysed as loops,
// anchors, \b and lookaheads as ε. Also refused outright: back-references (`\1`, `\k<n>`; they
// defeat the analysis and can be exponential by themselves), lookbehind, quantified lookaheads,
// lookaheads containing a repeat above 16, escapes that mean something else without the `u` flag
// (`\p{…}`, `\u{…}`), and patterns too big to analyse within a fixed budget.

type CharSet = readonly number[]; // [lo, hi, lo, hi, …] inclusive UTF-16 code-unit ranges, sorted, merged

const LINE_TERMINATORS: CharSet = normalise([[0x0a, 0x0a], [0x0d, 0x0d], [0x2028, 0x2029]]);
const DOT = complement(LINE_TERMINATORS);
const DIGIT: CharSet = [0x30, 0x39];
const WORD = normalise([[0x30, 0x39], [0x41, 0x5a], [0x5f, 0x5f], [0x61, 0x7a]]);
const SPACE = normalise([[0x09, 0x0d], [0x20, 0x20], [0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200a], [0x2028, 0x2029], [0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000], [0xfeff, 0xfeff]]);

function normalise(ranges: (readonly [number, number])[]): CharSet {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [lo, hi] of sorted) {
    const last = out.length - 1;
    if (last >= 0 && lo <= out[last]! + 1) out[last] = Math.max(out[last]!, hi);
    else out.push(lo, hi);
  }
  return out;
}

function pairs(set: CharSet): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < set.length; i += 2) out.push([set[i]!, set[i + 1]!]);
  return out;
}

function complement(set: CharSet): CharSet {
  const out: [number, number][] = [];
  let next = 0;
  for (const [lo, hi] of pairs(set)) {
    if (lo > next) out.push([next, lo - 1]);
    next = hi + 1;
  }
  if (next <= 0xffff) out.push([next, 0xffff]);
  return normalise(out);
}

function intersect(a: CharSet, b: CharSet): CharSet {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i]!, b[j]!);
    const hi = Math.min(a[i + 1]!, b[j + 1]!);
    if (lo <= hi) out.push(lo, hi);
    if (a[i + 1]! < b[j + 1]!) i += 2;
    else j += 2;
  }
  return out;
}

type RNode =
  | { kind: 'empty' }
  | { kind: 'char'; set: CharSet }
  | { kind: 'seq'; items: RNode[] }
  | { kind: 'alt'; branches: RNode[] }
  | { kind: 'look'; body: RNode }
  | { kind: 'repeat'; body: RNode; min: number; max: number; start: number; end: number };

/** A reason to refuse the pattern, raised anywhere in the analysis. */
class Refusal extends Error {}

const MAX_QUANTIFIER = 1000;
const MAX_LOOKAHEAD_REPEAT = 16;
const MAX_GROUP_DEPTH = 64;

/** Parses JS regex syntax without flags (Annex B), refusing what the analysis cannot model. */
class RegexParser {
  private pos = 0;
  private depth = 0;
  private lookDepth = 0;
  readonly lookaheads: RNode[] = [];

  constructor(private readonly src: string) {}

  parse(): RNode {
    const node = this.alternation();
    if (this.pos < this.src.length) throw new Refusal(`unexpected "${this.src[this.pos]}" at ${this.pos}`);
    return node;
  }

  private alternation(): RNode {
    const branches = [this.sequence()];
    while (this.src[this.pos] === '|') {
      this.pos++;
      branches.push(this.sequence());
    }
    return branches.length === 1 ? branches[0]! : { kind: 'alt', branches };
  }

  private sequence(): RNode {
    const items: RNode[] = [];
    while (this.pos < this.src.length && this.src[this.pos] !== '|' && this.src[this.pos] !== ')') items.push(this.term());
    return items.length === 1 ? items[0]! : items.length === 0 ? { kind: 'empty' } : { kind: 'seq', items };
  }

  private term(): RNode {
    const start = this.pos;
    const atom = this.atom();
    const quantifier = this.quantifier();
    if (!quantifier) return atom;
    if (atom.kind === 'look') throw new Refusal('quantified lookaheads are not allowed');
    if (atom.kind === 'empty') throw new Refusal(`nothing to repeat at ${start}`);
    if (this.lookDepth > 0 && quantifier.max > MAX_LOOKAHEAD_REPEAT) {
      throw new Refusal(`lookaheads may not contain unbounded or large repeats ("${excerpt(this.src, start, this.pos)}")`);
    }
    return { kind: 'repeat', body: atom, min: quantifier.min, max: quantifier.max, start, end: this.pos };
  }

  private quantifier(): { min: number; max: number } | null {
    const c = this.src[this.pos];
    let result: { min: number; max: number } | null = null;
    if (c === '*') result = { min: 0, max: Infinity };
    else if (c === '+') result = { min: 1, max: Infinity };
    else if (c === '?') result = { min: 0, max: 1 };
    if (result) this.pos++;
    else if (c === '{') {
      const brace = this.brace();
      if (!brace) return null;
      result = brace.quantifier;
      this.pos = brace.end;
    } else return null;
    if (this.src[this.pos] === '?') this.pos++; // lazy: same paths, other order
    return result;
  }

  /** `{n}`, `{n,}`, `{n,m}` at the current position, or null (then `{` is a literal, Annex B). */
  private brace(): { quantifier: { min: number; max: number }; end: number } | null {
    const re = /\{(\d+)(?:(,)(\d*))?\}/y;
    re.lastIndex = this.pos;
    const m = re.exec(this.src);
    if (!m) return null;
    const min = Number(m[1]);
    const max = m[2] ? (m[3] ? Number(m[3]) : Infinity) : min;
    if (min > MAX_QUANTIFIER || (max !== Infinity && max > MAX_QUANTIFIER)) throw new Refusal(`repeat counts above ${MAX_QUANTIFIER} are not allowed ("${m[0]}")`);
    return { quantifier: { min, max }, end: re.lastIndex };
  }

  private atom(): RNode {
    const c = this.src[this.pos]!;
    switch (c) {
      case '(':
        return this.group();
      case '[':
        return this.charClass();
      case '.':
        this.pos++;
        return { kind: 'char', set: DOT };
      case '^':
      case '$':
        this.pos++;
        return { kind: 'empty' };
      case '\\':
        return this.escape();
      case '*':
      case '+':
      case '?':
        throw new Refusal(`nothing to repeat at ${this.pos}`);
      case '{':
        if (this.brace()) throw new Refusal(`nothing to repeat at ${this.pos}`);
        this.pos++;
        return { kind: 'char', set: [0x7b, 0x7b] };
      default:
        this.pos++;
        return { kind: 'char', set: [c.charCodeAt(0), c.charCodeAt(0)] };
    }
  }

  private group(): RNode {
    const open = this.pos;
    this.pos++;
    let look = false;
    if (this.src[this.pos] === '?') {
      const kind = this.src.slice(this.pos, this.pos + 3);
      if (kind.startsWith('?:')) this.pos += 2;
      else if (kind.startsWith('?=') || kind.startsWith('?!')) {
        this.pos += 2;
        look = true;
      } else if (kind === '?<=' || kind === '?<!') throw new Refusal('lookbehind ("(?<=…)", "(?<!…)") is not allowed');
      else if (kind.startsWith('?<')) {
        const close = this.src.indexOf('>', this.pos);
        if (close < 0) throw new Refusal(`unterminated group name at ${open}`);
        this.pos = close + 1;
      } else throw new Refusal(`unsupported group syntax "(${kind}" at ${open}`);
    }
    if (++this.depth > MAX_GROUP_DEPTH) throw new Refusal(`groups nested deeper than ${MAX_GROUP_DEPTH} are not allowed`);
    if (look) this.lookDepth++;
    const body = this.alternation();
    if (look) this.lookDepth--;
    this.depth--;
    if (this.src[this.pos] !== ')') throw new Refusal(`unterminated group at ${open}`);
    this.pos++;
    if (look) {
      this.lookaheads.push(body);
      return { kind: 'look', body };
    }
    return body;
  }

  private charClass(): RNode {
    const open = this.pos;
    this.pos++;
    let negated = false;
    if (this.src[this.pos] === '^') {
      negated = true;
      this.pos++;
    }
    const ranges: [number, number][] = [];
    while (this.src[this.pos] !== ']') {
      if (this.pos >= this.src.length) throw new Refusal(`unterminated character class at ${open}`);
      const first = this.classAtom();
      if (this.src[this.pos] === '-' && this.src[this.pos + 1] !== ']' && this.pos + 1 < this.src.length) {
        this.pos++;
        const second = this.classAtom();
        if (typeof first !== 'number' || typeof second !== 'number') {
          throw new Refusal(`a range with a class escape ("${excerpt(this.src, open, this.pos)}") is ambiguous; escape the "-"`);
        }
        if (first > second) throw new Refusal(`range out of order in character class at ${open}`);
        ranges.push([first, second]);
      } else if (typeof first === 'number') ranges.push([first, first]);
      else ranges.push(...pairs(first));
    }
    this.pos++;
    const set = normalise(ranges);
    return { kind: 'char', set: negated ? complement(set) : set };
  }

  /** One code unit, or a class escape's set. */
  private classAtom(): number | CharSet {
    const c = this.src[this.pos]!;
    if (c !== '\\') {
      this.pos++;
      return c.charCodeAt(0);
    }
    if (this.src[this.pos + 1] === 'b') {
      this.pos += 2;
      return 0x08;
    }
    if (this.src[this.pos + 1] === '-') {
      this.pos += 2;
      return 0x2d;
    }
    const escaped = this.escapeBody();
    if (escaped === 'assertion') throw new Refusal(`"\\B" is not allowed in a character class`);
    return escaped;
  }

  private escape(): RNode {
    const escaped = this.escapeBody();
    if (escaped === 'assertion') return { kind: 'empty' };
    return { kind: 'char', set: typeof escaped === 'number' ? [escaped, escaped] : escaped };
  }

  /** After a backslash: a code unit, a class, or an assertion (\b \B outside classes). */
  private escapeBody(): number | CharSet | 'assertion' {
    const at = this.pos;
    const c = this.src[this.pos + 1];
    if (c === undefined) throw new Refusal('trailing backslash');
    this.pos += 2;
    switch (c) {
      case 'b':
      case 'B':
        return 'assertion';
      case 'd':
        return DIGIT;
      case 'D':
        return complement(DIGIT);
      case 'w':
        return WORD;
      case 'W':
        return complement(WORD);
      case 's':
        return SPACE;
      case 'S':
        return complement(SPACE);
      case 'n':
        return 0x0a;
      case 'r':
        return 0x0d;
      case 't':
        return 0x09;
      case 'v':
        return 0x0b;
      case 'f':
        return 0x0c;
      case '0':
        if (/[0-9]/.test(this.src[this.pos] ?? '')) throw new Refusal('octal escapes are not allowed');
        return 0;
      case 'k':
        throw new Refusal('back-references ("\\k<name>") are not allowed');
      case 'p':
      case 'P':
        throw new Refusal(`"\\${c}{…}" needs the u flag, which allowlist regexes do not use; write the characters as a class`);
      case 'c': {
        const letter = this.src[this.pos];
        if (!letter || !/[A-Za-z]/.test(letter)) throw new Refusal(`incomplete "\\c" escape at ${at}`);
        this.pos++;
        return letter.charCodeAt(0) % 32;
      }
      case 'x': {
        const hex = this.src.slice(this.pos, this.pos + 2);
        if (!/^[0-9A-Fa-f]{2}$/.test(hex)) throw new Refusal(`incomplete "\\x" escape at ${at}`);
        this.pos += 2;
        return parseInt(hex, 16);
      }
      case 'u': {
        const hex = this.src.slice(this.pos, this.pos + 4);
        if (!/^[0-9A-Fa-f]{4}$/.test(hex)) throw new Refusal(`"\\u" must be followed by 4 hex digits (no "\\u{…}" without the u flag) at ${at}`);
        this.pos += 4;
        return parseInt(hex, 16);
      }
      default:
        if (/[1-9]/.test(c)) throw new Refusal(`back-references ("\\${c}") are not allowed`);
        if (/[A-Za-z0-9_]/.test(c)) throw new Refusal(`unknown escape "\\${c}"`);
        return c.charCodeAt(0); // identity escape: \. \/ \- \? …
    }
  }
}

function excerpt(src: string, start: number, end: number): string {
  const text = src.slice(start, end);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

/**
 * Work limits for the analysis: beyond them the pattern is refused as too complex to verify.
 * Real URL patterns take under 5 000 steps (about a millisecond); the cap bounds a hostile
 * pattern's cost to tens of milliseconds, at creation and when a gateway loads it.
 */
const BUDGET = { nodes: 20_000, steps: 250_000 };

class Budget {
  private steps = 0;
  spend(n = 1): void {
    this.steps += n;
    if (this.steps > BUDGET.steps) throw new Refusal('is too complex to check for catastrophic backtracking; simplify it');
  }
}

interface Loop {
  start: number;
  end: number;
  /** Loops enclosing this one, outermost first. */
  parents: number[];
  nested: boolean;
  alternation: boolean;
}

interface EpsEdge {
  to: number;
  /** Taking this edge starts a new (non-mandatory) iteration of the loop. */
  enters?: number;
  /** Taking this edge ends an iteration of the loop. */
  back?: number;
}

/** Thompson NFA: char nodes consume one code unit when entered; all edges are ε. */
class Nfa {
  readonly sets: (CharSet | null)[] = []; // null for ε nodes
  readonly out: EpsEdge[][] = [];
  /** For char nodes: enclosing loops, outermost first. */
  readonly loopsOf: number[][] = [];
  readonly loops: Loop[] = [];
  private readonly loopStack: number[] = [];

  constructor(private readonly budget: Budget) {}

  node(set: CharSet | null): number {
    if (this.sets.length >= BUDGET.nodes) throw new Refusal('is too complex to check for catastrophic backtracking; simplify it');
    this.budget.spend();
    this.sets.push(set);
    this.out.push([]);
    this.loopsOf.push(set ? [...this.loopStack] : []);
    return this.sets.length - 1;
  }

  edge(from: number, edge: EpsEdge): void {
    this.out[from]!.push(edge);
  }

  /** Adds `node` after `entry`; returns the fragment's exit. */
  build(node: RNode, entry: number): number {
    switch (node.kind) {
      case 'empty':
      case 'look': // lookaheads are analysed on their own
        return entry;
      case 'char': {
        const c = this.node(node.set);
        this.edge(entry, { to: c });
        return c;
      }
      case 'seq':
        return node.items.reduce((at, item) => this.build(item, at), entry);
      case 'alt': {
        const exit = this.node(null);
        for (const branch of node.branches) {
          const start = this.node(null);
          this.edge(entry, { to: start });
          this.edge(this.build(branch, start), { to: exit });
        }
        return exit;
      }
      case 'repeat':
        return this.repeat(node, entry);
    }
  }

  private repeat(node: Extract<RNode, { kind: 'repeat' }>, entry: number): number {
    if (node.max === 0) return entry;
    if (node.max === 1) {
      const exit = this.node(null);
      const start = this.node(null);
      this.edge(entry, { to: start });
      this.edge(this.build(node.body, start), { to: exit });
      if (node.min === 0) this.edge(entry, { to: exit });
      return exit;
    }
    // x{n,m} with m ≥ 2 is analysed as x* (n = 0), x+ (n = 1) or x x+ (n ≥ 2): more paths, never fewer.
    let at = entry;
    if (node.min >= 2) at = this.build(node.body, at);
    const id = this.loops.length;
    this.loops.push({ start: node.start, end: node.end, parents: [...this.loopStack], nested: containsLoop(node.body), alternation: containsAlternation(node.body) });
    this.loopStack.push(id);
    const head = this.node(null);
    const bodyStart = this.node(null);
    if (node.min === 0) {
      this.edge(at, { to: head });
      this.edge(head, { to: bodyStart, enters: id });
      this.edge(this.build(node.body, bodyStart), { to: head, back: id });
    } else {
      // The first iteration is mandatory: JS lets it match the empty string.
      this.edge(at, { to: bodyStart });
      this.edge(this.build(node.body, bodyStart), { to: head, back: id });
      this.edge(head, { to: bodyStart, enters: id });
    }
    this.loopStack.pop();
    const exit = this.node(null);
    this.edge(head, { to: exit });
    return exit;
  }
}

function containsLoop(node: RNode): boolean {
  switch (node.kind) {
    case 'repeat':
      return node.max >= 2 || containsLoop(node.body);
    case 'seq':
      return node.items.some(containsLoop);
    case 'alt':
      return node.branches.some(containsLoop);
    default:
      return false;
  }
}

function containsAlternation(node: RNode): boolean {
  switch (node.kind) {
    case 'alt':
      return true;
    case 'repeat':
      return containsAlternation(node.body);
    case 'seq':
      return node.items.some(containsAlternation);
    default:
      return false;
  }
}

/** char → char edges after folding ε-paths: target, number of distinct ε-paths (capped), loops whose iteration ended on the way. */
interface CharGraph {
  chars: number[];
  succ: Map<number, { to: number; paths: number; loops: Set<number> }[]>;
}

function foldEpsilons(nfa: Nfa, start: number, budget: Budget): CharGraph {
  const chars: number[] = [];
  const succ = new Map<number, { to: number; paths: number; loops: Set<number> }[]>();
  nfa.sets.forEach((set, i) => {
    if (set && set.length > 0) chars.push(i);
  });
  const from = [start, ...chars];
  for (const origin of from) {
    const found = new Map<number, { to: number; paths: number; loops: Set<number> }>();
    const entered = new Set<number>();
    const ended: number[] = [];
    // Depth-first over ε-paths. An iteration that started on this ε-path cannot end on it (JS
    // fails empty iterations), which also makes every ε-path finite.
    const walk = (at: number, depth: number) => {
      if (depth > nfa.sets.length + 1) throw new Refusal('is too complex to check for catastrophic backtracking; simplify it');
      for (const edge of nfa.out[at]!) {
        budget.spend();
        if (edge.back !== undefined && entered.has(edge.back)) continue;
        const set = nfa.sets[edge.to];
        if (set) {
          if (set.length === 0) continue; // `[]` never matches
          const hit = found.get(edge.to) ?? { to: edge.to, paths: 0, loops: new Set<number>() };
          hit.paths = Math.min(MAX_LIVE_PATHS + 1, hit.paths + 1);
          for (const loop of ended) hit.loops.add(loop);
          if (edge.back !== undefined) hit.loops.add(edge.back);
          found.set(edge.to, hit);
          continue;
        }
        if (edge.enters !== undefined) entered.add(edge.enters);
        if (edge.back !== undefined) ended.push(edge.back);
        walk(edge.to, depth + 1);
        if (edge.back !== undefined) ended.pop();
        if (edge.enters !== undefined) entered.delete(edge.enters);
      }
    };
    // A char node's own out-edges start after it consumed its character.
    walk(origin, 0);
    succ.set(origin, [...found.values()]);
  }
  return { chars, succ };
}

/** Strongly connected components (iterative Tarjan) over nodes 0..n-1 reachable from `roots`. */
function components(n: number, roots: Iterable<number>, next: (v: number) => number[], budget: Budget): Int32Array {
  const comp = new Int32Array(n).fill(-1);
  const index = new Int32Array(n).fill(-1);
  const low = new Int32Array(n);
  const onStack = new Uint8Array(n);
  const stack: number[] = [];
  let counter = 0;
  let compCount = 0;
  for (const root of roots) {
    if (index[root] !== -1) continue;
    const work: { v: number; succ: number[]; i: number }[] = [];
    const open = (v: number) => {
      index[v] = low[v] = counter++;
      stack.push(v);
      onStack[v] = 1;
      work.push({ v, succ: next(v), i: 0 });
    };
    open(root);
    while (work.length > 0) {
      const frame = work[work.length - 1]!;
      budget.spend();
      if (frame.i < frame.succ.length) {
        const w = frame.succ[frame.i++]!;
        if (index[w] === -1) open(w);
        else if (onStack[w]) low[frame.v] = Math.min(low[frame.v]!, index[w]!);
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1]!.v;
        low[parent] = Math.min(low[parent]!, low[frame.v]!);
      }
      if (low[frame.v] === index[frame.v]) {
        let w: number;
        do {
          w = stack.pop()!;
          onStack[w] = 0;
          comp[w] = compCount;
        } while (w !== frame.v);
        compCount++;
      }
    }
  }
  return comp;
}

type Finding = { kind: 'exponential'; loop: Loop | null } | { kind: 'polynomial'; first: Loop | null; second: Loop | null } | { kind: 'finite'; paths: number };

/** Checks one NFA (the pattern, or one lookahead body) for exponential and polynomial ambiguity. */
function ambiguity(nfa: Nfa, start: number, budget: Budget): Finding | null {
  const graph = foldEpsilons(nfa, start, budget);
  const sets = nfa.sets;
  const N = sets.length;
  const succOf = (v: number) => graph.succ.get(v) ?? [];
  const comp = components(N, graph.chars, (v) => succOf(v).map((e) => e.to), budget);

  // Looping components: more than one node, or a node with an edge to itself.
  const members = new Map<number, number[]>();
  for (const v of graph.chars) {
    const c = comp[v]!;
    if (!members.has(c)) members.set(c, []);
    members.get(c)!.push(v);
  }
  const looping = [...members.entries()].filter(([, vs]) => vs.length > 1 || succOf(vs[0]!).some((e) => e.to === vs[0])).map(([c, vs]) => ({ c, vs }));

  const innermostCommonLoop = (nodes: Iterable<number>): Loop | null => {
    let common: number[] | null = null;
    for (const v of nodes) {
      const chain = nfa.loopsOf[v]!;
      if (common === null) common = [...chain];
      else {
        let k = 0;
        while (k < common.length && k < chain.length && common[k] === chain[k]) k++;
        common.length = k;
      }
    }
    const id = common && common.length > 0 ? common[common.length - 1]! : undefined;
    return id === undefined ? null : nfa.loops[id]!;
  };

  // Exponential: in the pair graph of a looping component, a cycle through a diagonal (q, q)
  // that leaves the diagonal or uses two parallel edges.
  for (const { c, vs } of looping) {
    const k = vs.length;
    const local = new Map(vs.map((v, i) => [v, i]));
    budget.spend(k * k);
    const localSucc = vs.map((v) => succOf(v).filter((e) => comp[e.to] === c).map((e) => ({ ...e, to: local.get(e.to)! })));
    const compatible = (a: number, b: number) => a === b || intersect(sets[vs[a]!]!, sets[vs[b]!]!).length > 0;
    const pairComp = components(
      k * k,
      vs.map((_, i) => i * k + i),
      (p) => {
        const a = Math.floor(p / k);
        const b = p % k;
        const out: number[] = [];
        for (const ea of localSucc[a]!) {
          for (const eb of localSucc[b]!) {
            budget.spend();
            if (compatible(ea.to, eb.to)) out.push(ea.to * k + eb.to);
          }
        }
        return out;
      },
      budget,
    );
    const diagonalComps = new Set(vs.map((_, i) => pairComp[i * k + i]!));
    const offDiagonal = new Map<number, Set<number>>();
    for (let a = 0; a < k; a++) {
      for (let b = 0; b < k; b++) {
        const pc = pairComp[a * k + b]!;
        if (a !== b && pc !== -1 && diagonalComps.has(pc)) {
          if (!offDiagonal.has(pc)) offDiagonal.set(pc, new Set());
          offDiagonal.get(pc)!.add(vs[a]!).add(vs[b]!);
        }
      }
    }
    const divergent = offDiagonal.values().next();
    if (!divergent.done) return { kind: 'exponential', loop: innermostCommonLoop(divergent.value) };
    for (let a = 0; a < k; a++) {
      for (const e of localSucc[a]!) {
        if (e.paths >= 2 && pairComp[a * k + a] === pairComp[e.to * k + e.to]) {
          const outermost = [...e.loops].sort((x, y) => nfa.loops[x]!.parents.length - nfa.loops[y]!.parents.length)[0];
          return { kind: 'exponential', loop: outermost === undefined ? innermostCommonLoop([vs[a]!]) : nfa.loops[outermost]! };
        }
      }
    }
  }

  // Polynomial: looping states p ≠ q in different components with p→p, p→q, q→q on one word —
  // a search in the triple product from (p, p, q) to (p, q, q).
  if (looping.length >= 2) {
    const polynomial = polynomialPair(graph, sets, start, comp, looping, budget);
    if (polynomial) return { kind: 'polynomial', first: innermostCommonLoop([polynomial[0]]), second: innermostCommonLoop([polynomial[1]]) };
  }
  return livePaths(graph, sets, start, budget);
}

function polynomialPair(graph: CharGraph, sets: Nfa['sets'], start: number, comp: Int32Array, looping: { c: number; vs: number[] }[], budget: Budget): [number, number] | null {
  const N = sets.length;
  const succOf = (v: number) => graph.succ.get(v) ?? [];
  const predecessors = new Map<number, number[]>();
  for (const v of [start, ...graph.chars]) for (const e of succOf(v)) (predecessors.get(e.to) ?? predecessors.set(e.to, []).get(e.to)!).push(v);
  const closure = (from: number[], next: (v: number) => number[]): Set<number> => {
    const seen = new Set<number>(from);
    const queue = [...from];
    while (queue.length > 0) {
      budget.spend();
      for (const w of next(queue.pop()!)) {
        if (!seen.has(w)) {
          seen.add(w);
          queue.push(w);
        }
      }
    }
    return seen;
  };
  const info = looping.map((L) => {
    let from: Set<number> | undefined;
    let to: Set<number> | undefined;
    return {
      ...L,
      set: normalise(L.vs.flatMap((v) => pairs(sets[v]!))),
      from: () => (from ??= closure(L.vs, (v) => succOf(v).map((e) => e.to))),
      to: () => (to ??= closure(L.vs, (v) => predecessors.get(v) ?? [])),
    };
  });
  for (const A of info) {
    for (const B of info) {
      budget.spend();
      if (A === B || intersect(A.set, B.set).length === 0 || !A.from().has(B.vs[0]!)) continue;
      const toB = B.to();
      const findTriple = (p: number, q: number): boolean => {
        const key = (a: number, b: number, c: number) => (a * N + b) * N + c;
        const seen = new Set<number>([key(p, p, q)]);
        const queue: [number, number, number][] = [[p, p, q]];
        while (queue.length > 0) {
          const [a, b, c] = queue.pop()!;
          for (const ea of succOf(a)) {
            if (comp[ea.to] !== A.c) continue;
            for (const eb of succOf(b)) {
              if (!toB.has(eb.to)) continue;
              const ab = intersect(sets[ea.to]!, sets[eb.to]!);
              if (ab.length === 0) continue;
              for (const ec of succOf(c)) {
                budget.spend();
                if (comp[ec.to] !== B.c || intersect(ab, sets[ec.to]!).length === 0) continue;
                if (ea.to === p && eb.to === q && ec.to === q) return true;
                const next = key(ea.to, eb.to, ec.to);
                if (!seen.has(next)) {
                  seen.add(next);
                  queue.push([ea.to, eb.to, ec.to]);
                }
              }
            }
          }
        }
        return false;
      };
      for (const p of A.vs) for (const q of B.vs) if (findTriple(p, q)) return [p, q];
    }
  }
  return null;
}

/**
 * Finitely ambiguous patterns can still be expensive: `a?a?a?…a?` (n times) keeps C(n, k) paths
 * alive. A backtracker's work on a failing input is the sum, over the input's prefixes, of the
 * paths alive after reading them; so explore the subset construction with path counts (over
 * classes of equivalent characters) and refuse when more than MAX_LIVE_PATHS are ever alive.
 */
const MAX_LIVE_PATHS = 16;

function livePaths(graph: CharGraph, sets: Nfa['sets'], start: number, budget: Budget): Finding | null {
  const succOf = (v: number) => graph.succ.get(v) ?? [];
  const cuts = new Set<number>([0]);
  for (const v of graph.chars) {
    for (const [lo, hi] of pairs(sets[v]!)) {
      cuts.add(lo);
      if (hi < 0xffff) cuts.add(hi + 1);
    }
  }
  const contains = (set: CharSet, c: number) => {
    for (let i = 0; i < set.length; i += 2) if (set[i]! <= c && c <= set[i + 1]!) return true;
    return false;
  };
  const classes = [...cuts].map((r) => {
    budget.spend(graph.chars.length);
    return new Set(graph.chars.filter((v) => contains(sets[v]!, r)));
  }).filter((accepting) => accepting.size > 0);
  const keyOf = (vector: Map<number, number>) => [...vector.entries()].sort((a, b) => a[0] - b[0]).join(';');
  const initial = new Map([[start, 1]]);
  const seen = new Set<string>([keyOf(initial)]);
  const queue = [initial];
  while (queue.length > 0) {
    const vector = queue.pop()!;
    for (const accepting of classes) {
      const next = new Map<number, number>();
      let total = 0;
      for (const [state, count] of vector) {
        for (const e of succOf(state)) {
          budget.spend();
          if (!accepting.has(e.to)) continue;
          const added = count * e.paths;
          next.set(e.to, Math.min(MAX_LIVE_PATHS + 1, (next.get(e.to) ?? 0) + added));
          total += added;
        }
      }
      if (total > MAX_LIVE_PATHS) return { kind: 'finite', paths: total };
      if (next.size === 0) continue;
      const key = keyOf(next);
      if (!seen.has(key)) {
        seen.add(key);
        queue.push(next);
      }
    }
  }
  return null;
}

/**
 * Why `source` (JS regex syntax, no flags) is unsafe to run on untrusted URLs, or null.
 * `origin` words the message: for a glob the regex is micromatch's output, not the user's text.
 */
export function regexSafetyProblem(source: string, origin: 'regex' | 'glob' = 'regex'): string | null {
  try {
    const parser = new RegexParser(source);
    const root = parser.parse();
    const budget = new Budget();
    for (const body of [root, ...parser.lookaheads]) {
      const nfa = new Nfa(budget);
      const start = nfa.node(null);
      nfa.build(body, start);
      const finding = ambiguity(nfa, start, budget);
      if (finding) return describeFinding(finding, source, origin);
    }
    return null;
  } catch (err) {
    if (err instanceof Refusal) return origin === 'glob' ? `is not a glob we can check (${err.message})` : err.message;
    throw err;
  }
}

function describeFinding(finding: Finding, source: string, origin: 'regex' | 'glob'): string {
  const show = (loop: Loop | null) => (loop ? `"${excerpt(source, loop.start, loop.end)}"` : 'two repeats');
  if (finding.kind === 'finite') {
    return `can backtrack catastrophically (more than ${MAX_LIVE_PATHS} ways to match the same text at once, e.g. many optional parts in a row); make the alternatives unambiguous`;
  }
  if (origin === 'glob') {
    return finding.kind === 'exponential'
      ? 'can backtrack catastrophically (its wildcards can match the same text in exponentially many ways)'
      : 'can backtrack polynomially (two wildcards can match the same stretch of URL, as in "**/v1/**"); narrow one of them, e.g. "*" instead of "**"';
  }
  if (finding.kind === 'exponential') {
    const what = finding.loop?.nested ? 'nested quantifier' : finding.loop?.alternation ? 'quantified alternation with overlapping branches' : 'overlapping repetition';
    return `can backtrack catastrophically (${what} ${show(finding.loop)}); rewrite it so each character can be matched only one way`;
  }
  return `can backtrack polynomially (quantifiers ${show(finding.first)} and ${show(finding.second)} can match the same text); narrow one of them, e.g. [^/]* instead of .*`;
}

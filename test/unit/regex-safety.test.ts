import fc from 'fast-check';
import { checkSync, type Diagnostics } from 'recheck';
import { beforeAll, describe, expect, it } from 'vitest';
import { regexSafetyProblem } from '../../src/regex-safety/index.js';

/** Known-evil patterns with how they are refused: the kind of blow-up and the quantifier to blame. */
const EVIL: [pattern: string, message: RegExp][] = [
  ['(a+)+', /^can backtrack catastrophically \(nested quantifier "\(a\+\)\+"\); rewrite it so each character can be matched only one way$/],
  ['(a|a)*', /catastrophically \(quantified alternation with overlapping branches "\(a\|a\)\*"\)/],
  ['(a|aa)+', /catastrophically \(quantified alternation with overlapping branches "\(a\|aa\)\+"\)/],
  ['(\\w+\\s?)+', /catastrophically \(nested quantifier "\(\\w\+\\s\?\)\+"\)/],
  ['^(([a-z])+.)+[A-Z]([a-z])+$', /catastrophically \(nested quantifier "\(\(\[a-z\]\)\+\.\)\+"\)/],
  ['(.*)*', /catastrophically \(nested quantifier/],
  ['(?:a|a?)+', /catastrophically \(quantified alternation/],
  ['https://h/(/?[a-z0-9]+)*/?', /catastrophically \(nested quantifier "\(\/\?\[a-z0-9\]\+\)\*"\)/],
  ['https://h/(?:[a-z]+|[a-z0-9]+)+/x', /catastrophically \(nested quantifier/],
  ['a?'.repeat(40) + 'a'.repeat(40), /^can backtrack catastrophically \(more than 16 ways to match the same text at once/],
  ['.*/.*', /^can backtrack polynomially \(quantifiers "\.\*" and "\.\*" can match the same text\); narrow one of them/],
  ['https://api\\.example\\.com/.*/files/.*', /polynomially \(quantifiers "\.\*" and "\.\*"/],
  ['https://h/[^/]*[a-z]*x', /polynomially \(quantifiers "\[\^\/\]\*" and "\[a-z\]\*"/],
  ['https://h/\\w+\\d+/x', /polynomially \(quantifiers "\\w\+" and "\\d\+"/],
];

/** Known-safe URL patterns (and look-alikes of evil ones that a separator makes unambiguous). */
const SAFE = [
  '[a-z]+\\.pdf',
  'https://api\\.example\\.com/v1/[^/]+/files/[0-9]+',
  '^https://api\\.openai\\.com/.*$',
  'https://([a-z0-9-]+\\.)*example\\.com/.*',
  'https://api\\.github\\.com/repos/[^/]+/[^/]+/issues(/\\d+)?',
  'https://example\\.com/search\\?q=[^&#]*(&[a-z]+=[^&#]*)*',
  'https://h/v1/files/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}',
  'https://h/(?:\\d+\\.)*\\d+\\.\\d+/',
  'https://([a-z0-9]+(-[a-z0-9]+)*\\.)+example\\.com/',
  '(?!https://internal\\.)https://[a-z.]+\\.corp\\.example/[^?#]*',
  '([a-z]+\\.)+com',
  '(a|ab)*c',
  '(a?)*',
  'a?'.repeat(4) + 'a'.repeat(4),
];

describe('regexSafetyProblem', () => {
  it('refuses known-evil patterns, naming the kind of blow-up and the quantifier to blame', () => {
    for (const [pattern, message] of EVIL) expect(regexSafetyProblem(pattern), pattern).toMatch(message);
  });

  it('accepts known-safe URL patterns', () => {
    for (const pattern of SAFE) expect(regexSafetyProblem(pattern), pattern).toBeNull();
  });

  it('words findings for a glob in terms of wildcards, since its regex is not what the user wrote', () => {
    expect(regexSafetyProblem('.*/.*', 'glob')).toMatch(/^can backtrack polynomially \(two wildcards can match the same stretch of URL/);
    expect(regexSafetyProblem('(a+)+', 'glob')).toBe('can backtrack catastrophically (its wildcards can match the same text in exponentially many ways)');
    expect(regexSafetyProblem('(a)\\1', 'glob')).toBe('is not a glob we can check (back-references ("\\1") are not allowed)');
  });

  it('refuses what the analysis cannot model, and patterns too big to analyse', () => {
    expect(regexSafetyProblem('(a)\\1')).toMatch(/back-references \("\\1"\) are not allowed/);
    expect(regexSafetyProblem('(?<n>a)\\k<n>')).toMatch(/back-references \("\\k<name>"\)/);
    expect(regexSafetyProblem('(?<=https://)api')).toMatch(/lookbehind/);
    expect(regexSafetyProblem('https://h/(?=a)*')).toMatch(/quantified lookaheads are not allowed/);
    expect(regexSafetyProblem('(?=[a-z]{1,16}/)[a-z]+/.*')).toBeNull();
    expect(regexSafetyProblem('(?=[a-z]{1,17}/)')).toMatch(/lookaheads may not contain unbounded or large repeats \("\[a-z\]\{1,17\}"\)/);
    expect(regexSafetyProblem('https://h/\\p{L}+')).toMatch(/needs the u flag/);
    expect(regexSafetyProblem('https://h/a{1001}')).toMatch(/repeat counts above 1000/);
    expect(regexSafetyProblem('('.repeat(64) + 'a' + ')'.repeat(64))).toBeNull();
    expect(regexSafetyProblem('('.repeat(65) + 'a' + ')'.repeat(65))).toBe('groups nested deeper than 64 are not allowed');
    expect(regexSafetyProblem('(?:|)'.repeat(200))).toBe('is too complex to check for catastrophic backtracking; simplify it');
  });

  it('never throws, and never accepts a string that is not a valid JS regex', () => {
    const unit = fc.constantFrom(...'()[]{}|*+?.^$\\-,:=!<>/ab019wdsbBkpux'.split(''));
    fc.assert(
      fc.property(fc.string({ unit, maxLength: 30 }), (source) => {
        const problem = regexSafetyProblem(source);
        if (problem === null) expect(() => new RegExp(source), source).not.toThrow();
        else expect(typeof problem).toBe('string');
      }),
      { seed: 42, numRuns: 2_000 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Differential test against recheck, an independent ReDoS checker (automata plus fuzzing)
// ---------------------------------------------------------------------------------------------
//
// Our analyser must refuse every pattern recheck proves vulnerable (no false negatives). It may
// refuse more: it over-approximates (`{n,m}` analysed as a loop, anchors and lookaheads as ε) and
// also refuses bounded-but-large ambiguity, which recheck calls safe. Those false positives are
// counted and bounded so that an analyser that refuses everything fails.
//
// recheck is asked about `^(?:pattern)$` because that is the regex the allowlist runs (a full
// match from position 0); on the bare pattern it models an unanchored search, where even
// `[a-z]+\.pdf` is quadratic and `(a+)+` is linear.

/** Known-evil URL-style patterns: recheck finds an attack on each (it must never call one safe). */
const CORPUS_EVIL = [
  '(a+)+',
  '(a|a)*',
  '(a|aa)+',
  '(\\w+\\s?)+',
  '^(([a-z])+.)+[A-Z]([a-z])+$',
  '(a*)*',
  '(x+x+)+y',
  '(\\w|\\d)+',
  '(.*a){12}',
  '(a+){2,}',
  '(?:a|a?)+',
  '([a-z.]+\\.)+com',
  '(a|b|ab)+',
  'https://h/([^/]+/?)+$',
  'https://x\\.com/(\\d+)*\\.json',
  'https://([a-zA-Z0-9]+\\.?)+example\\.com/',
  'https://example\\.com/((a|b|ab)*)c',
  'https://([a-z]+)*\\.example\\.com/',
  'https://h/(/?[a-z0-9]+)*/?',
  'https://h/(?:[\\w-]+/?)+\\.json',
  'https://h/(?:[a-z]+|[a-z0-9]+)+/x',
  '.*/.*',
  'https://.*\\.example\\.com/.*',
  'https://h/.*/.*',
  '\\d+\\d+x',
  'https://api\\.example\\.com/.*/files/.*',
  'https://h/[^/]*[a-z]*x',
  'https://h/\\w+\\d+/x',
  'https://h/[^?]*\\?.*=.*&',
  'https://[a-z.]*\\.[a-z.]*\\.com/',
];

/** Known-safe URL-style patterns. */
const CORPUS_SAFE = [
  '[a-z]+\\.pdf',
  'https://api\\.example\\.com/v1/[^/]+/files/[0-9]+',
  '^https://api\\.openai\\.com/.*$',
  'https://([a-z0-9-]+\\.)*example\\.com/.*',
  'https://api\\.github\\.com/repos/[^/]+/[^/]+/issues(/\\d+)?',
  'https://(www\\.)?googleapis\\.com/storage/v1/b/[a-z0-9._-]{3,63}/o(\\?.*)?',
  'https://[a-z]+\\.slack\\.com/api/[a-zA-Z.]+',
  'https://example\\.com/search\\?q=[^&#]*(&[a-z]+=[^&#]*)*',
  'https?://localhost(:\\d{2,5})?/health',
  'https://(\\d{1,3}\\.){3}\\d{1,3}/.*',
  'https://[^/]*\\.example\\.com/.*',
  'https://h/[^/]+/[^/]+/[^/]+',
  'https://h/(?:[a-z]+/)*[a-z]+\\.json',
  'https://h/[a-z]+(?:-[a-z]+)*',
  'https://h/\\d+(?:,\\d+)*',
  'https://h/x\\?(?:[a-z]+=[^&]*&)*[a-z]+=[^&]*',
  'https://h/(?:\\d+\\.)*\\d+\\.\\d+/',
  'https://[a-z]{2,8}\\.example\\.(com|org|net)/',
  '([a-z]+\\.)+com',
  '(a|b)+',
  '(a|ab)*c',
  '[^/]*/.*',
  '(a?)*',
];

/** Patterns from a small regex grammar: literals, classes, groups, alternation and quantifiers. */
function generatedPatterns(count: number, seed: number): string[] {
  const literal = fc.constantFrom('a', 'b', 'x', '/', '-', '\\.', '.');
  const charClass = fc.constantFrom('[a-z]', '[ab]', '[^/]', '[^a]', '[0-9a-f]', '\\d', '\\w', '\\s');
  // {m}, {m,} (extra < 0) or {m,m+extra}
  const counted = fc
    .tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: -1, max: 2 }))
    .map(([m, extra]) => (extra < 0 ? `{${m},}` : extra === 0 ? `{${m}}` : `{${m},${m + extra}}`));
  const quantifier = fc.oneof(fc.constantFrom('', '', '', '*', '+', '?', '*?', '+?'), counted);
  const { alternation } = fc.letrec((tie) => ({
    atom: fc.oneof({ maxDepth: 2, depthIdentifier: 'group' }, literal, charClass, tie('group')),
    group: fc.tuple(fc.constantFrom('(', '(?:'), tie('alternation')).map(([open, body]) => `${open}${body})`),
    piece: fc.tuple(tie('atom'), quantifier).map(([atom, q]) => `${atom}${q}`),
    sequence: fc.array(tie('piece'), { minLength: 1, maxLength: 3 }).map((pieces) => pieces.join('')),
    alternation: fc.array(tie('sequence'), { minLength: 1, maxLength: 2 }).map((branches) => branches.join('|')),
  }));
  const valid = (source: string) => {
    try {
      new RegExp(source);
      return true;
    } catch {
      return false;
    }
  };
  // Short patterns only: recheck's cost grows fast with size, and short ones already cover the grammar.
  const unique = new Set(fc.sample(alternation.filter((p) => p.length <= 40 && valid(p)), { seed, numRuns: count * 3 }));
  return [...unique].slice(0, count);
}

const GENERATED_COUNT = 300;
const SEED = 20_251_202;
/** Per pattern: the automaton checker can take a second on a long URL pattern of a busy machine. */
const RECHECK_TIMEOUT_MS = 1_000;
/**
 * For all of recheck's work, so the file stays under half a minute: the whole corpus takes 10–21 s
 * with recheck's native binary on 2 cores shared with other test runs, and ten times that on its
 * pure-JS fallback. The fixed corpus goes first; generated patterns left when the budget runs out
 * are counted as unchecked, and the checks below still require enough verdicts.
 */
const RECHECK_BUDGET_MS = 18_000;
/**
 * Share of the patterns recheck calls safe that we refuse. Measured: 11.7–12.1% for this corpus
 * (28 or 29 of about 240; a slow pattern may time out); 12–25% on the generated patterns alone for
 * other seeds. Nearly all involve a counted repeat analysed as a loop: `/{0,2}.*` and
 * `\w+?(?:\w{0,2})` are refused as polynomial.
 */
const MAX_FALSE_POSITIVE_RATE = 0.25;

interface Verdict {
  pattern: string;
  origin: 'evil' | 'safe' | 'generated';
  recheck: Diagnostics['status'] | 'unchecked';
  complexity: string;
  ours: string | null;
}

describe('differential test against recheck', () => {
  const verdicts: Verdict[] = [];
  let generated: string[] = [];

  beforeAll(() => {
    generated = generatedPatterns(GENERATED_COUNT, SEED);
    const corpus = [
      ...CORPUS_EVIL.map((pattern) => ({ pattern, origin: 'evil' as const })),
      ...CORPUS_SAFE.map((pattern) => ({ pattern, origin: 'safe' as const })),
      ...generated.map((pattern) => ({ pattern, origin: 'generated' as const })),
    ];
    const deadline = performance.now() + RECHECK_BUDGET_MS;
    for (const { pattern, origin } of corpus) {
      const ours = regexSafetyProblem(pattern);
      if (performance.now() > deadline) {
        verdicts.push({ pattern, origin, recheck: 'unchecked', complexity: '', ours });
        continue;
      }
      const result = checkSync(`^(?:${pattern})$`, '', { timeout: RECHECK_TIMEOUT_MS });
      const complexity = result.status === 'unknown' ? result.error.kind : result.complexity.type;
      verdicts.push({ pattern, origin, recheck: result.status, complexity, ours });
    }
    const count = (status: Verdict['recheck']) => verdicts.filter((v) => v.recheck === status).length;
    const falsePositives = verdicts.filter((v) => v.recheck === 'safe' && v.ours !== null);
    const lines = [
      `regex-safety vs recheck: ${verdicts.length} patterns (${CORPUS_EVIL.length} known-evil, ${CORPUS_SAFE.length} known-safe, ${generated.length} generated, seed ${SEED})`,
      `  recheck: ${count('vulnerable')} vulnerable, ${count('safe')} safe, ${count('unknown')} unknown (skipped), ${count('unchecked')} unchecked (time budget)`,
      `  ours: ${verdicts.filter((v) => v.ours !== null).length} refused; false positives ${falsePositives.length}/${count('safe')} = ${((100 * falsePositives.length) / Math.max(1, count('safe'))).toFixed(1)}%`,
      ...falsePositives.map((v) => `    ${v.pattern}  — ${v.ours}`),
    ];
    console.log(lines.join('\n'));
  }, RECHECK_BUDGET_MS + 15_000);

  it(`builds a reproducible corpus of ${CORPUS_EVIL.length + CORPUS_SAFE.length + GENERATED_COUNT} patterns`, () => {
    expect(generated).toHaveLength(GENERATED_COUNT);
    expect(generatedPatterns(GENERATED_COUNT, SEED)).toEqual(generated);
    // The grammar reaches every construct it is meant to.
    for (const construct of ['(?:', '|', '*', '+', '?', '{', '[^', '\\d', '*?']) expect(generated.some((p) => p.includes(construct)), construct).toBe(true);
  });

  it('has recheck agree that the known-evil patterns are vulnerable (so it is asked the right question)', () => {
    // Asked about the bare pattern, recheck would call `(a+)+` safe; a timeout only makes it unknown.
    for (const v of verdicts.filter((x) => x.origin === 'evil')) expect(v.recheck, v.pattern).not.toBe('safe');
    // Enough verdicts that the comparison means something, even on a slow machine.
    expect(verdicts.filter((v) => v.recheck === 'vulnerable').length).toBeGreaterThanOrEqual(40);
    expect(verdicts.filter((v) => v.recheck === 'safe').length).toBeGreaterThanOrEqual(40);
  });

  it('refuses every pattern recheck finds vulnerable (no false negatives)', () => {
    const falseNegatives = verdicts.filter((v) => v.recheck === 'vulnerable' && v.ours === null).map((v) => `${v.pattern} (${v.complexity})`);
    expect(falseNegatives).toEqual([]);
  });

  it(`refuses under ${MAX_FALSE_POSITIVE_RATE * 100}% of the patterns recheck finds safe`, () => {
    const safe = verdicts.filter((v) => v.recheck === 'safe');
    const falsePositives = safe.filter((v) => v.ours !== null);
    expect(falsePositives.length / safe.length).toBeLessThan(MAX_FALSE_POSITIVE_RATE);
    // The known-safe URL patterns are never among them.
    expect(falsePositives.filter((v) => v.origin === 'safe').map((v) => v.pattern)).toEqual([]);
  });
});

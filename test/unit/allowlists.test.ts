import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AllowlistMatcher,
  MAX_URL_LENGTH,
  allowlistPatternProblem,
  compileAllowlistEntry,
  createAllowlistEntry,
  deleteAllowlistEntry,
  listAllowlistEntries,
  testUrl,
  type AllowlistEntry,
  type AllowlistPatternType,
  type CompiledAllowlistEntry,
} from '../../src/authority/stores/allowlists.js';
import { registerPrincipal } from '../../src/authority/stores/principals.js';
import { regexSafetyProblem } from '../../src/regex-safety/index.js';
import type { Queryable } from '../../src/store/db.js';
import { migrateUp } from '../../src/store/migrate.js';
import { PgliteDb } from '../../src/store/pglite-db.js';

let ids = 0;
function entry(pattern: string, patternType: AllowlistPatternType): CompiledAllowlistEntry {
  const e: AllowlistEntry = { id: `entry-${++ids}`, principalId: 'agent-1', pattern, patternType, createdAt: new Date(0).toISOString() };
  const compiled = compileAllowlistEntry(e);
  if (!compiled.matches) throw new Error(`${pattern} does not compile: ${compiled.problem}`);
  return compiled;
}
const allows = (pattern: string, type: AllowlistPatternType, url: string) => testUrl([entry(pattern, type)], url).matched;

/** Patterns that backtrack exponentially or polynomially (or use features that can): refused. */
const EVIL: [pattern: string, message: RegExp][] = [
  ['(a+)+', /can backtrack catastrophically \(nested quantifier "\(a\+\)\+"\)/],
  ['(a*)*', /catastrophically \(nested quantifier "\(a\*\)\*"\)/],
  ['(.*)*', /catastrophically \(nested quantifier "\(\.\*\)\*"\)/],
  ['(a|aa)+', /catastrophically \(quantified alternation with overlapping branches "\(a\|aa\)\+"\)/],
  ['(\\w+\\s?)+', /catastrophically \(nested quantifier "\(\\w\+\\s\?\)\+"\)/],
  ['(x+x+)+y', /catastrophically \(nested quantifier "\(x\+x\+\)\+"\)/],
  ['(a|a)*', /catastrophically \(quantified alternation/],
  ['^(a+)+$', /catastrophically \(nested quantifier "\(a\+\)\+"\)/],
  ['https://x\\.com/(\\d+)*\\.json', /catastrophically \(nested quantifier "\(\\d\+\)\*"\)/],
  ['https://example\\.com/((a|b|ab)*)c', /catastrophically \(quantified alternation with overlapping branches "\(a\|b\|ab\)\*"\)/],
  ['https://([a-zA-Z0-9]+\\.?)+example\\.com/', /catastrophically \(nested quantifier/],
  ['(\\w|\\d)+', /catastrophically \(quantified alternation/],
  ['(.*a){12}', /catastrophically \(nested quantifier "\(\.\*a\)\{12\}"\)/],
  ['(a+){2,}', /catastrophically \(nested quantifier/],
  ['https://h/([^/]+/?)+$', /catastrophically \(nested quantifier "\(\[\^\/\]\+\/\?\)\+"\)/],
  ['(?:a|a?)+', /catastrophically/],
  ['^(([a-z])+.)+[A-Z]([a-z])+$', /catastrophically \(nested quantifier "\(\(\[a-z\]\)\+\.\)\+"\)/],
  ['(a|b|c|a)+', /catastrophically \(quantified alternation/],
  ['https://x/(?:(?:a*)*)+', /catastrophically \(nested quantifier/],
  ['^([a-zA-Z0-9])(([\\-.]|[_]+)?([a-zA-Z0-9]+))*(@){1}[a-z0-9]+[.]{1}(([a-z]{2,3})|([a-z]{2,3}[.]{1}[a-z]{2,3}))$', /catastrophically/],
  // finite, but exponential in the pattern's size: C(40, k) ways to place k a's
  ['a?'.repeat(40) + 'a'.repeat(40), /catastrophically \(more than 16 ways/],
  // polynomial: quadratic or worse on an 8 KiB URL
  ['https://.*\\.example\\.com/.*', /can backtrack polynomially \(quantifiers "\.\*" and "\.\*" can match the same text\)/],
  ['.*.*.*=.*', /polynomially/],
  ['https://h/.*/.*', /polynomially/],
  ['\\d{1,1000}\\d{1,1000}x', /polynomially \(quantifiers "\\d\{1,1000\}" and "\\d\{1,1000\}"/],
  // refused features
  ['(a)\\1', /back-references \("\\1"\) are not allowed/],
  ['(?<n>a)\\k<n>', /back-references \("\\k<name>"\) are not allowed/],
  ['(?<=https://)api', /lookbehind/],
  ['(?<!x)y', /lookbehind/],
  ['(?=(a+)+b)', /lookaheads may not contain unbounded or large repeats/],
  ['https://h/(?=a)*', /quantified lookaheads are not allowed/],
  ['https://h/\\p{L}+', /needs the u flag/],
  ['https://h/\\u{41}', /"\\u" must be followed by 4 hex digits/],
  ['https://h/a{1001}', /repeat counts above 1000/],
];

/** Real-world URL patterns: accepted. */
const GOOD = [
  '^https://api\\.openai\\.com/.*$', // the usual form: one API host, any path
  'https://api\\.anthropic\\.com/v1/messages',
  'https://([a-z0-9-]+\\.)*example\\.com/.*',
  'https://api\\.github\\.com/repos/[^/]+/[^/]+/issues(/\\d+)?',
  'https://(www\\.)?googleapis\\.com/storage/v1/b/[a-z0-9._-]{3,63}/o(\\?.*)?',
  'https://[a-z]+\\.slack\\.com/api/[a-zA-Z.]+',
  'https://api\\.stripe\\.com/v1/(charges|customers|payment_intents)(/[A-Za-z0-9_]+)?',
  'https://example\\.com/search\\?q=[^&#]*(&[a-z]+=[^&#]*)*',
  'https://hooks\\.slack\\.com/services/[A-Z0-9]{9,11}/[A-Z0-9]{9,11}/[A-Za-z0-9]{24}',
  'https?://localhost(:\\d{2,5})?/health',
  'https://api\\.example\\.com/v[12]/(users|orders)/\\d+',
  '(?!https://internal\\.)https://[a-z.]+\\.corp\\.example/[^?#]*',
  'https://(\\d{1,3}\\.){3}\\d{1,3}/.*',
  'https://[^/]*\\.example\\.com/.*',
  'https://api\\.openai\\.com/v1/(chat/completions|embeddings|models(/[\\w.-]+)?)',
  'https://[a-z0-9-]+\\.s3\\.amazonaws\\.com/[^?#]+',
];

const GOOD_GLOBS = [
  'https://api.anthropic.com/*', // the usual form: one API host, one path segment
  'https://api.anthropic.com/**',
  'https://*.example.com/**',
  'https://api.github.com/repos/*/*/issues/**',
  'https://x.com/**/*.json',
  'https://{api,uploads}.example.com/v1/*',
  'https://api.example.com/v[12]/users/?',
  'https://api.openai.com/v1/chat/completions',
];

describe('regex backtracking safety', () => {
  it(`refuses every pattern of the evil corpus (${EVIL.length}) with a clear message`, () => {
    expect(EVIL.length).toBeGreaterThanOrEqual(15);
    for (const [pattern, message] of EVIL) {
      const problem = allowlistPatternProblem(pattern, 'regex');
      expect(problem, pattern).not.toBeNull();
      expect(problem, pattern).toMatch(message);
    }
  });

  it(`accepts every pattern of the good corpus (${GOOD.length} regexes, ${GOOD_GLOBS.length} globs)`, () => {
    expect(GOOD.length).toBeGreaterThanOrEqual(10);
    for (const pattern of GOOD) expect(allowlistPatternProblem(pattern, 'regex'), pattern).toBeNull();
    for (const pattern of GOOD_GLOBS) expect(allowlistPatternProblem(pattern, 'glob'), pattern).toBeNull();
  });

  it('tells apart the unambiguous look-alikes of evil patterns', () => {
    // A separator the repeated part cannot match makes the split unique.
    expect(regexSafetyProblem('([a-z]+\\.)+com')).toBeNull();
    expect(regexSafetyProblem('(a|b)+')).toBeNull();
    expect(regexSafetyProblem('(a|ab)*c')).toBeNull();
    expect(regexSafetyProblem('[^/]*/.*')).toBeNull();
    expect(regexSafetyProblem('(a?)*')).toBeNull();
    // …and their ambiguous twins are refused.
    expect(regexSafetyProblem('([a-z.]+\\.)+com')).toMatch(/catastrophically/);
    expect(regexSafetyProblem('(a|b|ab)+')).toMatch(/catastrophically/);
    expect(regexSafetyProblem('.*/.*')).toMatch(/polynomially/);
  });

  it('refuses invalid regexes with the JavaScript error', () => {
    expect(allowlistPatternProblem('https://(api', 'regex')).toMatch(/^is not a valid regex \(Invalid regular expression: .*Unterminated group\)$/);
    expect(allowlistPatternProblem('[z-a]', 'regex')).toMatch(/not a valid regex .*Range out of order/);
    expect(allowlistPatternProblem('*a', 'regex')).toMatch(/not a valid regex .*Nothing to repeat/);
    expect(allowlistPatternProblem('a{2,1}', 'regex')).toMatch(/not a valid regex/);
    // Would close the wrapper group and escape the full-match anchors: invalid on its own.
    expect(allowlistPatternProblem('a)|(.*', 'regex')).toMatch(/not a valid regex .*Unmatched '\)'/);
  });

  it('refuses a 1 MiB pattern on its length, without parsing it', () => {
    const started = performance.now();
    expect(allowlistPatternProblem('(a+)+'.repeat(209_716), 'regex')).toBe('is longer than 1024 characters');
    expect(allowlistPatternProblem('*'.repeat(1 << 20), 'glob')).toBe('is longer than 1024 characters');
    expect(performance.now() - started).toBeLessThan(50);
    expect(allowlistPatternProblem('a'.repeat(1024), 'regex')).toBeNull();
  });

  it('refuses control characters in patterns and gives up on patterns too big to analyse', () => {
    expect(allowlistPatternProblem('https://a\u0000b', 'regex')).toBe('must not contain control characters');
    expect(allowlistPatternProblem('https://a/\u001b[2J', 'glob')).toBe('must not contain control characters');
    const started = performance.now();
    expect(allowlistPatternProblem('(?:|)'.repeat(200), 'regex')).toMatch(/too complex to check/);
    expect(allowlistPatternProblem('*/'.repeat(500), 'glob')).toMatch(/too complex to check/);
    expect(allowlistPatternProblem('[^/]*/'.repeat(170), 'regex')).toBeNull(); // long, but linear
    expect(performance.now() - started).toBeLessThan(1_000);
  });
});

describe('regex matching', () => {
  const openai = '^https://api\\.openai\\.com/.*$';

  it('matches the whole URL (anchored full match)', () => {
    expect(allows(openai, 'regex', 'https://api.openai.com/v1/chat')).toBe(true);
    expect(allows(openai, 'regex', 'https://api.openai.com.evil.com/')).toBe(false);
    expect(allows(openai, 'regex', 'http://api.openai.com/x')).toBe(false);
    // Without anchors of its own a pattern still has to match everything.
    expect(allows('api\\.openai\\.com', 'regex', 'https://evil.com/?api.openai.com')).toBe(false);
    expect(allows('https://api\\.openai\\.com/.*', 'regex', 'https://api.openai.com/v1')).toBe(true);
    expect(allows('https://api\\.openai\\.com/.*', 'regex', 'xhttps://api.openai.com/v1')).toBe(false);
    // An alternation cannot escape the anchors: each branch is full-match.
    expect(allows('https://a\\.com/.*|https://b\\.com/x', 'regex', 'https://b.com/x/more')).toBe(false);
    expect(allows('https://a\\.com/.*|https://b\\.com/x', 'regex', 'https://b.com/x')).toBe(true);
  });

  it('uses no flags: case-sensitive, . does not cross lines', () => {
    expect(allows(openai, 'regex', 'https://API.openai.com/v1')).toBe(false);
    expect(allows('https://h/.*', 'regex', 'https://h/a\nb')).toBe(false);
  });
});

describe('glob matching', () => {
  it('"*" matches within one path segment, "**" across segments', () => {
    const one = 'https://api.anthropic.com/*';
    expect(allows(one, 'glob', 'https://api.anthropic.com/v1')).toBe(true);
    expect(allows(one, 'glob', 'https://api.anthropic.com/v1/')).toBe(true); // trailing slash tolerated
    expect(allows(one, 'glob', 'https://api.anthropic.com/v1/messages')).toBe(false);
    expect(allows(one, 'glob', 'https://api.anthropic.com/')).toBe(false); // "*" needs a character
    expect(allows(one, 'glob', 'https://api.anthropic.com.evil.com/v1')).toBe(false);
    expect(allows(one, 'glob', 'https://evil.com/api.anthropic.com/v1')).toBe(false);
    expect(allows(one, 'glob', 'https://api.anthropic.com/.well-known')).toBe(true); // dot segments are ordinary
    const deep = 'https://api.anthropic.com/**';
    expect(allows(deep, 'glob', 'https://api.anthropic.com/v1/messages/batches')).toBe(true);
    expect(allows(deep, 'glob', 'https://api.anthropic.com')).toBe(true);
    expect(allows(deep, 'glob', 'https://api.anthropic.com.evil.com/v1')).toBe(false);
  });

  it('treats the "//" of the scheme literally and a query string as text', () => {
    expect(allows('https://*/v1', 'glob', 'https://h.example/v1')).toBe(true);
    expect(allows('https:/*/v1', 'glob', 'https://h.example/v1')).toBe(false);
    expect(allows('https://h/*', 'glob', 'https://h/v1?a=b')).toBe(true);
    expect(allows('https://h/*', 'glob', 'https://h/v1?next=/x')).toBe(false);
    expect(allows('https://h/**', 'glob', 'https://h/v1?next=/x')).toBe(true);
  });

  it('supports ?, classes, braces and escapes; is case-sensitive', () => {
    expect(allows('https://api.example.com/v[12]/users/?', 'glob', 'https://api.example.com/v2/users/7')).toBe(true);
    expect(allows('https://api.example.com/v[12]/users/?', 'glob', 'https://api.example.com/v3/users/7')).toBe(false);
    expect(allows('https://{api,uploads}.example.com/v1/*', 'glob', 'https://uploads.example.com/v1/x')).toBe(true);
    expect(allows('https://{api,uploads}.example.com/v1/*', 'glob', 'https://www.example.com/v1/x')).toBe(false);
    expect(allows('https://h/a\\*b', 'glob', 'https://h/a*b')).toBe(true);
    expect(allows('https://h/a\\*b', 'glob', 'https://h/axb')).toBe(false);
    expect(allows('https://h/*', 'glob', 'HTTPS://h/x')).toBe(false);
  });

  it('keeps a host wildcard inside the host', () => {
    const wild = 'https://*.example.com/**';
    expect(allows(wild, 'glob', 'https://api.example.com/v1')).toBe(true);
    expect(allows(wild, 'glob', 'https://evil.com/.example.com/v1')).toBe(false);
    // Textually "*" could swallow "evil.com?" or "evil.com#"; such URLs never match at all.
    expect(allows(wild, 'glob', 'https://evil.com?.example.com/v1')).toBe(false);
    expect(allows(wild, 'glob', 'https://evil.com#.example.com/v1')).toBe(false);
    expect(allows(wild, 'glob', 'https://evil.com\\.example.com/v1')).toBe(false);
    expect(allows(wild, 'glob', 'https://a.example.com@evil.com/v1')).toBe(false);
  });

  it('refuses negation, extglobs and parentheses, brace ranges, whitespace and slow globs', () => {
    expect(allowlistPatternProblem('!https://evil.com/*', 'glob')).toMatch(/negated globs/);
    expect(allowlistPatternProblem('https://h/+(a|b)', 'glob')).toMatch(/parentheses and "\|" are not glob syntax/);
    expect(allowlistPatternProblem('https://h/(a|b)', 'glob')).toMatch(/parentheses/);
    expect(allowlistPatternProblem('https://h/\\(a\\)', 'glob')).toBeNull();
    expect(allowlistPatternProblem('https://x.com/{1..3}', 'glob')).toMatch(/brace ranges/);
    expect(allowlistPatternProblem('https://h/a b', 'glob')).toMatch(/whitespace/);
    expect(allowlistPatternProblem('https://x.com/**/v1/**', 'glob')).toMatch(/can backtrack polynomially/);
    expect(allowlistPatternProblem('https://x.com/' + '*.'.repeat(20), 'glob')).toMatch(/can backtrack polynomially/);
  });
});

describe('testUrl', () => {
  const entries = [entry('https://api.anthropic.com/*', 'glob'), entry('^https://api\\.openai\\.com/.*$', 'regex')];

  it('names the first matching entry, in order', () => {
    expect(testUrl(entries, 'https://api.openai.com/v1/chat')).toEqual({ checked: true, matched: true, entryId: entries[1]!.entry.id, entries: 2, reason: 'matched' });
    expect(testUrl(entries, 'https://api.anthropic.com/v1')).toMatchObject({ matched: true, entryId: entries[0]!.entry.id });
    expect(testUrl(entries, 'https://example.com/')).toEqual({ checked: true, matched: false, entryId: null, entries: 2, reason: 'no_match' });
  });

  it('applies whenEmpty only when there are no entries', () => {
    expect(testUrl([], 'https://anything.example/')).toEqual({ checked: true, matched: false, entryId: null, entries: 0, reason: 'empty_deny' });
    expect(testUrl([], 'https://anything.example/', 'allow')).toEqual({ checked: true, matched: true, entryId: null, entries: 0, reason: 'empty_allow' });
    expect(testUrl(entries, 'https://example.com/', 'allow')).toMatchObject({ matched: false, reason: 'no_match' });
  });

  it('caps the URL length at 8 KiB', () => {
    const base = 'https://api.openai.com/';
    const exact = base + 'a'.repeat(MAX_URL_LENGTH - base.length);
    expect(testUrl(entries, exact)).toMatchObject({ matched: true });
    expect(testUrl(entries, `${exact}a`)).toMatchObject({ matched: false, reason: 'url_too_long' });
  });

  it('never matches URLs with NUL, control characters, whitespace or backslashes, or odd authorities', () => {
    for (const url of ['https://api.openai.com/v1\u0000', 'https://api.openai.com/v1\r\nHost: evil', 'https://api.openai.com/a b', 'https://api.openai.com\\@evil.com/', 'https://api.openai.com?x=/', 'https://user@api.openai.com/v1', 'api.openai.com/v1', '']) {
      expect(testUrl(entries, url), JSON.stringify(url)).toMatchObject({ matched: false, reason: 'url_malformed' });
    }
  });

  it('handles unicode in URLs and patterns', () => {
    expect(testUrl(entries, 'https://api.openai.com/v1/ünï/😀')).toMatchObject({ matched: true });
    expect(allows('https://h/caf[ée]/.*', 'regex', 'https://h/café/x')).toBe(true);
    expect(allows('https://h/😀/*', 'glob', 'https://h/😀/x')).toBe(true);
    expect(allows('https://h/.', 'regex', 'https://h/😀')).toBe(false); // no u flag: an emoji is two code units
    expect(testUrl(entries, 'https://api.openai.com/\ud800')).toMatchObject({ matched: true }); // lone surrogate: no throw
  });

  it('keeps a broken stored entry counted but never matching (fail closed)', () => {
    const broken = compileAllowlistEntry({ id: 'bad', principalId: 'agent-1', pattern: '(a+)+', patternType: 'regex', createdAt: '' });
    expect(broken.matches).toBeNull();
    expect(broken.problem).toMatch(/catastrophically/);
    expect(testUrl([broken], 'https://anything/', 'allow')).toEqual({ checked: true, matched: false, entryId: null, entries: 1, reason: 'no_match' });
  });
});

describe('matching time on adversarial 8 KiB URLs', () => {
  /** URLs of 8 KiB built from pieces of the patterns, that fail at the very end. */
  function adversarial(): string[] {
    const pieces = ['a', '/', '.', '-', '0', 'a/', 'a.', '/a', 'aa/', '.com/', '.example.com/', '&a=', '?q=', 'v1/', '%2F', 'A0', '_', 'é'];
    const urls: string[] = [];
    for (const scheme of ['https://', 'https://api.openai.com/', 'https://x.com/', 'https://api.example.com/', 'https://a.']) {
      for (const piece of pieces) {
        const body = piece.repeat(Math.ceil(MAX_URL_LENGTH / piece.length));
        urls.push((scheme + body).slice(0, MAX_URL_LENGTH - 1) + '!');
      }
    }
    return urls;
  }

  /** Best of three, to keep a busy machine from failing the test. */
  function worstCase(compiled: CompiledAllowlistEntry, urls: string[]): { ms: number; url: string } {
    let worst = { ms: 0, url: '' };
    for (const url of urls) {
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const started = performance.now();
        testUrl([compiled], url);
        best = Math.min(best, performance.now() - started);
      }
      if (best > worst.ms) worst = { ms: best, url };
    }
    return worst;
  }

  it('stays under a few milliseconds for every accepted pattern', () => {
    const urls = adversarial();
    for (const [pattern, type] of [...GOOD.map((p) => [p, 'regex'] as const), ...GOOD_GLOBS.map((p) => [p, 'glob'] as const)]) {
      const worst = worstCase(entry(pattern, type), urls);
      expect(worst.ms, `${pattern} on ${worst.url.slice(0, 40)}…`).toBeLessThan(5);
    }
  });

  it('would not for the refused ones (the corpus is really evil)', () => {
    // Quadratic `.*/.*`, compiled by hand since the checker refuses it, against the accepted
    // `[^/]*/.*`, on the same URL shape at two lengths 8× apart: a linear matcher takes about 8×
    // longer on the long one, a quadratic one about 64×. Each figure is the median of several
    // interleaved samples, and each sample repeats the call enough to be well above timer noise,
    // so a busy machine shifts both lengths alike instead of deciding the outcome.
    const evil = new RegExp('^(?:https://.*/.*)$');
    const safe = entry('https://[^/]*/.*', 'regex');
    const url = (pairs: number, last: string) => 'https://' + '/a'.repeat(pairs) + last;
    // `.` never matches the final newline, so the evil pattern fails only after trying every split.
    const [evilShortUrl, evilLongUrl] = [url(500, '\n'), url(4_000, '\n')];
    const [safeShortUrl, safeLongUrl] = [url(500, '!'), url(4_000, '!')];
    expect(safeLongUrl.length).toBeLessThanOrEqual(MAX_URL_LENGTH);
    expect(evil.test(evilLongUrl)).toBe(false);
    expect(testUrl([safe], safeLongUrl).reason).toBe('matched'); // the regex ran: the URL is well-formed

    const timeOf = (run: () => unknown, repeat: number) => {
      const started = performance.now();
      for (let i = 0; i < repeat; i++) run();
      return (performance.now() - started) / repeat;
    };
    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    const runs = {
      evilShort: () => evil.test(evilShortUrl),
      evilLong: () => evil.test(evilLongUrl),
      safeShort: () => testUrl([safe], safeShortUrl),
      safeLong: () => testUrl([safe], safeLongUrl),
    };
    const repeats = { evilShort: 16, evilLong: 1, safeShort: 4_000, safeLong: 500 };
    const samples: Record<keyof typeof runs, number[]> = { evilShort: [], evilLong: [], safeShort: [], safeLong: [] };
    for (const name of Object.keys(runs) as (keyof typeof runs)[]) timeOf(runs[name], repeats[name]); // warm-up (regex tier-up)
    for (let round = 0; round < 7; round++) {
      for (const name of Object.keys(runs) as (keyof typeof runs)[]) samples[name].push(timeOf(runs[name], repeats[name]));
    }
    const m = Object.fromEntries(Object.entries(samples).map(([name, values]) => [name, median(values)])) as Record<keyof typeof runs, number>;
    const detail = JSON.stringify(m);
    // The geometric middle between linear (8×) and quadratic (64×) growth separates them.
    expect(m.evilLong / m.evilShort, detail).toBeGreaterThan(22);
    expect(m.safeLong / m.safeShort, detail).toBeLessThan(22);
    // And on 8 KiB the refused pattern is far slower than the accepted one (about 10 000× here).
    expect(m.evilLong, detail).toBeGreaterThan(10 * m.safeLong);
  });
});

describe('store and AllowlistMatcher (PGlite in memory)', () => {
  let db: PgliteDb;
  let agent: string;
  let other: string;
  beforeAll(async () => {
    db = await PgliteDb.open();
    await migrateUp(db);
    agent = (await registerPrincipal(db, { name: 'matcher-agent', owner: 'o@example.com' })).id;
    other = (await registerPrincipal(db, { name: 'other-agent', owner: 'o@example.com' })).id;
  });
  afterAll(async () => db.close());

  it('creates, lists, refuses duplicates and unknown principals, deletes', async () => {
    const created = await createAllowlistEntry(db, { principalId: agent, pattern: 'https://api.anthropic.com/*', patternType: 'glob' });
    expect(created).toMatchObject({ principalId: agent, pattern: 'https://api.anthropic.com/*', patternType: 'glob' });
    await expect(createAllowlistEntry(db, { principalId: agent, pattern: 'https://api.anthropic.com/*', patternType: 'glob' })).rejects.toMatchObject({ code: 'CARACAL_CONFLICT' });
    await expect(createAllowlistEntry(db, { principalId: '0190f0f0-0000-7000-8000-000000000000', pattern: 'https://x/*', patternType: 'glob' })).rejects.toMatchObject({ code: 'CARACAL_NOT_FOUND' });
    await expect(createAllowlistEntry(db, { principalId: agent, pattern: '(a+)+', patternType: 'regex' })).rejects.toThrow(/nested quantifier/);
    expect(await listAllowlistEntries(db, { principalId: agent })).toEqual([created]);
    expect(await listAllowlistEntries(db, { principalId: other })).toEqual([]);
    expect(await deleteAllowlistEntry(db, created.id)).toEqual(created);
    await expect(deleteAllowlistEntry(db, created.id)).rejects.toMatchObject({ code: 'CARACAL_NOT_FOUND' });
    await expect(deleteAllowlistEntry(db, "1' OR '1'='1")).rejects.toThrow(/not a valid allowlist entry id/);
  });

  it('checks synchronously once loaded, loads once for concurrent callers, reloads after invalidate', async () => {
    let queries = 0;
    const counting: Queryable = { query: (sql, params) => ((queries += 1), db.query(sql, params)) };
    const matcher = new AllowlistMatcher(counting, 'deny');
    expect(() => matcher.check(agent, 'https://api.openai.com/v1')).toThrow(/not loaded/);
    await Promise.all([matcher.load(agent), matcher.load(agent), matcher.load(agent)]);
    expect(queries).toBe(1);
    expect(matcher.isLoaded(agent)).toBe(true);
    expect(matcher.check(agent, 'https://api.openai.com/v1')).toEqual({ checked: true, matched: false, entryId: null, entries: 0, reason: 'empty_deny' });

    const openai = await createAllowlistEntry(db, { principalId: agent, pattern: '^https://api\\.openai\\.com/.*$', patternType: 'regex' });
    expect(matcher.check(agent, 'https://api.openai.com/v1').matched).toBe(false); // not told yet
    matcher.invalidate(agent);
    expect(matcher.isLoaded(agent)).toBe(false);
    await matcher.load(agent);
    expect(matcher.check(agent, 'https://api.openai.com/v1')).toEqual({ checked: true, matched: true, entryId: openai.id, entries: 1, reason: 'matched' });
    expect(matcher.check(agent, 'https://api.anthropic.com/v1')).toMatchObject({ matched: false, entryId: null, entries: 1 });
    expect((await matcher.checkAsync(other, 'https://api.openai.com/v1')).reason).toBe('empty_deny');
  });

  it('does not keep a load that raced with an invalidation', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let first = true;
    const slow: Queryable = {
      query: async (sql, params) => {
        const result = await db.query(sql, params);
        if (first) {
          first = false;
          await gate; // the first read returns old rows, late
        }
        return result as never;
      },
    };
    const matcher = new AllowlistMatcher(slow, 'deny');
    const stale = matcher.load(other);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const added = await createAllowlistEntry(db, { principalId: other, pattern: 'https://other.example/**', patternType: 'glob' });
    matcher.invalidate(other);
    release();
    const entries = await stale;
    expect(entries.map((e) => e.entry.id)).toEqual([added.id]);
    expect(matcher.check(other, 'https://other.example/x/y').entryId).toBe(added.id);
  });

  it('applies whenEmpty "allow" only to principals without entries; a broken stored entry still counts', async () => {
    const empty = (await registerPrincipal(db, { name: 'empty-agent', owner: 'o@example.com' })).id;
    const broken = (await registerPrincipal(db, { name: 'broken-agent', owner: 'o@example.com' })).id;
    await db.query(`INSERT INTO allowlist_entries (id, principal_id, pattern, pattern_type) VALUES ('hand-written', $1, '(a+)+', 'regex')`, [broken]);
    const matcher = new AllowlistMatcher(db, 'allow');
    await Promise.all([matcher.load(empty), matcher.load(broken), matcher.load(agent)]);
    expect(matcher.check(empty, 'https://anywhere.example/')).toEqual({ checked: true, matched: true, entryId: null, entries: 0, reason: 'empty_allow' });
    expect(matcher.check(broken, 'https://anywhere.example/')).toMatchObject({ matched: false, entries: 1 });
    expect(matcher.check(agent, 'https://anywhere.example/')).toMatchObject({ matched: false, entries: 1 });
  });

  it('refuses a pattern type the table does not know', async () => {
    await expect(db.query(`INSERT INTO allowlist_entries (id, principal_id, pattern, pattern_type) VALUES ('x', $1, 'a', 'pcre')`, [agent])).rejects.toThrow(/check constraint/);
  });
});

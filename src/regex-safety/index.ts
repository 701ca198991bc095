import { ambiguity, type Finding } from './ambiguity.js';
import { Nfa, type Loop } from './automaton.js';
import { Budget, MAX_LIVE_PATHS, Refusal } from './limits.js';
import { RegexParser, excerpt } from './parser.js';

// Backtracking safety: the public entry point of the ReDoS analysis.
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
// The pattern is parsed (JS syntax without flags; parser.ts), turned into a Thompson NFA whose
// ε-paths model the backtracker's choices (including JS's "an empty iteration fails" rule), ε-paths
// are folded into char→char edges with a multiplicity (automaton.ts), the first two conditions are
// checked on the pair and triple products of each loop, the third by a subset construction that
// counts paths (ambiguity.ts). Approximations only ever add paths, so they can refuse a safe
// pattern but not accept an unsafe one: bounded repeats `{n,m}` (m ≥ 2) are analysed as loops,
// anchors, \b and lookaheads as ε. Also refused outright: back-references (`\1`, `\k<n>`; they
// defeat the analysis and can be exponential by themselves), lookbehind, quantified lookaheads,
// lookaheads containing a repeat above 16, escapes that mean something else without the `u` flag
// (`\p{…}`, `\u{…}`), and patterns too big to analyse within a fixed budget.
//
// The verdict is for the pattern run as a full match from the start of the input, `^(?:source)$`,
// which is how allowlist regexes and micromatch's globs run. An unanchored search retries at every
// position, which makes even `a+b` quadratic; that is not what this checks.

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

/*
 * How the analysis says no, and how much it may spend before saying it. Every stage (parser,
 * automaton, ambiguity check) raises a Refusal; the entry point turns it into the message.
 */

/** A reason to refuse the pattern, raised anywhere in the analysis. */
export class Refusal extends Error {}

export const TOO_COMPLEX = 'is too complex to check for catastrophic backtracking; simplify it';

/**
 * Work limits for the analysis: beyond them the pattern is refused as too complex to verify.
 * Real URL patterns take under 5 000 steps (about a millisecond); the cap bounds a hostile
 * pattern's cost to tens of milliseconds, at creation and when a gateway loads it.
 */
export const BUDGET = { nodes: 20_000, steps: 250_000 };

export class Budget {
  private steps = 0;
  spend(n = 1): void {
    this.steps += n;
    if (this.steps > BUDGET.steps) throw new Refusal(TOO_COMPLEX);
  }
}

/**
 * The most backtracking paths a pattern may keep alive at once after any prefix of the input:
 * with at most this many, a failing match costs at most this many steps per input character.
 * Path counts are capped just above it wherever they are summed, so they cannot overflow.
 */
export const MAX_LIVE_PATHS = 16;

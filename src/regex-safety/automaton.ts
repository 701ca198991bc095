import type { CharSet } from './char-set.js';
import { BUDGET, MAX_LIVE_PATHS, Refusal, TOO_COMPLEX, type Budget } from './limits.js';
import type { RNode } from './parser.js';

/*
 * The automaton the ambiguity check runs on. A Thompson NFA whose ε-edges are the backtracker's
 * choices, marked where a loop iteration starts and ends so that JS's rule "an iteration that
 * matched nothing fails" can be applied; then ε-paths are folded into char → char edges that
 * carry how many distinct ε-paths they stand for (the backtracker tries each one).
 */

export interface Loop {
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
export class Nfa {
  readonly sets: (CharSet | null)[] = []; // null for ε nodes
  readonly out: EpsEdge[][] = [];
  /** For char nodes: enclosing loops, outermost first. */
  readonly loopsOf: number[][] = [];
  readonly loops: Loop[] = [];
  private readonly loopStack: number[] = [];

  constructor(private readonly budget: Budget) {}

  node(set: CharSet | null): number {
    if (this.sets.length >= BUDGET.nodes) throw new Refusal(TOO_COMPLEX);
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
export interface CharGraph {
  chars: number[];
  succ: Map<number, { to: number; paths: number; loops: Set<number> }[]>;
}

export function foldEpsilons(nfa: Nfa, start: number, budget: Budget): CharGraph {
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
      if (depth > nfa.sets.length + 1) throw new Refusal(TOO_COMPLEX);
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

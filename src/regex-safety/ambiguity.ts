import { foldEpsilons, type CharGraph, type Loop, type Nfa } from './automaton.js';
import { intersect, normalise, pairs, type CharSet } from './char-set.js';
import { MAX_LIVE_PATHS, type Budget } from './limits.js';

/*
 * The ambiguity check on the folded automaton (Weideman, van der Merwe, Berglund, Watson,
 * "Analyzing matching time behavior of backtracking regular expression matchers by using
 * ambiguity of NFA", 2016): exponential ambiguity in the pair product of each looping component,
 * polynomial ambiguity in the triple product of two looping components, and bounded but large
 * ambiguity by counting the paths alive in the subset construction.
 */

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

export type Finding = { kind: 'exponential'; loop: Loop | null } | { kind: 'polynomial'; first: Loop | null; second: Loop | null } | { kind: 'finite'; paths: number };

/** Checks one NFA (the pattern, or one lookahead body) for exponential, polynomial and large finite ambiguity. */
export function ambiguity(nfa: Nfa, start: number, budget: Budget): Finding | null {
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

import { DIGIT, DOT, SPACE, WORD, complement, normalise, pairs, type CharSet } from './char-set.js';
import { Refusal } from './limits.js';

/*
 * The pattern's syntax tree, reduced to what matters for backtracking: which characters each step
 * reads, and where the choices (alternatives, repeats) are. Anchors, `\b` and `\B` become `empty`
 * (an approximation that only adds paths); a repeat keeps its source span for messages.
 */

export type RNode =
  | { kind: 'empty' }
  | { kind: 'char'; set: CharSet }
  | { kind: 'seq'; items: RNode[] }
  | { kind: 'alt'; branches: RNode[] }
  | { kind: 'look'; body: RNode }
  | { kind: 'repeat'; body: RNode; min: number; max: number; start: number; end: number };

const MAX_QUANTIFIER = 1000;
const MAX_LOOKAHEAD_REPEAT = 16;
const MAX_GROUP_DEPTH = 64;

/** Parses JS regex syntax without flags (Annex B), refusing what the analysis cannot model. */
export class RegexParser {
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

export function excerpt(src: string, start: number, end: number): string {
  const text = src.slice(start, end);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

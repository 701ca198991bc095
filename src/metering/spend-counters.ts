/**
 * The `SpendCounters` port: spend and reservations per budget line, changed atomically across every line of a
 * call (an agent's own budgets and those of each mandate above it). Reserve → settle, never check-then-act: a
 * reservation either fits under every line's limit and is taken on all of them at once, or is taken on none.
 * Implemented by Redis (a Lua script: atomic across gateway processes) and in-process (atomic in one process, for
 * the embedded default). Amounts are integer micro-units.
 *
 * The counters know when they were lost. A store that lost its data (Redis flushed, or restarted without persistence;
 * a new process on the embedded default) would otherwise start every budget at zero and let calls through that the
 * budget no longer covers. So the counters keep a readiness mark, set only once they hold what was spent
 * (`markReady`, after `restore` from the recorded metering events: src/metering/reconcile.ts); without it every
 * reserve is refused (CARACAL_DEPENDENCY: budgets fail closed) until `caracal budget reconcile` has run.
 */
import { CaracalError } from '../errors/catalog.js';

/** One budget the call spends against, in one window period. */
export interface BudgetLine {
  /** Counter key, from budgetLineKey: one per principal, window and period. */
  key: string;
  limitMicros: number;
  /** When the period ends (epoch ms): its counters are kept a while longer, then dropped. */
  periodEndMs: number;
}

export type ReserveResult =
  | { ok: true }
  | {
      ok: false;
      /** The first line the amount does not fit under, with what it holds now. */
      key: string;
      limitMicros: number;
      spentMicros: number;
      reservedMicros: number;
      remainingMicros: number;
    };

export interface LineUsage {
  spentMicros: number;
  /** Held by reservations not yet settled or expired. */
  reservedMicros: number;
}

export interface SpendCounters {
  readonly kind: 'redis' | 'memory';
  /**
   * Takes `amountMicros` on every line under `reservationId` if, on each, spent + reserved + amount ≤ limit; else
   * takes nothing and names the first line it does not fit under. The reservation lapses after `ttlMs` (a crashed
   * request's hold is given back). Reserving an id again is refused (CARACAL_CONFLICT).
   */
  reserve(reservationId: string, lines: readonly BudgetLine[], amountMicros: number, ttlMs: number): Promise<ReserveResult>;
  /**
   * Ends the reservation on every line, giving its amount back, and adds `actualMicros` to each line's spend — also
   * when the reservation has lapsed (the call did happen; until the line's period and grace are over). Once per id:
   * a second settle, or one for an id never reserved, changes nothing.
   */
  settle(reservationId: string, lines: readonly BudgetLine[], actualMicros: number): Promise<void>;
  /**
   * For a call whose cost is known before it is sent (a per-request price): if `amountMicros` fits on every line
   * (spent + reserved + amount ≤ limit), adds it to each line's spend at once — one step where reserve + settle take
   * two; else takes nothing and names the first line it does not fit under. Nothing is held: a call that then never
   * reached its upstream is given back with `refund`, and one whose process died stays charged (the safe side).
   */
  charge(lines: readonly BudgetLine[], amountMicros: number): Promise<ReserveResult>;
  /** Takes `amountMicros` back off each line's spend (never below zero): a charged call that never happened. */
  refund(lines: readonly BudgetLine[], amountMicros: number): Promise<void>;
  usage(key: string): Promise<LineUsage>;
  /**
   * Sets each line's spent to the larger of what it holds and `spentMicros` (with the line's expiry): never lowers a
   * live counter, so restoring the recorded spend onto counters that were not lost changes nothing that counts, and
   * restoring twice is restoring once. Reservations are left alone.
   */
  restore(entries: readonly RestoreEntry[]): Promise<void>;
  /** Marks the counters as holding what was spent: reserve works from now on. */
  markReady(): Promise<void>;
  /** False on counters that never were marked ready, or lost the mark with their data. */
  isReady(): Promise<boolean>;
  close(): Promise<void>;
}

/** One line's spent, as recorded (src/metering/reconcile.ts). */
export interface RestoreEntry {
  line: BudgetLine;
  spentMicros: number;
}

/** What a reserve on counters that are not ready throws. */
export function countersLostError(): CaracalError {
  return new CaracalError(
    'CARACAL_DEPENDENCY',
    'budget spend counters were lost (the cache was flushed or restarted empty, or never restored); budgets are refused until `caracal budget reconcile` restores them from the recorded metering events',
    { retriable: false },
  );
}

/** How long a line's counters outlive its period (late settlements of long calls still land). */
export const COUNTER_GRACE_MS = 2 * 86_400_000;

/** The counter key of a principal's budget in the period starting at `periodStart`. */
export function budgetLineKey(principalId: string, window: string, periodStart: Date): string {
  return `spend:${principalId}:${window}:${periodStart.toISOString()}`;
}

/** Refuses what no call should pass: the same checks on both implementations. */
export function checkReservation(reservationId: string, lines: readonly BudgetLine[], amountMicros: number, ttlMs?: number): void {
  const bad = (what: string) => new CaracalError('CARACAL_VALIDATION', `spend counters: ${what}`);
  if (!/^[\w.:-]{1,128}$/.test(reservationId)) throw bad('a reservation id is 1-128 characters of [A-Za-z0-9_.:-]');
  if (!Number.isSafeInteger(amountMicros) || amountMicros < 0) throw bad(`an amount is a non-negative integer of micro-units, got ${amountMicros}`);
  if (ttlMs !== undefined && (!Number.isSafeInteger(ttlMs) || ttlMs <= 0)) throw bad(`a reservation ttl is a positive integer of ms, got ${ttlMs}`);
  if (lines.length === 0 || lines.length > 64) throw bad('a call spends against 1 to 64 budget lines');
  checkLines(lines);
}

function checkLines(lines: readonly BudgetLine[]): void {
  const bad = (what: string) => new CaracalError('CARACAL_VALIDATION', `spend counters: ${what}`);
  const keys = new Set<string>();
  for (const line of lines) {
    if (typeof line.key !== 'string' || line.key.length === 0 || line.key.length > 512) throw bad('a line key is 1-512 characters');
    if (keys.has(line.key)) throw bad(`line ${line.key} is given twice`);
    keys.add(line.key);
    if (!Number.isSafeInteger(line.limitMicros) || line.limitMicros <= 0) throw bad(`a line limit is a positive integer, got ${line.limitMicros}`);
    if (!Number.isSafeInteger(line.periodEndMs) || line.periodEndMs <= 0) throw bad(`a period end is epoch ms, got ${line.periodEndMs}`);
  }
}

/** The checks of `restore`, on both implementations: lines as for a reservation (any number), amounts whole micro-units. */
export function checkRestore(entries: readonly RestoreEntry[]): void {
  checkLines(entries.map((entry) => entry.line));
  for (const entry of entries) {
    if (!Number.isSafeInteger(entry.spentMicros) || entry.spentMicros < 0) {
      throw new CaracalError('CARACAL_VALIDATION', `spend counters: a restored spend is a non-negative integer of micro-units, got ${entry.spentMicros}`);
    }
  }
}

interface MemoryLine {
  spent: number;
  /** Sum of the live reservations' amounts. */
  reserved: number;
  reservations: Map<string, { amount: number; expiresAt: number }>;
  /** Reservations that lapsed unsettled: a late settlement still counts, once. */
  lapsed: Set<string>;
  /** The earliest expiry among the live reservations (Infinity: none). */
  nextExpiry: number;
  dropAt: number;
}

/** Moves the line's lapsed reservations out of its hold; a scan only when one is due. */
function dropLapsed(state: MemoryLine, now: number): void {
  if (now < state.nextExpiry) return;
  let next = Infinity;
  for (const [id, r] of state.reservations) {
    if (r.expiresAt <= now) {
      state.reservations.delete(id);
      state.reserved -= r.amount;
      state.lapsed.add(id);
    } else next = Math.min(next, r.expiresAt);
  }
  state.nextExpiry = next;
}

/**
 * In-process spend counters: every method runs to completion without awaiting, so each is atomic in the process.
 * A settled reservation leaves nothing behind (idempotence comes from the reservation being gone), so memory follows
 * the calls in flight and the lines, not the calls made.
 */
export class MemorySpendCounters implements SpendCounters {
  readonly kind = 'memory' as const;
  private readonly lines = new Map<string, MemoryLine>();
  private lastSweep = 0;
  /** A new process holds nothing of what was spent: not ready until restored (src/metering/reconcile.ts). */
  private ready = false;

  constructor(private readonly now: () => number = Date.now) {}

  async reserve(reservationId: string, lines: readonly BudgetLine[], amountMicros: number, ttlMs: number): Promise<ReserveResult> {
    checkReservation(reservationId, lines, amountMicros, ttlMs);
    if (!this.ready) throw countersLostError();
    const now = this.now();
    this.sweep(now);
    const states = lines.map((line) => this.line(line, now));
    const first = states[0]!;
    if (first.reservations.has(reservationId) || first.lapsed.has(reservationId)) throw new CaracalError('CARACAL_CONFLICT', `reservation ${reservationId} exists already`);
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const state = states[i]!;
      if (state.spent + state.reserved + amountMicros > line.limitMicros) {
        return { ok: false, key: line.key, limitMicros: line.limitMicros, spentMicros: state.spent, reservedMicros: state.reserved, remainingMicros: Math.max(0, line.limitMicros - state.spent - state.reserved) };
      }
    }
    const expiresAt = now + ttlMs;
    for (const state of states) {
      state.reservations.set(reservationId, { amount: amountMicros, expiresAt });
      state.reserved += amountMicros;
      state.nextExpiry = Math.min(state.nextExpiry, expiresAt);
    }
    return { ok: true };
  }

  async charge(lines: readonly BudgetLine[], amountMicros: number): Promise<ReserveResult> {
    checkReservation('charge', lines, amountMicros);
    if (!this.ready) throw countersLostError();
    const now = this.now();
    this.sweep(now);
    const states = lines.map((line) => this.line(line, now));
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const state = states[i]!;
      if (state.spent + state.reserved + amountMicros > line.limitMicros) {
        return { ok: false, key: line.key, limitMicros: line.limitMicros, spentMicros: state.spent, reservedMicros: state.reserved, remainingMicros: Math.max(0, line.limitMicros - state.spent - state.reserved) };
      }
    }
    for (const state of states) state.spent += amountMicros;
    return { ok: true };
  }

  async refund(lines: readonly BudgetLine[], amountMicros: number): Promise<void> {
    checkReservation('refund', lines, amountMicros);
    const now = this.now();
    for (const line of lines) {
      const state = this.lines.get(line.key);
      if (state) state.spent = Math.max(0, state.spent - amountMicros);
    }
    this.sweep(now);
  }

  async settle(reservationId: string, lines: readonly BudgetLine[], actualMicros: number): Promise<void> {
    checkReservation(reservationId, lines, actualMicros);
    const now = this.now();
    this.sweep(now);
    for (const line of lines) {
      const state = this.line(line, now);
      const live = state.reservations.get(reservationId);
      if (live) {
        state.reservations.delete(reservationId);
        state.reserved -= live.amount;
      } else if (!state.lapsed.delete(reservationId)) {
        continue; // settled already (or never reserved here): nothing to count twice
      }
      state.spent += actualMicros;
    }
  }

  async usage(key: string): Promise<LineUsage> {
    const now = this.now();
    this.sweep(now);
    const state = this.lines.get(key);
    if (!state) return { spentMicros: 0, reservedMicros: 0 };
    dropLapsed(state, now);
    return { spentMicros: state.spent, reservedMicros: state.reserved };
  }

  async restore(entries: readonly RestoreEntry[]): Promise<void> {
    checkRestore(entries);
    const now = this.now();
    this.sweep(now);
    for (const { line, spentMicros } of entries) {
      // A line whose period and grace are over is not kept (as on Redis, where it would expire at once).
      if (line.periodEndMs + COUNTER_GRACE_MS <= now) continue;
      const state = this.line(line, now);
      state.spent = Math.max(state.spent, spentMicros);
    }
  }

  async markReady(): Promise<void> {
    this.ready = true;
  }

  async isReady(): Promise<boolean> {
    return this.ready;
  }

  async close(): Promise<void> {
    this.lines.clear();
    this.ready = false;
  }

  private line(line: BudgetLine, now: number): MemoryLine {
    let state = this.lines.get(line.key);
    if (!state) {
      state = { spent: 0, reserved: 0, reservations: new Map(), lapsed: new Set(), nextExpiry: Infinity, dropAt: line.periodEndMs + COUNTER_GRACE_MS };
      this.lines.set(line.key, state);
    }
    dropLapsed(state, now);
    return state;
  }

  /** Drops lines past their period and grace: a scan of the lines, at most once a second. */
  private sweep(now: number): void {
    if (now - this.lastSweep < 1_000) return;
    this.lastSweep = now;
    for (const [key, state] of this.lines) if (state.dropAt <= now) this.lines.delete(key);
  }
}

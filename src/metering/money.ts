/**
 * Money and budget windows. Amounts are integer micro-units (1 USD = 1,000,000) in a currency named by its ISO 4217
 * code; they are parsed from decimal text without ever passing through a float, so "0.1" is exactly 100,000.
 * Windows are UTC calendar periods: the hour, the day, the ISO week (from Monday 00:00) and the month.
 */
import { CaracalError } from '../errors/catalog.js';

export const MICROS_PER_UNIT = 1_000_000;
/** The largest amount accepted anywhere: 10^9 units (a billion), so micro-units stay exact integers (< 2^53) in
 * JavaScript, in Redis' Lua and in sums of many of them. */
export const MAX_AMOUNT_MICROS = 1_000_000_000 * MICROS_PER_UNIT;

export const BUDGET_WINDOWS = ['hourly', 'daily', 'weekly', 'monthly'] as const;
export type BudgetWindow = (typeof BUDGET_WINDOWS)[number];

/** ISO 4217 codes the runtime knows (ICU's list), e.g. USD, EUR, JPY. */
const CURRENCIES: ReadonlySet<string> = new Set(Intl.supportedValuesOf('currency'));

/** The currency code, upper-cased, or a CARACAL_VALIDATION error naming `what`. */
export function parseCurrency(raw: string, what = 'currency'): string {
  const code = raw.trim().toUpperCase();
  if (!/^[A-Z]{3}$/.test(code) || !CURRENCIES.has(code)) {
    throw new CaracalError('CARACAL_VALIDATION', `${what} must be an ISO 4217 currency code such as USD or EUR, got ${quoted(raw, 20)}`);
  }
  return code;
}

/**
 * Micro-units of a decimal amount such as "100", "100.00" or "0.000001": digits, at most one point, at most six
 * decimals, positive, at most MAX_AMOUNT_MICROS. Exponents, signs, NaN, Infinity, spaces inside and thousands
 * separators are refused with a CARACAL_VALIDATION error naming `what`.
 */
export function parseAmount(raw: string, what = 'amount'): number {
  const text = raw.trim();
  const match = /^(\d{1,13})(?:\.(\d{1,6}))?$/.exec(text);
  if (!match) {
    throw new CaracalError('CARACAL_VALIDATION', `${what} must be a positive decimal amount with at most 6 decimals, such as 100.00, got ${quoted(raw, 40)}`);
  }
  const micros = Number(match[1]) * MICROS_PER_UNIT + Number((match[2] ?? '').padEnd(6, '0'));
  if (micros <= 0) throw new CaracalError('CARACAL_VALIDATION', `${what} must be more than zero`);
  if (micros > MAX_AMOUNT_MICROS) throw new CaracalError('CARACAL_VALIDATION', `${what} must be at most ${formatAmount(MAX_AMOUNT_MICROS)}`);
  return micros;
}

/** "100.000000" → "100.00": micro-units as decimal text, two decimals at least, no float on the way. */
export function formatAmount(micros: number): string {
  if (!Number.isSafeInteger(micros)) throw new RangeError(`not an integer amount of micro-units: ${micros}`);
  const sign = micros < 0 ? '-' : '';
  const abs = Math.abs(micros);
  const units = Math.floor(abs / MICROS_PER_UNIT);
  const fraction = String(abs % MICROS_PER_UNIT).padStart(6, '0').replace(/0{1,4}$/, '');
  return `${sign}${units}.${fraction}`;
}

export function parseWindow(raw: string): BudgetWindow {
  if ((BUDGET_WINDOWS as readonly string[]).includes(raw)) return raw as BudgetWindow;
  throw new CaracalError('CARACAL_VALIDATION', `window must be one of ${BUDGET_WINDOWS.join(', ')}, got ${quoted(raw, 20)}`);
}

/**
 * The start of what the operator typed, quoted for a one-line error: control characters (a newline, an escape
 * sequence), DEL, C1 controls and line separators are shown escaped, never written to the terminal.
 */
function quoted(raw: string, max: number): string {
  // eslint-disable-next-line no-control-regex -- escaping control characters is the point
  return JSON.stringify(raw.slice(0, max)).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** The UTC calendar period of `window` that contains `at`: [start, end). */
export function windowBounds(window: BudgetWindow, at: Date): { start: Date; end: Date } {
  const y = at.getUTCFullYear();
  const m = at.getUTCMonth();
  const d = at.getUTCDate();
  switch (window) {
    case 'hourly': {
      const start = Date.UTC(y, m, d, at.getUTCHours());
      return { start: new Date(start), end: new Date(start + 3_600_000) };
    }
    case 'daily':
      return { start: new Date(Date.UTC(y, m, d)), end: new Date(Date.UTC(y, m, d + 1)) };
    case 'weekly': {
      const sinceMonday = (at.getUTCDay() + 6) % 7;
      return { start: new Date(Date.UTC(y, m, d - sinceMonday)), end: new Date(Date.UTC(y, m, d - sinceMonday + 7)) };
    }
    case 'monthly':
      return { start: new Date(Date.UTC(y, m, 1)), end: new Date(Date.UTC(y, m + 1, 1)) };
  }
}

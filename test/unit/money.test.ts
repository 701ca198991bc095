import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CaracalError } from '../../src/errors/catalog.js';
import { BUDGET_WINDOWS, MAX_AMOUNT_MICROS, formatAmount, parseAmount, parseCurrency, parseWindow, windowBounds, type BudgetWindow } from '../../src/metering/money.js';

/** The CARACAL_VALIDATION error `fn` throws (fails the test when it throws nothing or something else). */
function refusal(fn: () => unknown): CaracalError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CaracalError);
    expect((err as CaracalError).code).toBe('CARACAL_VALIDATION');
    expect((err as CaracalError).message).not.toContain('\n');
    expect((err as CaracalError).message).not.toContain('\u001b');
    return err as CaracalError;
  }
  throw new Error('expected a refusal');
}

const utc = (iso: string) => new Date(iso);
const bounds = (window: BudgetWindow, at: string) => {
  const { start, end } = windowBounds(window, utc(at));
  return [start.toISOString(), end.toISOString()];
};

describe('parseAmount', () => {
  it('reads decimal text into exact integer micro-units, never through a float', () => {
    expect(parseAmount('100')).toBe(100_000_000);
    expect(parseAmount('100.00')).toBe(100_000_000);
    expect(parseAmount('0.000001')).toBe(1);
    expect(parseAmount('0.1')).toBe(100_000);
    expect(parseAmount('0.3')).toBe(300_000); // 0.1 + 0.2 !== 0.3 in floats; here it is exact
    expect(parseAmount('1.5')).toBe(1_500_000);
    expect(parseAmount('123456.789012')).toBe(123_456_789_012);
    expect(parseAmount('007.50')).toBe(7_500_000);
    expect(parseAmount(' 12.5 ')).toBe(12_500_000); // surrounding blanks are trimmed, inner ones refused
    expect(parseAmount('1000000000')).toBe(MAX_AMOUNT_MICROS);
    expect(parseAmount('999999999.999999')).toBe(MAX_AMOUNT_MICROS - 1);
  });

  it('keeps the largest amount an exact integer in JavaScript', () => {
    expect(Number.isSafeInteger(MAX_AMOUNT_MICROS)).toBe(true);
    expect(formatAmount(MAX_AMOUNT_MICROS)).toBe('1000000000.00');
  });

  it('refuses signs, zero, exponents, NaN, Infinity, separators, too many decimals and huge amounts, naming the field', () => {
    const malformed = [
      '-1', '+1', '-0.5', '1e3', '1E3', '1e-3', 'NaN', 'Infinity', '-Infinity', ' 1 000', '1 000', '1,000.00', '1,5', '1.0000001',
      '99999999999999999999', '', '   ', '.5', '5.', '1.2.3', '0x10', '0b1', '1_000', '１００', '١٢٣', '10$', '$10', 'USD 10', '1\n2', '12.5\u200b', '1\u00002',
    ];
    for (const raw of malformed) {
      const err = refusal(() => parseAmount(raw, 'limit'));
      expect(err.message, JSON.stringify(raw)).toMatch(/^limit must be a positive decimal amount with at most 6 decimals, such as 100\.00, got ".*"$/);
    }
    for (const raw of ['0', '0.0', '0.000000', '000']) expect(refusal(() => parseAmount(raw, 'limit')).message).toBe('limit must be more than zero');
    for (const raw of ['1000000000.000001', '2000000000', '9999999999999']) expect(refusal(() => parseAmount(raw, 'limit')).message).toBe('limit must be at most 1000000000.00');
    // The default name, and a long input is quoted only in part.
    expect(refusal(() => parseAmount('x'.repeat(500))).message).toMatch(/^amount must be .*got "x{40}"$/);
  });

  it('quotes what was typed with control characters escaped, so the error stays one harmless line', () => {
    expect(refusal(() => parseAmount('1\n2', 'limit')).message).toBe('limit must be a positive decimal amount with at most 6 decimals, such as 100.00, got "1\\n2"');
    expect(refusal(() => parseAmount('\u001b[2J1', 'limit')).message).toMatch(/got "\\u001b\[2J1"$/);
    expect(refusal(() => parseAmount('1\u009b31m', 'limit')).message).toMatch(/got "1\\u009b31m"$/);
    expect(refusal(() => parseAmount('1\u20282', 'limit')).message).toMatch(/got "1\\u20282"$/);
    expect(refusal(() => parseWindow('daily\r\nX-Evil: 1')).message).toMatch(/got "daily\\r\\nX-Evil: 1"$/);
    expect(refusal(() => parseCurrency('\u001b]0;pwned\u0007')).message).toMatch(/got "\\u001b\]0;pwned\\u0007"$/);
    expect(refusal(() => parseAmount('"1"', 'limit')).message).toMatch(/got "\\"1\\""$/);
  });

  it('round-trips with formatAmount for every amount it accepts', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: MAX_AMOUNT_MICROS }), (micros) => {
        expect(parseAmount(formatAmount(micros))).toBe(micros);
      }),
      { numRuns: 2_000 },
    );
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 999_999_999n }), fc.integer({ min: 0, max: 999_999 }), (units, fraction) => {
        fc.pre(units > 0n || fraction > 0);
        const text = `${units}.${String(fraction).padStart(6, '0')}`;
        expect(parseAmount(text)).toBe(Number(units) * 1_000_000 + fraction);
        expect(parseAmount(formatAmount(parseAmount(text)))).toBe(parseAmount(text));
      }),
      { numRuns: 2_000 },
    );
  });
});

describe('formatAmount', () => {
  it('prints micro-units as decimal text with at least two decimals', () => {
    expect(formatAmount(100_000_000)).toBe('100.00');
    expect(formatAmount(100_000)).toBe('0.10');
    expect(formatAmount(1)).toBe('0.000001');
    expect(formatAmount(1_500_000)).toBe('1.50');
    expect(formatAmount(1_230_000)).toBe('1.23');
    expect(formatAmount(1_234_000)).toBe('1.234');
    expect(formatAmount(1_234_567)).toBe('1.234567');
    expect(formatAmount(0)).toBe('0.00');
    expect(formatAmount(-1_500_000)).toBe('-1.50');
  });

  it('refuses what is not an integer number of micro-units', () => {
    for (const bad of [1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) expect(() => formatAmount(bad)).toThrow(RangeError);
  });
});

describe('parseCurrency', () => {
  it('upper-cases ISO 4217 codes', () => {
    expect(parseCurrency('usd')).toBe('USD');
    expect(parseCurrency('USD')).toBe('USD');
    expect(parseCurrency(' eur ')).toBe('EUR');
    expect(parseCurrency('Jpy')).toBe('JPY');
  });

  it('refuses unknown codes and anything that is not three letters, naming the field', () => {
    for (const raw of ['XYZ', 'US', 'USDD', '€', '$', '', 'U5D', 'us d', 'usd;', "USD' OR '1'='1", 'ＵＳＤ']) {
      expect(refusal(() => parseCurrency(raw, 'currency')).message, raw).toMatch(/^currency must be an ISO 4217 currency code such as USD or EUR, got "/);
    }
    expect(refusal(() => parseCurrency('x'.repeat(100))).message).toMatch(/got "x{20}"$/);
  });
});

describe('parseWindow', () => {
  it('accepts exactly the four windows', () => {
    for (const window of BUDGET_WINDOWS) expect(parseWindow(window)).toBe(window);
    expect(BUDGET_WINDOWS).toEqual(['hourly', 'daily', 'weekly', 'monthly']);
  });

  it('refuses anything else with one line listing them', () => {
    for (const raw of ['Daily', 'DAILY', ' daily', 'yearly', 'day', '', 'constructor', '__proto__', 'hourly,daily']) {
      expect(refusal(() => parseWindow(raw)).message, raw).toMatch(/^window must be one of hourly, daily, weekly, monthly, got "/);
    }
  });
});

describe('windowBounds (UTC calendar periods, [start, end))', () => {
  it('hourly: the clock hour, across a day and a year end', () => {
    expect(bounds('hourly', '2024-03-10T14:35:12.345Z')).toEqual(['2024-03-10T14:00:00.000Z', '2024-03-10T15:00:00.000Z']);
    expect(bounds('hourly', '2024-12-31T23:59:59.999Z')).toEqual(['2024-12-31T23:00:00.000Z', '2025-01-01T00:00:00.000Z']);
  });

  it('daily: the UTC day, including the leap day and the year end', () => {
    expect(bounds('daily', '2024-03-10T14:35:12.345Z')).toEqual(['2024-03-10T00:00:00.000Z', '2024-03-11T00:00:00.000Z']);
    expect(bounds('daily', '2024-02-28T23:59:59.999Z')).toEqual(['2024-02-28T00:00:00.000Z', '2024-02-29T00:00:00.000Z']);
    expect(bounds('daily', '2024-02-29T12:00:00.000Z')).toEqual(['2024-02-29T00:00:00.000Z', '2024-03-01T00:00:00.000Z']);
    expect(bounds('daily', '2023-02-28T12:00:00.000Z')).toEqual(['2023-02-28T00:00:00.000Z', '2023-03-01T00:00:00.000Z']);
    expect(bounds('daily', '2024-12-31T23:59:59.999Z')).toEqual(['2024-12-31T00:00:00.000Z', '2025-01-01T00:00:00.000Z']);
  });

  it('weekly: the ISO week from Monday 00:00, a Sunday belonging to the week before it', () => {
    // 2024-03-10 is a Sunday: its week began on Monday 2024-03-04.
    expect(bounds('weekly', '2024-03-10T23:59:59.999Z')).toEqual(['2024-03-04T00:00:00.000Z', '2024-03-11T00:00:00.000Z']);
    expect(bounds('weekly', '2024-03-04T00:00:00.000Z')).toEqual(['2024-03-04T00:00:00.000Z', '2024-03-11T00:00:00.000Z']);
    expect(bounds('weekly', '2024-03-06T09:00:00.000Z')).toEqual(['2024-03-04T00:00:00.000Z', '2024-03-11T00:00:00.000Z']);
    // Across a month end with the leap day (Thursday 2024-02-29), and across a year end (Wednesday 2025-01-01).
    expect(bounds('weekly', '2024-02-29T12:00:00.000Z')).toEqual(['2024-02-26T00:00:00.000Z', '2024-03-04T00:00:00.000Z']);
    expect(bounds('weekly', '2025-01-01T00:00:00.000Z')).toEqual(['2024-12-30T00:00:00.000Z', '2025-01-06T00:00:00.000Z']);
    expect(bounds('weekly', '2024-12-29T18:00:00.000Z')).toEqual(['2024-12-23T00:00:00.000Z', '2024-12-30T00:00:00.000Z']);
  });

  it('monthly: the calendar month, whatever its length', () => {
    expect(bounds('monthly', '2024-01-31T23:59:59.999Z')).toEqual(['2024-01-01T00:00:00.000Z', '2024-02-01T00:00:00.000Z']);
    expect(bounds('monthly', '2024-02-29T23:59:59.999Z')).toEqual(['2024-02-01T00:00:00.000Z', '2024-03-01T00:00:00.000Z']);
    expect(bounds('monthly', '2023-02-15T00:00:00.000Z')).toEqual(['2023-02-01T00:00:00.000Z', '2023-03-01T00:00:00.000Z']);
    expect(bounds('monthly', '2024-04-30T12:00:00.000Z')).toEqual(['2024-04-01T00:00:00.000Z', '2024-05-01T00:00:00.000Z']);
    expect(bounds('monthly', '2024-12-15T00:00:00.000Z')).toEqual(['2024-12-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z']);
  });

  it('an instant exactly on a boundary starts the new period; one millisecond before ends the old', () => {
    const cases: [BudgetWindow, string, string][] = [
      ['hourly', '2024-03-10T15:00:00.000Z', '2024-03-10T16:00:00.000Z'],
      ['daily', '2024-03-01T00:00:00.000Z', '2024-03-02T00:00:00.000Z'],
      ['weekly', '2024-03-11T00:00:00.000Z', '2024-03-18T00:00:00.000Z'],
      ['monthly', '2024-03-01T00:00:00.000Z', '2024-04-01T00:00:00.000Z'],
      ['monthly', '2025-01-01T00:00:00.000Z', '2025-02-01T00:00:00.000Z'],
    ];
    for (const [window, boundary, next] of cases) {
      expect(bounds(window, boundary), `${window} at ${boundary}`).toEqual([boundary, next]);
      const before = new Date(utc(boundary).getTime() - 1).toISOString();
      expect(bounds(window, before)[1], `${window} at ${before}`).toBe(boundary);
    }
  });

  it('every instant lies in its period, periods tile time, and they do not depend on the local time zone', () => {
    const at = fc.date({ min: new Date('1971-01-01T00:00:00Z'), max: new Date('2200-12-31T23:59:59Z'), noInvalidDate: true });
    fc.assert(
      fc.property(fc.constantFrom(...BUDGET_WINDOWS), at, (window, when) => {
        const { start, end } = windowBounds(window, when);
        expect(start.getTime()).toBeLessThanOrEqual(when.getTime());
        expect(end.getTime()).toBeGreaterThan(when.getTime());
        expect(windowBounds(window, start)).toEqual({ start, end });
        expect(windowBounds(window, new Date(end.getTime() - 1))).toEqual({ start, end });
        expect(windowBounds(window, end).start).toEqual(end);
        expect(start.getUTCMinutes() + start.getUTCSeconds() + start.getUTCMilliseconds()).toBe(0);
        if (window !== 'hourly') expect(start.getUTCHours()).toBe(0);
        if (window === 'weekly') expect(start.getUTCDay()).toBe(1);
        if (window === 'monthly') expect(start.getUTCDate()).toBe(1);
        const days = (end.getTime() - start.getTime()) / 86_400_000;
        expect(days).toBe({ hourly: 1 / 24, daily: 1, weekly: 7, monthly: new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 0)).getUTCDate() }[window]);
      }),
      { numRuns: 2_000 },
    );
  });
});

import { CaracalError } from '../errors/catalog.js';

export function positiveInt(flag: string, raw: string): number {
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < 1) throw new CaracalError('CARACAL_USAGE', `${flag} must be a positive integer, got "${raw}"`);
  return Number(raw);
}

/**
 * A point in time for `--start-time` / `--end-time`: an ISO 8601 date or date-time (UTC unless it
 * names an offset), or `now`, or a relative `-<n><s|m|h|d>` ago (`-24h`).
 */
export function timeArg(flag: string, raw: string, now = new Date()): Date {
  const value = raw.trim();
  if (value === 'now') return now;
  const relative = /^-(\d{1,9})([smhd])$/.exec(value);
  if (relative) {
    const unit = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[relative[2] as 's' | 'm' | 'h' | 'd'];
    return new Date(now.getTime() - Number(relative[1]) * unit);
  }
  // A bare date or a date-time without an offset is UTC, never the machine's local time.
  const iso = /^\d{4}-\d{2}-\d{2}$/.test(value) ? `${value}T00:00:00Z` : /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value) ? `${value}Z` : value;
  const parsed = /^\d{4}-\d{2}-\d{2}T/.test(iso) ? new Date(iso) : new Date(Number.NaN);
  if (Number.isNaN(parsed.getTime())) throw new CaracalError('CARACAL_USAGE', `${flag} must be an ISO 8601 time (2026-12-01T00:00:00Z), a date, "now" or "-24h"; got "${raw.slice(0, 64)}"`);
  return parsed;
}

import { CaracalError } from '../errors/catalog.js';

export function positiveInt(flag: string, raw: string): number {
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < 1) throw new CaracalError('CARACAL_USAGE', `${flag} must be a positive integer, got "${raw}"`);
  return Number(raw);
}

// `caracal bundle diff`: replay the decisions recorded in the ledger over a time range through a candidate bundle and
// report which would come out differently (src/policy/replay.ts). A report: it exits 0 whatever it finds.
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { CaracalError } from '../../errors/catalog.js';
import { REVISION_PATTERN } from '../../policy/bundle-store.js';
import { MAX_BUNDLE_FILE_BYTES, parseBundle } from '../../policy/bundle.js';
import type { ReplayChange, ReplayResult } from '../../policy/replay.js';
import { positiveInt } from '../parse.js';
import type { CliRuntime } from '../runtime.js';
import { fetchStoredBundle, resolveStore } from './bundle-store.js';

const TIME_HELP = 'ISO 8601 with Z or an offset, or a date (that day\'s UTC midnight)';

const FLIP_COLUMNS = [
  { key: 'time', header: 'TIME' },
  { key: 'decision', header: 'DECISION' },
  { key: 'principal', header: 'PRINCIPAL' },
  { key: 'resource', header: 'RESOURCE' },
  { key: 'path', header: 'PATH' },
  { key: 'action', header: 'ACTION' },
  { key: 'change', header: 'RECORDED → CANDIDATE' },
  { key: 'reasons', header: 'REASONS (RECORDED → CANDIDATE)' },
];

/** What the bundle.diff operation answers. */
interface DiffReport extends ReplayResult {
  origin: string;
  start: string;
  end: string;
  candidate: { source: string; revision: string };
}

export interface DiffArgs {
  candidate: { kind: 'file'; file: string } | { kind: 'store'; revision: string; store: string | undefined };
  start: Date;
  end: Date;
  limit: number;
  json: boolean;
}

/** The options as commander gives them, checked: everything a user can get wrong is one usage line. */
export function diffArgs(options: { revision?: string; store?: string; bundle?: string; startTime?: string; endTime?: string; limit?: string; json?: boolean }): DiffArgs {
  if (options.revision !== undefined && options.bundle !== undefined) throw new CaracalError('CARACAL_USAGE', 'give --revision or --bundle, not both');
  if (options.revision === undefined && options.bundle === undefined) throw new CaracalError('CARACAL_USAGE', 'give the candidate: --revision <rev> (from a bundle store) or --bundle <file>');
  if (options.store !== undefined && options.revision === undefined) throw new CaracalError('CARACAL_USAGE', '--store goes with --revision (a --bundle file needs no store)');
  let candidate: DiffArgs['candidate'];
  if (options.revision !== undefined) {
    if (!REVISION_PATTERN.test(options.revision)) {
      throw new CaracalError('CARACAL_USAGE', `--revision must be a plain token (letters, digits, ".", "_", "-"; at most 128), got ${JSON.stringify(options.revision.slice(0, 64))}`);
    }
    candidate = { kind: 'store', revision: options.revision, store: options.store };
  } else {
    if (options.bundle!.trim() === '' || options.bundle!.includes('\0')) throw new CaracalError('CARACAL_USAGE', '--bundle must name a bundle file');
    candidate = { kind: 'file', file: path.resolve(options.bundle!) };
  }
  if (options.startTime === undefined || options.endTime === undefined) throw new CaracalError('CARACAL_USAGE', 'give the range: --start-time <time> --end-time <time>');
  const start = strictTime('--start-time', options.startTime);
  const end = strictTime('--end-time', options.endTime);
  if (end.getTime() <= start.getTime()) throw new CaracalError('CARACAL_USAGE', `--end-time must be after --start-time (${start.toISOString()} .. ${end.toISOString()})`);
  return { candidate, start, end, limit: positiveInt('--limit', options.limit ?? '50'), json: options.json === true };
}

/**
 * A point in time that names its zone: an ISO 8601 date-time with `Z` or an offset, or a bare date (UTC midnight). A
 * date-time without a zone is refused: which day of decisions it means would depend on the machine.
 */
function strictTime(flag: string, raw: string): Date {
  const value = raw.trim();
  const zoned = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/.test(value);
  const date = /^\d{4}-\d{2}-\d{2}$/.test(value);
  if (!zoned && !date) throw new CaracalError('CARACAL_USAGE', `${flag} must be an ISO 8601 time with Z or an offset (2026-03-10T00:00:00Z) or a date (2026-03-10); got ${JSON.stringify(raw.slice(0, 64))}`);
  const parsed = new Date(date ? `${value}T00:00:00Z` : value);
  if (Number.isNaN(parsed.getTime())) throw new CaracalError('CARACAL_USAGE', `${flag}: ${JSON.stringify(value.slice(0, 64))} is not a valid time`);
  // Date accepts 2026-02-30 as 2026-03-02: a day that does not exist is a typo, not a range.
  const [y, m, d] = value.slice(0, 10).split('-').map(Number) as [number, number, number];
  const day = new Date(Date.UTC(y, m - 1, d));
  if (day.getUTCFullYear() !== y || day.getUTCMonth() !== m - 1 || day.getUTCDate() !== d) throw new CaracalError('CARACAL_USAGE', `${flag}: ${value.slice(0, 10)} is not a calendar date`);
  return parsed;
}

/**
 * The candidate's bytes: a file (checked here, so a typo fails before anything is sent), or a revision fetched from
 * its store (`bundle fetch`'s rules). Loading it — signature, WASM, smoke evaluation — is the operation's.
 */
async function candidateBytes(runtime: CliRuntime, candidate: DiffArgs['candidate']): Promise<{ bundle: string; expectRevision?: string } | { revision: string }> {
  if (candidate.kind === 'store') {
    // The database store is the operation's own: it reads the revision there, nothing is sent back and forth.
    if (resolveStore(runtime, candidate.store).kind === 'db') return { revision: candidate.revision };
    const { bytes } = await fetchStoredBundle(runtime, candidate.revision, candidate.store);
    return { bundle: bytes.toString('base64'), expectRevision: candidate.revision };
  }
  const found = await stat(candidate.file).catch(() => null);
  if (found === null) throw new CaracalError('CARACAL_USAGE', `--bundle: ${candidate.file} does not exist`);
  if (!found.isFile()) throw new CaracalError('CARACAL_USAGE', `--bundle: ${candidate.file} is not a file`);
  if (found.size > MAX_BUNDLE_FILE_BYTES) throw new CaracalError('CARACAL_VALIDATION', `--bundle: ${candidate.file} is ${found.size} bytes, more than the ${MAX_BUNDLE_FILE_BYTES} allowed`);
  const bytes = await readFile(candidate.file);
  // Read here too, so a file that is not a bundle is one line naming it, before anything is sent.
  await parseBundle(bytes, candidate.file);
  return { bundle: bytes.toString('base64') };
}

export function registerBundleDiffCommand(bundle: Command, rt: () => CliRuntime): void {
  bundle
    .command('diff')
    .description('replay the decisions recorded in the ledger over a time range through a candidate bundle; report which would change (exit 0 either way)')
    .option('--revision <rev>', 'the candidate: a revision in the bundle store')
    .option('--store <store>', 'with --revision: db or dir:<path> (default: policy.store, else db)')
    .option('--bundle <file>', 'the candidate: a bundle file')
    .option('--start-time <time>', TIME_HELP)
    .option('--end-time <time>', `${TIME_HELP}; the range is [start, end)`)
    .option('--limit <n>', 'changes listed in the table (default 50; --json lists all)')
    .option('--json', 'print JSON: totals and every change')
    .action(async (options) => {
      const args = diffArgs(options);
      const runtime = rt();
      // An operation: on the database directly, or through the admin API of the gateway that holds it (the running
      // embedded gateway, or CARACAL_ADMIN_URL's), whose ledger and signing keys it then uses.
      const result = await runtime.operation<DiffReport>('bundle.diff', {
        ...(await candidateBytes(runtime, args.candidate)),
        startTime: args.start.toISOString(),
        endTime: args.end.toISOString(),
      });
      if (args.json) return runtime.out.json(result);
      printReport(runtime, result, { start: args.start, end: args.end, revision: result.candidate.revision, limit: args.limit });
    });
}

function printReport(runtime: CliRuntime, result: ReplayResult, o: { start: Date; end: Date; revision: string; limit: number }): void {
  const t = result.totals;
  const skipped = [
    t.without_input > 0 ? `${t.without_input} without a recorded input` : '',
    t.unreadable > 0 ? `${t.unreadable} unreadable` : '',
    t.redacted > 0 ? `${t.redacted} replayed on redacted input` : '',
    t.candidate_errors > 0 ? `${t.candidate_errors} the candidate could not decide` : '',
  ].filter(Boolean);
  runtime.out.line(
    `replayed ${t.replayed} of ${t.decisions} decision${t.decisions === 1 ? '' : 's'} in [${o.start.toISOString()}, ${o.end.toISOString()}) through revision ${o.revision}: ` +
      `${t.allow_to_deny} allow → deny, ${t.deny_to_allow} deny → allow, ${t.reasons_changed} with other reasons, ${t.unchanged} unchanged` +
      (skipped.length > 0 ? ` (${skipped.join(', ')})` : ''),
  );
  const changed = t.allow_to_deny + t.deny_to_allow + t.reasons_changed;
  if (changed === 0) return;
  const shown = result.flips.slice(0, o.limit);
  runtime.out.table(shown.map(row), FLIP_COLUMNS);
  const more = changed - shown.length;
  if (more > 0) runtime.out.line(`… and ${more} more (--limit ${changed} to list them, or --json)`);
}

const verdict = (allow: boolean) => (allow ? 'allow' : 'deny');
const reasonList = (reasons: readonly string[]) => (reasons.length > 0 ? reasons.join(',') : '-');

function row(change: ReplayChange): Record<string, unknown> {
  return {
    time: change.time,
    decision: change.decision_id,
    principal: change.principal_id,
    resource: change.resource,
    path: change.path,
    action: change.action,
    change: `${verdict(change.recorded.allow)} → ${verdict(change.candidate.allow)}${change.redacted ? ' (redacted input)' : ''}`,
    reasons: `${reasonList(change.recorded.reasons)} → ${reasonList(change.candidate.reasons)}`,
  };
}

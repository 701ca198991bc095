import type { Command } from 'commander';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { CaracalError } from '../../errors/catalog.js';
import { buildExport, ExportInvalidError, MAX_EXPORT_BYTES, parseExport, serializeExport, verifyExport } from '../../ledger/export.js';
import { ecdsaVerifierKey, parseVerifierKey, type NoteVerifier } from '../../ledger/note.js';
import { ledgerSummary, queryAgentSpend, queryLedger, TIME_WINDOWS, type TimeWindow } from '../../ledger/query.js';
import { ledgerSigningKeyPath } from '../../ledger/writer.js';
import { printRecord } from '../output.js';
import { positiveInt } from '../parse.js';
import type { CliRuntime } from '../runtime.js';
import { configuredSigner, rangeArgs } from './merkle.js';

const QUERY_COLUMNS = [
  { key: 'leafIndex', header: 'LEAF' },
  { key: 'eventId', header: 'EVENT' },
  { key: 'eventType', header: 'TYPE' },
  { key: 'decisionId', header: 'DECISION' },
  { key: 'allow', header: 'ALLOW' },
  { key: 'occurredAt', header: 'TIME' },
  { key: 'batch', header: 'CHECKPOINT' },
];

const TIME_HELP = 'ISO 8601 (UTC unless an offset is given), a date, "now" or "-24h"';

/**
 * The verifier for `verify-export --public-key`: a PEM file or PEM text (the SPKI public key, named after the export's
 * origin), a file holding a verifier key string, or the verifier key string itself.
 */
function verifierFrom(raw: string, origin: string): NoteVerifier {
  let text = raw;
  if (!raw.includes('+') && !raw.startsWith('-----BEGIN')) {
    if (!existsSync(raw)) throw new CaracalError('CARACAL_USAGE', `--public-key: ${raw.slice(0, 200)} is neither a file nor a verifier key (<name>+<hex id>+<base64 key>)`);
    try {
      text = readFileSync(raw, 'utf8');
    } catch (err) {
      throw new CaracalError('CARACAL_USAGE', `--public-key: cannot read ${raw.slice(0, 200)}: ${(err as Error).message}`);
    }
  }
  text = text.trim();
  try {
    return parseVerifierKey(text.startsWith('-----BEGIN') ? ecdsaVerifierKey(origin, text) : text);
  } catch (err) {
    throw new CaracalError('CARACAL_USAGE', `--public-key: not a PEM public key or verifier key: ${(err as Error).message.split('\n')[0]}`);
  }
}

export function registerLedgerCommands(program: Command, rt: () => CliRuntime): void {
  const ledger = program.command('ledger').description('the signed decision ledger: keys, queries, summaries, exports');

  ledger
    .command('public-key')
    .description('print the verifier key of the checkpoint signing key (<origin>+<hex key id>+<base64 key>)')
    .option('--pem', 'print the SPKI PEM public key instead')
    .action((options) => {
      const runtime = rt();
      const config = runtime.config();
      const signer = configuredSigner(runtime); // the writer's key, checked; never a new one
      if (!options.pem) return runtime.out.line(signer.verifierKey);
      const pem = createPublicKey(createPrivateKey(readFileSync(ledgerSigningKeyPath(config), 'utf8'))).export({ type: 'spki', format: 'pem' }).toString();
      runtime.out.line(pem.trimEnd());
    });

  ledger
    .command('query')
    .description("one agent's ledger entries in a time range, with the checkpoint (batch id) covering each")
    .requiredOption('--agent-id <id>', 'the principal')
    .option('--start-time <time>', TIME_HELP)
    .option('--end-time <time>', `${TIME_HELP}; default now`)
    .option('--time-window <window>', `instead of a range, the last ${Object.keys(TIME_WINDOWS).join('|')} (ending now)`)
    .option('--limit <n>', 'at most this many', '1000')
    .option('--spend', "also the agent's proxied calls and their cost in the range (shown anyway when there were any); with --json: {entries, spend}")
    .option('--json', 'print JSON')
    .action(async (options) => {
      let range: { start: Date; end: Date };
      if (options.timeWindow !== undefined) {
        if (options.startTime !== undefined || options.endTime !== undefined) throw new CaracalError('CARACAL_USAGE', 'give --time-window or --start-time/--end-time, not both');
        if (!Object.hasOwn(TIME_WINDOWS, options.timeWindow)) {
          throw new CaracalError('CARACAL_USAGE', `--time-window must be one of ${Object.keys(TIME_WINDOWS).join(', ')}, got "${String(options.timeWindow).slice(0, 40)}"`);
        }
        const end = new Date();
        range = { start: new Date(end.getTime() - TIME_WINDOWS[options.timeWindow as TimeWindow]), end };
      } else {
        if (options.startTime === undefined) throw new CaracalError('CARACAL_USAGE', 'give --start-time (and --end-time) or --time-window');
        range = rangeArgs({ startTime: options.startTime, endTime: options.endTime });
      }
      const limit = positiveInt('--limit', options.limit);
      const runtime = rt();
      const origin = runtime.config().ledger.origin;
      // The end is inclusive for people ("until now"): the query's range is [start, end + 1 ms).
      const query = { subject: options.agentId, start: range.start, end: new Date(range.end.getTime() + 1) };
      const { rows, spend } = await runtime.withContext(async (ctx) => ({ rows: await queryLedger(ctx.db, origin, { ...query, limit }), spend: await queryAgentSpend(ctx.db, query) }));
      if (options.json) return runtime.out.json(options.spend ? { entries: rows, spend } : rows);
      runtime.out.table(
        rows.map((r) => ({ ...r, allow: r.allow === null ? null : r.allow ? 'allow' : 'deny', batch: r.checkpoint ?? 'unsealed' })),
        QUERY_COLUMNS,
      );
      runtime.out.line(`${rows.length} entr${rows.length === 1 ? 'y' : 'ies'}`);
      if (options.spend || spend.calls > 0) {
        const amounts = spend.spend.map((s) => `${s.spent} ${s.currency}`).join(', ');
        runtime.out.line(`${spend.calls} proxied call${spend.calls === 1 ? '' : 's'}${amounts ? `, spent ${amounts}` : ''}`);
      }
    });

  ledger
    .command('summary')
    .description('tree size, checkpoints, the last checkpoint, frozen state, entries per event type')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const origin = runtime.config().ledger.origin;
      const summary = await runtime.withContext((ctx) => ledgerSummary(ctx.db, origin));
      if (options.json) return runtime.out.json(summary);
      printRecord(runtime.out, {
        origin: summary.origin,
        tree_size: summary.treeSize,
        checkpoints: summary.checkpoints,
        last_checkpoint: summary.checkpointSize > 0 ? `${summary.checkpointSize} (batch id), signed ${summary.lastCheckpointAt}, ${summary.lastCheckpointAgeSeconds}s ago` : 'none',
        unsealed: summary.unsealed,
        status: summary.frozen ? `frozen since ${summary.frozenAt}: ${summary.frozenReason}` : 'active',
        ...Object.fromEntries(summary.types.map((t) => [`type ${t.eventType}`, t.count])),
      });
    });

  ledger
    .command('export')
    .description('write a self-contained, offline-verifiable file: entries of a time range with inclusion proofs, checkpoints, consistency proofs')
    .option('--start-time <time>', TIME_HELP)
    .option('--end-time <time>', `${TIME_HELP}; default now`)
    .option('--start <time>', 'same as --start-time')
    .option('--end <time>', 'same as --end-time')
    .requiredOption('--out <file>', 'the file to write')
    .option('--format <format>', 'json or jsonl (default: jsonl when the file name ends in .jsonl, else json)')
    .option('--limit <n>', 'at most this many entries', '100000')
    .action(async (options) => {
      const { start, end } = rangeArgs(options);
      const limit = positiveInt('--limit', options.limit);
      const format = options.format ?? (String(options.out).endsWith('.jsonl') ? 'jsonl' : 'json');
      if (format !== 'json' && format !== 'jsonl') throw new CaracalError('CARACAL_USAGE', `--format must be json or jsonl, got "${String(format).slice(0, 40)}"`);
      const runtime = rt();
      const origin = runtime.config().ledger.origin;
      const result = await runtime.withContext((ctx) => buildExport(ctx.db, origin, { start, end: new Date(end.getTime() + 1), limit }));
      try {
        writeFileSync(options.out, serializeExport(result.export, format), { mode: 0o644 });
      } catch (err) {
        throw new CaracalError('CARACAL_USAGE', `--out: cannot write ${options.out}: ${(err as Error).message}`);
      }
      const cps = result.export.checkpoints.map((c) => c.size);
      runtime.out.line(
        `exported ${result.export.entries.length} entr${result.export.entries.length === 1 ? 'y' : 'ies'} of ${origin} to ${options.out}` +
          ` (${cps.length} checkpoint${cps.length === 1 ? '' : 's'}${cps.length > 0 ? ` ${cps[0]}..${cps.at(-1)}` : ''}` +
          `${result.unsealed > 0 ? `; ${result.unsealed} not yet sealed, left out` : ''})`,
      );
    });

  ledger
    .command('verify-export')
    .description('verify an export offline with the file and the verifier key alone (no database, no config)')
    .argument('<file>', 'the export file (JSON or JSON lines)')
    .requiredOption('--public-key <key>', 'a PEM public key (file or text), or the verifier key string (`caracal ledger public-key`)')
    .option('--json', 'print JSON')
    .action((file: string, options) => {
      const runtime = rt();
      let text: string;
      try {
        if (statSync(file).size > MAX_EXPORT_BYTES) throw new CaracalError('CARACAL_USAGE', `${file} is larger than ${MAX_EXPORT_BYTES} bytes`);
        text = readFileSync(file, 'utf8');
      } catch (err) {
        if (err instanceof CaracalError) throw err;
        throw new CaracalError('CARACAL_USAGE', `cannot read ${file}: ${(err as Error).message}`);
      }
      try {
        const data = parseExport(text);
        const result = verifyExport(data, verifierFrom(options.publicKey, data.origin));
        if (options.json) return runtime.out.json({ ok: true, ...result });
        runtime.out.line(
          `export verified: ${result.entries} entr${result.entries === 1 ? 'y' : 'ies'} of ${result.origin}, ${result.checkpoints.length} signed checkpoint${result.checkpoints.length === 1 ? '' : 's'}` +
            `${result.checkpoints.length > 0 ? ` (${result.checkpoints[0]}..${result.checkpoints.at(-1)})` : ''}, ${result.consistencyProofs} consistency proof${result.consistencyProofs === 1 ? '' : 's'}`,
        );
      } catch (err) {
        if (err instanceof ExportInvalidError) throw new CaracalError('CARACAL_VALIDATION', `export does not verify: ${err.message.split('\n')[0]}`);
        throw err;
      }
    });
}

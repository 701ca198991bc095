import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import type { AppContext } from '../../context.js';
import { CaracalError } from '../../errors/catalog.js';
import { parseVerifierKey, type EcdsaNoteSigner, type NoteVerifier } from '../../ledger/note.js';
import { readSequencer, resumeLedger } from '../../ledger/store.js';
import { handleCheckFailure, LedgerCheckFailure, LedgerLookupError, verifyBatch, verifyEvent, verifyRange, type VerifyOptions } from '../../ledger/verify.js';
import { ledgerSigningKeyPath, loadLedgerSigner } from '../../ledger/writer.js';
import { printRecord } from '../output.js';
import { timeArg } from '../parse.js';
import type { CliRuntime } from '../runtime.js';

/** The verifier of the configured checkpoint signing key (the key the ledger writer signs with). */
export function configuredVerifier(runtime: CliRuntime): NoteVerifier {
  return parseVerifierKey(configuredSigner(runtime).verifierKey);
}

/**
 * The configured signing key, never a new one: a key made here would sign nothing the writer signed, and every
 * checkpoint would fail to verify (and freeze the ledger) on a machine that merely lacks the key file.
 */
export function configuredSigner(runtime: CliRuntime): EcdsaNoteSigner {
  const config = runtime.config();
  const file = ledgerSigningKeyPath(config);
  if (!existsSync(file)) {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `the ledger signing key ${file} does not exist (the ledger writer creates it on first start; set ledger.signingKeyPath or CARACAL_LEDGER_SIGNING_KEY to the writer's key)`);
  }
  return loadLedgerSigner(config);
}

/** Stands in for the key of a ledger with no checkpoint: nothing can be verified with it. */
const NOTHING_SIGNED: NoteVerifier = {
  name: '(no key: the ledger has no checkpoint)',
  keyId: 0,
  verify: () => false,
};

/**
 * Runs a verification on the configured database. A LedgerCheckFailure (tampering or corruption) freezes the ledger
 * when `ledger.freezeOnVerificationFailure` is on and becomes one line naming the first bad entry; a lookup failure
 * (unknown batch or event, nothing sealed) is a plain not-found error and freezes nothing.
 */
async function verifying<T>(runtime: CliRuntime, fn: (options: VerifyOptions, ctx: AppContext) => Promise<T>): Promise<T> {
  const config = runtime.config();
  const keyMissing = !existsSync(ledgerSigningKeyPath(config));
  return runtime.withContext(async (ctx) => {
    // A ledger that never signed anything (a fresh install: the writer makes the key on its first
    // start) has nothing to verify, so a missing key is only an error when there are checkpoints.
    let verifier: NoteVerifier;
    if (keyMissing && (await readSequencer(ctx.db, config.ledger.origin)) === null) verifier = NOTHING_SIGNED;
    else verifier = configuredVerifier(runtime);
    const options: VerifyOptions = {
      db: ctx.db,
      origin: config.ledger.origin,
      verifier,
      onProgress: (done, total) => process.stderr.write(`caracal: verified ${done} of ${total} leaves…\n`),
    };
    try {
      return await fn(options, ctx);
    } catch (err) {
      if (err instanceof LedgerCheckFailure) {
        // Counted in the database, where the consumers' metrics read it (the CLI has no metrics endpoint).
        const froze = await handleCheckFailure(ctx.db, config.ledger.origin, err, { freeze: config.ledger.freezeOnVerificationFailure }).catch(() => false);
        throw new CaracalError('CARACAL_VALIDATION', `${err.message}${froze ? ' — the ledger is now frozen (`caracal merkle resume` lifts it)' : ''}`);
      }
      if (err instanceof LedgerLookupError) throw new CaracalError('CARACAL_NOT_FOUND', err.message);
      throw err;
    }
  });
}

function batchIdArg(raw: string): number {
  if (!/^[1-9]\d{0,15}$/.test(raw) || !Number.isSafeInteger(Number(raw))) {
    throw new CaracalError('CARACAL_USAGE', `--batch-id must be a checkpoint tree size (a positive integer), got "${raw.slice(0, 40)}"`);
  }
  return Number(raw);
}

/** `--start-time`/`--end-time`, or the runbook's `--start`/`--end`; the end defaults to now. */
export function rangeArgs(options: { startTime?: string; endTime?: string; start?: string; end?: string }, now = new Date()): { start: Date; end: Date } {
  if (options.startTime !== undefined && options.start !== undefined) throw new CaracalError('CARACAL_USAGE', 'give --start-time or --start, not both');
  if (options.endTime !== undefined && options.end !== undefined) throw new CaracalError('CARACAL_USAGE', 'give --end-time or --end, not both');
  const rawStart = options.startTime ?? options.start;
  if (rawStart === undefined) throw new CaracalError('CARACAL_USAGE', "required option '--start-time <time>' not specified");
  const start = timeArg(options.startTime !== undefined ? '--start-time' : '--start', rawStart, now);
  const end = timeArg(options.end !== undefined ? '--end' : '--end-time', options.endTime ?? options.end ?? 'now', now);
  if (end.getTime() < start.getTime()) throw new CaracalError('CARACAL_USAGE', `end must be after start (${start.toISOString()} > ${end.toISOString()})`);
  return { start, end };
}

const CANONICAL_HELP = 'also check that every stored event is RFC 8785 canonical JSON (a check of the writer; several times slower)';

const TIME_HELP = 'ISO 8601 (UTC unless an offset is given), a date, "now" or "-24h"';

export function registerMerkleCommands(program: Command, rt: () => CliRuntime): void {
  const merkle = program.command('merkle').description('verify the signed ledger: batches, ranges, events; freeze status');

  merkle
    .command('verify-batch')
    .description('verify one batch (what one checkpoint sealed): leaves, stored hashes, root, signature, consistency with the previous checkpoint')
    .requiredOption('--batch-id <size>', 'the batch id: the tree size of its checkpoint (`ledger summary`, `ledger query` print it)')
    .option('--check-canonical', CANONICAL_HELP)
    .option('--json', 'print JSON')
    .action(async (options) => {
      const batchId = batchIdArg(options.batchId);
      const runtime = rt();
      const result = await verifying(runtime, (o) => verifyBatch({ ...o, checkCanonical: options.checkCanonical === true }, batchId));
      if (options.json) return runtime.out.json({ ok: true, batchId, ...result });
      runtime.out.line(
        `batch ${batchId} verified: leaves ${result.fromSize}-${result.toSize - 1} (${result.leaves}), checkpoint ${batchId} signature ok, ` +
          (result.fromSize > 0 ? `consistent with checkpoint ${result.fromSize}` : 'first checkpoint'),
      );
    });

  merkle
    .command('verify-range')
    .description('verify every batch whose checkpoint was signed in a time range, and the consistency chain between them')
    .option('--start-time <time>', TIME_HELP)
    .option('--end-time <time>', `${TIME_HELP}; default now`)
    .option('--start <time>', 'same as --start-time')
    .option('--end <time>', 'same as --end-time')
    .option('--check-canonical', CANONICAL_HELP)
    .option('--json', 'print JSON')
    .action(async (options) => {
      const { start, end } = rangeArgs(options);
      const runtime = rt();
      const result = await verifying(runtime, (o) => verifyRange({ ...o, checkCanonical: options.checkCanonical === true }, start, end));
      if (options.json) return runtime.out.json({ ok: true, start: start.toISOString(), end: end.toISOString(), ...result });
      if (result.checkpoints.length === 0) return runtime.out.line(`no checkpoint was signed between ${start.toISOString()} and ${end.toISOString()}: nothing to verify`);
      const sizes = result.checkpoints.map((c) => c.size);
      runtime.out.line(
        `verified ${sizes.length} batch${sizes.length === 1 ? '' : 'es'} (checkpoints ${sizes[0]}..${sizes.at(-1)}): ${result.leaves} leaves, ` +
          `${sizes.length} signature${sizes.length === 1 ? '' : 's'}, ${result.consistencyProofs} consistency proof${result.consistencyProofs === 1 ? '' : 's'}; all ok`,
      );
    });

  merkle
    .command('verify-event')
    .description("verify one event: its leaf hash, its inclusion proof to the first checkpoint covering it, the checkpoint's signature")
    .requiredOption('--event-id <id>', 'the event id')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const result = await verifying(runtime, (o) => verifyEvent(o, options.eventId));
      if (options.json) return runtime.out.json({ ok: true, ...result });
      runtime.out.line(`event ${result.eventId} verified: leaf ${result.leafIndex}, included in checkpoint ${result.checkpointSize} (signed ${result.signedAt}, proof of ${result.proofLength} hashes)`);
    });

  merkle
    .command('status')
    .description('tree size, checkpoint size, frozen or not')
    .option('--json', 'print JSON')
    .action(async (options) => {
      const runtime = rt();
      const origin = runtime.config().ledger.origin;
      const state = await runtime.withContext((ctx) => readSequencer(ctx.db, origin));
      const status = {
        origin,
        treeSize: state?.treeSize ?? 0,
        checkpointSize: state?.checkpointSize ?? 0,
        frozen: state?.frozenAt != null,
        frozenAt: state?.frozenAt?.toISOString() ?? null,
        frozenReason: state?.frozenReason ?? null,
      };
      if (options.json) return runtime.out.json(status);
      printRecord(runtime.out, {
        origin,
        tree_size: status.treeSize,
        checkpoint_size: status.checkpointSize,
        status: status.frozen ? 'frozen' : 'active',
        ...(status.frozen ? { frozen_at: status.frozenAt, frozen_reason: status.frozenReason } : {}),
      });
    });

  merkle
    .command('resume')
    .description('lift a freeze (after a verification failure was investigated): appends and checkpoints resume')
    .action(async () => {
      const runtime = rt();
      const origin = runtime.config().ledger.origin;
      const was = await runtime.withContext(async (ctx) => {
        const before = await readSequencer(ctx.db, origin);
        return (await resumeLedger(ctx.db, origin)) ? before : null;
      });
      runtime.out.line(was ? `ledger ${origin} resumed (it was frozen since ${was.frozenAt?.toISOString()}: ${was.frozenReason})` : `ledger ${origin} was not frozen`);
    });
}

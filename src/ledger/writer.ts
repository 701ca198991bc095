// The ledger writer: appends slices of events to the tree and seals signed checkpoints by size or by time. The
// consumer role (src/consumers/ledger-writer.ts) feeds it; this module knows nothing of the event log.
import { createPrivateKey } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { generateSigningKeyFile } from '../authority/tokens/keys.js';
import type { CaracalConfig } from '../config/schema.js';
import { CaracalError } from '../errors/catalog.js';
import type { Logger } from '../logging/logger.js';
import type { Db } from '../store/db.js';
import { isOutage } from '../util/retry.js';
import { createEcdsaNoteSigner, type EcdsaNoteSigner } from './note.js';
import {
  appendEvents,
  freezeLedger,
  LedgerFrozenError,
  LedgerVerificationError,
  readSequencer,
  recordVerificationFailure,
  sealCheckpoint,
  type AppendResult,
  type LedgerEntryInput,
  type SealResult,
} from './store.js';

/** The checkpoint signing key file: `ledger.signingKeyPath`, or `<home>/ledger-signing.pem`. */
export function ledgerSigningKeyPath(config: Pick<CaracalConfig, 'home' | 'ledger'>): string {
  return config.ledger.signingKeyPath ?? path.join(config.home, 'ledger-signing.pem');
}

/**
 * The checkpoint signer: an ECDSA P-256 key from a PEM file (PKCS#8, or SEC1 from openssl), named after the origin.
 * A configured file must exist; the default one, `<home>/ledger-signing.pem`, is generated with mode 0600 on first
 * use (the auth key's generator, src/authority/tokens/keys.ts). The private key never goes into the database.
 */
export function loadLedgerSigner(config: Pick<CaracalConfig, 'home' | 'ledger'>): EcdsaNoteSigner {
  const file = ledgerSigningKeyPath(config);
  if (!existsSync(file)) {
    if (config.ledger.signingKeyPath) throw new CaracalError('CARACAL_CONFIG_INVALID', `ledger.signingKeyPath: ${file} does not exist`);
    try {
      generateSigningKeyFile(file);
    } catch (err) {
      // Another process created it between our check and write: use theirs.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `ledger.signingKeyPath: ${file} cannot be read`, { cause: err });
  }
  let key;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `ledger.signingKeyPath: ${file} is not a PEM private key`, { cause: err });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new CaracalError('CARACAL_CONFIG_INVALID', `ledger.signingKeyPath: ${file} must be an EC P-256 (prime256v1) key`);
  }
  return createEcdsaNoteSigner(config.ledger.origin, key);
}

/** What the writer reports (the consumer role maps it onto ConsumerMetrics). */
export interface LedgerWriterObserver {
  /** A checkpoint was signed covering `leaves` new leaves, at tree size `treeSize`. */
  sealed?(leaves: number, treeSize: number): void;
  /** The tree is now `treeSize` leaves. */
  treeSize?(treeSize: number): void;
  /** Seconds since the newest checkpoint was signed (database clock), refreshed by the timer. */
  checkpointAge?(seconds: number): void;
  /** The verification failures recorded for the tree (database count: the writer's and the commands'). */
  verificationFailures?(total: number): void;
}

export interface LedgerWriterOptions {
  db: Db;
  origin: string;
  signer: EcdsaNoteSigner;
  /** Seal in the append's own transaction once this many leaves are not in a checkpoint. */
  batchMaxEvents: number;
  /** Seal once the oldest leaf not in a checkpoint is this old (timer every batchMaxMs / 4). */
  batchMaxMs: number;
  freezeOnVerificationFailure: boolean;
  logger: Logger;
  observer?: () => LedgerWriterObserver | undefined;
}

export interface SliceResult extends AppendResult {
  sealed: SealResult | null;
}

interface PendingSlice {
  entries: readonly LedgerEntryInput[];
  resolve: (result: SliceResult) => void;
  reject: (err: unknown) => void;
}

/** At most this many entries go into one group transaction (a single slice larger than this goes alone). */
const MAX_GROUP_ENTRIES = 5_000;



/**
 * Appends slices (one transaction each, sealing a checkpoint in the same transaction when one is due) and runs the
 * seal timer. Several writers — in one process or many — may share a tree: the sequencer row lock orders them.
 */
export class LedgerWriter {
  private timer: NodeJS.Timeout | undefined;
  private readonly queue: PendingSlice[] = [];
  private draining = false;
  private ticking: Promise<void> | undefined;
  private frozenLogged = false;

  constructor(private readonly options: LedgerWriterOptions) {}

  get origin(): string {
    return this.options.origin;
  }

  /**
   * Appends `entries` (skipping those already in the tree) and seals when the batch is full or old. Slices that
   * arrive while a transaction is running wait and then go together in the next one (group commit, no timer): the
   * sequencer lock lets only one transaction of a tree run at a time anyway, so partitions handled concurrently
   * share its cost instead of queueing on the lock. Each caller gets its own slice's outcome. A group that fails for
   * anything but a retriable reason (outage, frozen, verification) is redone slice by slice, so one bad slice cannot
   * fail its neighbours.
   */
  append(entries: readonly LedgerEntryInput[]): Promise<SliceResult> {
    return new Promise<SliceResult>((resolve, reject) => {
      this.queue.push({ entries, resolve, reject });
      if (!this.draining) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const group: PendingSlice[] = [this.queue.shift()!];
        let size = group[0]!.entries.length;
        while (this.queue.length > 0 && size + this.queue[0]!.entries.length <= MAX_GROUP_ENTRIES) {
          const next = this.queue.shift()!;
          size += next.entries.length;
          group.push(next);
        }
        try {
          const results = await this.appendGroup(group.map((slice) => slice.entries));
          group.forEach((slice, n) => slice.resolve(results[n]!));
        } catch (err) {
          if (group.length === 1 || isOutage(err)) {
            for (const slice of group) slice.reject(err);
            continue;
          }
          for (const slice of group) {
            await this.appendGroup([slice.entries]).then(
              (results) => slice.resolve(results[0]!),
              (sliceErr: unknown) => slice.reject(sliceErr),
            );
          }
        }
      }
    } finally {
      this.draining = false;
    }
  }

  /** One transaction: the slices' entries in order, then a checkpoint when one is due; each slice's share of it. */
  private async appendGroup(slices: readonly (readonly LedgerEntryInput[])[]): Promise<SliceResult[]> {
    const { db, origin, signer, batchMaxEvents, batchMaxMs } = this.options;
    const all = slices.length === 1 ? slices[0]! : slices.flat();
    const result = await this.guard(() =>
      db.transaction(async (tx) => {
        const appended = await appendEvents(tx, origin, all);
        const pending = appended.treeSize - appended.checkpointSize;
        const due = pending > 0 && (pending >= batchMaxEvents || appended.openMs >= batchMaxMs);
        return { ...appended, sealed: due ? await sealCheckpoint(tx, origin, signer) : null };
      }),
    );
    this.report(result.treeSize, result.sealed);
    if (slices.length === 1) return [result];
    let offset = 0;
    let nextIndex = result.firstIndex;
    return slices.map((slice) => {
      const outcomes = result.outcomes.slice(offset, offset + slice.length);
      const share: SliceResult = {
        ...result,
        appended: 0,
        skipped: [],
        conflicts: [],
        outcomes,
        firstIndex: nextIndex,
      };
      outcomes.forEach((outcome, n) => {
        if (outcome === 'appended') share.appended++;
        else share.skipped.push(slice[n]!.eventId);
        if (outcome === 'conflict') share.conflicts.push(slice[n]!.eventId);
      });
      offset += slice.length;
      nextIndex += share.appended;
      return share;
    });
  }

  /** Seals a checkpoint of whatever is not in one yet; null when nothing is. */
  async seal(): Promise<SealResult | null> {
    const { db, origin, signer } = this.options;
    const sealed = await this.guard(() => db.transaction((tx) => sealCheckpoint(tx, origin, signer)));
    if (sealed) this.report(sealed.treeSize, sealed);
    return sealed;
  }

  /** Seals when the oldest leaf not in a checkpoint is at least batchMaxMs old; refreshes the gauges. */
  async sealIfDue(): Promise<SealResult | null> {
    const state = await readSequencer(this.options.db, this.options.origin);
    if (!state) return null;
    const observer = this.options.observer?.();
    observer?.treeSize?.(state.treeSize);
    observer?.verificationFailures?.(state.verificationFailures);
    if (state.frozenAt !== null) {
      if (!this.frozenLogged) this.options.logger.warn({ origin: state.origin, reason: state.frozenReason }, 'the ledger is frozen; nothing is appended or signed until it is resumed');
      this.frozenLogged = true;
      return null;
    }
    this.frozenLogged = false;
    const due = state.treeSize > state.checkpointSize && state.openMs >= this.options.batchMaxMs;
    const sealed = due ? await this.seal() : null;
    if (observer?.checkpointAge) {
      const { rows } = await this.options.db.query<{ age: number | null }>(
        'SELECT EXTRACT(EPOCH FROM (now() - max(signed_at)))::float8 AS age FROM ledger_checkpoints WHERE origin = $1',
        [this.options.origin],
      );
      if (rows[0]?.age !== null && rows[0]?.age !== undefined) observer.checkpointAge(Math.max(0, Number(rows[0].age)));
    }
    return sealed;
  }

  /** Starts the seal timer: every batchMaxMs / 4 (unref'd), an open batch older than batchMaxMs is sealed. */
  start(): void {
    if (this.timer) return;
    const every = Math.max(5, Math.floor(this.options.batchMaxMs / 4));
    this.timer = setInterval(() => {
      if (this.ticking) return; // the previous tick is still running
      this.ticking = this.sealIfDue()
        .then(() => undefined)
        .catch((err) => this.options.logger.warn({ err }, 'ledger seal timer: could not seal; retrying on the next tick'))
        .finally(() => (this.ticking = undefined));
    }, every);
    this.timer.unref();
  }

  /** Stops the timer, waits for a running tick, and seals what is open (one attempt; a failure is only logged). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.ticking;
    await this.seal().catch((err) => {
      if (!(err instanceof LedgerFrozenError)) this.options.logger.warn({ err }, 'could not seal the open ledger batch on stop; the next writer will');
    });
  }

  private report(treeSize: number, sealed: SealResult | null): void {
    const observer = this.options.observer?.();
    observer?.treeSize?.(treeSize);
    if (sealed) {
      observer?.sealed?.(sealed.treeSize - sealed.previousSize, sealed.treeSize);
      observer?.checkpointAge?.(0);
    }
  }

  /** A verification failure is counted, logged and (by default) freezes the sequencer, then rethrown (retriable). */
  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof LedgerVerificationError) {
        this.options.logger.error({ err, origin: this.options.origin }, 'ledger verification failed; nothing was signed');
        await recordVerificationFailure(this.options.db, this.options.origin).then(
          (total) => this.options.observer?.()?.verificationFailures?.(total),
          (recordErr: unknown) => this.options.logger.error({ err: recordErr }, 'could not count the ledger verification failure'),
        );
        if (this.options.freezeOnVerificationFailure) {
          await freezeLedger(this.options.db, this.options.origin, err.message).catch((freezeErr) =>
            this.options.logger.error({ err: freezeErr }, 'could not freeze the ledger after a verification failure'),
          );
        }
      }
      throw err;
    }
  }
}

import { z } from 'zod';
import type { AppContext } from '../context.js';
import { CaracalError } from '../errors/catalog.js';
import { MAX_BUNDLE_FILE_BYTES, sha256Hex } from '../policy/bundle.js';
import type { BundleStore } from '../policy/bundle-store.js';
import { openBundleStore, parseBundleStoreSpec } from '../policy/bundle-store-open.js';
import { checkStoredRevisionLoadable, loadCandidateEngine, replayDecisions } from '../policy/replay.js';
import { op } from './define.js';

/**
 * The bundle store the gateway's config names (`policy.store`; unset = `db`): publish, list, fetch, and move the
 * active and shadow pointers. A gateway that takes its bundles from another gateway's URL has no store of its own to
 * change: the operations say where to go instead.
 */
export function configuredBundleStore(ctx: AppContext): BundleStore {
  const spec = parseBundleStoreSpec(ctx.config.policy.store ?? 'db');
  if (spec.kind === 'http') throw new CaracalError('CARACAL_USAGE', `this gateway takes its bundles from ${spec.url}: publish there`);
  return openBundleStore(spec, { db: ctx.db });
}

/** Changes a diff keeps (each a few KiB): the rest are counted in `flips_omitted`. */
const MAX_DIFF_CHANGES = 10_000;

/**
 * A revision is made active or shadow only if this gateway would load it: its signature against `policy.signing`, its
 * WASM, the smoke evaluation. The store itself keeps any bundle (it cannot know every gateway's keys), but a pointer
 * moved to a revision the gateways refuse would leave them enforcing the previous one while the operator believes the
 * new one is live. Gateways still check again when they load it.
 */
function checkLoadable(ctx: AppContext, store: BundleStore, revision: string): Promise<void> {
  return checkStoredRevisionLoadable(store, revision, ctx.config.policy.signing);
}

/** Longest base64 text of a bundle within MAX_BUNDLE_FILE_BYTES. */
const MAX_BASE64_LENGTH = Math.ceil(MAX_BUNDLE_FILE_BYTES / 3) * 4;

/**
 * Strict base64 (RFC 4648 §4, padded): Node's decoder skips characters it does not know and stops at a stray "=",
 * so "not base64!" would quietly become a few bytes; here it is refused, naming the argument.
 */
const Base64Bundle = z
  .string()
  .min(1, 'is empty')
  .max(MAX_BASE64_LENGTH, `is larger than the ${MAX_BUNDLE_FILE_BYTES}-byte bundle limit`)
  .refine((s) => s.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(s), 'must be standard padded base64 of the bundle file (.tar.gz)')
  .describe('the bundle file (.tar.gz), standard padded base64');

// Checked against REVISION_PATTERN by the store, whose message says what a revision may contain.
const Revision = z.string().min(1).max(256).describe('a published revision (letters, digits, ".", "_", "-")');

function decode(text: string): Buffer {
  const bytes = Buffer.from(text, 'base64');
  // Belt and braces: the pattern above admits only canonical base64, so this holds unless padding bits are set.
  if (bytes.toString('base64') !== text) throw new CaracalError('CARACAL_VALIDATION', 'bundle: must be standard padded base64 of the bundle file (.tar.gz)', { reasons: ['bundle: not canonical base64'] });
  return bytes;
}

export const BUNDLE_OPERATIONS = {
  'bundle.publish': op({
    description: 'Publish a policy bundle to the configured bundle store (a revision is published once); optionally activate it',
    args: z.object({ bundle: Base64Bundle, activate: z.boolean().default(false) }).strict(),
    // The bundle travels base64 in the JSON body: 4/3 of the largest bundle file, and room for the rest.
    bodyLimitBytes: Math.ceil((MAX_BUNDLE_FILE_BYTES * 4) / 3) + 64 * 1024,
    run: async (ctx, { bundle, activate }, caller) => {
      const store = configuredBundleStore(ctx);
      const by = { actor: caller?.actor ?? null };
      const published = await store.publish(decode(bundle), by);
      if (activate) await checkLoadable(ctx, store, published.revision);
      const activation = activate ? await store.activate(published.revision, by) : null;
      return { store: store.description, ...published, activation };
    },
  }),
  'bundle.list': op({
    description: 'List the bundles of the configured store (newest first), the active and shadow revisions and the recent history',
    args: z.object({}).strict(),
    run: async (ctx) => {
      const store = configuredBundleStore(ctx);
      return { store: store.description, ...(await store.list()) };
    },
  }),
  'bundle.fetch': op({
    description: 'The bytes of a published bundle (base64)',
    args: z.object({ revision: Revision }).strict(),
    run: async (ctx, { revision }) => {
      const bytes = await configuredBundleStore(ctx).fetch(revision);
      return { revision, sha256: sha256Hex(bytes), size: bytes.length, bundle: bytes.toString('base64') };
    },
  }),
  'bundle.activate': op({
    description: 'Make a published revision the active one (gateways on this store enforce it); rollback returns to the previous one',
    args: z.object({ revision: Revision }).strict(),
    run: async (ctx, { revision }, caller) => {
      const store = configuredBundleStore(ctx);
      await checkLoadable(ctx, store, revision);
      return store.activate(revision, { actor: caller?.actor ?? null });
    },
  }),
  'bundle.rollback': op({
    description: 'Re-activate the revision that was active before the current one',
    args: z.object({}).strict(),
    run: async (ctx, _args, caller) => configuredBundleStore(ctx).rollback({ actor: caller?.actor ?? null }),
  }),
  'bundle.diff': op({
    description:
      'Replay the decisions recorded in the ledger in [startTime, endTime) through a candidate bundle (the bytes, or a revision of the store) and report which would change',
    args: z
      .object({
        bundle: Base64Bundle.optional(),
        revision: Revision.optional(),
        /** With `bundle`: the revision it was fetched as (its manifest must name it). */
        expectRevision: Revision.optional(),
        startTime: z.string().datetime({ offset: true }),
        endTime: z.string().datetime({ offset: true }),
        maxChanges: z.number().int().min(0).max(MAX_DIFF_CHANGES).default(MAX_DIFF_CHANGES),
      })
      .strict()
      .refine((a) => (a.bundle === undefined) !== (a.revision === undefined), { message: 'give exactly one of bundle and revision' })
      .refine((a) => Date.parse(a.endTime) > Date.parse(a.startTime), { message: 'endTime must be after startTime', path: ['endTime'] }),
    bodyLimitBytes: Math.ceil((MAX_BUNDLE_FILE_BYTES * 4) / 3) + 64 * 1024,
    run: async (ctx, args) => {
      // It runs inside a gateway that is serving traffic: one at a time, in small pages (each page's evaluations run
      // without yielding), keeping at most MAX_DIFF_CHANGES changes in memory (the rest are counted).
      if (diffRunning) throw new CaracalError('CARACAL_CONFLICT', 'a bundle diff is already running here; try again when it is done');
      diffRunning = true;
      try {
        return await runDiff(ctx, args);
      } finally {
        diffRunning = false;
      }
    },
  }),
  'bundle.shadow': op({
    description: 'Set the shadow revision (evaluated alongside the active one, never enforced), or clear it with null',
    args: z.object({ revision: Revision.nullable() }).strict(),
    run: async (ctx, { revision }, caller) => {
      const store = configuredBundleStore(ctx);
      if (revision !== null) await checkLoadable(ctx, store, revision);
      return store.setShadow(revision, { actor: caller?.actor ?? null });
    },
  }),
};

/** Only one `bundle.diff` runs per process (see the operation). */
let diffRunning = false;

async function runDiff(ctx: AppContext, args: { bundle?: string; revision?: string; expectRevision?: string; startTime: string; endTime: string; maxChanges: number }) {
  const source =
    args.bundle !== undefined ? `bundle (${args.expectRevision ? `revision ${args.expectRevision}` : 'sent'})` : `revision ${args.revision} (${configuredBundleStore(ctx).description})`;
  const bytes = args.bundle !== undefined ? decode(args.bundle) : await configuredBundleStore(ctx).fetch(args.revision!);
  const candidate = await loadCandidateEngine(bytes, source, ctx.config.policy.signing, args.revision ?? args.expectRevision);
  const start = new Date(args.startTime);
  const end = new Date(args.endTime);
  const origin = ctx.config.ledger.origin;
  const result = await replayDecisions({ db: ctx.db, origin, start, end, candidate, maxChanges: args.maxChanges, batchSize: 250 });
  return { origin, start: start.toISOString(), end: end.toISOString(), candidate: { source, revision: candidate.revision }, ...result };
}

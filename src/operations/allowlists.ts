import { z } from 'zod';
import {
  AllowlistEntryId,
  CreateAllowlistArgs,
  compileAllowlistEntry,
  createAllowlistEntry,
  deleteAllowlistEntry,
  listAllowlistEntries,
  testUrl,
  type AllowlistPatternType,
  type AllowlistReason,
  type AllowlistWhenEmpty,
} from '../authority/stores/allowlists.js';
import { PrincipalId, findPrincipal } from '../authority/stores/principals.js';
import { CaracalError } from '../errors/catalog.js';
import { announced, op } from './define.js';

/** What `allowlist.test` answers: the gateway's verdict for this URL, and why. */
export interface AllowlistTestReport {
  principalId: string;
  url: string;
  allowed: boolean;
  reason: AllowlistReason;
  entryId: string | null;
  pattern: string | null;
  patternType: AllowlistPatternType | null;
  entries: number;
  whenEmpty: AllowlistWhenEmpty;
  /** Stored entries that no longer compile (they never match). */
  broken: { id: string; problem: string }[];
}

/** Per-principal URL allowlists. */
export const ALLOWLIST_OPERATIONS = {
  'allowlist.create': op({
    description: 'Add a URL pattern (regex or glob) to a principal\'s allowlist',
    args: CreateAllowlistArgs,
    run: async (ctx, args) => {
      const entry = await createAllowlistEntry(ctx.db, args);
      return announced(ctx, entry, {
        entity: 'allowlist',
        action: 'created',
        principal_id: entry.principalId,
        entity_id: entry.id,
        attributes: { pattern_type: entry.patternType },
      });
    },
  }),
  'allowlist.list': op({
    description: 'List allowlist entries',
    args: z.object({ principalId: PrincipalId.optional() }).strict(),
    run: (ctx, args) => listAllowlistEntries(ctx.db, args),
  }),
  'allowlist.delete': op({
    description: 'Remove an allowlist entry',
    args: z.object({ id: AllowlistEntryId }).strict(),
    run: async (ctx, { id }) => {
      const entry = await deleteAllowlistEntry(ctx.db, id);
      return announced(ctx, entry, {
        entity: 'allowlist',
        action: 'deleted',
        principal_id: entry.principalId,
        entity_id: entry.id,
        attributes: { pattern_type: entry.patternType },
      });
    },
  }),
  'allowlist.test': op({
    description: "Check a URL against a principal's allowlist, as the gateway would",
    args: z
      .object({
        principalId: PrincipalId,
        // The gateway refuses request targets with a fragment, so a verdict on one would mislead.
        url: z.string().min(1, 'is required').max(65_536).refine((url) => !url.includes('#'), 'contains a fragment (#); the gateway refuses such requests, so no allowlist judges them'),
      })
      .strict(),
    run: async (ctx, { principalId, url }): Promise<AllowlistTestReport> => {
      if (!(await findPrincipal(ctx.db, principalId))) throw new CaracalError('CARACAL_NOT_FOUND', `principal ${principalId} not found`);
      const whenEmpty = ctx.config.allowlists.whenEmpty;
      const compiled = (await listAllowlistEntries(ctx.db, { principalId })).map(compileAllowlistEntry);
      const result = testUrl(compiled, url, whenEmpty);
      const entry = compiled.find((c) => c.entry.id === result.entryId)?.entry ?? null;
      return {
        principalId,
        url,
        allowed: result.matched,
        reason: result.reason,
        entryId: result.entryId,
        pattern: entry?.pattern ?? null,
        patternType: entry?.patternType ?? null,
        entries: result.entries,
        whenEmpty,
        broken: compiled.filter((c) => c.matches === null).map((c) => ({ id: c.entry.id, problem: c.problem ?? 'does not compile' })),
      };
    },
  }),
};

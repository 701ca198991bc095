import { z } from 'zod';
import { MAX_QUERY_LIMIT, queryAudit } from '../audit/audit-store.js';
import { CaracalError } from '../errors/catalog.js';
import { op } from './define.js';

const Id = z.string().min(1).max(128).regex(/^[A-Za-z0-9._:-]+$/, 'must be an id');
const Time = z.iso.datetime({ offset: true });

/** Reading the audit log: by principal and time, by decision or request (`audit query`, `trace`). */
export const AUDIT_QUERY_OPERATIONS = {
  'audit.query': op({
    description: 'Audit records in a time range, optionally for one principal, decision or request',
    args: z
      .object({
        principalId: Id.optional(),
        start: Time,
        end: Time,
        decisionId: Id.optional(),
        requestId: Id.optional(),
        limit: z.coerce.number().int().min(1).max(MAX_QUERY_LIMIT).default(1_000),
      })
      .strict(),
    run: async (ctx, args) => {
      const start = new Date(args.start);
      const end = new Date(args.end);
      if (end <= start) throw new CaracalError('CARACAL_VALIDATION', 'end must be after start');
      return queryAudit(ctx.db, {
        start,
        end,
        limit: args.limit,
        ...(args.principalId !== undefined ? { principalId: args.principalId } : {}),
        ...(args.decisionId !== undefined ? { decisionId: args.decisionId } : {}),
        ...(args.requestId !== undefined ? { requestId: args.requestId } : {}),
      });
    },
  }),
};

import { z } from 'zod';
import { createMonthlyPartitions, currentMonth, listPartitions, MAX_PARTITION_MONTHS, parseMonth } from '../audit/audit-store.js';
import { op } from './define.js';

/** Housekeeping of the audit log's storage. */
export const AUDIT_OPERATIONS = {
  'audit.partitions-create': op({
    description: 'Create the monthly audit log partitions (idempotent)',
    args: z
      .object({
        months: z.coerce.number().int().min(1).max(MAX_PARTITION_MONTHS).optional(),
        from: z
          .string()
          .regex(/^\d{4}-(0[1-9]|1[0-2])$/, 'must be a month as YYYY-MM')
          .optional(),
      })
      .strict(),
    run: async (ctx, { months, from }) => {
      const start = from === undefined ? currentMonth() : parseMonth(from);
      return createMonthlyPartitions(ctx.db, { from: start, months: months ?? 3 });
    },
  }),
  'audit.partitions-list': op({
    description: 'List the audit log partitions: name, range, approximate row count',
    args: z.object({}).strict(),
    run: async (ctx) => listPartitions(ctx.db),
  }),
};

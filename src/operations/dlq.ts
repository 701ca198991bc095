import { z } from 'zod';
import { findDlqEntries, listDlqEntries, redriveDlq } from '../consumers/dlq.js';
import { CaracalError } from '../errors/catalog.js';
import { op } from './define.js';

const EventId = z.string().min(1).max(128).regex(/^[A-Za-z0-9._:-]+$/, 'must be an event id');

/** Dead-letter entries: list, inspect, redrive (idempotent). */
export const DLQ_OPERATIONS = {
  'dlq.list': op({
    description: 'List dead-letter entries (not yet redriven, unless --all)',
    args: z.object({ all: z.boolean().default(false), limit: z.coerce.number().int().min(1).max(10_000).default(1_000) }).strict(),
    run: async (ctx, { all, limit }) => listDlqEntries(ctx.db, { includeRedriven: all, limit }),
  }),
  'dlq.get': op({
    description: 'Show the dead-letter entries of one event (by its id or the entry id)',
    args: z.object({ eventId: EventId }).strict(),
    run: async (ctx, { eventId }) => {
      const entries = await findDlqEntries(ctx.db, eventId);
      if (entries.length === 0) throw new CaracalError('CARACAL_NOT_FOUND', `no DLQ entry for event ${eventId}`);
      return entries;
    },
  }),
  'dlq.redrive': op({
    description: 'Publish dead-letter entries back to their original topic (all pending, or one event)',
    args: z.object({ eventId: EventId.optional() }).strict(),
    run: async (ctx, { eventId }) => {
      if (eventId !== undefined && (await findDlqEntries(ctx.db, eventId)).length === 0) throw new CaracalError('CARACAL_NOT_FOUND', `no DLQ entry for event ${eventId}`);
      const redriven = await redriveDlq(ctx.db, await ctx.events(), eventId);
      return { redriven: redriven.length, entries: redriven.map((e) => ({ dlqId: e.dlqId, originalEventId: e.originalEventId, topic: e.topic })) };
    },
  }),
};

import type { z } from 'zod';
import type { AppContext } from '../context.js';
import { CaracalError } from '../errors/catalog.js';

/** One operator action: a validated argument schema and a function over the context. */
export interface Operation<Schema extends z.ZodType, Result> {
  description: string;
  args: Schema;
  /** Largest JSON body the admin API accepts for it, when more than the listener's default (1 MiB) is needed. */
  bodyLimitBytes?: number;
  run(ctx: AppContext, args: z.infer<Schema>, caller?: OperationCaller): Promise<Result>;
}

/** Who runs an operation, for operations that record it themselves (the bundle store's history). */
export interface OperationCaller {
  /** `admin_token:sha256:…` or `os_user:<name>`: never a credential. */
  actor: string;
}

export function op<Schema extends z.ZodType, Result>(definition: Operation<Schema, Result>): Operation<Schema, Result> {
  return definition;
}

/** Publishes the change on agent.lifecycle after it is saved; a failure fails the command. */
export async function announced<T>(ctx: AppContext, result: T, data: Parameters<AppContext['announce']>[0]): Promise<T> {
  try {
    await ctx.announce(data);
  } catch (err) {
    // Saved, but gateways were not told: say so, and fail the command so scripts notice.
    throw new CaracalError('CARACAL_EVENTS_UNAVAILABLE', `saved, but the change could not be announced to gateways: ${(err as Error).message}`, { cause: err, retriable: true });
  }
  return result;
}

/**
 * Prices and costs. A price table belongs to an upstream (config): a per-request price for plain HTTP upstreams, and
 * per-model token prices (per million tokens: input, output, cached input) for LLM upstreams. Cost is always computed
 * here from the gateway's own count of what was delivered; a price, cost or model a client sends is never used for
 * money. Everything is integer micro-units; products go through BigInt and round up, so a cost is never
 * under-counted by rounding.
 */
import { z } from 'zod';
import { parseAmount, parseCurrency } from './money.js';
import type { TokenUsage } from './usage.js';

/** Decimal text ("0.15") in config, micro-units in memory; a bad value is one clear config error naming the key. */
const Price = z
  .union([z.string(), z.number()])
  .transform((value, ctx) => {
    const text = typeof value === 'number' ? String(value) : value;
    if (/^0*(\.0*)?$/.test(text.trim())) return 0; // free is a price too
    try {
      return parseAmount(text, 'price');
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });

const ModelPrice = z
  .object({
    /** Per 1,000,000 input tokens. */
    input: Price,
    /** Per 1,000,000 output tokens. */
    output: Price,
    /** Per 1,000,000 input tokens served from the provider's cache; defaults to the input price. */
    cachedInput: Price.optional(),
    /** Reserved before a call whose maximum cost cannot be worked out from its request (no max_tokens). */
    reservation: Price.optional(),
  })
  .strict();

export const PricingSchema = z
  .object({
    currency: z
      .string()
      .default('USD')
      .transform((value, ctx) => {
        try {
          return parseCurrency(value);
        } catch (err) {
          ctx.addIssue({ code: 'custom', message: (err as Error).message });
          return z.NEVER;
        }
      }),
    /** Charged for every call that reached the upstream (plain HTTP upstreams; added to token costs on LLM ones). */
    perRequest: Price.optional(),
    /** Token prices by model name as the upstream reports it. */
    models: z.record(z.string().min(1).max(256), ModelPrice).default({}),
    /** Reserved before a call to a model the table does not list (then settled at this amount, flagged estimated). */
    unknownModelReservation: Price.optional(),
    /** MCP servers: the price of one `tools/call` of each tool; a tool not listed costs `perRequest` (if set). */
    tools: z.record(z.string().min(1).max(128), Price).default({}),
  })
  .strict();

export type Pricing = z.infer<typeof PricingSchema>;
export type ModelPricing = Pricing['models'][string];

const MILLION = 1_000_000n;

/** ceil(tokens × micro-units per million tokens / 1,000,000), exact. */
function tokenCost(tokens: number, perMillion: number): bigint {
  return (BigInt(tokens) * BigInt(perMillion) + MILLION - 1n) / MILLION;
}

export interface Cost {
  micros: number;
  currency: string;
}

/**
 * What a call cost: the per-request price plus, with usage, its tokens at the model's prices (cached input at the
 * cached price). Null when the model is not in the table: the caller settles at the reservation, flagged estimated.
 */
export function costOf(pricing: Pricing, model: string | null, usage: TokenUsage | null): Cost | null {
  let micros = BigInt(pricing.perRequest ?? 0);
  if (usage) {
    const prices = model === null ? undefined : pricing.models[model];
    if (!prices) return null;
    const cached = Math.min(usage.cachedInputTokens, usage.inputTokens);
    micros += tokenCost(usage.inputTokens - cached, prices.input);
    micros += tokenCost(cached, prices.cachedInput ?? prices.input);
    micros += tokenCost(usage.outputTokens, prices.output);
  }
  if (micros > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('a call cost more than can be counted exactly');
  return { micros: Number(micros), currency: pricing.currency };
}

/**
 * The most a call can cost, reserved before it is sent: with a token cap (max_tokens / max_output_tokens), the prompt
 * estimate at the input price plus the cap at the output price; otherwise the model's configured reservation; for a
 * model not in the table, `unknownModelReservation`. Null when nothing bounds the cost (the caller refuses the call:
 * a budget cannot be kept by hoping).
 */
export function reservationFor(pricing: Pricing, model: string | null, request: { promptTokens: number; maxOutputTokens: number | null } | null): number | null {
  const perRequest = BigInt(pricing.perRequest ?? 0);
  if (request === null) return Number(perRequest);
  const prices = model === null ? undefined : pricing.models[model];
  if (!prices) return pricing.unknownModelReservation === undefined ? null : Number(perRequest) + pricing.unknownModelReservation;
  if (request.maxOutputTokens === null) return prices.reservation === undefined ? null : Number(perRequest) + prices.reservation;
  const total = perRequest + tokenCost(request.promptTokens, prices.input) + tokenCost(request.maxOutputTokens, prices.output);
  return total > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(total);
}

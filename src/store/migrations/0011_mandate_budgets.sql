-- A delegated mandate's own spending budget, set at delegation (src/authority/tokens/mandates.ts): the delegate
-- spends against it and against every ancestor's. All three columns are set together, or none (no budget; every
-- mandate issued before this migration). The checks repeat those of `budgets` (migration 0009): integer micro-units,
-- positive and at most 10^9 units; a UTC calendar window; an ISO 4217 code.
ALTER TABLE mandates ADD COLUMN budget_limit_micros bigint CHECK (budget_limit_micros > 0 AND budget_limit_micros <= 1000000000000000);
ALTER TABLE mandates ADD COLUMN budget_window text CHECK (budget_window IN ('hourly', 'daily', 'weekly', 'monthly'));
ALTER TABLE mandates ADD COLUMN budget_currency text CHECK (budget_currency ~ '^[A-Z]{3}$');
ALTER TABLE mandates ADD CONSTRAINT mandates_budget_complete CHECK (
  (budget_limit_micros IS NULL) = (budget_window IS NULL) AND (budget_window IS NULL) = (budget_currency IS NULL)
);

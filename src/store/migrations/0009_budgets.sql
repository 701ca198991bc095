-- Budgets: at most one limit per principal and window (src/metering/budgets.ts). Amounts are integer micro-units
-- (1 unit = 1,000,000) in an ISO 4217 currency; windows are UTC calendar periods (src/metering/money.ts). The column
-- is `budget_window` because WINDOW is a reserved word in PostgreSQL. The checks repeat the application's own
-- (MAX_AMOUNT_MICROS is 10^9 units) as the backstop for rows written by hand.
CREATE TABLE budgets (
  principal_id   text NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
  budget_window  text NOT NULL CHECK (budget_window IN ('hourly', 'daily', 'weekly', 'monthly')),
  limit_micros   bigint NOT NULL CHECK (limit_micros > 0 AND limit_micros <= 1000000000000000),
  currency       text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (principal_id, budget_window)
);

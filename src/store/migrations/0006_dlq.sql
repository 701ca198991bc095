-- Dead-letter entries as the audit-logger reads them from the DLQ topic: what failed, where it
-- came from (original topic / partition / offset), why, after how many attempts, and whether it
-- was redriven. The DLQ topic stays the source of truth; this table is what `caracal dlq list`,
-- `dlq get` and `dlq redrive` work on.
CREATE TABLE dlq_events (
  dlq_id             text PRIMARY KEY,
  original_event_id  text,
  consumer_group     text NOT NULL,
  topic              text NOT NULL,
  partition          integer NOT NULL,
  "offset"           text NOT NULL,
  key                text,
  value              text NOT NULL,
  headers            jsonb NOT NULL DEFAULT '{}'::jsonb,
  error              text NOT NULL,
  attempts           integer NOT NULL CHECK (attempts >= 1),
  failed_at          timestamptz NOT NULL,
  recorded_at        timestamptz NOT NULL DEFAULT now(),
  redriven_at        timestamptz
);

CREATE INDEX dlq_events_original_event_id ON dlq_events (original_event_id);
CREATE INDEX dlq_events_failed_at ON dlq_events (failed_at);

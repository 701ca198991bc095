-- `caracal bundle diff` replays the decisions of a time range: this index finds the range's first and last leaf
-- without reading the ledger from its start (src/policy/replay.ts).
CREATE INDEX ledger_entries_type_time_idx ON ledger_entries (origin, event_type, occurred_at);

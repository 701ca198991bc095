-- Events of one type by time (src/metering/reconcile.ts): `caracal budget reconcile`, the reconcile a gateway runs when
-- its budget counters start empty, and `caracal spend summary` read the metering events of a period out of the audit
-- log, which holds every decision too. An index on the parent is created on every partition, present and future.
CREATE INDEX IF NOT EXISTS audit_log_type_time_idx ON audit_log (event_type, occurred_at);

-- The audit log: every event of every topic, and every admin operation, kept append-only.
-- Design and reasoning: src/audit/README.md.

-- Uniqueness of the event id. A partitioned table only accepts unique constraints that contain
-- the partition key, so `audit_log` cannot say "event_id is unique" by itself. This small,
-- non-partitioned table can: one row per event id ever recorded. The BEFORE INSERT trigger on
-- audit_log below claims the id here first and skips the audit row when the id was already
-- claimed, so a second insert of the same event is a no-op for every writer, whatever SQL it uses.
-- occurred_at is kept to find the partition holding an event from its id.
CREATE TABLE audit_event_ids (
  event_id     text PRIMARY KEY,
  occurred_at  timestamptz NOT NULL
);

CREATE TABLE audit_log (
  event_id     text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255), -- the CloudEvent id (UUIDv7)
  event_type   text NOT NULL,
  source       text NOT NULL,
  subject      text,                                  -- principal id, when the event is about one
  occurred_at  timestamptz NOT NULL,                  -- the CloudEvent time; the partition key
  recorded_at  timestamptz NOT NULL DEFAULT now(),
  topic        text,                                  -- topic / partition / offset: null for admin operations
  partition    integer CHECK (partition >= 0),
  "offset"     bigint CHECK ("offset" >= 0),
  request_id   text,
  decision_id  text,                                  -- copied out of data for queries
  actor        text,                                  -- admin operations: who
  origin       text,                                  -- admin operations: from where
  data         jsonb NOT NULL DEFAULT '{}'::jsonb,
  CHECK ((topic IS NULL AND partition IS NULL AND "offset" IS NULL) OR (topic IS NOT NULL AND partition IS NOT NULL AND "offset" IS NOT NULL))
) PARTITION BY RANGE (occurred_at);

-- Monthly partitions are created ahead of time (`caracal db partitions create`); an event from a
-- month without one lands here instead of being refused.
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

-- Indexes on the parent are created on every partition, present and future.
CREATE INDEX audit_log_subject_idx ON audit_log (subject, occurred_at);
CREATE INDEX audit_log_request_idx ON audit_log (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_log_decision_idx ON audit_log (decision_id) WHERE decision_id IS NOT NULL;

-- Claims the event id; a row whose id is already claimed (by an earlier statement, or earlier in
-- this one) is silently skipped, and does not count in the statement's row count. Two concurrent
-- writers of the same id serialise on the primary key of audit_event_ids: the second waits for
-- the first to commit, then skips. OR REPLACE: `db reset` drops tables, not functions, then
-- re-applies every migration.
CREATE OR REPLACE FUNCTION audit_log_claim_event_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit_event_ids (event_id, occurred_at) VALUES (NEW.event_id, NEW.occurred_at) ON CONFLICT (event_id) DO NOTHING;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Row triggers on a partitioned table are cloned onto every partition, present and future, so
-- they also fire when a partition is written directly.
CREATE TRIGGER audit_log_claim_event_id BEFORE INSERT ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_claim_event_id();
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

-- Statement triggers are not cloned: each partition gets its own (createMonthlyPartitions adds
-- them to the partitions it creates). They also refuse an UPDATE or DELETE that matches no row,
-- and TRUNCATE, which fires no row trigger.
CREATE TRIGGER audit_log_no_change_stmt BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_change_stmt BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log_default
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Forgetting a claimed id would let an event be recorded twice: the id table is append-only too.
CREATE TRIGGER audit_event_ids_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_event_ids
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- For roles other than the owner. The owner (and a superuser, which the tests connect as) keeps
-- every privilege and could also drop the triggers: against them, the triggers are what refuses a
-- change, and that is what the tests prove. Tables grant nothing to PUBLIC by default; this states
-- the intent in the schema itself.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log, audit_log_default, audit_event_ids FROM PUBLIC;

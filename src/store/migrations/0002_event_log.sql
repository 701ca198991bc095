-- The local (embedded) event log: Kafka's topic / partition / offset / consumer-group model in
-- tables, so the embedded default and PostgreSQL without Kafka keep the same semantics.
-- See src/events/README.md.

-- A topic and its fixed partition count (like Kafka, partitions are never reduced).
CREATE TABLE event_topics (
  name        text PRIMARY KEY,
  partitions  integer NOT NULL CHECK (partitions BETWEEN 1 AND 1000),
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- One head row per partition: the next offset to allocate. Publishers lock this row for the
-- duration of their transaction, which both allocates contiguous offsets and makes offsets
-- become visible in order.
CREATE TABLE event_partitions (
  topic        text NOT NULL REFERENCES event_topics (name),
  partition    integer NOT NULL CHECK (partition >= 0),
  next_offset  bigint NOT NULL DEFAULT 0 CHECK (next_offset >= 0),
  PRIMARY KEY (topic, partition)
);

-- The log itself. Append-only: rows are never updated.
CREATE TABLE event_log (
  topic        text NOT NULL,
  partition    integer NOT NULL,
  "offset"     bigint NOT NULL CHECK ("offset" >= 0),
  key          text,
  value        text NOT NULL,
  headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
  appended_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (topic, partition, "offset"),
  FOREIGN KEY (topic, partition) REFERENCES event_partitions (topic, partition)
);

-- Committed position of a consumer group: the next offset to read (Kafka's convention,
-- last processed offset + 1).
CREATE TABLE event_consumer_offsets (
  group_id     text NOT NULL,
  topic        text NOT NULL,
  partition    integer NOT NULL,
  next_offset  bigint NOT NULL CHECK (next_offset >= 0),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (group_id, topic, partition),
  FOREIGN KEY (topic, partition) REFERENCES event_partitions (topic, partition)
);

-- Live members of a consumer group, per subscribed topic, kept alive by a heartbeat.
CREATE TABLE event_group_members (
  group_id    text NOT NULL,
  topic       text NOT NULL,
  member_id   text NOT NULL,
  expires_at  timestamptz NOT NULL,
  PRIMARY KEY (group_id, topic, member_id)
);

-- Partition leases: at most one member of a group consumes a partition at a time. Commits are
-- fenced on the lease owner, so a member that lost its lease cannot move the group's offset.
CREATE TABLE event_partition_claims (
  group_id    text NOT NULL,
  topic       text NOT NULL,
  partition   integer NOT NULL,
  owner       text NOT NULL,
  expires_at  timestamptz NOT NULL,
  PRIMARY KEY (group_id, topic, partition)
);

-- The signed decision ledger: one RFC 6962 Merkle tree per origin, written by the ledger-writer
-- consumer role. Design and reasoning: src/ledger/README.md ("Storage and writer").

-- The coordination row of one tree. Every write transaction locks it (SELECT … FOR UPDATE) before
-- anything else, so there is exactly one sequencer per tree however many writers run. It is the
-- only mutable ledger row: its sizes only grow (trigger below), and it cannot be deleted.
CREATE TABLE ledger_sequencer (
  origin           text PRIMARY KEY CHECK (length(origin) BETWEEN 1 AND 255),
  tree_size        bigint NOT NULL DEFAULT 0 CHECK (tree_size >= 0),
  root             bytea NOT NULL CHECK (octet_length(root) = 32),      -- MTH of the first tree_size leaves
  checkpoint_size  bigint NOT NULL DEFAULT 0 CHECK (checkpoint_size >= 0), -- size of the newest signed checkpoint (0: none)
  open_since       timestamptz,                                          -- first append not yet in a checkpoint (null: all sealed)
  frozen_at        timestamptz,                                          -- set: appends and checkpoints are refused
  frozen_reason    text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CHECK (checkpoint_size <= tree_size),
  CHECK ((frozen_at IS NULL) = (frozen_reason IS NULL))
);

-- One row per leaf: the exact bytes that were hashed (RFC 8785 canonical JSON of the CloudEvent)
-- and where the event came from.
CREATE TABLE ledger_entries (
  origin       text NOT NULL,
  leaf_index   bigint NOT NULL CHECK (leaf_index >= 0),
  event_id     text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
  event_type   text NOT NULL,
  subject      text,                          -- principal id, when the event is about one
  decision_id  text,
  request_id   text,
  occurred_at  timestamptz NOT NULL,          -- the CloudEvent time
  recorded_at  timestamptz NOT NULL DEFAULT now(),
  topic        text,
  partition    integer CHECK (partition >= 0),
  "offset"     bigint CHECK ("offset" >= 0),
  canonical    bytea NOT NULL,                -- the leaf input
  leaf_hash    bytea NOT NULL CHECK (octet_length(leaf_hash) = 32), -- SHA-256(0x00 ‖ canonical)
  PRIMARY KEY (origin, leaf_index),
  UNIQUE (origin, event_id)
);

CREATE INDEX ledger_entries_subject_idx ON ledger_entries (origin, subject, occurred_at) WHERE subject IS NOT NULL;
CREATE INDEX ledger_entries_decision_idx ON ledger_entries (decision_id) WHERE decision_id IS NOT NULL;

-- Every complete subtree hash: node (level, idx) covers leaves [idx·2^level, (idx+1)·2^level).
-- Level 0 repeats the leaf hashes, so a proof or a root is one read of O(log n) rows of this table.
CREATE TABLE ledger_hashes (
  origin  text NOT NULL,
  level   smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
  idx     bigint NOT NULL CHECK (idx >= 0),
  hash    bytea NOT NULL CHECK (octet_length(hash) = 32),
  PRIMARY KEY (origin, level, idx)
);

-- Signed checkpoints (c2sp.org/tlog-checkpoint in a c2sp.org/signed-note). The primary key means
-- there is never a second root for one size.
CREATE TABLE ledger_checkpoints (
  origin     text NOT NULL,
  tree_size  bigint NOT NULL CHECK (tree_size > 0),
  root       bytea NOT NULL CHECK (octet_length(root) = 32),
  note       text NOT NULL,
  signed_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (origin, tree_size)
);

-- OR REPLACE: `db reset` drops tables, not functions, then re-applies every migration.
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Statement triggers: they also refuse an UPDATE or DELETE matching no row, and TRUNCATE.
CREATE TRIGGER ledger_entries_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_hashes_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_hashes
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_checkpoints
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- The sequencer row moves forward only: a tree never shrinks, a root changes only with the size,
-- the checkpoint size never goes back, and the row is never deleted (a new row at size 0 would
-- fork the tree).
CREATE OR REPLACE FUNCTION ledger_sequencer_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'UPDATE' THEN
    RAISE EXCEPTION 'the ledger sequencer cannot be removed: % refused', TG_OP
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.origin <> OLD.origin OR NEW.tree_size < OLD.tree_size OR NEW.checkpoint_size < OLD.checkpoint_size
     OR (NEW.tree_size = OLD.tree_size AND NEW.root <> OLD.root) THEN
    RAISE EXCEPTION 'the ledger sequencer only moves forward (% size % -> %, checkpoint % -> %)',
      OLD.origin, OLD.tree_size, NEW.tree_size, OLD.checkpoint_size, NEW.checkpoint_size
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER ledger_sequencer_forward_only BEFORE UPDATE OR DELETE ON ledger_sequencer
  FOR EACH ROW EXECUTE FUNCTION ledger_sequencer_forward_only();
CREATE TRIGGER ledger_sequencer_no_truncate BEFORE TRUNCATE ON ledger_sequencer
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- See 0005: for roles other than the owner; against the owner the triggers are what refuses.
REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries, ledger_hashes, ledger_checkpoints FROM PUBLIC;
REVOKE DELETE, TRUNCATE ON ledger_sequencer FROM PUBLIC;

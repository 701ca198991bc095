-- The database bundle store (src/policy/bundle-store-db.ts): published policy bundles, which revision gateways enforce
-- (active) and evaluate alongside (shadow), and every change of those pointers. The rules are those of
-- src/policy/bundle-store.ts; the checks below repeat the application's (REVISION_PATTERN, hex SHA-256) as the
-- backstop for rows written by hand.

-- One row per published revision. A revision names one bundle forever: rows are never updated (trigger below).
CREATE TABLE policy_bundles (
  revision      text PRIMARY KEY CHECK (revision ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
  sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  size          integer NOT NULL CHECK (size > 0),
  bytes         bytea NOT NULL,
  published_seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE, -- the listing order: two publishes can share a timestamp
  published_at  timestamptz NOT NULL DEFAULT now(),
  published_by  text,
  build_time    text,                                       -- the manifest's metadata.caracal, as written by the build
  opa_version   text,
  signed        boolean NOT NULL,                           -- carries /.signatures.json (verified by gateways, not here)
  CHECK (octet_length(bytes) = size)
);

-- The pointers: exactly one row (id is always true), locked (SELECT … FOR UPDATE) by every change, publishes too, so
-- that writers on any number of connections or gateways serialise. `stack` is the activation stack, oldest first; its
-- last element is `active`.
CREATE TABLE policy_bundle_state (
  id          boolean PRIMARY KEY DEFAULT true CHECK (id),
  active      text REFERENCES policy_bundles (revision),
  shadow      text REFERENCES policy_bundles (revision),
  stack       text[] NOT NULL DEFAULT '{}',
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CHECK ((active IS NULL) = (cardinality(stack) = 0))
);
INSERT INTO policy_bundle_state (id) VALUES (true);

-- Every pointer change, append-only. seq is assigned under the state row's lock: 1, 2, … without gaps.
CREATE TABLE policy_bundle_history (
  seq       bigint PRIMARY KEY CHECK (seq > 0),
  action    text NOT NULL CHECK (action IN ('activate', 'rollback', 'shadow', 'unshadow')),
  revision  text REFERENCES policy_bundles (revision),
  previous  text REFERENCES policy_bundles (revision),
  at        timestamptz NOT NULL DEFAULT now(),
  actor     text,
  CHECK ((revision IS NULL) = (action = 'unshadow'))
);

CREATE OR REPLACE FUNCTION policy_bundles_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'policy bundles and their history are append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Nor deleted: a deleted revision could be published again with other bytes, and a revision names one bundle forever.
CREATE TRIGGER policy_bundles_no_update BEFORE UPDATE OR DELETE OR TRUNCATE ON policy_bundles
  FOR EACH STATEMENT EXECUTE FUNCTION policy_bundles_refuse_change();
CREATE TRIGGER policy_bundle_history_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON policy_bundle_history
  FOR EACH STATEMENT EXECUTE FUNCTION policy_bundles_refuse_change();

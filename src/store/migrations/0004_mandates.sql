-- Mandates: signed, scoped, time-bounded grants of authority; delegation forms a tree.
CREATE TABLE mandates (
  id                    text PRIMARY KEY,                        -- the JWT's jti
  principal_id          text NOT NULL REFERENCES principals (id), -- the JWT's sub
  parent_id             text REFERENCES mandates (id),
  root_id               text NOT NULL,
  policy_id             text NOT NULL REFERENCES authority_policies (id), -- the root's policy
  depth                 integer NOT NULL CHECK (depth >= 0),
  resources             text[] NOT NULL CHECK (cardinality(resources) > 0),
  actions               text[] NOT NULL CHECK (cardinality(actions) > 0),
  not_before            timestamptz NOT NULL,
  expires_at            timestamptz NOT NULL CHECK (expires_at > not_before),
  revoked_at            timestamptz,
  revoked_reason        text,
  created_at            timestamptz NOT NULL DEFAULT now(),
  CHECK ((parent_id IS NULL) = (depth = 0))
);
CREATE INDEX mandates_parent_idx ON mandates (parent_id);
CREATE INDEX mandates_principal_idx ON mandates (principal_id);
CREATE INDEX mandates_revoked_idx ON mandates (revoked_at) WHERE revoked_at IS NOT NULL;

-- Emergency stops in force: scope 'global', or a principal id. Resuming deletes the row;
-- the history is in agent.lifecycle.
CREATE TABLE emergency_stops (
  scope       text PRIMARY KEY,
  reason      text NOT NULL DEFAULT '',
  stopped_at  timestamptz NOT NULL DEFAULT now()
);

-- Principals (agents, services, users) and their authority policies.
CREATE TABLE principals (
  id            text PRIMARY KEY,
  kind          text NOT NULL DEFAULT 'agent' CHECK (kind IN ('agent', 'service', 'user')),
  name          text NOT NULL,
  description   text NOT NULL DEFAULT '',
  owner         text NOT NULL,
  parent_id     text REFERENCES principals (id),
  status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX principals_name_key ON principals (name);

CREATE TABLE authority_policies (
  id                    text PRIMARY KEY,
  principal_id          text NOT NULL REFERENCES principals (id),
  resources             text[] NOT NULL CHECK (cardinality(resources) > 0),
  actions               text[] NOT NULL CHECK (cardinality(actions) > 0),
  max_validity_seconds  integer NOT NULL CHECK (max_validity_seconds > 0),
  delegation_depth      integer NOT NULL DEFAULT 0 CHECK (delegation_depth >= 0),
  active                boolean NOT NULL DEFAULT true,
  created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX authority_policies_principal_idx ON authority_policies (principal_id) WHERE active;

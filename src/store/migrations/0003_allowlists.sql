-- Per-principal URL allowlists: each entry is one regex or glob pattern the principal's concrete
-- upstream URLs are matched against (src/authority/allowlists.ts). Patterns are checked for
-- catastrophic backtracking before they are stored; the length check here is the backstop.
CREATE TABLE allowlist_entries (
  id            text PRIMARY KEY,
  principal_id  text NOT NULL REFERENCES principals (id),
  pattern       text NOT NULL CHECK (char_length(pattern) BETWEEN 1 AND 1024),
  pattern_type  text NOT NULL CHECK (pattern_type IN ('regex', 'glob')),
  created_at    timestamptz NOT NULL DEFAULT now()
);
-- The gateway loads one principal's entries at a time, in creation order.
CREATE INDEX allowlist_entries_principal_idx ON allowlist_entries (principal_id, created_at);
-- The same pattern twice for one principal is a mistake, not a second entry. Hashed because a
-- 1024-character pattern can exceed the btree row limit in UTF-8.
CREATE UNIQUE INDEX allowlist_entries_pattern_key ON allowlist_entries (principal_id, pattern_type, md5(pattern));

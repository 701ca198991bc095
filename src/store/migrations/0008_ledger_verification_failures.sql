-- Verification failures of the ledger, counted where every process sees them: the writer's own (a root or a
-- consistency proof that did not verify before signing) and those `caracal merkle verify-*` finds, which run in a
-- process with no metrics endpoint. The consumers export the count as caracal_merkle_verification_failures_total.
ALTER TABLE ledger_sequencer ADD COLUMN verification_failures bigint NOT NULL DEFAULT 0 CHECK (verification_failures >= 0);

-- As in 0007, and the count only grows too.
CREATE OR REPLACE FUNCTION ledger_sequencer_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'UPDATE' THEN
    RAISE EXCEPTION 'the ledger sequencer cannot be removed: % refused', TG_OP
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NEW.origin <> OLD.origin OR NEW.tree_size < OLD.tree_size OR NEW.checkpoint_size < OLD.checkpoint_size
     OR (NEW.tree_size = OLD.tree_size AND NEW.root <> OLD.root)
     OR NEW.verification_failures < OLD.verification_failures THEN
    RAISE EXCEPTION 'the ledger sequencer only moves forward (% size % -> %, checkpoint % -> %, failures % -> %)',
      OLD.origin, OLD.tree_size, NEW.tree_size, OLD.checkpoint_size, NEW.checkpoint_size,
      OLD.verification_failures, NEW.verification_failures
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END;
$$;

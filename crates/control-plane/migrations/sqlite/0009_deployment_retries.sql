-- `edgefn deployments retry`: raised by an operator's retry; carried to nodes in the desired
-- state, where a changed count makes a failed version load again at once.
ALTER TABLE deployments ADD COLUMN retries BIGINT NOT NULL DEFAULT 0;

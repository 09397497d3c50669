-- At most one active deployment per function, whatever two transactions (or replicas) do at
-- once: a second concurrent deploy of the same function fails instead of leaving two.
DROP INDEX deployments_active;
CREATE UNIQUE INDEX deployments_one_active ON deployments (function_id) WHERE state = 'active';
CREATE INDEX deployments_by_function ON deployments (function_id, state);

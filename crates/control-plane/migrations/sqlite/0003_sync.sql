-- The revision feed of every control plane replica polls recent desired-state changes.
CREATE INDEX node_desired_updated_at ON node_desired (updated_at);

-- What each node reported doing between its last two heartbeats (NodeUsage as JSON).
ALTER TABLE nodes ADD COLUMN usage TEXT NOT NULL DEFAULT '{}';

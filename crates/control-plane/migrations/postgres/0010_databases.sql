-- Edge databases: a SQLite database on every node selected for it, whose schema is the
-- database's ledger of changes (append-only, gap-free sequences from 1; a correction is a
-- new change). `chain` is SHA-256 of "{previous chain}:{seq}:{sha256}", `fingerprint` the
-- SHA-256 of the normalized schema after the change (the dry run's).
CREATE TABLE databases (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- '' : every node that runs a function of the project which uses the database.
    pop_selector TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE database_changes (
    database_id TEXT NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    sql TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    chain TEXT NOT NULL,
    description TEXT NOT NULL,
    destructive BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (database_id, seq)
);

-- Where each targeted node's copy stands: a row appears when a node's desired state first
-- holds the database and goes when it no longer does; heartbeats fill in the rest.
CREATE TABLE node_databases (
    node_id TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    database_id TEXT NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    applied_seq BIGINT NOT NULL DEFAULT 0,
    fingerprint TEXT,
    -- pending (not reported yet), in_sync, applying, failed, drift
    state TEXT NOT NULL,
    targeted_at BIGINT NOT NULL,
    last_sync_at BIGINT,
    failures BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, database_id)
);
CREATE INDEX node_databases_by_database ON node_databases (database_id);

-- Every apply attempt a node reported, kept for the retention period.
CREATE TABLE database_sync_log (
    database_id TEXT NOT NULL REFERENCES databases (id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NOT NULL,
    target_seq BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    error TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX database_sync_log_by_time ON database_sync_log (database_id, at);
CREATE INDEX database_sync_log_by_age ON database_sync_log (at);

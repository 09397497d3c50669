-- Deployments and the desired state of every node (the durable queue of node sync).
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    function_id TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    pop_selector TEXT NOT NULL,
    strategy TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX deployments_active ON deployments (function_id, state);

CREATE TABLE deployment_nodes (
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    node_id TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, node_id)
);

-- One row per node: the revision and document it must converge to, and what it applied.
CREATE TABLE node_desired (
    node_id TEXT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    revision BIGINT NOT NULL,
    document TEXT NOT NULL,
    applied_revision BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

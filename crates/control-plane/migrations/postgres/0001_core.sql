-- Core metadata: projects, functions and their versions, routes, nodes.
-- Times are Unix milliseconds; lists and maps are JSON text.
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
INSERT INTO projects (id, name, created_at) VALUES ('default', 'default', 0);

CREATE TABLE functions (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name TEXT NOT NULL,
    settings TEXT NOT NULL,
    next_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE versions (
    function_id TEXT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    sha256 TEXT,
    size BIGINT,
    kind TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    PRIMARY KEY (function_id, version)
);
CREATE INDEX versions_by_sha256 ON versions (sha256);

CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    host TEXT NOT NULL,
    path TEXT NOT NULL,
    methods TEXT NOT NULL,
    function_id TEXT NOT NULL REFERENCES functions (id),
    version BIGINT,
    priority BIGINT NOT NULL,
    pop_selector TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (host, path, methods)
);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_heartbeat BIGINT,
    cpu_percent DOUBLE PRECISION,
    mem_bytes BIGINT,
    inventory TEXT NOT NULL
);
CREATE INDEX nodes_by_heartbeat ON nodes (status, last_heartbeat);

-- Domains a project claims, and proves, to route them. A name is verified for at most one
-- project (overlapping names of other projects are refused by the store, which serializes
-- claims); unverified claims own nothing.
CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    verified BIGINT NOT NULL DEFAULT 0,
    token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    verified_at BIGINT,
    UNIQUE (project_id, name)
);
CREATE UNIQUE INDEX domains_one_verified_owner ON domains (name) WHERE verified = 1;

-- A project's quotas on each node (JSON ProjectQuota; NULL: the nodes' defaults).
ALTER TABLE projects ADD COLUMN quota TEXT;

-- A renewed node's previous certificate, accepted until the node has used the new one
-- once or the grace period ends: a renewal whose answer was lost cannot lock it out.
ALTER TABLE nodes ADD COLUMN prev_cert_serial TEXT;
ALTER TABLE nodes ADD COLUMN prev_cert_until BIGINT;

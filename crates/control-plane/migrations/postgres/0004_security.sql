-- Security: users, project memberships, API tokens (stored hashed), one-time node
-- bootstrap tokens, the control plane's keys, node certificates and revocation, and the
-- append-only, hash-chained audit log.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- Argon2id PHC string; NULL: the user signs in with tokens or an external issuer only.
    password_hash TEXT,
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id);

-- One row per issued API token (the JWT's `jti`): only its SHA-256 is kept.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id TEXT,
    role TEXT,
    token_sha256 TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE bootstrap_tokens (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    node_id TEXT
);

-- The token-signing key and the node CA, shared by every replica on this database.
CREATE TABLE cp_keys (
    name TEXT PRIMARY KEY,
    private_key TEXT NOT NULL,
    certificate TEXT,
    created_at BIGINT NOT NULL
);

ALTER TABLE nodes ADD COLUMN cert_serial TEXT;
ALTER TABLE nodes ADD COLUMN cert_expires_at BIGINT;
ALTER TABLE nodes ADD COLUMN revoked_at BIGINT;

-- Append-only: each record carries the hash of its predecessor; the triggers refuse every
-- UPDATE, DELETE and TRUNCATE. Run the control plane as a role that does not own this
-- table (`--database-owner-url` migrates as the owner) and it cannot disable them either.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    project TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_by_at ON audit_log (at);
CREATE FUNCTION edgefn_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION edgefn_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION edgefn_audit_append_only();

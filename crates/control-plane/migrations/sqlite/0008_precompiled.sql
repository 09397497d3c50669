-- Native code the control plane compiled once for every node with the same engine
-- (Wasmtime version, target and CPU features, code-changing settings: `engine_hash`).
-- The code itself is in the artifact store at precompiled/{engine_hash}/{wasm_sha256};
-- `attestation` is the signed JWT of {wasm_sha256, engine_hash, native_sha256}.
-- A 'compiling' row is a claim: the replica that inserted it compiles and renews it every
-- few seconds; a claim left unrenewed (its replica died) is taken over.
CREATE TABLE precompiled (
    wasm_sha256 TEXT NOT NULL,
    engine_hash TEXT NOT NULL,
    max_memory_pages BIGINT NOT NULL,
    fuel BIGINT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    native_sha256 TEXT,
    native_bytes BIGINT,
    attestation TEXT,
    error TEXT,
    compile_ms BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (wasm_sha256, engine_hash)
);

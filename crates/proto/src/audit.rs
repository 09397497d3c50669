//! The audit log as the API shows it: records and the result of verifying the chain.

use serde::{Deserialize, Serialize};

/// One audit record. `hash` covers every other field, `prev_hash` included, so each record
/// vouches for the whole log before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Unix milliseconds.
    pub at: i64,
    /// `user:NAME`, `node:ID`, `anonymous` or `system`.
    pub actor: String,
    pub project: Option<String>,
    /// What was done: `function.create`, `route.update`, `deploy`, `auth.refused`, …
    pub action: String,
    /// What it was done to: an id, or the endpoint of a refused call.
    pub target: String,
    /// Values before and after an update, a deployment's selector, version and nodes, the
    /// reason of a refusal, …
    #[schema(value_type = Option<Object>)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The result of walking the chain against the latest signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditVerification {
    /// Whether every record matches its hash, its predecessor and the checkpoints.
    pub ok: bool,
    /// Records read.
    pub records: u64,
    /// The sequence number the newest valid checkpoint covers (0: none yet).
    pub checkpointed_through: u64,
    /// The first record that does not match, when one does not.
    pub first_bad_seq: Option<u64>,
    /// Why it does not match, or what was verified.
    pub message: String,
}

//! The audit log: what was done, by whom, to what — every mutating call, every token and
//! enrollment, every refused authentication.
//!
//! Tamper evidence comes in three layers. The table is append-only (database triggers refuse
//! UPDATE, DELETE and TRUNCATE). Each record's `hash` covers its fields and its
//! predecessor's hash, so editing, deleting or reordering records breaks the chain at the
//! first record touched. And signed checkpoints (written by `crate::checkpoints`; their
//! content is [`Checkpoint`] here), kept periodically outside the database, hold the hash
//! of every record they cover: even a wholesale rewrite of the
//! chain with recomputed hashes no longer matches them. [`verify`] walks the chain against
//! the checkpoints and names the first record that does not match.
//!
//! Records are written by the store in the same transaction as the change they record
//! (`Store::append_audit`), so a change and its record commit or roll back together.

use std::collections::BTreeMap;

use edgefn_proto::audit::{AuditRecord, AuditVerification};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The predecessor of record 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before the store gives it a place in the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub actor: String,
    pub project: Option<String>,
    pub action: &'static str,
    pub target: String,
    pub details: serde_json::Value,
}

impl Entry {
    pub fn new(actor: &str, action: &'static str, target: impl Into<String>) -> Self {
        Self {
            actor: actor.to_string(),
            project: None,
            action,
            target: target.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// At most `max_bytes` of `text`, cut at a character boundary.
pub fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bounds of a refusal record's fields: refusals are written for unauthenticated callers,
/// who must not choose how large a record is.
const REFUSAL_ACTOR_BYTES: usize = 96;
const REFUSAL_TARGET_BYTES: usize = 256;
const REFUSAL_DETAILS_BYTES: usize = 1024;

/// The most bytes a refusal record's actor, target and details take (see [`Entry::bounded`]);
/// with the fixed columns (sequence, time, action, two hashes: under 200 bytes) this bounds
/// how fast unauthenticated callers can grow the log: at most `--audit-refusals-per-second`
/// times this, plus one count record a second.
pub const MAX_REFUSAL_BYTES: usize =
    REFUSAL_ACTOR_BYTES + REFUSAL_TARGET_BYTES + REFUSAL_DETAILS_BYTES + 200;

impl Entry {
    /// This entry with its caller-chosen parts bounded: actor and target truncated, and
    /// details larger than 1 KiB replaced by their truncated text.
    pub fn bounded(&self) -> Self {
        let details = match self.details.to_string() {
            text if text.len() <= REFUSAL_DETAILS_BYTES => self.details.clone(),
            // Escaping may double the text (quotes, backslashes): half of it fits.
            text => serde_json::json!({
                "truncated": truncate(&text, REFUSAL_DETAILS_BYTES / 2 - 32),
            }),
        };
        Self {
            actor: truncate(&self.actor, REFUSAL_ACTOR_BYTES).to_string(),
            project: self
                .project
                .as_deref()
                .map(|p| truncate(p, REFUSAL_ACTOR_BYTES).to_string()),
            action: self.action,
            target: truncate(&self.target, REFUSAL_TARGET_BYTES).to_string(),
            details,
        }
    }
}

/// A record as stored: `details` is the exact text the hash covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub at: i64,
    pub actor: String,
    pub project: Option<String>,
    pub action: String,
    pub target: String,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredRecord {
    /// The hash this record's fields call for.
    pub fn expected_hash(&self) -> String {
        record_hash(
            self.seq,
            self.at,
            &self.actor,
            self.project.as_deref(),
            &self.action,
            &self.target,
            &self.details,
            &self.prev_hash,
        )
    }

    pub fn to_api(&self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            at: self.at,
            actor: self.actor.clone(),
            project: self.project.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            details: serde_json::from_str(&self.details).unwrap_or(serde_json::Value::Null),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

/// SHA-256 over every field, each length-prefixed so that no two different records encode
/// alike (`ab` + `c` ≠ `a` + `bc`); `project` says whether it is absent or empty.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per hashed field, in order"
)]
pub fn record_hash(
    seq: u64,
    at: i64,
    actor: &str,
    project: Option<&str>,
    action: &str,
    target: &str,
    details: &str,
    prev_hash: &str,
) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(b"edgefn-audit-v1");
    field(&seq.to_be_bytes());
    field(&at.to_be_bytes());
    field(actor.as_bytes());
    match project {
        Some(project) => {
            field(b"1");
            field(project.as_bytes());
        }
        None => field(b"0"),
    }
    field(action.as_bytes());
    field(target.as_bytes());
    field(details.as_bytes());
    field(prev_hash.as_bytes());
    hex::encode(hasher.finalize())
}

/// Walks `records` (in `seq` order, as read) against the hashes the valid checkpoints
/// vouch for, and names the first record that does not match.
pub fn verify(
    records: impl IntoIterator<Item = StoredRecord>,
    checkpoints: &Vouched,
) -> AuditVerification {
    let mut verifier = ChainVerifier::new(checkpoints);
    for record in records {
        if let Err(broken) = verifier.feed(record) {
            return broken;
        }
    }
    verifier.finish()
}

/// [`verify`] one record at a time, so a log of any length is checked page by page in
/// constant memory (besides the checkpoints' hashes).
pub struct ChainVerifier<'a> {
    checkpoints: &'a Vouched,
    expected_seq: u64,
    prev_hash: String,
    read: u64,
}

impl<'a> ChainVerifier<'a> {
    pub fn new(checkpoints: &'a Vouched) -> Self {
        Self {
            checkpoints,
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            read: 0,
        }
    }

    /// The next sequence number it expects (where the next page starts).
    pub fn next_seq(&self) -> u64 {
        self.expected_seq
    }

    fn broken(&self, seq: u64, message: String) -> AuditVerification {
        AuditVerification {
            ok: false,
            records: self.read,
            checkpointed_through: self.checkpoints.through(),
            first_bad_seq: Some(seq),
            message,
        }
    }

    /// Checks the next record; the verdict when it breaks the chain.
    pub fn feed(&mut self, record: StoredRecord) -> Result<(), AuditVerification> {
        self.read += 1;
        let expected_seq = self.expected_seq;
        if record.seq != expected_seq {
            return Err(if record.seq > expected_seq {
                self.broken(
                    expected_seq,
                    format!(
                        "record {expected_seq} is missing (the next record is {})",
                        record.seq
                    ),
                )
            } else {
                self.broken(record.seq, format!("record {} is out of order", record.seq))
            });
        }
        if record.prev_hash != self.prev_hash {
            return Err(self.broken(
                record.seq,
                format!(
                    "record {} does not follow record {}: its predecessor hash differs",
                    record.seq,
                    record.seq - 1
                ),
            ));
        }
        if record.hash != record.expected_hash() {
            return Err(self.broken(
                record.seq,
                format!(
                    "record {} was altered: its content does not match its hash",
                    record.seq
                ),
            ));
        }
        if let Some(vouched) = self.checkpoints.hash_of(record.seq)
            && vouched != record.hash
        {
            return Err(self.broken(
                record.seq,
                format!(
                    "record {} differs from the signed checkpoint (the chain was rewritten)",
                    record.seq
                ),
            ));
        }
        self.prev_hash = record.hash;
        self.expected_seq += 1;
        Ok(())
    }

    /// The verdict once every record was fed.
    pub fn finish(self) -> AuditVerification {
        let checkpoints = self.checkpoints;
        let (read, expected_seq) = (self.read, self.expected_seq);
        let last = expected_seq - 1;
        if checkpoints.through() > last {
            return self.broken(
                expected_seq,
                format!(
                    "record {expected_seq} is missing: the signed checkpoint covers records up to {}",
                    checkpoints.through()
                ),
            );
        }
        if let Some(problem) = checkpoints.problems.first() {
            return AuditVerification {
                ok: false,
                records: read,
                checkpointed_through: checkpoints.through(),
                first_bad_seq: None,
                message: problem.clone(),
            };
        }
        AuditVerification {
            ok: true,
            records: read,
            checkpointed_through: checkpoints.through(),
            first_bad_seq: None,
            message: if checkpoints.through() == 0 {
                format!("{read} records form an unbroken chain (no checkpoint yet)")
            } else {
                format!(
                    "{read} records form an unbroken chain; records 1-{} match the signed checkpoints",
                    checkpoints.through()
                )
            },
        }
    }
}

/// Chains `entries` after `prev` the way the store does (for tests and tools).
pub fn chain(entries: &[(i64, Entry)], mut seq: u64, mut prev: String) -> Vec<StoredRecord> {
    let mut out = Vec::with_capacity(entries.len());
    for (at, entry) in entries {
        seq += 1;
        let details = entry.details.to_string();
        let hash = record_hash(
            seq,
            *at,
            &entry.actor,
            entry.project.as_deref(),
            entry.action,
            &entry.target,
            &details,
            &prev,
        );
        out.push(StoredRecord {
            seq,
            at: *at,
            actor: entry.actor.clone(),
            project: entry.project.clone(),
            action: entry.action.to_string(),
            target: entry.target.clone(),
            details,
            prev_hash: prev.clone(),
            hash: hash.clone(),
        });
        prev = hash;
    }
    out
}

/// The signed content of one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub iss: String,
    pub aud: String,
    /// Unix seconds.
    pub iat: i64,
    pub from_seq: u64,
    pub seq: u64,
    pub head_hash: String,
    /// The hash of every record from `from_seq` to `seq`.
    pub hashes: Vec<String>,
}

/// What the valid checkpoints vouch for: the hash of each record they cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vouched {
    hashes: BTreeMap<u64, String>,
    /// Checkpoints that could not be trusted (bad signature, inconsistent content).
    pub problems: Vec<String>,
}

impl Vouched {
    /// The newest record any checkpoint covers (0: none).
    pub fn through(&self) -> u64 {
        self.hashes.keys().next_back().copied().unwrap_or(0)
    }

    pub fn hash_of(&self, seq: u64) -> Option<&str> {
        self.hashes.get(&seq).map(String::as_str)
    }

    /// Adds a checkpoint whose signature held.
    pub fn add(&mut self, name: &str, checkpoint: &Checkpoint) {
        let count = checkpoint
            .seq
            .checked_sub(checkpoint.from_seq)
            .map(|d| d + 1);
        if count != Some(checkpoint.hashes.len() as u64)
            || checkpoint.hashes.last() != Some(&checkpoint.head_hash)
        {
            self.problems
                .push(format!("checkpoint {name} is inconsistent"));
            return;
        }
        for (offset, hash) in checkpoint.hashes.iter().enumerate() {
            let seq = checkpoint.from_seq + offset as u64;
            match self.hashes.get(&seq) {
                Some(other) if other != hash => self
                    .problems
                    .push(format!("checkpoints disagree about record {seq} ({name})")),
                _ => {
                    self.hashes.insert(seq, hash.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
